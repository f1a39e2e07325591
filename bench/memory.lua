-- memory.lua - what lusidauth costs in memory.
--
--   lua5.4 bench/memory.lua clients N URL
--     creates N clients (shared = false), keeps them all; prints bytes per client, both as
--     RSS (/proc/self/statm) and as Lua heap (collectgarbage "count"), after a full collection.
--   lua5.4 bench/memory.lua refresh N1 N2 URL
--     one client, c:refresh() N2 times; prints RSS after N1 and after N2 refreshes (after a full
--     collection each time) and the growth between them.
local mode = arg[1]
local lusidauth = require "lusidauth"
local PAGE = tonumber(os.getenv "PAGESIZE") or 4096

local function rss_bytes()
  local f = assert(io.open("/proc/self/statm"))
  local _, resident = f:read("n", "n") -- statm: size resident shared ... (in pages)
  f:close()
  return resident * PAGE
end

local function settle() -- two full cycles, so objects with finalizers are freed too
  collectgarbage("collect")
  collectgarbage("collect")
end

local function new_client(url)
  return lusidauth.new_refresh_token {
    token_url = url, client_id = "bench-client", client_secret = "bench-secret",
    refresh_token = "rt.x", shared = false, retries = 0,
  }
end

if mode == "clients" then
  local n, url = assert(tonumber(arg[2])), assert(arg[3])
  local keep = {}
  for i = 1, n do keep[i] = false end -- the table's own slots are allocated before measuring
  new_client(url):close()              -- the module's one-off allocations, too
  settle()
  local rss0, heap0 = rss_bytes(), collectgarbage("count")
  for i = 1, n do keep[i] = new_client(url) end
  settle()
  local rss1, heap1 = rss_bytes(), collectgarbage("count")
  print(("RESULT memory rss-per-client %.0f B"):format((rss1 - rss0) / n))
  print(("RESULT memory heap-per-client %.0f B"):format((heap1 - heap0) * 1024 / n))
  for i = 1, n do keep[i]:close() end
elseif mode == "refresh" then
  local n1, n2, url = assert(tonumber(arg[2])), assert(tonumber(arg[3])), assert(arg[4])
  local c = new_client(url)
  local function refreshes(k)
    for _ = 1, k do
      local tok, err = c:refresh()
      if not tok then
        io.stderr:write("memory: refresh failed: ", tostring(err), "\n")
        os.exit(1)
      end
    end
  end
  refreshes(n1)
  settle()
  local rss1, heap1 = rss_bytes(), collectgarbage("count")
  refreshes(n2 - n1)
  settle()
  local rss2, heap2 = rss_bytes(), collectgarbage("count")
  print(("RESULT memory rss-after-%d-refreshes %.0f KiB"):format(n1, rss1 / 1024))
  print(("RESULT memory rss-after-%d-refreshes %.0f KiB"):format(n2, rss2 / 1024))
  print(("RESULT memory rss-growth %.0f KiB"):format((rss2 - rss1) / 1024))
  print(("RESULT memory heap-growth %.1f KiB"):format(heap2 - heap1))
  c:close()
else
  error("usage: memory.lua clients N URL | refresh N1 N2 URL")
end

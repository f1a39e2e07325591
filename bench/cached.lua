-- bench/cached.lua: nanoseconds per c:token() on a fresh token, in a tight Lua loop, against
-- (a) the floor, a C method returning a stored string (bench/floor.c), called the same way, and
-- (b) a pure-Lua cache, a table with an os.time() expiry check, as a user would write it.
-- Prints "RESULT cached <name> <ns> ns" lines, one per round.
-- Usage: cached.lua [--smoke] [--only floor|lusidauth|pure-lua --n N] (--only: for callgrind)
local lusidauth = require "lusidauth"
local floor = require "benchfloor"

local opts = {}
for i = 1, #arg do
  if arg[i] == "--smoke" then opts.smoke = true end
  if arg[i] == "--only" then opts.only = arg[i + 1] end
  if arg[i] == "--n" then opts.n = tonumber(arg[i + 1]) end
end
local N = opts.n or (opts.smoke and 200000 or 10000000)
local ROUNDS = (opts.smoke or opts.only) and 1 or 5
local LUA = os.getenv("LUSIDAUTH_BENCH_LUA") or "lua5.4"

-- A one-shot token endpoint on loopback (a child process), so the client holds a real token.
local SERVER = [[
local s = require("socket")
local srv = assert(s.bind("127.0.0.1", 0))
local _, port = srv:getsockname()
io.write(port, "\n") io.flush()
local c = srv:accept()
c:settimeout(5)
local len = 0
repeat
  local l = c:receive("*l")
  len = tonumber(l and l:lower():match("^content%-length:%s*(%d+)")) or len
until l == "" or l == nil
c:receive(len)
local body = '{"token_type":"Bearer","expires_in":3600,"access_token":"at.' .. ("x"):rep(800) .. '"}'
c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
  .. #body .. "\r\n\r\n" .. body)
c:close()
]]
local child = assert(io.popen(LUA .. " -e '" .. SERVER:gsub("'", "'\\''") .. "'", "r"))
local port = assert(tonumber(child:read("*l")), "the one-shot token endpoint did not start")
local client = lusidauth.new_client_credentials {
  token_url = "http://127.0.0.1:" .. port .. "/token", client_id = "bench", client_secret = "bench-secret",
  shared = false, retries = 0, timeout = 5,
}
local token = assert(client:token())
child:close()

local fl = floor.new(token)

-- what a user would write in Lua
local LuaCache = {}
LuaCache.__index = LuaCache
function LuaCache:token()
  local now = os.time()
  if now < self.expires - 60 then return self.value, self.expires - now end
end
local lc = setmetatable({ value = token, expires = os.time() + 3600 }, LuaCache)

local function time(f)
  local t0 = os.clock()
  f()
  return (os.clock() - t0) / N * 1e9
end

local cases = {
  { "floor", function() for _ = 1, N do fl:get() end end },
  { "lusidauth", function() for _ = 1, N do client:token() end end },
  { "pure-lua", function() for _ = 1, N do lc:token() end end },
}
assert(client:token() == token and fl:get() == token and lc:token() == token)
for _ = 1, ROUNDS do
  for _, c in ipairs(cases) do -- interleaved, so drift hits all alike
    if not opts.only or opts.only == c[1] then
      print(("RESULT cached %s %.2f ns"):format(c[1], time(c[2])))
    end
  end
end

-- Helpers for spec/hostile_spec.lua and spec/leak_spec.lua.
local socket = require "socket"
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"

local H = {}

-- A loopback port that nothing listens on: bound, read, then closed.
function H.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- An IMF-fixdate (RFC 9110), as Retry-After carries it.
function H.http_date(t)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", t)
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Standard base64 with padding (no bit operators: runs on Lua 5.1 to 5.4).
function H.base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {}
    for k = 4, 1, -1 do
      local d = v % 64
      q[k] = B64:sub(d + 1, d + 1)
      v = (v - d) / 64
    end
    if not b then q[3] = "=" end
    if not c then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

-- The value of the Basic header lusidauth sends: base64(urlencode(id) ":" urlencode(secret)).
function H.basic_credential(id, secret)
  return H.base64(F.urlencode(id or F.client_id) .. ":" .. F.urlencode(secret or F.client_secret))
end

-- The fake Okta's default configuration, to undo a case's okta.config without a reset.
function H.default_config()
  okta.config {
    expires_in = 3600, token_type = "Bearer", rotate = true, issue_refresh = true, grace = 0,
    users = { [F.username] = F.password }, clients = { [F.client_id] = F.client_secret },
  }
end

-- Number of entries of list (strings, or { level, message } pairs) matching a Lua pattern.
function H.count(list, pattern)
  local n = 0
  for _, v in ipairs(list) do
    local s = type(v) == "table" and v[2] or v
    if s:find(pattern) then n = n + 1 end
  end
  return n
end

function H.shquote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Every FBN_* variable lusidauth.config reads: unset for CLI runs, so the outer
-- environment cannot change what a case tests.
H.FBN_VARS = {
  "FBN_TOKEN_URL", "FBN_LUSID_URL", "FBN_LUSID_API_URL", "FBN_USERNAME", "FBN_PASSWORD",
  "FBN_CLIENT_ID", "FBN_CLIENT_SECRET", "FBN_APP_NAME", "FBN_CLIENT_CERTIFICATE",
  "FBN_ACCESS_TOKEN", "FBN_ACCESS_TOKEN_FILE", "FBN_TOTAL_TIMEOUT_MS", "FBN_CONNECT_TIMEOUT_MS",
  "FBN_READ_TIMEOUT_MS", "FBN_RATE_LIMIT_RETRIES", "FBN_CORRELATION_ID", "FBN_PROXY_ADDRESS",
  "FBN_PROXY_USERNAME", "FBN_PROXY_PASSWORD", "FBN_PROFILE", "FBN_REFRESH_TOKEN",
}

-- Runs bin/lusidauth with args (a shell-quoted string) and env (name -> value) with the
-- interpreter the suite runs on. Returns stdout and stderr together, and the exit code.
function H.run_cli(args, env)
  local lua = os.getenv("LUSIDAUTH_LUA") or "lua5.4"
  local cmd = { "env" }
  for _, name in ipairs(H.FBN_VARS) do cmd[#cmd + 1] = "-u " .. name end
  for _, name in ipairs { "LUA_PATH", "LUA_CPATH" } do
    local v = os.getenv(name)
    if v then cmd[#cmd + 1] = name .. "=" .. H.shquote(v) end
  end
  local names = {}
  for k in pairs(env or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do cmd[#cmd + 1] = k .. "=" .. H.shquote(env[k]) end
  cmd[#cmd + 1] = lua .. " bin/lusidauth " .. args .. " </dev/null 2>&1; echo \"[exit $?]\""
  local p = assert(io.popen(table.concat(cmd, " ")))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("%[exit (%d+)%]%s*$"))
  return (out:gsub("%[exit %d+%]%s*$", "")), code
end

return H

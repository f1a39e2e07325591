-- Client for the fake Okta server's control API (spec/support/fake_okta.lua).
--
--   local okta = require "spec.support.okta"
--   okta.reset()
--   local url = okta.token_url()          -- http listener
--   local url = okta.token_url("https")   -- https listener (trusts LUSIDAUTH_TEST_CA)
--
-- Reads the port file named by LUSIDAUTH_FAKE_OKTA_PORTS (written by server.sh).
-- Every control call raises a Lua error if it fails.

local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local M = {}

-- JSON null, e.g. okta.config{ token_type = okta.null } (false works too).
M.null = cjson.null

local function ports()
  local file = os.getenv("LUSIDAUTH_FAKE_OKTA_PORTS")
  if not file or file == "" then
    error("LUSIDAUTH_FAKE_OKTA_PORTS is not set; start the server with: "
      .. 'eval "$(spec/support/server.sh start DIR)"', 0)
  end
  local f, err = io.open(file, "r")
  if not f then error("cannot read the fake Okta port file: " .. tostring(err), 0) end
  local t = {}
  for line in f:lines() do
    local name, port = line:match("^(%S+) (%d+)")
    if name then t[name] = tonumber(port) end
  end
  f:close()
  return t
end

-- Port of a listener (default "http").
function M.port(name)
  name = name or "http"
  local port = ports()[name]
  if not port then error("the fake Okta has no listener named " .. name, 2) end
  return port
end

-- Base URL of a listener; listeners named https* use https. host defaults to 127.0.0.1.
function M.url(name, host)
  name = name or "http"
  local scheme = name:match("^https") and "https" or "http"
  return scheme .. "://" .. (host or "127.0.0.1") .. ":" .. M.port(name)
end

function M.token_url(name, host)
  return M.url(name, host) .. "/oauth2/default/v1/token"
end

-- The fake LUSID API base (ends in /api, like real LUSID URLs).
function M.api_url(name, host)
  return M.url(name, host) .. "/api"
end

local function urlencode(s)
  return (s:gsub("[^%w%-._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function call(method, path, body)
  local chunks = {}
  local req = {
    url = M.url("http") .. path,
    method = method,
    sink = ltn12.sink.table(chunks),
    headers = { accept = "application/json" },
  }
  if body then
    req.source = ltn12.source.string(body)
    req.headers["content-type"] = "application/json"
    req.headers["content-length"] = tostring(#body)
  end
  local ok, code = http.request(req)
  local what = "fake Okta " .. method .. " " .. path:gsub("%?.*", "")
  if not ok then error(what .. " failed: " .. tostring(code), 3) end
  local text = table.concat(chunks)
  if code ~= 200 then error(what .. " answered " .. tostring(code) .. ": " .. text, 3) end
  local decoded, value = pcall(cjson.decode, text)
  if not decoded then error(what .. " sent bad JSON: " .. tostring(value), 3) end
  return value
end

-- Clears tokens, counters, log and scripts; restores the default config. It first collects the
-- garbage, so that the clients of earlier tests release lusidauth's process-wide token entries
-- (tokens of the server's previous life would otherwise be served to same-identity clients).
function M.reset()
  collectgarbage()
  collectgarbage()
  return call("POST", "/_control/reset", "{}")
end

-- Merges keys into the config: expires_in, rotate, grace, issue_refresh,
-- token_type, users, clients.
function M.config(tbl)
  return call("POST", "/_control/config", cjson.encode(tbl or {}))
end

-- Queues scripted responses: a list of entries, or one entry.
function M.script(list)
  if next(list) == nil then
    return call("POST", "/_control/script", "[]")
  end
  if list[1] == nil then list = { list } end
  return call("POST", "/_control/script", cjson.encode(list))
end

-- { requests, grants = { password, refresh_token, client_credentials, other },
--   reuse, api_requests, scripts_left }
function M.stats()
  return call("GET", "/_control/stats")
end

-- { valid = true, expires_in = s } or { valid = false, reason = "expired"|"unknown"|"revoked" }
function M.validate(token)
  return call("GET", "/_control/validate?token=" .. urlencode(token))
end

-- { refresh_token = rt } or { access_token = at } revokes that chain; { all = true } everything.
function M.revoke(tbl)
  return call("POST", "/_control/revoke", cjson.encode(tbl))
end

-- Every access token issued so far is now expired.
function M.expire_all()
  return call("POST", "/_control/expire", "{}")
end

-- The token endpoint's request log: list of
-- { grant_type, form, basic = { id, secret } or nil, headers, at, method, listener }.
function M.requests()
  return call("GET", "/_control/requests")
end

return M

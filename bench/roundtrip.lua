-- roundtrip.lua - microseconds per refresh-grant round trip to the static token endpoint.
--
--   lua5.4 bench/roundtrip.lua lusidauth|luasocket URL N CLIENT_ID CLIENT_SECRET
-- lusidauth: c:refresh() on one client (its own connection, kept alive by libcurl).
-- luasocket: socket.http.request (a new connection each time) + cjson.decode, what a pure-Lua
-- client would do. Each request is timed with socket.gettime(); prints the median.
local which, url, n, id, secret = arg[1], arg[2], tonumber(arg[3]), arg[4], arg[5]
assert(which and url and n and id and secret, "usage: roundtrip.lua lusidauth|luasocket URL N ID SECRET")
local socket = require "socket"
local gettime = socket.gettime

local function median(t)
  table.sort(t)
  return t[#t // 2 + 1]
end

local function check(tok, err)
  if type(tok) ~= "string" or #tok < 20 then
    io.stderr:write("roundtrip: ", which, ": no token: ", tostring(err), "\n")
    os.exit(1)
  end
end

local once -- one refresh grant; returns the access token or nil, err
if which == "lusidauth" then
  local lusidauth = require "lusidauth"
  local c = lusidauth.new_refresh_token {
    token_url = url, client_id = id, client_secret = secret, refresh_token = "rt.x",
    shared = false, retries = 0,
  }
  once = function() return c:refresh() end
elseif which == "luasocket" then
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local mime = require "mime"
  local cjson = require "cjson"
  local auth = "Basic " .. mime.b64(id .. ":" .. secret)
  local form = "grant_type=refresh_token&refresh_token=rt.x"
  once = function()
    local parts = {}
    local ok, code = http.request {
      url = url, method = "POST", sink = ltn12.sink.table(parts),
      source = ltn12.source.string(form),
      headers = { authorization = auth, ["content-type"] = "application/x-www-form-urlencoded",
                  ["content-length"] = tostring(#form) },
    }
    if not ok or code ~= 200 then return nil, tostring(code) end
    return cjson.decode(table.concat(parts)).access_token
  end
else
  error("unknown client " .. which)
end

check(once()) -- the first answer must carry a token (also warms the connection up)
local us = {}
for i = 1, n do
  local t0 = gettime()
  local tok, err = once()
  us[i] = (gettime() - t0) * 1e6
  if not tok then check(tok, err) end
end
print(("RESULT roundtrip %s %.2f us"):format(which, median(us)))

-- lusidauth.headers: the headers of a LUSID API call, checked so that no value can inject a header.
local core = require "lusidauth.core"

local M = {}

local NAME = "^[A-Za-z0-9!#$%%&'*+%-.^_`|~]+$" -- an HTTP token (RFC 9110 tchar)

local function fail(fmt, ...)
  local msg = "lusidauth.headers: " .. fmt:format(...)
  return nil, setmetatable({ kind = "config", message = msg, retryable = false }, core.error_mt)
end

-- A header name fit to print: bytes outside printable ASCII as \ddd.
local function show(name)
  return (name:gsub("[^\32-\126]", function(c) return "\\" .. c:byte() end))
end

-- true | nil, err. A value may hold tabs and bytes >= 128, no other control character.
local function check(name, value)
  if not name:match(NAME) then return fail("header name '%s' is not an HTTP token", show(name)) end
  if not core.value_ok(value) then
    return fail("header '%s' refused: its value contains a control character", name)
  end
  return true
end

-- Names sorted case-insensitively (then exactly, for names equal but for case).
local function sorted_names(t)
  local names = {}
  for k in pairs(t) do names[#names + 1] = k end
  table.sort(names, function(a, b)
    local la, lb = a:lower(), b:lower()
    if la ~= lb then return la < lb end
    return a < b
  end)
  return names
end

local BUILD_OPTS = { token = true, app_name = true, correlation_id = true, version = true, extra = true }

local function optional_string(o, k)
  local v = o[k]
  if v ~= nil and type(v) ~= "string" then
    error(("lusidauth.headers.build: '%s' must be a string, not %s"):format(k, type(v)), 3)
  end
  if v == "" then return nil end
  return v
end

--- headers.build{ token =, app_name =, correlation_id =, version =, extra = } --> headers | nil, err
function M.build(o)
  if type(o) ~= "table" then error("lusidauth.headers.build: expected a table, got " .. type(o), 2) end
  for k in pairs(o) do
    if not BUILD_OPTS[k] then error("lusidauth.headers.build: unknown field '" .. tostring(k) .. "'", 2) end
  end
  if type(o.token) ~= "string" then
    error("lusidauth.headers.build: 'token' must be a string, not " .. type(o.token), 2)
  end
  local app, cid = optional_string(o, "app_name"), optional_string(o, "correlation_id")
  local version = optional_string(o, "version") or core._VERSION
  local extra = o.extra
  if extra ~= nil and type(extra) ~= "table" then
    error("lusidauth.headers.build: 'extra' must be a table, not " .. type(extra), 2)
  end
  if not core.token_ok(o.token) then
    return fail("header 'Authorization' refused: the token is empty or holds a space or control character")
  end

  local ok, err = check("X-LUSID-SDK-Version", version) -- before User-Agent, which repeats it
  if not ok then return nil, err end
  local h = {
    Authorization = "Bearer " .. o.token,
    ["X-LUSID-Application"] = app,
    ["X-LUSID-SDK-Language"] = "Lua",
    ["X-LUSID-SDK-Version"] = version,
    ["User-Agent"] = "lusidauth/" .. version,
    CorrelationId = cid,
    Accept = "application/json",
  }
  if extra then
    local seen = {}
    for k, v in pairs(extra) do
      if type(k) ~= "string" then
        error("lusidauth.headers.build: extra header names must be strings, not " .. type(k), 2)
      end
      if v ~= false and type(v) ~= "string" then
        error(("lusidauth.headers.build: extra['%s'] must be a string or false, not %s"):format(show(k), type(v)), 2)
      end
      local lk = k:lower()
      if seen[lk] then
        error(("lusidauth.headers.build: extra has both '%s' and '%s'"):format(show(seen[lk]), show(k)), 2)
      end
      seen[lk] = k
    end
    for lk, k in pairs(seen) do
      if lk ~= "authorization" then -- the token's header is never replaced
        for name in pairs(h) do
          if name:lower() == lk then
            h[name] = nil
            break
          end
        end
        if extra[k] then h[k] = extra[k] end -- false removes the header
      end
    end
  end
  for _, name in ipairs(sorted_names(h)) do
    if name ~= "Authorization" then -- "Bearer " and a token that passed token_ok above
      ok, err = check(name, h[name])
      if not ok then return nil, err end
    end
  end
  return h
end

--- headers.lines(t) --> { "Name: value", ... } sorted by name; raises on a bad header.
function M.lines(t)
  if type(t) ~= "table" then error("lusidauth.headers.lines: expected a table, got " .. type(t), 2) end
  for k, v in pairs(t) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error(("lusidauth.headers.lines: headers must be string = string, not %s = %s"):format(type(k), type(v)), 2)
    end
  end
  local out = {}
  for i, name in ipairs(sorted_names(t)) do
    local ok, err = check(name, t[name])
    if not ok then error(err.message, 2) end
    out[i] = name .. ": " .. t[name]
  end
  return out
end

return M

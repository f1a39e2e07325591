-- lusidauth.config: options for lusidauth.new from a LUSID SDK secrets.json, the FBN_* environment
-- variables and explicit overrides. Per key: overrides > environment > file.
local cjson = require "cjson.safe"
local core = require "lusidauth.core"

local M = {}

-- One row per option: its keys in secrets.json (under "api", or "proxy" for section = "proxy";
-- the first one present wins), its FBN_* variables (the first one set wins), and its kind:
-- a string unless "ms" (milliseconds in, seconds out; 0 = not set) or "count".
local MAP = {
  { opt = "token_url", file = { "tokenUrl" }, env = { "FBN_TOKEN_URL" }, okta = true },
  { opt = "api_url", file = { "lusidUrl", "apiUrl", "baseUrl" }, env = { "FBN_LUSID_URL", "FBN_LUSID_API_URL" } },
  { opt = "username", file = { "username" }, env = { "FBN_USERNAME" }, okta = true },
  { opt = "password", file = { "password" }, env = { "FBN_PASSWORD" }, okta = true },
  { opt = "client_id", file = { "clientId" }, env = { "FBN_CLIENT_ID" }, okta = true },
  { opt = "client_secret", file = { "clientSecret" }, env = { "FBN_CLIENT_SECRET" }, okta = true },
  { opt = "app_name", file = { "applicationName" }, env = { "FBN_APP_NAME" } },
  { opt = "ca_file", file = { "clientCertificate" }, env = { "FBN_CLIENT_CERTIFICATE" } },
  { opt = "access_token", file = { "accessToken", "personalAccessToken" }, env = { "FBN_ACCESS_TOKEN" },
    env_file = "FBN_ACCESS_TOKEN_FILE" },
  { opt = "timeout", file = { "totalTimeoutMs" }, env = { "FBN_TOTAL_TIMEOUT_MS" }, kind = "ms" },
  { opt = "connect_timeout", file = { "connectTimeoutMs" }, env = { "FBN_CONNECT_TIMEOUT_MS" }, kind = "ms" },
  { opt = "read_timeout", file = { "readTimeoutMs" }, env = { "FBN_READ_TIMEOUT_MS" }, kind = "ms" },
  { opt = "retries", file = { "rateLimitRetries" }, env = { "FBN_RATE_LIMIT_RETRIES" }, kind = "count" },
  { opt = "correlation_id", file = { "correlationId" }, env = { "FBN_CORRELATION_ID" } },
  { opt = "proxy", section = "proxy", file = { "address" }, env = { "FBN_PROXY_ADDRESS" } },
  { opt = "proxy_username", section = "proxy", file = { "username" }, env = { "FBN_PROXY_USERNAME" } },
  { opt = "proxy_password", section = "proxy", file = { "password" }, env = { "FBN_PROXY_PASSWORD" } },
}
M.mapping = MAP -- read-only: for docs and the check command

local MS_MAX, COUNT_MAX = 3600000, 100 -- the core's limits: 3600 s, 100 retries
local OKTA = { refresh_token = true } -- dropped when a PAT is present, with the okta rows
for _, row in ipairs(MAP) do
  if row.okta then OKTA[row.opt] = true end
end

local function fail(fmt, ...)
  local msg = "lusidauth.config: " .. fmt:format(...)
  return nil, setmetatable({ kind = "config", message = msg, retryable = false }, core.error_mt)
end

-- The same, for functions that return value, origin | nil, nil, err.
local function fail3(...)
  local _, err = fail(...)
  return nil, nil, err
end

-- "a string", "an object", "null": for "must be X, not Y".
local function jtype(v)
  if v == cjson.null then return "null" end
  local t = type(v)
  if t == "table" then return v[1] ~= nil and "an array" or "an object" end
  return "a " .. t
end

local function is_object(v)
  return type(v) == "table" and v[1] == nil
end

-- A number from the file or the environment, checked and converted, or nil when 0 means unset.
local function number_value(row, n, where)
  if row.kind == "ms" then
    if not (n == 0 or (n >= 1 and n <= MS_MAX)) then
      return nil, ("%s must be 0 (not set) or from 1 to %d milliseconds"):format(where, MS_MAX)
    end
    if n == 0 then return nil end
    return n / 1000
  end
  if not (n >= 0 and n <= COUNT_MAX and n % 1 == 0) then
    return nil, ("%s must be a whole number from 0 to %d"):format(where, COUNT_MAX)
  end
  return n
end

-- The row's value from a section of the file: value, key path | nil | nil, nil, err.
local function from_file(row, section, prefix, path)
  if section == nil then return nil end
  for _, key in ipairs(row.file) do
    local v, where = section[key], prefix .. key
    if v ~= nil and v ~= cjson.null and v ~= "" then
      if row.kind then
        if type(v) ~= "number" then return fail3("%s must be a number, not %s (in %s)", where, jtype(v), path) end
        local n, err = number_value(row, v, where)
        if err then return fail3("%s (in %s)", err, path) end
        if n ~= nil then return n, where end
      else
        if type(v) ~= "string" then return fail3("%s must be a string, not %s (in %s)", where, jtype(v), path) end
        return v, where
      end
    end
  end
  return nil
end

local function read_token_file(name, path)
  local f, msg = io.open(path, "rb")
  if not f then return fail("cannot open %s (%s)", name, msg) end
  local text, rerr = f:read("*a")
  f:close()
  if not text then return fail("cannot read %s (%s: %s)", name, path, tostring(rerr)) end
  text = text:match("^%s*(.-)%s*$")
  if text == "" then return fail("%s (%s) is empty", name, path) end
  return text
end

-- The row's value from the environment: value, variable | nil | nil, nil, err.
local function from_env(row, getenv)
  for _, name in ipairs(row.env) do
    local s = getenv(name)
    if s ~= nil then
      if not row.kind then return s, name end
      local pat = row.kind == "ms" and "^%d+%.?%d*$" or "^%d+$"
      if not s:match(pat) then
        return fail3("%s must be a %s", name, row.kind == "ms" and "number of milliseconds" or "whole number")
      end
      local n, err = number_value(row, tonumber(s), name)
      if err then return fail3("%s", err) end
      if n ~= nil then return n, name end
    end
  end
  if row.env_file then
    local path = getenv(row.env_file)
    if path ~= nil then
      local v, err = read_token_file(row.env_file, path)
      if not v then return nil, nil, err end
      return v, row.env_file
    end
  end
  return nil
end

-- Reads and decodes the secrets file: doc | nil (default path absent) | nil, err.
local function read_secrets(path, explicit)
  local f, msg, code = io.open(path, "rb")
  if not f then
    if not explicit and code == 2 then return nil end -- ENOENT: no default file is fine
    return fail("cannot open secrets file %s", msg)
  end
  local text, rerr = f:read("*a")
  f:close()
  if not text then return fail("cannot read secrets file %s: %s", path, tostring(rerr)) end
  local doc, jerr = cjson.decode(text)
  if doc == nil then return fail("%s is not valid JSON: %s", path, tostring(jerr)) end
  if not is_object(doc) then return fail("%s must hold a JSON object, not %s", path, jtype(doc)) end
  return doc
end

-- The "api" and "proxy" sections of the document and their key prefixes, for either shape.
local function sections(doc, path, profile, profile_from)
  if doc.profiles == nil or doc.profiles == cjson.null then
    if profile_from == "load_opts.profile" then
      return fail("profile %q requested but %s has no \"profiles\"", profile, path)
    end
    for _, s in ipairs { "api", "proxy" } do
      if doc[s] ~= nil and doc[s] ~= cjson.null and not is_object(doc[s]) then
        return fail("%q must be an object, not %s (in %s)", s, jtype(doc[s]), path)
      end
    end
    local api, proxy = doc.api, doc.proxy
    if api == cjson.null then api = nil end
    if proxy == cjson.null then proxy = nil end
    return { api = api, proxy = proxy, api_prefix = "api.", proxy_prefix = "proxy." }
  end
  if not is_object(doc.profiles) then
    return fail("\"profiles\" must be an object, not %s (in %s)", jtype(doc.profiles), path)
  end
  local p = doc.profiles[profile]
  if p == nil or p == cjson.null then
    local names = {}
    for k in pairs(doc.profiles) do names[#names + 1] = tostring(k) end
    table.sort(names)
    return fail("profile %q%s not found in %s (profiles: %s)", profile,
      profile_from and " (from " .. profile_from .. ")" or "", path,
      #names > 0 and table.concat(names, ", ") or "none")
  end
  local at = "profiles." .. profile
  if not is_object(p) then return fail("%q must be an object, not %s (in %s)", at, jtype(p), path) end
  if p.proxy ~= nil and p.proxy ~= cjson.null and not is_object(p.proxy) then
    return fail("%q must be an object, not %s (in %s)", at .. ".proxy", jtype(p.proxy), path)
  end
  local proxy = p.proxy
  if proxy == cjson.null then proxy = nil end
  return { api = p, proxy = proxy, api_prefix = at .. ".", proxy_prefix = at .. ".proxy.", profile = profile }
end

local LOAD_OPTS = { secrets = true, profile = true, env = true, overrides = true }

local function check_load_opts(o)
  if type(o) ~= "table" then
    error("lusidauth.config.load: expected a table of load options, got " .. type(o), 3)
  end
  for k in pairs(o) do
    if not LOAD_OPTS[k] then error("lusidauth.config.load: unknown load option '" .. tostring(k) .. "'", 3) end
  end
  local s = o.secrets
  if not (s == nil or s == false or (type(s) == "string" and s ~= "")) then
    error("lusidauth.config.load: 'secrets' must be a path or false, not " .. (s == "" and "empty" or type(s)), 3)
  end
  if o.profile ~= nil and (type(o.profile) ~= "string" or o.profile == "") then
    error("lusidauth.config.load: 'profile' must be a non-empty string, not " .. type(o.profile), 3)
  end
  local e = o.env
  if not (e == nil or type(e) == "boolean" or type(e) == "table") then
    error("lusidauth.config.load: 'env' must be a boolean or a table, not " .. type(e), 3)
  end
  if type(e) == "table" then
    for k, v in pairs(e) do
      if type(v) ~= "string" then
        error("lusidauth.config.load: env." .. tostring(k) .. " must be a string, not " .. type(v), 3)
      end
    end
  end
  if o.overrides ~= nil then
    if type(o.overrides) ~= "table" then
      error("lusidauth.config.load: 'overrides' must be a table, not " .. type(o.overrides), 3)
    end
    for k in pairs(o.overrides) do
      if type(k) ~= "string" then
        error("lusidauth.config.load: override names must be strings, not " .. type(k), 3)
      end
    end
  end
end

local function env_names(getenv)
  local names = {}
  for _, row in ipairs(MAP) do
    for _, n in ipairs(row.env) do
      if getenv(n) ~= nil then names[#names + 1] = n end
    end
    if row.env_file and getenv(row.env_file) ~= nil then names[#names + 1] = row.env_file end
  end
  if getenv("FBN_PROFILE") ~= nil then names[#names + 1] = "FBN_PROFILE" end
  table.sort(names)
  return names
end

-- "set api.tokenUrl in /p/secrets.json, FBN_TOKEN_URL, or overrides.token_url (read: ...)"
local function where_to_set(row, sec, path, read)
  local keys = {}
  for i, k in ipairs(row.file) do
    keys[i] = ((row.section == "proxy") and sec.proxy_prefix or sec.api_prefix) .. k
  end
  local list = { table.concat(keys, " or ") .. " in " .. (path or "secrets.json") }
  for _, n in ipairs(row.env) do list[#list + 1] = n end
  if row.env_file then list[#list + 1] = row.env_file end
  return ("set %s, or overrides.%s (read: %s)"):format(table.concat(list, ", "), row.opt,
    #read > 0 and table.concat(read, ", ") or "nothing")
end

--- config.load(load_opts) --> opts, report | nil, err
function M.load(load_opts)
  check_load_opts(load_opts)
  local env = load_opts.env
  if env == nil then env = true end
  local raw = (env == true and os.getenv) or (env == false and function() return nil end)
    or function(k) return env[k] end
  local function getenv(k)
    local v = raw(k)
    if v == "" then return nil end -- an empty variable counts as unset
    return v
  end

  local report = { sources = {}, keys = {}, origins = {}, ignored = {}, warnings = {} }
  local read = {}
  local path, doc = load_opts.secrets, nil
  if path == nil then path = "secrets.json" end
  local profile, profile_from = load_opts.profile, "load_opts.profile"
  if profile == nil then profile, profile_from = getenv("FBN_PROFILE"), "FBN_PROFILE" end
  if profile == nil then profile, profile_from = "default", nil end

  local sec = { api_prefix = "api.", proxy_prefix = "proxy." }
  if path then
    local err
    doc, err = read_secrets(path, load_opts.secrets ~= nil)
    if err then return nil, err end
    if doc then
      sec, err = sections(doc, path, profile, profile_from)
      if not sec then return nil, err end
      report.sources[#report.sources + 1] = { kind = "file", path = path, profile = sec.profile }
      report.profile = sec.profile
      read[#read + 1] = "secrets.json at " .. path .. (sec.profile and " (profile " .. sec.profile .. ")" or "")
    end
  end
  if env ~= false then
    report.sources[#report.sources + 1] = { kind = "env", names = env_names(getenv) }
    read[#read + 1] = "environment"
  end
  local overrides = load_opts.overrides
  if overrides then
    report.sources[#report.sources + 1] = { kind = "overrides" }
    read[#read + 1] = "overrides"
  end

  local opts = {}
  for _, row in ipairs(MAP) do
    local section, prefix = sec.api, sec.api_prefix
    if row.section == "proxy" then section, prefix = sec.proxy, sec.proxy_prefix end
    local v, origin, err = from_file(row, section, prefix, path)
    if err then return nil, err end
    if v ~= nil then opts[row.opt], report.keys[row.opt], report.origins[row.opt] = v, "file", origin end
    v, origin, err = from_env(row, getenv)
    if err then return nil, err end
    if v ~= nil then opts[row.opt], report.keys[row.opt], report.origins[row.opt] = v, "env", origin end
  end
  for k, v in pairs(overrides or {}) do
    opts[k], report.keys[k], report.origins[k] = v, "overrides", "overrides." .. k
  end

  if opts.access_token ~= nil then -- a PAT wins: Okta credentials are dropped
    for k in pairs(OKTA) do
      if opts[k] ~= nil then
        report.ignored[#report.ignored + 1] = k
        opts[k], report.keys[k], report.origins[k] = nil, nil, nil
      end
    end
    table.sort(report.ignored)
    if opts.api_url == nil then
      report.warnings[1] = "no api_url: the token is usable, but LUSID API calls need the API URL "
        .. "(api.lusidUrl or FBN_LUSID_URL)"
    end
    report.grant = "pat"
    return opts, report
  end

  local need = { "token_url", "client_id", "client_secret" }
  if opts.password ~= nil then
    need[#need + 1] = "username"
  elseif opts.username ~= nil and opts.refresh_token == nil then
    need[#need + 1] = "password"
  end
  for _, key in ipairs(need) do
    if opts[key] == nil then
      for _, row in ipairs(MAP) do
        if row.opt == key then return fail("missing %s: %s", key, where_to_set(row, sec, doc and path, read)) end
      end
    end
  end
  if opts.refresh_token ~= nil and opts.password == nil then
    report.grant = "refresh_token"
  elseif opts.password ~= nil then
    report.grant = "password"
  else
    report.grant = "client_credentials"
  end
  return opts, report
end

return M

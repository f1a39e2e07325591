-- lusidauth: OAuth 2.0 tokens for the LUSID API (Okta password, refresh-token and
-- client-credentials grants, or a personal access token), cached in C.
local core = require "lusidauth.core"

local M = {
  _VERSION = core._VERSION,
  core = core,
  config = require "lusidauth.config",
  headers = require "lusidauth.headers",
  request_module = require "lusidauth.request",
}

-- Constructor errors are raised at the caller's line, with the message the core gives.
local function build(grant, opts)
  local ok, client = pcall(core.new, grant, opts)
  if not ok then error(client, 3) end
  return client
end

local function check_opts(fname, opts)
  if type(opts) ~= "table" then
    error(("lusidauth.%s: expected an options table, got %s"):format(fname, type(opts)), 3)
  end
end

--- The grant new() infers: a PAT, a stored refresh token, a password login, or client credentials.
function M.infer_grant(opts)
  if opts.access_token ~= nil then return "pat" end
  if opts.refresh_token ~= nil and opts.password == nil then return "refresh_token" end
  if opts.username ~= nil or opts.password ~= nil then return "password" end
  return "client_credentials"
end

-- The table constructors: the named grant, or (grant == nil) the one new() infers.
local function constructor(name, grant)
  return function(opts)
    check_opts(name, opts)
    local client = build(grant or M.infer_grant(opts), opts)
    return client -- not a tail call: the error level counts this frame
  end
end

M.new = constructor("new")
M.new_password = constructor("new_password", "password")
M.new_refresh_token = constructor("new_refresh_token", "refresh_token")
M.new_client_credentials = constructor("new_client_credentials", "client_credentials")

-- new_pat("token") or new_pat{ access_token = "token", ... }
function M.new_pat(token_or_opts)
  local opts = token_or_opts
  if type(opts) == "string" then
    opts = { access_token = opts }
  elseif type(opts) ~= "table" then
    error("lusidauth.new_pat: expected a token string or an options table, got " .. type(opts), 2)
  end
  local client = build("pat", opts)
  return client -- not a tail call: the error level counts this frame
end

--- Whether v is an error object returned by lusidauth.
function M.is_error(v)
  return type(v) == "table" and getmetatable(v) ~= nil and getmetatable(v) == core.error_mt
end

-- lusidauth.from_config(load_opts): a client from secrets.json, FBN_* variables and overrides.
function M.from_config(load_opts)
  local opts, err = M.config.load(load_opts)
  if not opts then return nil, err end
  local client = build(M.infer_grant(opts), opts)
  return client
end

-- c:headers([extra]) --> { Authorization = "Bearer …", X-LUSID-* …, … } | nil, err
function core.methods.headers(self, extra)
  if extra ~= nil and type(extra) ~= "table" then
    error("lusidauth: headers(extra) expects a table, got " .. type(extra), 2)
  end
  local token, err = self:token()
  if not token then return nil, err end
  local info = core.info(self)
  return M.headers.build {
    token = token,
    app_name = info.app_name,
    correlation_id = info.correlation_id,
    version = core._VERSION,
    extra = extra,
  }
end

-- c:request{ method, path | url, query, json | body, headers } --> response | nil, err
function core.methods.request(self, req)
  core.info(self) -- raises on a closed client or a non-client
  return M.request_module.request(self, req)
end

return M

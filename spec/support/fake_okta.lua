-- A fake Okta token endpoint and fake LUSID API for the lusidauth specs.
--
--   lua5.4 spec/support/fake_okta.lua --listen NAME:SCHEME:PORT[:CERT:KEY] ... --portfile FILE
--
-- Listens on 127.0.0.1 only. All listeners share one state, driven through
-- /_control/*. Connections are served concurrently: each one is a coroutine,
-- scheduled over socket.select with non-blocking sockets. Runs on Lua 5.1-5.4
-- and LuaJIT (no goto, no integer division, no bit operators, and no yield
-- inside pcall, which 5.1 cannot do).

local socket = require "socket"
local cjson = require "cjson"

local ssl -- LuaSec, loaded only for https listeners

io.stdout:setvbuf("line")

local now = socket.gettime

local function log(fmt, ...)
  io.stdout:write(string.format("%.3f ", now()), string.format(fmt, ...), "\n")
end

-- Integral numbers without ".0" (Lua 5.3+ floats from JSON print as "3.0").
local function numstr(n)
  if n == math.floor(n) and n > -1e15 and n < 1e15 then
    return string.format("%d", n)
  end
  return tostring(n)
end

---------------------------------------------------------------------------
-- Random tokens
---------------------------------------------------------------------------

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local urandom = io.open("/dev/urandom", "rb")
if not urandom then
  math.randomseed(math.floor(now() * 1000) % 2147483647)
end

-- n url-safe characters, 6 random bits each.
local function random_string(n)
  local bytes = urandom and urandom:read(n)
  local out = {}
  for i = 1, n do
    local b = bytes and bytes:byte(i) or math.random(0, 255)
    local k = b % 64 + 1
    out[i] = ALPHABET:sub(k, k)
  end
  return table.concat(out)
end

---------------------------------------------------------------------------
-- Encodings
---------------------------------------------------------------------------

local function form_decode(s)
  s = s:gsub("+", " ")
  s = s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  return s
end

-- Returns the decoded table and the name of the first repeated key, if any.
local function parse_form(s)
  local t, dup = {}, nil
  for pair in s:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, "" end
    k, v = form_decode(k), form_decode(v)
    if t[k] ~= nil and not dup then dup = k end
    t[k] = v
  end
  return t, dup
end

local B64 = {}
do
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, 64 do B64[chars:byte(i)] = i - 1 end
end
local POW2 = { [0] = 1, 2, 4, 8, 16, 32, 64, 128 }

-- Strict standard base64 decoding; nil on any invalid input.
local function b64decode(s)
  if #s % 4 ~= 0 then return nil end
  local body = s:gsub("==?$", "")
  if #s - #body > 2 then return nil end
  local out, acc, bits = {}, 0, 0
  for i = 1, #body do
    local v = B64[body:byte(i)]
    if not v then return nil end
    acc = acc * 64 + v
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      local byte = math.floor(acc / POW2[bits])
      out[#out + 1] = string.char(byte)
      acc = acc - byte * POW2[bits]
    end
  end
  return table.concat(out)
end

local function json_error(status, code, description, headers)
  return {
    status = status,
    headers = headers or {},
    body = cjson.encode({ error = code, error_description = description }),
    json = true,
  }
end

local function json_res(status, value, headers)
  return { status = status, headers = headers or {}, body = cjson.encode(value), json = true }
end

-- cjson has no empty-array value in every version: encode arrays ourselves.
local function encode_array(list)
  if #list == 0 then return "[]" end
  return cjson.encode(list)
end

local function is_array(t)
  return type(t) == "table" and (t[1] ~= nil or next(t) == nil)
end

---------------------------------------------------------------------------
-- State
---------------------------------------------------------------------------

local ALLOWED_SCOPES = {
  openid = true, client = true, groups = true, offline_access = true,
  profile = true, email = true,
}

local cfg, state

local function reset()
  cfg = {
    clients = { ["lusid-client"] = "p+w%d:x" },
    users = { ["alice@example.com"] = "correct horse" },
    expires_in = 3600,  -- number, string (sent verbatim) or false (omitted)
    rotate = true,
    grace = 0,
    issue_refresh = true,
    token_type = "Bearer", -- false: omitted
  }
  state = {
    access = {},   -- token -> { chain, exp }
    refresh = {},  -- token -> { chain, client, scope, used_at }
    chains = {},   -- list of { client, revoked }
    requests = 0,
    grants = { password = 0, refresh_token = 0, client_credentials = 0, other = 0 },
    reuse = 0,
    api_requests = 0,
    log = {},
    scripts = {},  -- FIFO of script entries, each with .left
  }
end
reset()

local function new_chain(client)
  local chain = { client = client, revoked = false }
  state.chains[#state.chains + 1] = chain
  return chain
end

-- "valid", or the reason the access token is not.
local function access_status(token)
  local rec = token and state.access[token]
  if not rec then return "unknown" end
  if rec.chain.revoked then return "revoked" end
  if now() >= rec.exp then return "expired" end
  return "valid", rec
end

local function within_grace(rec)
  return rec.used_at ~= nil and now() - rec.used_at < cfg.grace
end

-- Issues an access token (and maybe a refresh token) and builds the response.
local function issue(chain, scope, refresh_token)
  local at = "at." .. random_string(40)
  local lifetime = tonumber(cfg.expires_in) or 3600
  state.access[at] = { chain = chain, exp = now() + lifetime }
  local body = {
    access_token = at,
    scope = scope,
    id_token = "ignored.jwt.value",
    refresh_token = refresh_token,
  }
  if cfg.token_type then body.token_type = cfg.token_type end
  if cfg.expires_in then body.expires_in = cfg.expires_in end
  return json_res(200, body, { { "Cache-Control", "no-store" }, { "Pragma", "no-cache" } })
end

local function new_refresh(chain, client, scope)
  local rt = "rt." .. random_string(40)
  state.refresh[rt] = { chain = chain, client = client, scope = scope }
  return rt
end

-- Splits a scope string; nil and the bad token if one is not allowed.
local function parse_scope(s)
  local set, list = {}, {}
  for tok in s:gmatch("%S+") do
    if not ALLOWED_SCOPES[tok] then return nil, tok end
    if not set[tok] then
      set[tok] = true
      list[#list + 1] = tok
    end
  end
  return set, list
end

---------------------------------------------------------------------------
-- Scripting
---------------------------------------------------------------------------

-- Pops (or uses up one serve of) the head script entry if it applies.
local function take_script(endpoint, grant)
  local head = state.scripts[1]
  if not head or head.endpoint ~= endpoint then return nil end
  if endpoint == "token" and head.grant and head.grant ~= grant then return nil end
  head.left = head.left - 1
  if head.left <= 0 then table.remove(state.scripts, 1) end
  return head
end

local function scripted_response(entry, normal)
  if entry.pass then
    return { delay = entry.delay, pass = normal, scripted = "pass" }
  end
  local body = entry.body or ""
  local headers, have_ct = {}, false
  for name, value in pairs(entry.headers or {}) do
    if name:lower() == "content-type" then have_ct = true end
    local values = type(value) == "table" and value or { value }
    for _, v in ipairs(values) do
      headers[#headers + 1] = { name, type(v) == "number" and numstr(v) or tostring(v) }
    end
  end
  table.sort(headers, function(a, b) return a[1] < b[1] end)
  if not have_ct then
    if body:match("^%s*[{%[]") then
      headers[#headers + 1] = { "Content-Type", "application/json" }
    elseif body:match("^%s*<") then
      headers[#headers + 1] = { "Content-Type", "text/html" }
    end
  end
  return {
    status = entry.status or 200,
    headers = headers,
    body = body,
    delay = entry.delay,
    close_after = entry.close_after,
    raw = entry.raw,
    hang = entry.hang,
    scripted = "script",
  }
end

local SCRIPT_KEYS = {
  status = "number", headers = "table", body = "any", delay = "number",
  close_after = "number", raw = "string", times = "number", grant = "string",
  hang = "boolean", pass = "boolean", endpoint = "string",
}

-- Validates one entry; returns the normalized copy or nil, message.
local function check_script_entry(e, i)
  if type(e) ~= "table" or is_array(e) and next(e) ~= nil then
    return nil, "entry " .. i .. " is not an object"
  end
  local out = {}
  for k, v in pairs(e) do
    local want = SCRIPT_KEYS[k]
    if not want then return nil, "entry " .. i .. ": unknown key " .. tostring(k) end
    if v == cjson.null then v = nil end
    if v ~= nil and want ~= "any" and type(v) ~= want then
      return nil, "entry " .. i .. ": " .. k .. " must be a " .. want
    end
    out[k] = v
  end
  if out.status and (out.status ~= math.floor(out.status) or out.status < 100 or out.status > 599) then
    return nil, "entry " .. i .. ": status must be an integer 100..599"
  end
  for _, k in ipairs({ "delay", "close_after", "times" }) do
    if out[k] and out[k] < 0 then return nil, "entry " .. i .. ": " .. k .. " must be >= 0" end
  end
  if out.body ~= nil and type(out.body) ~= "string" then
    out.body = cjson.encode(out.body) -- convenience: a JSON value is sent encoded
  end
  if out.headers then
    for name, v in pairs(out.headers) do
      if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
        return nil, "entry " .. i .. ": bad header name"
      end
      local values = type(v) == "table" and v or { v }
      for _, x in ipairs(values) do
        if (type(x) ~= "string" and type(x) ~= "number") or tostring(x):find("[\r\n]") then
          return nil, "entry " .. i .. ": bad value for header " .. name
        end
      end
    end
  end
  out.endpoint = out.endpoint or "token"
  if out.endpoint ~= "token" and out.endpoint ~= "api" then
    return nil, "entry " .. i .. ": endpoint must be \"token\" or \"api\""
  end
  if out.close_after then out.close_after = math.floor(out.close_after) end
  out.left = math.floor(out.times or 1)
  if out.left < 1 then out.left = 1 end
  out.times = nil
  return out
end

---------------------------------------------------------------------------
-- Token endpoint
---------------------------------------------------------------------------

local GRANT_KEYS = { password = true, refresh_token = true, client_credentials = true }

local function invalid_grant(description)
  return json_error(400, "invalid_grant", description)
end

local function token_logic(req, form, dup)
  if req.method ~= "POST" then
    return json_error(405, "invalid_request", "The token endpoint only accepts POST.",
      { { "Allow", "POST" } })
  end
  local ctype = (req.headers["content-type"] or ""):lower()
  if not ctype:match("^application/x%-www%-form%-urlencoded") then
    return json_error(400, "invalid_request",
      "Content-Type must be application/x-www-form-urlencoded.")
  end
  if dup then
    return json_error(400, "invalid_request", "Parameter '" .. dup .. "' is repeated.")
  end
  local grant = form.grant_type
  if not grant or grant == "" then
    return json_error(400, "invalid_request", "The 'grant_type' parameter is required.")
  end

  -- Client authentication: HTTP Basic (RFC 6749 2.3.1) or body parameters.
  local auth = req.headers.authorization
  local used_basic = auth ~= nil and auth:match("^[Bb][Aa][Ss][Ii][Cc]") ~= nil
  if used_basic and (form.client_id or form.client_secret) then
    return json_error(400, "invalid_request",
      "Cannot use more than one client authentication method.")
  end
  local client_id, secret
  if used_basic then
    client_id, secret = req.basic_id, req.basic_secret
  elseif grant ~= "client_credentials" then
    client_id, secret = form.client_id, form.client_secret
  end
  if not client_id or not secret or cfg.clients[client_id] ~= secret then
    local headers = used_basic and { { "WWW-Authenticate", 'Basic realm="fake-okta"' } } or nil
    return json_error(401, "invalid_client", "Client authentication failed.", headers)
  end

  local scope_param = form.scope
  if scope_param == "" then scope_param = nil end

  if grant == "password" or grant == "client_credentials" then
    local requested = scope_param or "openid"
    local set, list = parse_scope(requested)
    if not set then
      return json_error(400, "invalid_scope",
        "One or more scopes are not configured for the authorization server resource.")
    end
    local scope = table.concat(list, " ")
    if grant == "password" then
      if not form.username or not form.password then
        return json_error(400, "invalid_request",
          "The 'username' and 'password' parameters are required.")
      end
      if cfg.users[form.username] ~= form.password then
        return invalid_grant("The credentials provided were invalid.")
      end
    end
    local chain = new_chain(client_id)
    local rt
    if grant == "password" and set.offline_access and cfg.issue_refresh then
      rt = new_refresh(chain, client_id, scope)
    end
    return issue(chain, scope, rt)
  end

  if grant == "refresh_token" then
    local token = form.refresh_token
    if not token or token == "" then
      return json_error(400, "invalid_request", "The 'refresh_token' parameter is required.")
    end
    local rec = state.refresh[token]
    if not rec or rec.chain.revoked or rec.client ~= client_id then
      return invalid_grant("The refresh token is invalid or expired.")
    end
    if rec.used_at and not within_grace(rec) then
      rec.chain.revoked = true
      state.reuse = state.reuse + 1
      return invalid_grant("The refresh token is invalid or expired.")
    end
    local scope = rec.scope
    if scope_param then
      -- May narrow the chain's scope, never widen it.
      local original, list = {}, {}
      for s in rec.scope:gmatch("%S+") do original[s] = true end
      for s in scope_param:gmatch("%S+") do
        if not original[s] then
          return json_error(400, "invalid_scope",
            "The requested scope is invalid, unknown, or malformed.")
        end
        list[#list + 1] = s
      end
      scope = table.concat(list, " ")
    end
    local rt
    if cfg.issue_refresh then
      if cfg.rotate then
        rt = new_refresh(rec.chain, client_id, rec.scope)
        rec.used_at = rec.used_at or now()
      else
        rt = token
      end
    end
    return issue(rec.chain, scope, rt)
  end

  return json_error(400, "unsupported_grant_type",
    "The authorization grant type is not supported by the authorization server.")
end

local function token_endpoint(req)
  local form, dup = parse_form(req.body or "")
  local grant = form.grant_type
  local key = GRANT_KEYS[grant] and grant or "other"
  state.requests = state.requests + 1
  state.grants[key] = state.grants[key] + 1

  -- Decode HTTP Basic once, for the log and for authentication.
  local auth = req.headers.authorization
  local b64 = auth and auth:match("^[Bb][Aa][Ss][Ii][Cc] +(%S+)%s*$")
  local decoded = b64 and b64decode(b64)
  if decoded then
    local id, secret = decoded:match("^([^:]*):(.*)$")
    if id then
      req.basic_id, req.basic_secret = form_decode(id), form_decode(secret)
    end
  end
  state.log[#state.log + 1] = {
    grant_type = grant,
    form = form,
    basic = req.basic_id and { id = req.basic_id, secret = req.basic_secret } or nil,
    headers = req.headers,
    at = now(),
    method = req.method,
    listener = req.listener,
  }
  req.note = "grant=" .. (grant and grant:gsub("[^%w_]", "?") or "-")

  local entry = take_script("token", grant)
  local function normal() return token_logic(req, form, dup) end
  if entry then return scripted_response(entry, normal) end
  return normal()
end

---------------------------------------------------------------------------
-- Fake LUSID API
---------------------------------------------------------------------------

local API_401 = {
  missing = "No bearer token was supplied.",
  unknown = "The bearer token is not recognised.",
  expired = "The bearer token has expired.",
  revoked = "The bearer token has been revoked.",
}

local function api_logic(req)
  local auth = req.headers.authorization
  local token = auth and auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +(%S+)%s*$")
  local status = token and access_status(token) or "missing"
  if status ~= "valid" then
    return json_res(401, {
      name = "Unauthorized", code = 401, title = "Unauthorized",
      detail = API_401[status], instance = req.path,
    }, { { "WWW-Authenticate", "Bearer" } })
  end
  local headers = { { "lusid-meta-requestId", random_string(16) } }
  if req.method == "GET" and req.path == "/api/api/portfolios" then
    return json_res(200, { values = {
      { id = { scope = "demo", code = "UK-EQUITY" }, displayName = "UK Equities" },
      { id = { scope = "demo", code = "US-BONDS" }, displayName = "US Bonds" },
    } }, headers)
  end
  local code = req.path:match("^/api/api/status/(%d%d%d)$")
  if code then
    code = tonumber(code)
    if code < 200 then code = 400 end
    if code >= 400 then
      -- Built by hand: errorDetails must be an empty array.
      local body = string.format(
        '{"name":"PortfolioNotFound","errorDetails":[],"code":109,'
          .. '"title":"Could not find a portfolio","detail":%s,"instance":%s}',
        cjson.encode("Fake error with status " .. code .. "."), cjson.encode(req.path))
      return { status = code, headers = headers, body = body, json = true }
    end
    if code == 204 or code == 304 then return { status = code, headers = headers, body = "" } end
    return json_res(code, { status = code }, headers)
  end
  local echo_headers = {}
  for k, v in pairs(req.headers) do
    if k ~= "authorization" then echo_headers[k] = v end
  end
  return json_res(200, {
    method = req.method,
    path = req.path,
    query = req.query or cjson.null,
    headers = echo_headers,
    body = req.has_body and req.body or cjson.null,
  }, headers)
end

local function api_endpoint(req)
  state.api_requests = state.api_requests + 1
  local entry = take_script("api")
  local function normal() return api_logic(req) end
  if entry then return scripted_response(entry, normal) end
  return normal()
end

---------------------------------------------------------------------------
-- Control API
---------------------------------------------------------------------------

local function bad(msg) return json_res(400, { ok = false, error = msg }) end
local OK = { ok = true }

local function decode_body(req)
  local ok, value = pcall(cjson.decode, req.body or "")
  if not ok then return nil, "body is not JSON: " .. tostring(value) end
  return value
end

local function string_map(t)
  if type(t) ~= "table" or (t[1] ~= nil) then return false end
  for k, v in pairs(t) do
    if type(k) ~= "string" or type(v) ~= "string" then return false end
  end
  return true
end

local function control_config(body)
  if type(body) ~= "table" or is_array(body) and next(body) ~= nil then
    return bad("config must be a JSON object")
  end
  local new = {}
  for k, v in pairs(body) do
    if v == cjson.null then v = false end
    if k == "expires_in" then
      if v ~= false and type(v) ~= "string" and (type(v) ~= "number" or v < 0) then
        return bad("expires_in must be a number >= 0, a string, or null")
      end
    elseif k == "token_type" then
      if v ~= false and type(v) ~= "string" then return bad("token_type must be a string or null") end
    elseif k == "rotate" or k == "issue_refresh" then
      if type(v) ~= "boolean" then return bad(k .. " must be a boolean") end
    elseif k == "grace" then
      if type(v) ~= "number" or v < 0 then return bad("grace must be a number >= 0") end
    elseif k == "users" or k == "clients" then
      if not string_map(v) then return bad(k .. " must be an object of strings") end
    else
      return bad("unknown config key: " .. tostring(k))
    end
    new[k] = v
  end
  for k, v in pairs(new) do cfg[k] = v end
  return json_res(200, OK)
end

local function control_script(body)
  if type(body) ~= "table" then return bad("script must be a JSON array of entries") end
  if not is_array(body) then body = { body } end
  local entries = {}
  for i, e in ipairs(body) do
    local entry, err = check_script_entry(e, i)
    if not entry then return bad(err) end
    entries[i] = entry
  end
  for _, e in ipairs(entries) do state.scripts[#state.scripts + 1] = e end
  return json_res(200, { ok = true, queued = #state.scripts })
end

local function scripts_left()
  local n = 0
  for _, e in ipairs(state.scripts) do n = n + e.left end
  return n
end

local function control_validate(req)
  local q = parse_form(req.query or "")
  local token = q.token
  if not token or token == "" then return bad("validate needs ?token=") end
  local status, rec = access_status(token)
  if status == "valid" then
    return json_res(200, { valid = true, type = "access", expires_in = rec.exp - now() })
  end
  if status == "unknown" and state.refresh[token] then
    local r = state.refresh[token]
    if r.chain.revoked then
      return json_res(200, { valid = false, type = "refresh", reason = "revoked" })
    end
    if r.used_at and not within_grace(r) then
      return json_res(200, { valid = false, type = "refresh", reason = "used" })
    end
    return json_res(200, { valid = true, type = "refresh" })
  end
  return json_res(200, {
    valid = false, reason = status, type = status ~= "unknown" and "access" or nil,
  })
end

local function control_revoke(body)
  if type(body) ~= "table" then return bad("revoke needs a JSON object") end
  if body.all == true then
    for _, chain in ipairs(state.chains) do chain.revoked = true end
    return json_res(200, OK)
  end
  local rec
  if type(body.refresh_token) == "string" then
    rec = state.refresh[body.refresh_token]
  elseif type(body.access_token) == "string" then
    rec = state.access[body.access_token]
  else
    return bad("revoke needs refresh_token, access_token or all=true")
  end
  if not rec then return bad("unknown token") end
  rec.chain.revoked = true
  return json_res(200, OK)
end

local CONTROL = {
  ["/_control/reset"] = { "POST", function() reset() return json_res(200, OK) end },
  ["/_control/config"] = { "POST", control_config, true },
  ["/_control/script"] = { "POST", control_script, true },
  ["/_control/revoke"] = { "POST", control_revoke, true },
  ["/_control/expire"] = { "POST", function()
    local t = now()
    for _, rec in pairs(state.access) do
      if rec.exp > t then rec.exp = t end
    end
    return json_res(200, OK)
  end },
  ["/_control/stats"] = { "GET", function()
    return json_res(200, {
      requests = state.requests,
      grants = state.grants,
      reuse = state.reuse,
      api_requests = state.api_requests,
      scripts_left = scripts_left(),
    })
  end },
  ["/_control/requests"] = { "GET", function()
    return { status = 200, headers = {}, body = encode_array(state.log), json = true }
  end },
  ["/_control/validate"] = { "GET", function(_, req) return control_validate(req) end },
}

local function control_endpoint(req)
  local route = CONTROL[req.path]
  if not route then return json_res(404, { ok = false, error = "no such control endpoint" }) end
  if req.method ~= route[1] then
    return json_res(405, { ok = false, error = "use " .. route[1] }, { { "Allow", route[1] } })
  end
  local body
  if route[3] then
    local err
    body, err = decode_body(req)
    if body == nil then return bad(err) end
  end
  return route[2](body, req)
end

local function dispatch(req)
  local path = req.path
  if path:match("^/oauth2/[^/]+/v1/token$") then return token_endpoint(req) end
  if path:sub(1, 10) == "/_control/" then return control_endpoint(req) end
  if path == "/api" or path:sub(1, 5) == "/api/" then return api_endpoint(req) end
  return json_res(404, { error = "not_found" })
end

---------------------------------------------------------------------------
-- Scheduler: coroutines waiting on sockets or timers
---------------------------------------------------------------------------

local readers, writers, sleepers = {}, {}, {}
local conns = {} -- coroutine -> connection

-- Waits until sock is readable ("r") or writable ("w"), or until deadline.
-- Returns "ready" or "timeout".
local function wait(kind, sock, deadline)
  return coroutine.yield(kind, sock, deadline)
end

local function sleep(seconds)
  coroutine.yield("sleep", nil, now() + seconds)
end

local function close_conn(co)
  local conn = conns[co]
  conns[co] = nil
  if conn then
    readers[conn.sock] = nil
    writers[conn.sock] = nil
    conn.sock:close()
  end
end

local function resume(co, ...)
  local ok, kind, sock, deadline = coroutine.resume(co, ...)
  if not ok then
    log("connection error: %s", tostring(kind))
    close_conn(co)
  elseif coroutine.status(co) == "dead" then
    close_conn(co)
  elseif kind == "r" then
    readers[sock] = { co = co, deadline = deadline }
  elseif kind == "w" then
    writers[sock] = { co = co, deadline = deadline }
  else
    sleepers[#sleepers + 1] = { co = co, deadline = deadline }
  end
end

---------------------------------------------------------------------------
-- Connections: buffered non-blocking I/O and HTTP/1.1
---------------------------------------------------------------------------

local IDLE_TIMEOUT = 60       -- seconds a read may wait
local MAX_LINE = 8192
local MAX_HEADERS = 100
local MAX_BODY = 1048576

local WOULD_BLOCK = { timeout = "r", wantread = "r", wantwrite = "w" }

local Conn = {}
Conn.__index = Conn

-- Reads more bytes into the buffer. true, or nil and "closed"/"timeout"/error.
function Conn:fill(deadline)
  while true do
    local data, err, partial = self.sock:receive(8192)
    local chunk = data or partial
    if chunk and #chunk > 0 then
      self.buf = self.buf .. chunk
      return true
    end
    local kind = WOULD_BLOCK[err]
    if kind then
      if wait(kind, self.sock, deadline) == "timeout" then return nil, "timeout" end
    elseif err then
      return nil, err
    end
  end
end

function Conn:send_all(data)
  local i = 1
  local deadline = now() + IDLE_TIMEOUT
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    else
      if partial and partial >= i then i = partial + 1 end
      local kind = WOULD_BLOCK[err]
      if not kind then return nil, err end
      if wait(kind, self.sock, deadline) == "timeout" then return nil, "timeout" end
    end
  end
  return true
end

function Conn:read_line(deadline)
  while true do
    local i = self.buf:find("\n", 1, true)
    if i then
      local line = self.buf:sub(1, i - 1):gsub("\r$", "")
      self.buf = self.buf:sub(i + 1)
      return line
    end
    if #self.buf > MAX_LINE then return nil, "line too long", 400 end
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

function Conn:read_bytes(n, deadline)
  while #self.buf < n do
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
  local data = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return data
end

function Conn:read_chunked(deadline)
  local parts, total = {}, 0
  while true do
    local line, err, status = self:read_line(deadline)
    if not line then return nil, err, status end
    local size = line:match("^(%x+)%s*;?.*$")
    if not size or #size > 8 then return nil, "bad chunk size", 400 end
    size = tonumber(size, 16)
    if size == 0 then
      repeat -- trailers
        line, err, status = self:read_line(deadline)
        if not line then return nil, err, status end
      until line == ""
      return table.concat(parts)
    end
    total = total + size
    if total > MAX_BODY then return nil, "body too large", 413 end
    local data
    data, err = self:read_bytes(size, deadline)
    if not data then return nil, err end
    parts[#parts + 1] = data
    line, err, status = self:read_line(deadline)
    if not line then return nil, err, status end
    if line ~= "" then return nil, "bad chunk end", 400 end
  end
end

local function has_token(value, token)
  if not value then return false end
  for t in value:gmatch("[^,%s]+") do
    if t:lower() == token then return true end
  end
  return false
end

-- Reads one request. Returns req, or nil, message[, status to answer with].
function Conn:read_request()
  local deadline = now() + IDLE_TIMEOUT
  local line, err, status
  repeat -- tolerate empty lines before the request line
    line, err, status = self:read_line(deadline)
    if not line then return nil, err, status end
  until line ~= ""
  local method, target, major, minor = line:match("^(%u+) (%S+) HTTP/(%d)%.(%d)$")
  if not method then return nil, "malformed request line", 400 end
  if major ~= "1" then return nil, "unsupported HTTP version", 505 end

  local headers, count = {}, 0
  while true do
    line, err, status = self:read_line(deadline)
    if not line then return nil, err, status end
    if line == "" then break end
    count = count + 1
    if count > MAX_HEADERS then return nil, "too many headers", 431 end
    local name, value = line:match("^([%w!#$%%&'*+%-.^_`|~]+):[ \t]*(.-)[ \t]*$")
    if not name then return nil, "malformed header line", 400 end
    name = name:lower()
    headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
  end

  local path = target:match("^https?://[^/]*(/.*)$") or target:match("^https?://[^/]*$") and "/" or target
  if path:sub(1, 1) ~= "/" then return nil, "bad request target", 400 end
  local query = path:match("%?(.*)$")
  path = path:match("^[^?]*")

  local req = {
    method = method, path = path, query = query, headers = headers,
    http10 = minor == "0", listener = self.name,
  }
  req.close = has_token(headers.connection, "close")
    or (req.http10 and not has_token(headers.connection, "keep-alive"))

  local te, cl = headers["transfer-encoding"], headers["content-length"]
  local length
  if te and cl then return nil, "both Transfer-Encoding and Content-Length", 400 end
  if te and te:lower() ~= "chunked" then return nil, "unsupported Transfer-Encoding", 501 end
  if cl then
    if not cl:match("^%d+$") then return nil, "bad Content-Length", 400 end
    length = tonumber(cl)
    if length > MAX_BODY then return nil, "body too large", 413 end
  end
  if headers.expect then
    if headers.expect:lower() ~= "100-continue" then return nil, "unsupported Expect", 417 end
    if (te or (length and length > 0)) and not req.http10 then
      local ok, e = self:send_all("HTTP/1.1 100 Continue\r\n\r\n")
      if not ok then return nil, e end
    end
  end
  req.has_body = (te or cl) and true or false
  if te then
    req.body, err, status = self:read_chunked(deadline)
  else
    req.body, err = self:read_bytes(length or 0, deadline)
  end
  if not req.body then return nil, err, status end
  return req
end

local REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted",
  [204] = "No Content", [301] = "Moved Permanently", [302] = "Found",
  [304] = "Not Modified", [307] = "Temporary Redirect", [400] = "Bad Request",
  [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [413] = "Payload Too Large", [417] = "Expectation Failed", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

local function head_bytes(res, close)
  local status = res.status
  local lines = { string.format("HTTP/1.1 %d %s", status, REASONS[status] or "Status") }
  local have = {}
  for _, h in ipairs(res.headers or {}) do
    have[h[1]:lower()] = true
    lines[#lines + 1] = h[1] .. ": " .. h[2]
  end
  if res.json and not have["content-type"] then
    lines[#lines + 1] = "Content-Type: application/json"
  end
  local bodiless = status < 200 or status == 204 or status == 304
  if not have["content-length"] and not bodiless then
    lines[#lines + 1] = "Content-Length: " .. #(res.body or "")
  end
  if close and not have.connection then lines[#lines + 1] = "Connection: close" end
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- Waits, discarding input, until the client goes away.
function Conn:hang()
  self.buf = ""
  while true do
    local ok = self:fill(nil)
    if not ok then return end
    self.buf = ""
  end
end

-- Sends res; returns true if the connection may serve another request.
function Conn:respond(req, res)
  if res.delay and res.delay > 0 then sleep(res.delay) end
  if res.pass then
    res = res.pass()
    res.scripted = "pass"
  end
  local tag = res.scripted and (" [" .. res.scripted .. "]") or ""
  local what = req.method .. " " .. req.path .. (req.note and (" " .. req.note) or "")
  if res.hang then
    log("%s %s hang%s", self.name, what, tag)
    self:hang()
    return false
  end
  if res.raw then
    log("%s %s raw%s", self.name, what, tag)
    self:send_all(res.raw)
    return false
  end
  local close = req.close or res.close_after ~= nil
  for _, h in ipairs(res.headers or {}) do
    if h[1]:lower() == "connection" and has_token(h[2], "close") then close = true end
  end
  local body = res.body or ""
  local head = head_bytes(res, close and not res.close_after)
  if res.close_after then body = body:sub(1, res.close_after) end
  log("%s %s %d%s%s", self.name, what, res.status, tag,
    res.close_after and (" close_after=" .. res.close_after) or "")
  local ok = self:send_all(head .. body)
  return ok and not close
end

local function tls_handshake(conn)
  local deadline = now() + 10
  while true do
    local ok, err = conn.sock:dohandshake()
    if ok then return true end
    local kind = WOULD_BLOCK[err]
    if not kind then return nil, err end
    if wait(kind, conn.sock, deadline) == "timeout" then return nil, "handshake timeout" end
  end
end

local function serve(conn)
  if conn.tls then
    local ok, err = tls_handshake(conn)
    if not ok then
      log("%s TLS handshake failed: %s", conn.name, tostring(err))
      return
    end
  end
  while true do
    local req, err, status = conn:read_request()
    if not req then
      if status then
        log("%s bad request (%s): %d", conn.name, err, status)
        conn:send_all(head_bytes({
          status = status, headers = { { "Content-Type", "text/plain" } }, body = err .. "\n",
        }, true) .. err .. "\n")
      end
      return
    end
    local res = dispatch(req)
    if not conn:respond(req, res) then return end
  end
end

---------------------------------------------------------------------------
-- Listeners and main loop
---------------------------------------------------------------------------

local function usage(msg)
  io.stderr:write("fake_okta: ", msg, "\n",
    "usage: fake_okta.lua --listen NAME:SCHEME:PORT[:CERT:KEY] ... --portfile FILE\n")
  os.exit(2)
end

local function parse_args(args)
  local listeners, portfile, seen = {}, nil, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--listen" or a == "--portfile" then
      local v = args[i + 1] or usage(a .. " needs a value")
      if a == "--portfile" then
        portfile = v
      else
        local parts = {}
        for p in (v .. ":"):gmatch("([^:]*):") do parts[#parts + 1] = p end
        local name, scheme, port, cert, key = parts[1], parts[2], tonumber(parts[3]), parts[4], parts[5]
        if #parts ~= 3 and #parts ~= 5 or name == "" or not port or port < 0 or port > 65535 then
          usage("bad --listen " .. v)
        end
        if seen[name] then usage("duplicate listener name " .. name) end
        seen[name] = true
        if scheme == "https" then
          if not cert or not key then usage("https listener " .. name .. " needs CERT:KEY") end
        elseif scheme ~= "http" or cert then
          usage("bad scheme in --listen " .. v)
        end
        listeners[#listeners + 1] = { name = name, scheme = scheme, port = port, cert = cert, key = key }
      end
      i = i + 2
    elseif a == "--help" or a == "-h" then
      usage("help")
    else
      usage("unknown argument " .. a)
    end
  end
  if #listeners == 0 then usage("no --listen given") end
  return listeners, portfile
end

local function open_listener(l)
  if l.scheme == "https" then
    ssl = ssl or require "ssl"
    local ctx, err = ssl.newcontext({
      mode = "server", protocol = "any", certificate = l.cert, key = l.key,
      options = { "all" },
    })
    if not ctx then error("listener " .. l.name .. ": " .. tostring(err), 0) end
    l.ctx = ctx
  end
  local sock, err = socket.bind("127.0.0.1", l.port, 128) -- sets reuseaddr
  if not sock then error("listener " .. l.name .. ": bind: " .. tostring(err), 0) end
  sock:settimeout(0)
  local _, port = sock:getsockname()
  l.sock, l.port = sock, tonumber(port)
end

local function accept_all(l)
  while true do
    local client, err = l.sock:accept()
    if not client then
      if err ~= "timeout" then -- e.g. out of fds: back off instead of spinning
        log("%s accept: %s", l.name, tostring(err))
        l.paused_until = now() + 0.2
      end
      return
    end
    client:settimeout(0)
    if client:getfd() >= 1000 then -- select() can't watch it; refuse
      log("%s too many connections", l.name)
      client:close()
      return
    end
    local conn = setmetatable({ sock = client, buf = "", name = l.name }, Conn)
    local wrapped = true
    if l.ctx then
      local tls, werr = ssl.wrap(client, l.ctx)
      if tls then
        tls:settimeout(0)
        conn.sock, conn.tls = tls, true
      else
        log("%s ssl.wrap failed: %s", l.name, tostring(werr))
        client:close()
        wrapped = false
      end
    end
    if wrapped then
      local co = coroutine.create(serve)
      conns[co] = conn
      resume(co, conn)
    end
  end
end

local function write_portfile(file, listeners)
  local tmp = file .. ".tmp"
  local f = assert(io.open(tmp, "w"))
  for _, l in ipairs(listeners) do f:write(l.name, " ", l.port, "\n") end
  assert(f:close())
  assert(os.rename(tmp, file))
end

local function main(args)
  local listeners, portfile = parse_args(args)
  for _, l in ipairs(listeners) do
    local ok, err = pcall(open_listener, l)
    if not ok then
      io.stderr:write("fake_okta: ", tostring(err), "\n")
      os.exit(1)
    end
  end
  if portfile then write_portfile(portfile, listeners) end
  for _, l in ipairs(listeners) do log("listening %s %s://127.0.0.1:%d", l.name, l.scheme, l.port) end

  local by_sock = {}
  for _, l in ipairs(listeners) do by_sock[l.sock] = l end

  local function step()
    local recvt, sendt, timeout = {}, {}, nil
    local t = now()
    local function consider(deadline)
      if deadline then
        local dt = deadline - t
        if dt < 0 then dt = 0 end
        if not timeout or dt < timeout then timeout = dt end
      end
    end
    for _, l in ipairs(listeners) do
      if l.paused_until and l.paused_until > t then
        consider(l.paused_until)
      else
        recvt[#recvt + 1] = l.sock
      end
    end
    for s, w in pairs(readers) do recvt[#recvt + 1] = s; consider(w.deadline) end
    for s, w in pairs(writers) do sendt[#sendt + 1] = s; consider(w.deadline) end
    for _, w in ipairs(sleepers) do consider(w.deadline) end

    local r, w = socket.select(recvt, sendt, timeout)
    local ready = {}
    for _, s in ipairs(r or {}) do
      if by_sock[s] then
        accept_all(by_sock[s])
      elseif readers[s] then
        ready[#ready + 1] = readers[s].co
        readers[s] = nil
      end
    end
    for _, s in ipairs(w or {}) do
      if writers[s] then
        ready[#ready + 1] = writers[s].co
        writers[s] = nil
      end
    end
    for _, co in ipairs(ready) do resume(co, "ready") end

    -- Deadlines and timers. Collect first: resuming adds new waiters.
    t = now()
    local due, timed_out = {}, {}
    for _, tbl in ipairs({ readers, writers }) do
      for s, wt in pairs(tbl) do
        if wt.deadline and wt.deadline <= t then
          timed_out[#timed_out + 1] = wt.co
          tbl[s] = nil
        end
      end
    end
    local still = {}
    for _, wt in ipairs(sleepers) do
      if wt.deadline <= t then due[#due + 1] = wt.co else still[#still + 1] = wt end
    end
    sleepers = still
    for _, co in ipairs(timed_out) do resume(co, "timeout") end
    for _, co in ipairs(due) do resume(co, "ready") end
  end

  while true do
    local ok, err = pcall(step)
    if not ok then
      log("scheduler error: %s", tostring(err))
      socket.sleep(0.01)
    end
  end
end

main({ ... })

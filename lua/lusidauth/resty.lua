-- lusidauth.resty: lusidauth inside OpenResty (nginx + LuaJIT), never blocking the event loop.
--
-- The token flow is the C core's state machine, stepped from Lua (core.step): requests go out
-- over ngx.socket.tcp (TLS verified against lua_ssl_trusted_certificate), backoff waits use
-- ngx.sleep, and coroutines of one worker that need the same refresh wait on an ngx.semaphore
-- for the one in flight. A usable token is read with no I/O, in every phase.
--
--   local resty = require "lusidauth.resty"
--   local client = resty.new(opts)        -- or resty.from_config(load_opts); once per worker
--   local token, err = client:token()     -- access, rewrite, content, timer: may refresh
--   local h, err = client:headers(extra)  -- the LUSID headers, as lusidauth's headers()
--   client:cached()                       -- any phase: a usable token, or nil, err; no I/O
--   client:authorization()                -- "Bearer <token>", made once per token
-- on_refresh_token and log run inside a C call here: they must not yield (no cosocket, no
-- ngx.sleep); hand work to ngx.timer.at instead.
local lusidauth = require "lusidauth"
local core = lusidauth.core
local semaphore = require "ngx.semaphore"

local ngx = ngx -- luacheck: globals ngx
local R = { _VERSION = lusidauth._VERSION }

local BODY_CAP = 1024 * 1024

-- Phases where cosockets and ngx.sleep may be used.
local YIELDABLE = { rewrite = true, access = true, content = true, timer = true, ssl_cert = true,
  ssl_session_fetch = true, ssl_client_hello = true }

local waiting = {} -- one semaphore per core client: its coroutines wait for its refresh

local function err_obj(kind, message)
  return setmetatable({ kind = kind, message = message, retryable = kind ~= "config" }, core.error_mt)
end

local function parse_url(url)
  local scheme, rest = url:match("^(https?)://(.*)$")
  if not scheme then return nil end
  local host, port, path = rest:match("^%[([^%]]+)%]:?(%d*)(.*)$")
  if not host then host, port, path = rest:match("^([^/:?#]+):?(%d*)(.*)$") end
  if not host then return nil end
  if path == "" or path:sub(1, 1) ~= "/" then path = "/" .. path end
  return scheme, host, tonumber(port) or (scheme == "https" and 443 or 80), path
end

local function read_body(sock, headers)
  local chunked = (headers["transfer-encoding"] or ""):lower():find("chunked", 1, true)
  local cl = headers["content-length"]
  if cl and not chunked then -- chunked wins when both are sent (RFC 9112)
    if not cl:match("^%d+$") then return nil, "protocol", "bad Content-Length" end
    local len = tonumber(cl)
    if len > BODY_CAP then return nil, "protocol", "response body exceeds 1048576 bytes" end
    if len == 0 then return "" end
    return sock:receive(len)
  end
  if chunked then
    local parts, total = {}, 0
    while true do
      local line, err = sock:receive("*l")
      if not line then return nil, err end
      local size = tonumber(line:match("^%x+"), 16)
      if not size then return nil, "protocol", "bad chunk size" end
      if size == 0 then
        repeat line = sock:receive("*l") until not line or line == "" -- trailers
        return table.concat(parts)
      end
      total = total + size
      if total > BODY_CAP then return nil, "protocol", "response body exceeds 1048576 bytes" end
      local data, derr = sock:receive(size)
      if not data then return nil, derr end
      parts[#parts + 1] = data
      sock:receive(2)
    end
  end
  headers.connection = "close"
  local data, err, partial = sock:receive("*a")
  data = data or partial
  if data and #data > BODY_CAP then return nil, "protocol", "response body exceeds 1048576 bytes" end
  return data, err
end

-- One POST over a cosocket: a response table, or nil, kind ("network", "timeout", "tls"), message.
local function post(info, url, body, auth)
  local scheme, host, port, path = parse_url(url)
  if not scheme then return nil, "network", "cannot parse the token URL" end
  local sock = ngx.socket.tcp()
  local ms = function(s) return math.floor((s or 30) * 1000) end
  sock:settimeouts(ms(info.connect_timeout), ms(info.timeout), ms(info.read_timeout or info.timeout))
  local ok, err = sock:connect(host, port)
  if not ok then
    return nil, err == "timeout" and "timeout" or "network", "connect to " .. host .. ":" .. port .. ": " .. err
  end
  if scheme == "https" and sock:getreusedtimes() == 0 then
    ok, err = sock:sslhandshake(nil, host, true) -- verified: lua_ssl_trusted_certificate
    if not ok then
      sock:close()
      return nil, err == "timeout" and "timeout" or "tls", "TLS with " .. host .. ": " .. tostring(err)
    end
  end
  local req = {
    "POST ", path, " HTTP/1.1\r\nHost: ", host, ":", port, "\r\n",
    "Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n",
    "User-Agent: ", info.user_agent or ("lusidauth/" .. lusidauth._VERSION), "\r\n",
    "Content-Length: ", #body, "\r\n",
  }
  if auth then req[#req + 1] = "Authorization: " .. auth .. "\r\n" end
  req[#req + 1] = "\r\n"
  req[#req + 1] = body
  local sent
  sent, err = sock:send(req)
  req = nil -- luacheck: ignore (drop the references to the credentials early)
  if not sent then
    sock:close()
    return nil, err == "timeout" and "timeout" or "network", "send: " .. err
  end
  local line
  line, err = sock:receive("*l")
  if not line then
    sock:close()
    return nil, err == "timeout" and "timeout" or "network", "no response: " .. err
  end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then
    sock:close()
    return nil, "network", "the reply is not HTTP"
  end
  local headers = {}
  while true do
    line, err = sock:receive("*l")
    if not line then
      sock:close()
      return nil, err == "timeout" and "timeout" or "network", "reading headers: " .. err
    end
    if line == "" then break end
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then headers[k:lower()] = v end
  end
  local rbody, kind, msg = read_body(sock, headers)
  if not rbody then
    sock:close()
    if kind == "protocol" then return { status = status, headers = headers, over_cap = msg } end
    return nil, kind == "timeout" and "timeout" or "network", "reading the body: " .. tostring(kind)
  end
  if (headers.connection or ""):lower() == "close" then
    sock:close()
  else
    sock:setkeepalive(60000, 16)
  end
  return { status = status, headers = headers, body = rbody }
end

-- Runs one refresh to the end: the same loop client.c runs in C, with cosockets and ngx.sleep.
local function drive(info, run, kind, x)
  while kind == "send" or kind == "wait" do
    if kind == "wait" then
      ngx.sleep(x)
      kind, x = run:waited()
    else
      local url, body, auth = run:request()
      local res, fkind, fmsg = post(info, url, body, auth)
      body, auth = nil, nil -- luacheck: ignore
      if res and res.over_cap then
        kind, x = run:fail("protocol", res.over_cap)
      elseif res then
        kind, x = run:response(res.status, res.headers["retry-after"], res.headers["x-rate-limit-reset"], res.body)
      else
        kind, x = run:fail(fkind, fmsg)
      end
    end
  end
  return run:finish()
end

local function wake(key)
  local sema = waiting[key]
  if sema and sema:count() < 0 then sema:post(-sema:count()) end
end

local Client = {}
Client.__index = Client

function Client:__tostring() return "lusidauth.resty " .. tostring(self.core) end

-- client:cached() --> token, expires_in | nil, err. No I/O: any phase.
function Client:cached()
  local kind, token, expires_in = core.step(self.core, "token", true)
  if kind == "use" then return token, expires_in end
  return nil, err_obj("config", kind == "busy" and "no usable token yet: a refresh is in flight"
    or "no usable token: it must be fetched in a phase that can do I/O (access, rewrite, content, timer)")
end

local function obtain(self, mode)
  if not YIELDABLE[ngx.get_phase()] then
    if mode == "token" then return self:cached() end
    error("lusidauth.resty: " .. mode .. "() needs a phase that can do I/O, not " .. ngx.get_phase(), 3)
  end
  local key = self.key
  local deadline = ngx.now() + (self.info.deadline or 60)
  local epoch
  while true do
    local kind, a, b, c = core.step(self.core, mode, false, epoch)
    if kind == "use" then return a, b end
    if kind == "fail" then return nil, a end
    if kind == "run" then
      local ok, token, expires_in = pcall(drive, self.info, a, b, c)
      if not ok then
        a:abort()
        wake(key)
        error(token, 0)
      end
      wake(key)
      return token, expires_in
    end
    -- busy: another coroutine of this worker is refreshing; wait for it, then look again (and
    -- if that refresh failed, core.step says so instead of starting another)
    epoch = a
    local left = deadline - ngx.now()
    if left <= 0 then
      return nil, err_obj("timeout", "waited for another request's refresh of the same identity")
    end
    waiting[key] = waiting[key] or semaphore.new(0)
    waiting[key]:wait(math.min(left, 1))
  end
end

function Client:token() return obtain(self, "token") end

-- client:authorization() --> "Bearer <token>" | nil, err: the one header a gateway needs, made
-- once per token, so a request costs no string building.
function Client:authorization()
  local token, err = self:token()
  if not token then return nil, err end
  if self.auth_token ~= token then self.auth_token, self.auth_value = token, "Bearer " .. token end
  return self.auth_value
end
function Client:login() return obtain(self, "login") end
function Client:refresh() return obtain(self, "refresh") end
function Client:invalidate() return self.core:invalidate() end
function Client:expires_in() return self.core:expires_in() end
function Client:close() return self.core:close() end

-- client:headers([extra]) --> the LUSID headers | nil, err; cached-only outside I/O phases.
-- Without extra headers, the table is built once per token and handed out as a copy: a
-- gateway calls this on every request.
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

function Client:headers(extra)
  local token, err = self:token()
  if not token then return nil, err end
  if extra == nil and self.headers_token == token then return copy(self.headers_cache) end
  local info = self.info
  local h, herr = lusidauth.headers.build {
    token = token, app_name = info.app_name, correlation_id = info.correlation_id, extra = extra,
  }
  if h and extra == nil then self.headers_token, self.headers_cache = token, copy(h) end
  return h, herr
end

local function wrap(c, opts)
  local info = {}
  for k, v in pairs(core.info(c)) do info[k] = v end
  for _, k in ipairs { "timeout", "connect_timeout", "read_timeout", "deadline", "user_agent" } do
    info[k] = opts[k]
  end
  return setmetatable({ core = c, info = info, key = core.entry_key(c) }, Client)
end

-- resty.new(opts): as lusidauth.new, for OpenResty. Raises on bad options.
function R.new(opts)
  local ok, c = pcall(lusidauth.new, opts)
  if not ok then error(c, 2) end
  return wrap(c, opts)
end

-- resty.from_config(load_opts) --> client | nil, err
function R.from_config(load_opts)
  local opts, err = lusidauth.config.load(load_opts)
  if not opts then return nil, err end
  return R.new(opts)
end

return R

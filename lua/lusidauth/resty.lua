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
--   client:warm()                         -- timer: the store's verifier KDF, ahead of requests
-- on_refresh_token and log run inside a C call here: they must not yield (no cosocket, no
-- ngx.sleep); hand work to ngx.timer.at instead.
--
-- With a store (store = "shdict" | "redis" | an object: lusidauth.resty_store), a refresh first
-- takes the store's lock and loads what another worker or host stored; only the holder sends a
-- request, then stores the new state. While the worker's token is still valid the lock is tried
-- once: if busy, the valid token is served and the store looked at again a second later.
local lusidauth = require "lusidauth"
local stores = require "lusidauth.resty_store"
local core = lusidauth.core
local semaphore = require "ngx.semaphore"

local ngx = ngx -- luacheck: globals ngx
local R = { _VERSION = lusidauth._VERSION }

local BODY_CAP = 1024 * 1024

-- Phases where cosockets and ngx.sleep may be used.
local YIELDABLE = { rewrite = true, access = true, content = true, timer = true, ssl_cert = true,
  ssl_session_fetch = true, ssl_client_hello = true }

local waiting = {} -- one semaphore per core client: its coroutines wait for its refresh
local look_again = {} -- per entry: until when a valid token is served without the store's lock

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
  -- a pool of our own: a connection other code pooled for this host (perhaps unverified) is not
  -- handed our credentials
  local ok, err = sock:connect(host, port, { pool = ("lusidauth:%s:%s:%d"):format(scheme, host, port) })
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

-- Runs one refresh until it settles: the same loop client.c runs in C, with cosockets and
-- ngx.sleep. Returns the number of requests sent; the caller calls run:finish().
local function drive(info, run, kind, x)
  local sent = 0
  while kind == "send" or kind == "wait" do
    if kind == "wait" then
      ngx.sleep(x)
      kind, x = run:waited()
    else
      local url, body, auth = run:request()
      sent = sent + 1
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
  return sent
end

local function drive_finish(info, run, kind, x)
  drive(info, run, kind, x)
  return run:finish()
end

-- A line for nginx's error log and the client's log hook (which must not raise or yield).
local function note(self, level, msg)
  ngx.log(level == "warn" and ngx.WARN or ngx.INFO, "lusidauth: ", msg)
  if self.log then pcall(self.log, level, msg) end
end

-- A store method, with a raise counted as unreachable: tokens must keep flowing.
local function call(self, method, ...)
  local ok, a, b = pcall(self.store[method], self.store, ...)
  if not ok then return nil, "the store's " .. method .. "() raised: " .. tostring(a) end
  return a, b
end

local function store_down(self, err)
  note(self, "warn", "token store unreachable: " .. tostring(err)
    .. "; this worker refreshes on its own until it is back")
end

-- The state, else the chain (the refresh token alone, kept longer): a blob, or nil[, err].
local function fetch(self)
  local blob, err = call(self, "get", self.store_name)
  if type(blob) ~= "string" and not err then blob, err = call(self, "get", self.store_name .. ":chain") end
  if type(blob) ~= "string" then blob = nil end
  return blob, err
end

local function unlock(self)
  local ok, err = call(self, "unlock", self.lock_key)
  if ok == nil and err then
    note(self, "warn", ("token store: %s; the refresh lock lapses in %d s"):format(tostring(err), self.lock_ttl))
  end
end

-- Before the first request of a run (client.c's store_before): takes the store's lock and
-- loads what another process stored. Returns locked, alone, then the run's next action; or
-- false, false, "use" when the lock is busy while our token is still valid (the run is then
-- abandoned). alone: going on without the store (its state must reach it later).
local function store_before(self, mode, run, deadline)
  local delay = 0.005
  local wait_until = ngx.now() + (deadline - ngx.now()) / 2 -- the other half: our own refresh
  while true do
    local got, err = call(self, "lock", self.lock_key, self.lock_ttl)
    if got == true then break end
    if got ~= false then -- nil, err; or not the interface's answer
      store_down(self, err or ("the store's lock() returned a " .. type(got)))
      return false, true, run:store_import(nil, "down")
    end
    if mode == "token" and self.core:expires_in() ~= nil then
      -- another process is refreshing: serve our valid token, look again in a second
      look_again[self.key] = ngx.now() + 1
      run:abort()
      return false, false, "use"
    end
    if ngx.now() + delay > wait_until then
      note(self, "warn", "token store: another process held the refresh lock past the deadline; "
        .. "going on without it")
      return false, true, run:store_import(nil, "busy")
    end
    ngx.sleep(delay)
    delay = math.min(delay * 2, 0.05)
  end
  local blob, err = fetch(self)
  if err then store_down(self, err) end
  local ok, kind, x = pcall(run.store_import, run, blob)
  if not ok then -- the lock is ours: release it before the error goes on
    unlock(self)
    error(kind, 0)
  end
  return true, false, kind, x
end

-- After a run that held the lock: the new state to the store (client.c's store_after). The
-- state counts as not stored until both writes succeed, so a coroutine killed in between leaves
-- it to be written at the next lock.
local function store_after(self)
  local state, state_ttl, chain, chain_ttl = core.store_export(self.core)
  if state == nil and chain == nil then
    if state_ttl then note(self, "warn", "token store: " .. tostring(state_ttl)) end
    return
  end
  core.store_saved(self.core, false)
  local ok, err = true, nil
  if state then ok, err = call(self, "set", self.store_name, state, state_ttl) end
  if ok and chain then ok, err = call(self, "set", self.store_name .. ":chain", chain, chain_ttl) end
  if ok then core.store_saved(self.core, true) else store_down(self, err) end
end

-- One refresh with a store: lock, load, refresh if still needed, save, unlock, then finish the
-- run (so that no other refresh of this worker starts before the store has the new state).
-- Raises what drive raises, after releasing the lock.
local function drive_stored(self, mode, deadline, run, kind, x)
  local locked, alone = false, false
  if kind == "send" or kind == "done" then -- "done" at once: failed, or a valid token to serve
    locked, alone, kind, x = store_before(self, mode, run, deadline)
    if kind == "use" then
      local k, token, expires_in = core.step(self.core, "token", true)
      if k == "use" then return token, expires_in end
      return nil, err_obj("config", "no usable token") -- not reached: it was valid just now
    end
  end
  local ok, err = pcall(drive, self.info, run, kind, x)
  local dok, dirty = pcall(run.store_dirty, run) -- a new token, or the store was behind us
  dirty = dok and dirty
  if locked then
    if dirty then
      local sok, serr = pcall(store_after, self)
      if not sok then store_down(self, serr) end
    end
    unlock(self)
  elseif alone and dirty then
    pcall(core.store_saved, self.core, false) -- the store gets this state at the next lock
  end
  if not ok then error(err, 0) end
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
    if mode == "token" and self.store and look_again[key] then
      if ngx.now() < look_again[key] then
        local kind, token, expires_in = core.step(self.core, "token", true)
        if kind == "use" then return token, expires_in end
      end
      look_again[key] = nil
    end
    local kind, a, b, c = core.step(self.core, mode, false, epoch)
    if kind == "use" then return a, b end
    if kind == "fail" then return nil, a end
    if kind == "run" then
      local ok, token, expires_in
      if self.store then
        ok, token, expires_in = pcall(drive_stored, self, mode, deadline, a, b, c)
      else
        ok, token, expires_in = pcall(drive_finish, self.info, a, b, c)
      end
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

-- client:warm(): runs the store's verifier KDF (PBKDF2, about 0.05-0.1 s of CPU that blocks
-- the worker) for the stored state's salt, so that no request pays for it. Call it from a
-- 0-delay ngx.timer.at in init_worker_by_lua*. Without a store it does nothing.
function Client:warm()
  if not self.store then return true end
  -- fetch's pcall: a cosocket raises in init_worker; no blob means a salt of our own
  core.store_warm(self.core, (fetch(self)))
  return true
end

local function wrap(c, opts, store)
  local info = {}
  for k, v in pairs(core.info(c)) do info[k] = v end
  for _, k in ipairs { "timeout", "connect_timeout", "read_timeout", "deadline", "user_agent" } do
    info[k] = opts[k]
  end
  local self = { core = c, info = info, key = core.entry_key(c), log = opts.log }
  if store then
    local name = (store.prefix or stores.DEFAULT_PREFIX) .. core.store_key(c)
    self.store, self.store_name, self.lock_key = store.object, name, name .. ":lock"
    -- a lock lapses if its holder dies: after the longest a refresh may take (as client.c),
    -- with a read timeout that may exceed the request timeout, and a margin for the store's I/O
    self.lock_ttl = (opts.deadline or 60) + (opts.connect_timeout or 30)
      + math.max(opts.timeout or 30, opts.read_timeout or 0) + 5
  end
  return setmetatable(self, Client)
end

-- The store options: { object = store, prefix = key prefix } | nil. Raises (no position) on bad
-- ones; removes them from opts.
local function take_store(opts)
  local kind, dict, redis = opts.store, opts.shdict, opts.redis
  opts.store, opts.shdict, opts.redis = nil, nil, nil
  if kind == nil then
    if dict ~= nil then error("lusidauth.resty: option 'shdict' needs store = \"shdict\"", 0) end
    if redis ~= nil then error("lusidauth.resty: option 'redis' needs store = \"redis\"", 0) end
    return nil
  end
  if kind == "shdict" then
    if redis ~= nil then error("lusidauth.resty: option 'redis' needs store = \"redis\"", 0) end
    local obj = stores.shdict(dict)
    if not obj then
      error("lusidauth.resty: store = \"shdict\" needs option 'shdict', the name of a lua_shared_dict"
        .. (type(dict) == "string" and " (there is no ngx.shared." .. dict .. ")" or ""), 0)
    end
    return { object = obj }
  end
  if dict ~= nil then error("lusidauth.resty: option 'shdict' needs store = \"shdict\"", 0) end
  if kind == "redis" then
    if redis ~= nil and type(redis) ~= "table" then
      error("lusidauth.resty: option 'redis' must be a table, not a " .. type(redis), 0)
    end
    local conf = {}
    for k, v in pairs(redis or {}) do conf[k] = v end
    local prefix, refresh_ttl = conf.prefix, conf.refresh_ttl
    conf.prefix, conf.refresh_ttl = nil, nil
    if prefix ~= nil and type(prefix) ~= "string" then
      error("lusidauth.resty: option 'redis.prefix' must be a string, not a " .. type(prefix), 0)
    end
    if prefix and #prefix > 200 then error("lusidauth.resty: option 'redis.prefix' must be at most 200 bytes", 0) end
    -- refresh_ttl: how long the core says the chain is kept (it checks the value)
    return { object = stores.redis(conf), prefix = prefix, refresh_ttl = refresh_ttl }
  end
  if redis ~= nil then error("lusidauth.resty: option 'redis' needs store = \"redis\"", 0) end
  if kind == "file" then
    error("lusidauth.resty: store = \"file\" would block nginx: use \"shdict\" or \"redis\"", 0)
  end
  if not stores.is_store(kind) then
    error("lusidauth.resty: option 'store' must be \"shdict\", \"redis\", or an object with get, set, "
      .. "lock and unlock methods", 0)
  end
  return { object = kind }
end

-- resty.new(opts): as lusidauth.new, for OpenResty, plus the store options (store = "shdict"
-- with shdict = "<lua_shared_dict>", store = "redis" with redis = {...}, or store = an object).
-- Raises on bad options.
function R.new(opts)
  if type(opts) ~= "table" then error("lusidauth.resty.new: expected an options table, got " .. type(opts), 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  local sok, store = pcall(take_store, o)
  if not sok then error(store, 2) end
  if store then -- the core makes and checks the blobs; no I/O
    o.store = "external"
    if store.refresh_ttl ~= nil then o.redis = { refresh_ttl = store.refresh_ttl } end
  end
  local ok, c = pcall(lusidauth.new, o)
  if not ok then error(c, 2) end
  return wrap(c, opts, store)
end

-- resty.from_config(load_opts) --> client | nil, err
function R.from_config(load_opts)
  local opts, err = lusidauth.config.load(load_opts)
  if not opts then return nil, err end
  return R.new(opts)
end

return R

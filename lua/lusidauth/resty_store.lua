-- lusidauth.resty_store: token stores for lusidauth.resty, so that nginx workers (shdict) or
-- hosts (redis) share one token and one refresh. They move opaque blobs (made and checked by
-- the C core) and hold a refresh lock; lusidauth.resty decides when.
--
-- The interface (a table or object; pass your own as resty.new{ store = obj }):
--   store:get(key)            --> blob | nil (nothing stored) | nil, err (unreachable)
--   store:set(key, blob, ttl) --> true | nil, err; ttl: seconds (float), > 0
--   store:lock(key, ttl)      --> true (taken) | false (someone else holds it) | nil, err;
--                                 tries once, never waits; a lock not released lapses after ttl
--   store:unlock(key)         -- releases the lock only if this store object still owns it
-- Refreshes call them only where cosockets and ngx.sleep work (rewrite, access, content,
-- timer), one lock per key at a time per object; client:warm() calls get wherever it is called
-- and ignores a raise. err must not contain a secret or a blob.
local ngx = ngx -- luacheck: globals ngx

local M = {}

local DEFAULT_PREFIX = "lusidauth:"
local REPLY_CAP = 1024 * 1024 -- a blob is at most 64 KiB; anything far larger is not ours

-- Lock owners: unique across workers and hosts. 16 random bytes per worker, then a counter.
local owner_base, owner_n = nil, 0
local function new_owner()
  if not owner_base then
    local f = io.open("/dev/urandom", "rb")
    local raw = f and f:read(16)
    if f then f:close() end
    if raw and #raw == 16 then
      owner_base = raw:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)
    else -- no /dev/urandom: still unique enough with the pid and the clock
      owner_base = ("%d-%.3f-%d"):format(ngx.worker.pid(), ngx.now(), math.random(1, 2 ^ 30))
    end
  end
  owner_n = owner_n + 1
  return owner_base .. ":" .. owner_n
end

-- ---- shdict: one host, every worker ----

local Shdict = {}
Shdict.__index = Shdict

function Shdict:get(key)
  local v, err = self.dict:get(key)
  if v == nil and err then return nil, "shared dict: " .. err end
  return v
end

function Shdict:set(key, blob, ttl)
  if not ttl or ttl < 0.001 then return true end -- exptime 0 would mean "never expires"
  -- safe_set/safe_add: a full dict refuses rather than evict another key (another identity's
  -- lock or state); the refresh then goes on without the store and says so
  local ok, err = self.dict:safe_set(key, blob, ttl)
  if not ok then return nil, "shared dict: cannot store the token: " .. tostring(err) end
  return true
end

function Shdict:lock(key, ttl)
  local owner = new_owner()
  local ok, err = self.dict:safe_add(key, owner, ttl)
  if ok then
    self.owners[key] = owner
    return true
  end
  if err == "exists" then return false end
  return nil, "shared dict: cannot take the lock: " .. tostring(err)
end

-- shdict has no compare-and-delete. Between our get and delete another worker could take the
-- lock only if ours lapsed in between; with no yield there, that needs its TTL to end within
-- microseconds, so a lock with under 1 s left is left to lapse instead of deleted.
function Shdict:unlock(key)
  local owner = self.owners[key]
  self.owners[key] = nil
  if not owner or self.dict:get(key) ~= owner then return end
  ngx.update_time()
  local left = self.dict.ttl and self.dict:ttl(key)
  if left == nil or left == 0 or left > 1 then self.dict:delete(key) end
end

-- resty_store.shdict(dict_or_name) --> store. The dict is a lua_shared_dict.
function M.shdict(dict)
  if type(dict) == "string" then dict = ngx.shared[dict] end
  if type(dict) ~= "table" or type(dict.add) ~= "function" then return nil end
  return setmetatable({ dict = dict, owners = {} }, Shdict)
end

-- ---- redis over cosockets ----

local UNLOCK_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

-- A command in RESP: an array of bulk strings.
local function encode(args)
  local out = { "*", #args, "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$"
    out[#out + 1] = #a
    out[#out + 1] = "\r\n"
    out[#out + 1] = a
    out[#out + 1] = "\r\n"
  end
  return out -- a table: sock:send takes it without a concatenated copy
end

-- One reply: value (string, number, table, or ngx.null for nil) | nil, err, is_reply_error.
-- A Redis error reply comes back as nil, its text, true.
local function read_reply(sock, depth)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local t, rest = line:sub(1, 1), line:sub(2)
  if t == "+" then return rest end
  if t == "-" then return nil, rest, true end
  if t == ":" then
    local v = tonumber(rest)
    if not v then return nil, "bad integer reply" end
    return v
  end
  if t == "$" then
    local n = tonumber(rest)
    if not n or n < -1 or n > REPLY_CAP then return nil, "bad bulk reply" end
    if n == -1 then return ngx.null end
    local data
    data, err = sock:receive(n + 2)
    if not data then return nil, err end
    return data:sub(1, n)
  end
  if t == "*" then
    local n = tonumber(rest)
    if not n or n < -1 or n > 1024 or depth > 4 then return nil, "bad array reply" end
    if n == -1 then return ngx.null end
    local arr = {}
    for i = 1, n do
      local v, e, rerr = read_reply(sock, depth + 1)
      if v == nil then return nil, e, rerr end
      arr[i] = v
    end
    return arr
  end
  return nil, "the reply is not Redis protocol"
end

local Redis = {}
Redis.__index = Redis

-- Connections differ by credentials: each distinct set gets a pool of its own. The pool name
-- holds a number, not the credentials.
local pool_ids, pool_n = {}, 0

-- Sends one command; value | nil, err. The error never holds the arguments (tokens, password).
local function command(sock, args, what)
  local ok, err = sock:send(encode(args))
  if not ok then return nil, what .. ": sending failed: " .. tostring(err) end
  local v, rerr, is_reply = read_reply(sock, 0)
  if v == nil then
    if is_reply then -- without what "unknown command ..., with args beginning with:" echoes
      local text = tostring(rerr)
      text = text:sub(1, (text:find(", with args", 1, true) or 121) - 1):sub(1, 120)
      return nil, what .. " was refused: " .. text
    end
    return nil, what .. ": reading the reply failed: " .. tostring(rerr)
  end
  return v
end

-- A ready connection (AUTH and SELECT done when fresh) | nil, err.
function Redis:connect()
  local sock = ngx.socket.tcp()
  local ms = math.floor(self.timeout * 1000)
  sock:settimeouts(ms, ms, ms)
  local ok, err = sock:connect(self.host, self.port, { pool = self.pool })
  if not ok then return nil, self.where .. ": cannot connect: " .. tostring(err) end
  if sock:getreusedtimes() == 0 then
    if self.tls then
      -- verified against lua_ssl_trusted_certificate, for the name server_name (default: host).
      -- pcall: lua-resty-core 0.1.25 can raise an assertion instead of returning the error
      -- when verification fails; either way the handshake failed.
      local pok
      pok, ok, err = pcall(sock.sslhandshake, sock, nil, self.server_name, true)
      if not pok then ok, err = nil, "certificate not accepted" end
      if not ok then
        sock:close()
        return nil, self.where .. ": TLS handshake failed: " .. tostring(err) .. (self.ip_name and
          " (nginx checks DNS names only: set redis.server_name to a name in the certificate)" or "")
      end
    end
    if self.password then
      local args = { "AUTH", self.password }
      if self.username then args = { "AUTH", self.username, self.password } end
      ok, err = command(sock, args, "AUTH")
      args = nil -- luacheck: ignore (drop the reference to the password early)
      if not ok then
        sock:close()
        return nil, self.where .. ": " .. err .. " (check the redis password and username)"
      end
    end
    if self.db ~= 0 then
      ok, err = command(sock, { "SELECT", self.db }, "SELECT")
      if not ok then
        sock:close()
        return nil, self.where .. ": " .. err
      end
    end
  end
  return sock
end

-- Runs one command on a pooled connection: value | nil, err.
function Redis:run(args, what)
  local sock, err = self:connect()
  if not sock then return nil, err end
  local v
  v, err = command(sock, args, what)
  if v == nil then
    sock:close()
    return nil, self.where .. ": " .. err
  end
  sock:setkeepalive(self.keepalive_ms, self.pool_size)
  return v
end

function Redis:get(key)
  local v, err = self:run({ "GET", key }, "GET")
  if v == nil then return nil, err end
  if type(v) ~= "string" then return nil end -- ngx.null: nothing stored
  return v
end

function Redis:set(key, blob, ttl)
  if not ttl or ttl < 0.001 then return true end -- an expired token: nothing worth keeping
  local v, err = self:run({ "SET", key, blob, "PX", math.floor(ttl * 1000) }, "SET")
  if v == nil then return nil, err end
  return true
end

function Redis:lock(key, ttl)
  local owner = new_owner()
  local v, err = self:run({ "SET", key, owner, "NX", "PX", math.max(1000, math.floor(ttl * 1000)) }, "SET NX")
  if v == nil then return nil, err end
  if v == ngx.null then return false end
  self.owners[key] = owner
  return true
end

-- compare-and-delete: a lock that lapsed and was taken by another process stays theirs.
-- true | nil, err (the lock then lapses after its ttl)
function Redis:unlock(key)
  local owner = self.owners[key]
  self.owners[key] = nil
  if not owner then return true end
  local v, err = self:run({ "EVAL", UNLOCK_SCRIPT, 1, key, owner }, "EVAL")
  if v == nil then return nil, err end
  return true
end

local REDIS_FIELDS = {
  host = "string", port = "number", db = "number", username = "string", password = "string",
  tls = "boolean", prefix = "string", timeout = "number", refresh_ttl = "number", insecure = "boolean",
  -- OpenResty only:
  server_name = "string", pool_size = "number", keepalive_timeout = "number",
}

-- resty_store.redis(conf) --> store; raises (no position) on a bad field. conf: host (127.0.0.1), port (6379),
-- password, username, db (0), tls (false), timeout (1 s), and for OpenResty only: server_name
-- (the name the TLS certificate must carry; default host), pool_size (16),
-- keepalive_timeout (60 s). prefix is read by lusidauth.resty, not here.
function M.redis(conf)
  conf = conf or {}
  if type(conf) ~= "table" then error("lusidauth.resty: option 'redis' must be a table, not a " .. type(conf), 0) end
  for k, v in pairs(conf) do
    if k == "ca_file" then
      error("lusidauth.resty: option 'redis.ca_file' is not used by cosockets: put the CA in nginx's "
        .. "lua_ssl_trusted_certificate", 0)
    end
    local want = REDIS_FIELDS[k]
    if not want then
      error("lusidauth.resty: unknown option 'redis." .. tostring(k) .. "' (known: host, port, db, username, "
        .. "password, tls, prefix, timeout, refresh_ttl, insecure, server_name, pool_size, keepalive_timeout)", 0)
    end
    if type(v) ~= want then
      error(("lusidauth.resty: option 'redis.%s' must be a %s, not a %s"):format(k, want, type(v)), 0)
    end
  end
  local function range(k, def, lo, hi)
    local v = conf[k] or def
    if v < lo or v > hi then error(("lusidauth.resty: option 'redis.%s' must be in %s..%s"):format(k, lo, hi), 0) end
    return v
  end
  local r = setmetatable({
    host = conf.host or "127.0.0.1",
    port = math.floor(range("port", 6379, 1, 65535)),
    db = math.floor(range("db", 0, 0, 1000000)),
    username = conf.username,
    password = conf.password,
    tls = conf.tls or false,
    timeout = range("timeout", 1, 0.001, 3600),
    pool_size = math.floor(range("pool_size", 16, 1, 100000)),
    keepalive_ms = math.floor(range("keepalive_timeout", 60, 0.001, 86400) * 1000),
    owners = {},
  }, Redis)
  if r.username and not r.password then error("lusidauth.resty: option 'redis.username' needs redis.password", 0) end
  -- as the C store: tokens and the password go over this connection, in clear text only on loopback
  local h = r.host:gsub("^%[(.*)%]$", "%1")
  local loopback = h == "localhost" or h == "::1" or h:match("^127%.") ~= nil
  if not r.tls and not loopback and not conf.insecure then
    error("lusidauth.resty: option 'redis.host' is not a loopback address: set redis.tls = true "
      .. "(or redis.insecure = true to send tokens in clear text)", 0)
  end
  if conf.prefix and #conf.prefix > 200 then
    error("lusidauth.resty: option 'redis.prefix' must be at most 200 bytes", 0)
  end
  r.server_name = conf.server_name or r.host
  r.ip_name = not conf.server_name and (r.host:match("^[%d.]+$") or r.host:find(":", 1, true)) and true
  local bracket = r.host:find(":", 1, true)
  r.where = ("redis at %s%s%s:%d%s"):format(bracket and "[" or "", r.host, bracket and "]" or "", r.port,
    r.tls and " (TLS)" or "")
  local creds = table.concat({ r.host, r.port, r.db, tostring(r.tls), r.server_name, r.username or "",
    r.password or "" }, "\0")
  if not pool_ids[creds] then
    pool_n = pool_n + 1
    pool_ids[creds] = pool_n
  end
  r.pool = ("lusidauth.redis:%s:%d#%d"):format(r.host, r.port, pool_ids[creds])
  return r
end

M.DEFAULT_PREFIX = DEFAULT_PREFIX

-- Whether v implements the interface.
function M.is_store(v)
  local t = type(v)
  if t ~= "table" and t ~= "userdata" then return false end
  local ok, good = pcall(function()
    return type(v.get) == "function" and type(v.set) == "function" and type(v.lock) == "function"
      and type(v.unlock) == "function"
  end)
  return ok and good
end

return M

-- The Redis store: clients with their own caches (as separate processes have) share one token
-- and one refresh-token chain through a real redis-server on loopback (tools/test.sh starts
-- it: LUSIDAUTH_REDIS_PORT, _TLS_PORT, _PASSWORD, _CA, _DIR).
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"

local R = {
  port = tonumber(os.getenv("LUSIDAUTH_REDIS_PORT")),
  tls_port = tonumber(os.getenv("LUSIDAUTH_REDIS_TLS_PORT")),
  password = os.getenv("LUSIDAUTH_REDIS_PASSWORD"),
  ca = os.getenv("LUSIDAUTH_REDIS_CA"),
  dir = os.getenv("LUSIDAUTH_REDIS_DIR"),
}
local LUA = os.getenv("LUSIDAUTH_LUA") or "lua5.4"

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- redis-cli's output lines for one command (db 0 unless -n is given in args).
local function rcli(args)
  local p = io.popen("redis-cli -h 127.0.0.1 -p " .. R.port .. " -a " .. quote(R.password) ..
    " --no-auth-warning " .. args .. " 2>&1")
  local out = p:read("*a")
  p:close()
  local lines = {}
  for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return lines, out
end

local function redis_opts(extra)
  local o = F.password_opts { shared = false, store = "redis", deadline = 15,
    redis = { port = R.port, password = R.password } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- The fake Okta saw exactly these password and refresh grants, and no refresh token reused.
local function assert_counts(password, refresh)
  local s = okta.stats()
  assert.same({ password = password, refresh_token = refresh, client_credentials = 0, other = 0 }, s.grants)
  assert.equal(0, s.reuse)
end

-- A loopback port nothing listens on.
local function closed_port()
  local s = require("socket").bind("127.0.0.1", 0)
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function logger()
  local lines = {}
  return function(level, msg) lines[#lines + 1] = level .. ": " .. msg end, lines
end

-- fn(arg) raises an error whose message contains want.
local function raises(want, fn, arg)
  local ok, err = pcall(fn, arg)
  assert.is_false(ok)
  assert.is_truthy(tostring(err):find(want, 1, true), tostring(err))
end

-- The one identity's state key (its chain key is the same plus ":chain").
local function key_of()
  local keys = rcli("--scan")
  table.sort(keys)
  assert.equal(2, #keys, table.concat(keys, ","))
  assert.equal(keys[1] .. ":chain", keys[2])
  return keys[1]
end

describe("the Redis store", function()
  local lusidauth = require "lusidauth"
  assert.is_number(R.port, "LUSIDAUTH_REDIS_PORT: tools/test.sh starts redis-server")

  before_each(function()
    okta.reset()
    rcli("flushall")
  end)

  it("lets clients with their own caches share one login", function()
    local c1, c2 = lusidauth.new_password(redis_opts()), lusidauth.new_password(redis_opts())
    local t1 = assert(c1:token())
    local t2 = assert(c2:token())
    assert.equal(t1, t2)
    assert.same({ password = 1, refresh_token = 0, client_credentials = 0, other = 0 }, okta.stats().grants)
  end)

  it("keeps the state under the prefix and a hash, with a TTL of the token's remaining life; the chain longer",
    function()
    okta.config { expires_in = 30 }
    local c = lusidauth.new_password(redis_opts())
    assert(c:token())
    local key = key_of()
    assert.matches("^lusidauth:%x+$", key)
    assert.equal(32, #key - #"lusidauth:")
    local pttl = tonumber(rcli("pttl " .. key)[1])
    local left = c:expires_in() * 1000 -- the token's remaining life, as this client sees it
    assert.is_true(pttl <= 30000 and math.abs(pttl - left) < 1500, "pttl " .. pttl .. ", left " .. left)
    local _, value = rcli("get " .. key)
    assert.matches("^lusidauth%-store 1\nsalt %x+\nverifier %x+\nexpires_at [%d.]+\n" ..
      "refresh_at [%d.]+\naccess_token ", value)
    for _, s in ipairs { F.username, "alice", F.password, F.client_secret, R.password } do
      assert.is_nil(key:find(s, 1, true), s)
      assert.is_nil(value:find(s, 1, true), s)
    end
    assert.equal(0, #rcli("--scan --pattern '*:lock'"), "the lock was released")
    -- the refresh token outlives the access token: it is kept apart, for redis.refresh_ttl
    local chain_ttl = tonumber(rcli("pttl " .. key .. ":chain")[1])
    assert.is_true(chain_ttl > 7 * 86400000 - 60000 and chain_ttl <= 7 * 86400000, "chain pttl " .. chain_ttl)
    local _, chain = rcli("get " .. key .. ":chain")
    assert.matches("^lusidauth%-store 1\nsalt %x+\nverifier %x+\nrefresh_token %S+\n%s*$", chain)
  end)

  it("uses the database number and key prefix it is given", function()
    local c = lusidauth.new_password(redis_opts { redis = { port = R.port, password = R.password,
      db = 3, prefix = "team-a:" } })
    assert(c:token())
    assert.equal(0, #rcli("--scan"), "nothing in database 0")
    local keys = rcli("-n 3 --scan")
    table.sort(keys)
    assert.equal(2, #keys)
    assert.matches("^team%-a:%x+$", keys[1])
    assert.equal(keys[1] .. ":chain", keys[2])
  end)

  it("works over TLS, verifying the server against ca_file, and shares with a plain client", function()
    local tls = lusidauth.new_password(redis_opts { redis = { port = R.tls_port, password = R.password,
      tls = true, ca_file = R.ca } })
    local plain = lusidauth.new_password(redis_opts())
    assert.equal(assert(tls:token()), assert(plain:token()))
    assert.equal(1, okta.stats().grants.password)
  end)

  it("refuses a TLS server it cannot verify, says so, and still gets a token", function()
    local log, lines = logger()
    local c = lusidauth.new_password(redis_opts { log = log, redis = { port = R.tls_port,
      password = R.password, tls = true } }) -- the system CAs do not know the test CA
    assert.is_true(okta.validate(assert(c:token())).valid)
    assert.matches("warn: token store: redis at 127.0.0.1:%d+ %(TLS%): TLS handshake failed: " ..
      "certificate not accepted: .*; this process refreshes on its own until it is back",
      lines[1])
  end)

  -- #timing: 2 s sleeps against a 4 s token; valgrind's 50x slower KDF would outlast them
  it("refreshes once for both, and the second uses the rotated chain without reuse #timing", function()
    okta.config { expires_in = 4 }
    local c1, c2 = lusidauth.new_password(redis_opts()), lusidauth.new_password(redis_opts())
    local t1 = assert(c1:token())
    assert.equal(t1, assert(c2:token()))
    F.sleep(2.3) -- stale: refreshed on the next call
    local t2 = assert(c1:token())
    assert.are_not.equal(t1, t2)
    assert.equal(t2, assert(c2:token()))
    F.sleep(2.3)
    local t3 = assert(c2:token()) -- c2 refreshes with the token c1's refresh rotated
    assert.are_not.equal(t2, t3)
    assert.equal(t3, assert(c1:token()))
    assert_counts(1, 2)
  end)

  it("gives a client with a wrong password nothing from the store", function()
    assert(lusidauth.new_password(redis_opts()):token())
    local t, err = lusidauth.new_password(redis_opts { password = "wrong password" }):token()
    assert.is_nil(t)
    assert.equal("oauth", err.kind)
    assert.equal(2, okta.stats().grants.password)
  end)

  it("waits for a lock another process holds, until it lapses", function()
    -- learn the identity's key from a first run, then hold its lock as another process would
    assert(lusidauth.new_password(redis_opts()):token())
    local lock = key_of() .. ":lock"
    rcli("flushall")
    rcli("set " .. lock .. " someone-else px 1500")
    local c = lusidauth.new_password(redis_opts())
    local t0 = require("socket").gettime()
    assert(c:token())
    local waited = require("socket").gettime() - t0
    assert.is_true(waited >= 1.2, "waited " .. waited)
    assert.equal(0, tonumber(rcli("exists " .. lock)[1]), "our lock was released")
    assert.equal(2, okta.stats().grants.password) -- the first run's, and this one's
  end)

  it("releases only its own lock: a lock that lapsed and was taken by another stays", function()
    assert(lusidauth.new_password(redis_opts()):token())
    local lock = key_of() .. ":lock"
    rcli("flushall")
    okta.script { { pass = true, delay = 2 } } -- the next login takes 2 s
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(([[
local l = require "lusidauth"
local c = l.new_password { token_url = %q, client_id = %q, client_secret = %q, username = %q,
  password = %q, store = "redis", redis = { port = %d, password = %q } }
print((c:token()) and "ok" or "err")
]]):format(okta.token_url("http"), F.client_id, F.client_secret, F.username, F.password, R.port, R.password))
    f:close()
    local out = os.tmpname()
    os.execute(LUA .. " " .. quote(script) .. " > " .. quote(out) .. " 2>&1 &")
    F.sleep(1) -- the child holds the lock, waiting for the slow login
    assert.equal(1, tonumber(rcli("exists " .. lock)[1]))
    rcli("set " .. lock .. " someone-else px 20000") -- as if its lock had lapsed and been retaken
    F.sleep(2.5)
    f = io.open(out)
    local got = f:read("*a")
    f:close()
    os.remove(script)
    os.remove(out)
    assert.equal("ok\n", got)
    assert.equal("someone-else", rcli("get " .. lock)[1])
  end)

  it("keeps tokens flowing when Redis cannot be reached, and says so through the log hook", function()
    local closed = closed_port()
    local log, lines = logger()
    local c = lusidauth.new_password(redis_opts { log = log, redis = { port = closed } })
    assert.is_true(okta.validate(assert(c:token())).valid)
    assert.equal("warn: token store: redis at 127.0.0.1:" .. closed .. ": cannot connect: Connection refused; "
      .. "this process refreshes on its own until it is back", lines[1])
  end)

  it("says AUTH was refused without showing the password, and still gets a token", function()
    local log, lines = logger()
    local c = lusidauth.new_password(redis_opts { log = log, redis = { port = R.port,
      password = "not-the-redis-password" } })
    assert.is_true(okta.validate(assert(c:token())).valid)
    assert.matches("AUTH was refused", lines[1])
    for _, l in ipairs(lines) do assert.is_nil(l:find("not-the-redis-password", 1, true)) end
    assert.is_nil(tostring(c):find("not-the-redis-password", 1, true))
  end)

  it("goes on alone while Redis is down, not rotating the shared refresh token; shares again #timing", function()
    okta.config { expires_in = 4 }
    local log, lines = logger()
    local c1 = lusidauth.new_password(redis_opts { log = log })
    local t1 = assert(c1:token())
    assert.equal(t1, assert(lusidauth.new_password(redis_opts()):token()))
    os.execute("sh spec/support/redis.sh stop " .. quote(R.dir))
    local ok, problem = pcall(function()
      F.sleep(2.3)
      local t2 = assert(c1:token()) -- stale, Redis down: a password login, not a refresh
      assert.are_not.equal(t1, t2)
      assert.is_true(okta.validate(t2).valid)
      assert.same({ password = 2, refresh_token = 0, client_credentials = 0, other = 0 }, okta.stats().grants)
      local text = table.concat(lines, "\n")
      assert.matches("warn: token store: redis at 127%.0%.0%.1:%d+: [^\n]*; this process refreshes on its own", text)
      assert.matches("not rotating a refresh token other processes may hold", text)
    end)
    assert(os.execute("sh spec/support/redis.sh start " .. quote(R.dir) .. " >/dev/null"))
    assert(ok, problem)
    F.sleep(2.3)
    local t3 = assert(c1:token()) -- back (empty): its own chain, refreshed and stored
    local later = lusidauth.new_password(redis_opts())
    assert.equal(t3, assert(later:token()))
    assert_counts(2, 1)
  end)

  it("serves a forced refresh() from the stored chain: no refresh token is used twice", function()
    local c1, c2 = lusidauth.new_password(redis_opts()), lusidauth.new_password(redis_opts())
    assert.equal(assert(c1:token()), assert(c2:token()))
    assert(c1:refresh())
    assert(c2:refresh()) -- with the token c1's refresh rotated, not its own old copy
    assert(c1:refresh()) -- and back
    assert_counts(1, 3)
  end)

  it("does not hand back a token that was invalidated (after a 401)", function()
    local c1, c2 = lusidauth.new_password(redis_opts()), lusidauth.new_password(redis_opts())
    local t1 = assert(c1:token())
    c1:invalidate()
    local t2 = assert(c1:token())
    assert.are_not.equal(t1, t2)
    assert.equal(t2, assert(c2:token()))
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, okta.stats().grants)
  end)

  it("keeps the refresh-token chain after the state expired, for a client with only a refresh token", function()
    okta.config { expires_in = 3 }
    local c0 = lusidauth.new_password(F.password_opts { shared = false })
    assert(c0:token())
    local r0 = assert(c0:refresh_token())
    local function rt_client()
      return lusidauth.new_refresh_token(F.cc_opts { refresh_token = r0, shared = false, store = "redis",
        redis = { port = R.port, password = R.password } })
    end
    assert(rt_client():token()) -- r0 -> r1, stored
    F.sleep(3.3) -- the state (and its access token) expired; the chain is kept
    local keys = rcli("--scan")
    assert.equal(1, #keys)
    assert.matches("^lusidauth:%x+:chain$", keys[1])
    local t = assert(rt_client():token()) -- a new process started from r0: it uses r1
    assert.is_true(okta.validate(t).valid)
    assert_counts(1, 2)
  end)

  it("stores a rotated refresh token even when on_refresh_token raises", function()
    local c1 = lusidauth.new_password(redis_opts { on_refresh_token = function() error("disk full") end })
    assert.has_error(function() c1:token() end)
    local c2 = lusidauth.new_password(redis_opts())
    local t = assert(c2:token()) -- the stored state, not a second login
    assert.equal(1, okta.stats().grants.password)
    assert.is_true(okta.validate(t).valid)
    assert(c2:refresh())
    assert.equal(0, okta.stats().reuse)
  end)

  it("goes on alone after waiting out a lock held past the deadline, without rotating a shared token #timing",
    function()
    okta.config { expires_in = 3 }
    local log, lines = logger()
    local c1 = lusidauth.new_password(redis_opts { log = log, deadline = 3 }) -- waits 1.5 s for the lock
    assert(c1:token())
    local lock = key_of() .. ":lock"
    F.sleep(3.2) -- expired
    rcli("set " .. lock .. " someone-else px 60000")
    assert.is_true(okta.validate(assert(c1:token())).valid)
    assert.matches("another process held the refresh lock past the deadline; going on without it",
      table.concat(lines, "\n"))
    assert_counts(2, 0)
  end)

  it("survives a log hook that closes the client while the store is down", function()
    local closed = closed_port()
    local c
    c = lusidauth.new_password(redis_opts { redis = { port = closed },
      log = function(level) if level == "warn" then c:close() end end })
    local ok, err = pcall(c.token, c)
    assert.is_false(ok)
    assert.matches("the client was closed during its refresh", tostring(err))
  end)

  it("does not share one chain between clients with and without the store", function()
    local with = lusidauth.new_password(F.password_opts { store = "redis", redis = { port = R.port,
      password = R.password } })
    local without = lusidauth.new_password(F.password_opts())
    local again = lusidauth.new_password(F.password_opts { store = "redis", redis = { port = R.port,
      password = R.password } })
    assert(with:token())
    assert(without:token())
    assert(again:token())
    assert.equal(2, okta.stats().grants.password) -- one per chain: the store's, and the other
  end)

  it("names a bad option clearly", function()
    raises("unknown option 'redis.bogus'", lusidauth.new_password, redis_opts { redis = { bogus = 1 } })
    raises("option 'redis.port' must be a number, not a string", lusidauth.new_password,
      redis_opts { redis = { port = "6379" } })
    raises("option 'redis' needs store = \"redis\"", lusidauth.new_password,
      F.password_opts { redis = { port = 1 } })
    raises("option 'store' must be \"file\" or \"redis\"", lusidauth.new_password,
      F.password_opts { store = "memcached" })
    raises("option 'redis.tls' must be a boolean", lusidauth.new_password,
      redis_opts { redis = { tls = "yes" } })
    raises("option 'redis.host' is not a loopback address: set redis.tls = true", lusidauth.new_password,
      redis_opts { redis = { host = "redis.example.com" } })
    raises("option 'redis.username' needs redis.password", lusidauth.new_password,
      redis_opts { redis = { username = "app" } })
    raises("option 'redis.prefix' must be at most 200 bytes", lusidauth.new_password,
      redis_opts { redis = { prefix = ("x"):rep(201) } })
  end)
end)

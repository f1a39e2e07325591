-- A hostile token endpoint: one row per misbehaviour, each asserting the exact outcome, the
-- exact number of token requests, that a still-valid token survives, and that the process
-- is unharmed afterwards. Rules under test: csrc/flow.c, csrc/response.c, csrc/http.c.
local lusidauth = require "lusidauth"
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"
local H = require "spec.support.hostile"
local socket = require "socket"

local CA = os.getenv("LUSIDAUTH_TEST_CA")
local DAY = 86400

local function html(status)
  return ("<!DOCTYPE html><html><head><title>%d</title></head><body><h1>Error %d</h1>"
    .. "<p>The upstream server is unavailable.</p></body></html>"):format(status, status)
end

-- A token response body with one field changed (okta.null removes it).
local function body(over)
  local t = { access_token = "at.scripted", token_type = "Bearer", expires_in = 3600 }
  for k, v in pairs(over or {}) do t[k] = v end
  return t
end

-- Small limits so that every row settles in well under a second (unless it sleeps on purpose).
-- shared = false: every row's client has its own cache, though all have the same identity.
-- LUSIDAUTH_TEST_SLOW stretches the default limits and the upper time bounds (not the rows' own
-- timeouts) for runs under valgrind, where loading the system CA store alone takes seconds.
local SLOW = tonumber(os.getenv("LUSIDAUTH_TEST_SLOW") or "") or 1
local BASE = {
  retry_base = 0.01, retries = 2, max_retry_wait = 3, deadline = 8 * SLOW, timeout = 2 * SLOW,
  connect_timeout = 1 * SLOW, refresh_skew = 3, shared = false,
}

local function value(v)
  if type(v) == "function" then return v() end
  return v
end

local function options(row, log)
  local o = {}
  for k, v in pairs(BASE) do o[k] = v end
  for k, v in pairs(value(row.opts) or {}) do o[k] = v end
  o.log = log
  if row.grant == "client_credentials" then return F.cc_opts(o) end
  return F.password_opts(o)
end

-- A token that is still valid but inside its refresh window: lifetime 8 s, window 4 s.
local STALE_LIFETIME, STALE_SKEW = 8, 5

---------------------------------------------------------------------------
-- Rows that start without a token (or as prepare() leaves the client)
---------------------------------------------------------------------------

local FRESH = {
  -- rate limits
  { name = "429 with Retry-After in seconds is honoured, then a token",
    script = { { status = 429, headers = { ["Retry-After"] = "1" }, body = "" } },
    requests = 2, retried = 1, min_elapsed = 0.9, max_elapsed = 6,
    want = { token = "valid" } },
  { name = "429 with Retry-After as an HTTP date is honoured, then a token",
    script = function()
      return { { status = 429, headers = { ["Retry-After"] = H.http_date(os.time() + 2) } } }
    end,
    requests = 2, retried = 1, min_elapsed = 0.9, max_elapsed = 6,
    want = { token = "valid" } },
  { name = "429 with Retry-After past max_retry_wait fails at once with retry_after set",
    script = { { status = 429, headers = { ["Retry-After"] = "120" }, body = '{"message":"slow down"}' } },
    requests = 1, max_elapsed = 3,
    want = { kind = "http", status = 429, retryable = true, retry_after = 120 },
    check = function(ctx) assert.equal(1, H.count(ctx.lines, "max_retry_wait")) end },
  { name = "429 with X-Rate-Limit-Reset (epoch seconds) is honoured, then a token",
    script = function()
      return { { status = 429, headers = { ["X-Rate-Limit-Reset"] = tostring(os.time() + 2) } } }
    end,
    requests = 2, retried = 1, min_elapsed = 0.9, max_elapsed = 6,
    want = { token = "valid" } },
  { name = "429 with X-Rate-Limit-Reset far ahead fails at once with retry_after set",
    script = function()
      return { { status = 429, headers = { ["X-Rate-Limit-Reset"] = tostring(os.time() + 100) } } }
    end,
    requests = 1, max_elapsed = 3,
    want = { kind = "http", status = 429, retryable = true, retry_after = { 95, 101 } } },
  { name = "503 with Retry-After in seconds is honoured too",
    script = { { status = 503, headers = { ["Retry-After"] = "1" }, body = html(503) } },
    requests = 2, retried = 1, min_elapsed = 0.9, max_elapsed = 6,
    want = { token = "valid" } },
  { name = "a Retry-After that would pass the deadline fails at once",
    opts = { deadline = 1 },
    script = { { status = 429, headers = { ["Retry-After"] = "2" } } },
    requests = 1, max_elapsed = 1,
    want = { kind = "http", status = 429, retryable = true, retry_after = 2, message = "deadline" } },
  { name = "429 with an unparseable Retry-After backs off on its own and gives up",
    script = { { status = 429, headers = { ["Retry-After"] = "soon" }, times = 3 } },
    requests = 3, retried = 2, max_elapsed = 3,
    want = { kind = "http", status = 429, retryable = true, message = "gave up after 3 attempts" } },

  -- server errors with HTML bodies
  { name = "500 with an HTML body is retried, then given up",
    script = { { status = 500, body = html(500), times = 3 } },
    requests = 3, retried = 2,
    want = { kind = "http", status = 500, retryable = true, message = "gave up after 3 attempts" } },
  { name = "502 with an HTML body is retried, then a token",
    script = { { status = 502, body = html(502) } },
    requests = 2, retried = 1, want = { token = "valid" } },
  { name = "503 with an HTML body is retried, then given up",
    script = { { status = 503, body = html(503), headers = { ["Content-Type"] = "text/html" }, times = 3 } },
    requests = 3, retried = 2, want = { kind = "http", status = 503, retryable = true } },
  { name = "an odd status (999) is transient",
    opts = { retries = 0 },
    script = { { raw = "HTTP/1.1 999 Odd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" } },
    requests = 1, want = { kind = "http", status = 999, retryable = true } },

  -- 4xx without an error code: transient
  { name = "400 with an empty body is transient: retried, then given up",
    script = { { status = 400, body = "", times = 3 } },
    requests = 3, retried = 2, want = { kind = "http", status = 400, retryable = true } },
  { name = "401 with an empty body is transient: retried once, then given up",
    opts = { retries = 1 },
    script = { { status = 401, body = "", times = 2 } },
    requests = 2, retried = 1, want = { kind = "http", status = 401, retryable = true } },
  { name = "403 with an empty body and retries = 0 fails after one request",
    opts = { retries = 0 },
    script = { { status = 403, body = "" } },
    requests = 1, want = { kind = "http", status = 403, retryable = true } },

  -- bodies that are not a JSON object
  { name = "200 with a non-JSON body is a protocol error",
    script = { { status = 200, body = "<html><body>Welcome to nginx!</body></html>" } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "not JSON" } },
  { name = "200 with truncated JSON is a protocol error",
    script = { { status = 200, body = '{"access_token":"at.cut","token_type":"Bea' } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "not JSON" } },
  { name = "200 with a JSON array is a protocol error",
    script = { { status = 200, body = '[{"access_token":"at.in-array","token_type":"Bearer","expires_in":3600}]' } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "JSON array" } },
  { name = "200 with a JSON string is a protocol error",
    script = { { status = 200, body = '"at.just-a-string"' } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "not an object" } },
  { name = "200 with JSON null is a protocol error",
    script = { { status = 200, body = "null" } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false } },
  { name = "200 with 5000 nested arrays is a protocol error, not a crash",
    script = { { status = 200, body = ("["):rep(5000) .. ("]"):rep(5000) } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "not JSON" } },
  { name = "200 with a token object holding 5000 nested objects is a protocol error",
    script = { { status = 200,
                 body = '{"access_token":"at.deep","x":' .. ('{"a":'):rep(5000) .. "1" .. ("}"):rep(5001) } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false } },
  { name = "200 with an empty body is a protocol error",
    script = { { status = 200, body = "" } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "empty" } },
  { name = "a body over the 1 MiB cap is refused",
    -- the control API takes at most 1 MiB per call: two fields of 600 kB make a 1.2 MB answer
    config = function()
      okta.config { token_type = ("B"):rep(600000) }
      okta.config { expires_in = ("9"):rep(600000) }
    end,
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "exceeds 1048576 bytes" } },

  -- access_token
  { name = "access_token missing is a protocol error",
    script = { { status = 200, body = body { access_token = okta.null } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "no access_token" } },
  { name = "access_token empty is a protocol error",
    script = { { status = 200, body = body { access_token = "" } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "empty" } },
  { name = "access_token a number is a protocol error",
    script = { { status = 200, body = body { access_token = 12345 } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "not a string" } },
  { name = "access_token with CR/LF (header injection) is refused",
    script = { { status = 200, body = body { access_token = "at.x\r\nX-Injected: 1" } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "control character" } },
  { name = "access_token with a space is refused",
    script = { { status = 200, body = body { access_token = "at.x y" } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "space" } },
  { name = "access_token with an escaped NUL is refused",
    script = { { status = 200, body = '{"access_token":"at.\\u0000x","token_type":"Bearer"}' } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "control character" } },
  { name = "access_token with non-ASCII bytes is refused",
    script = { { status = 200, body = body { access_token = "at.\195\169t\195\169" } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false } },
  { name = "access_token over 16 KiB is refused",
    script = { { status = 200, body = body { access_token = ("a"):rep(20000) } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "too long" } },
  { name = "refresh_token a number is a protocol error",
    script = { { status = 200, body = body { refresh_token = 42 } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "refresh_token" } },

  -- expires_in
  { name = "expires_in missing means 3600 s",
    config = { expires_in = false },
    requests = 1, want = { token = "valid", expires = { 3590, 3600 } } },
  { name = "expires_in as the string \"3600\" is accepted",
    config = { expires_in = "3600" },
    requests = 1, want = { token = "valid", expires = { 3590, 3600 } } },
  { name = "expires_in zero is a protocol error",
    config = { expires_in = 0 },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "expires_in" } },
  { name = "expires_in negative is a protocol error",
    script = { { status = 200, body = body { expires_in = -5 } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "expires_in" } },
  { name = "expires_in a non-numeric string is a protocol error",
    script = { { status = 200, body = body { expires_in = "soon" } } },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "expires_in" } },
  { name = "expires_in huge is capped at 366 days",
    config = { expires_in = 1e12 },
    requests = 1, want = { token = "valid", expires = { 365 * DAY, 366 * DAY } } },
  { name = "expires_in fractional is accepted",
    config = { expires_in = 1799.5 },
    requests = 1, want = { token = "valid", expires = { 1790, 1800 } } },

  -- token_type
  { name = "token_type lowercase \"bearer\" is accepted",
    config = { token_type = "bearer" },
    requests = 1, want = { token = "valid" } },
  { name = "token_type missing is accepted",
    script = { { status = 200, body = body { token_type = okta.null, access_token = "at.no-type" } } },
    requests = 1, want = { token = "at.no-type", expires = { 3590, 3600 } } },
  { name = "token_type \"mac\" is refused",
    config = { token_type = "mac" },
    requests = 1, want = { kind = "protocol", status = 200, retryable = false, message = "token_type" } },

  -- OAuth errors: permanent
  { name = "status 200 carrying an error body is an oauth error, not retried",
    script = { { status = 200, body = { error = "access_denied", error_description = "Nope." } } },
    requests = 1, want = { kind = "oauth", status = 200, error = "access_denied", retryable = false,
                           error_description = "Nope." } },
  { name = "invalid_client is not retried",
    opts = { client_secret = "not-the-secret" },
    requests = 1, want = { kind = "oauth", status = 401, error = "invalid_client", retryable = false } },
  { name = "invalid_grant on the password grant is not retried",
    opts = { password = "wrong horse" },
    requests = 1, grants = { password = 1 },
    want = { kind = "oauth", status = 400, error = "invalid_grant", retryable = false } },
  { name = "invalid_scope is not retried",
    opts = { scope = "openid bogus_scope" },
    requests = 1, want = { kind = "oauth", status = 400, error = "invalid_scope", retryable = false } },
  { name = "invalid_grant on a refresh logs in with the password exactly once",
    prepare = function(ctx)
      assert.is_string((ctx.c:login()))
      ctx.rt = ctx.c:refresh_token()
      okta.revoke { refresh_token = ctx.rt }
      ctx.c:invalidate()
    end,
    requests = 2, grants = { refresh_token = 1, password = 1 },
    want = { token = "valid" },
    check = function(ctx)
      assert.is_string(ctx.c:refresh_token())
      assert.not_equal(ctx.rt, ctx.c:refresh_token())
      assert.equal(1, H.count(ctx.lines, "password grant, once"))
    end },
  { name = "invalid_grant on a refresh, then on the one password login: no third request",
    prepare = function(ctx)
      assert.is_string((ctx.c:login()))
      okta.revoke { refresh_token = ctx.c:refresh_token() }
      okta.config { users = { [F.username] = "a changed password" } }
      ctx.c:invalidate()
    end,
    requests = 2, grants = { refresh_token = 1, password = 1 },
    want = { kind = "oauth", status = 400, error = "invalid_grant", retryable = false } },
  { name = "invalid_grant for a refresh-token client: no password, and the dead token is dropped",
    client = function(opts)
      local login = lusidauth.new_password(F.password_opts())
      assert.is_string((login:login()))
      local rt = login:refresh_token()
      login:close()
      okta.revoke { refresh_token = rt }
      local o = {}
      for k, v in pairs(opts) do o[k] = v end
      o.username, o.password, o.refresh_token = nil, nil, rt
      return lusidauth.new_refresh_token(o)
    end,
    requests = 1, grants = { refresh_token = 1 },
    want = { kind = "oauth", status = 400, error = "invalid_grant", retryable = false },
    check = function(ctx)
      local before = okta.stats().requests
      local t, err = ctx.c:token()
      assert.is_nil(t)
      assert.equal("config", err.kind)
      assert.is_false(err.retryable)
      assert.equal(before, okta.stats().requests)
    end },

  -- slow, hanging, cut and refused connections
  { name = "a slow response past timeout is a timeout",
    opts = { timeout = 0.5, retries = 0 },
    script = { { delay = 2, status = 200, body = body() } },
    requests = 1, max_elapsed = 1.8, want = { kind = "timeout", retryable = true } },
  { name = "a slow response is retried, then a token",
    opts = { timeout = 0.5, retries = 1 },
    script = { { delay = 2, status = 503 } },
    requests = 2, retried = 1, max_elapsed = 1.8, want = { token = "valid" } },
  { name = "a server that accepts and never answers is a timeout",
    opts = { timeout = 0.5, retries = 0 },
    script = { { hang = true } },
    requests = 1, max_elapsed = 1.8, want = { kind = "timeout", retryable = true } },
  { name = "a connection cut mid-body is a network error",
    opts = { retries = 0 },
    script = { { status = 200, body = body(), close_after = 10 } },
    requests = 1, want = { kind = "network", retryable = true } },
  { name = "a connection cut mid-body is retried, then a token",
    script = { { status = 200, body = body(), close_after = 10 } },
    requests = 2, retried = 1, want = { token = "valid" } },
  { name = "a reply that is not HTTP is a retryable network error, not a config error",
    opts = { retries = 0 },
    script = { { raw = "SSH-2.0-OpenSSH_9.2\r\n\r\n" } },
    requests = 1, want = { kind = "network", retryable = true } },
  { name = "a refused connection is a network error, retried",
    opts = function()
      return { retries = 1, token_url = "http://127.0.0.1:" .. H.closed_port() .. "/oauth2/default/v1/token" }
    end,
    requests = 0, retried = 1, max_elapsed = 3, want = { kind = "network", retryable = true } },

  { name = "chunked encoding that is garbage is a network error",
    opts = { retries = 0 },
    script = { { raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" } },
    requests = 1, want = { kind = "network", retryable = true } },
  { name = "a 200 KB response header is a network error, not a crash",
    opts = { retries = 0 },
    script = { { status = 200, headers = { ["X-Padding"] = ("a"):rep(200000) }, body = body() } },
    requests = 1, want = { kind = "network", retryable = true } },
  { name = "a 100 Continue before the answer is skipped",
    script = function()
      local b = '{"access_token":"at.after-100","token_type":"Bearer","expires_in":3600}'
      return { { raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        .. "Content-Length: " .. #b .. "\r\nConnection: close\r\n\r\n" .. b } }
    end,
    requests = 1, want = { token = "at.after-100", expires = { 3590, 3600 } } },
  { name = "a log hook that raises does not break retries",
    log_raises = true,
    script = { { status = 503, body = html(503) } },
    requests = 2, retried = 1, want = { token = "valid" } },

  -- redirects and TLS
  { name = "a 302 to another host is not followed",
    script = function()
      return { { status = 302, headers = { Location = okta.token_url("http", "localhost") } } }
    end,
    requests = 1, want = { kind = "http", status = 302, retryable = false, message = "redirect not followed" } },
  { name = "TLS signed by an unknown CA is refused",
    opts = function() return { token_url = okta.token_url("https-untrusted"), ca_file = CA } end,
    requests = 0, want = { kind = "tls", retryable = false } },
  { name = "TLS for the wrong host name is refused",
    opts = function() return { token_url = okta.token_url("https-wronghost"), ca_file = CA } end,
    requests = 0, want = { kind = "tls", retryable = false } },
  { name = "TLS from the test CA without ca_file is refused (the system store lacks it)",
    opts = function() return { token_url = okta.token_url("https") } end,
    requests = 0, want = { kind = "tls", retryable = false } },
  { name = "https to a plain-http port is a TLS error",
    opts = function() return { token_url = (okta.token_url("http"):gsub("^http:", "https:")), ca_file = CA } end,
    requests = 0, want = { kind = "tls", retryable = false } },
  { name = "TLS with the test CA in ca_file works (control)",
    opts = function() return { token_url = okta.token_url("https", "localhost"), ca_file = CA } end,
    requests = 1, want = { token = "valid" } },
  { name = "plain http to a non-loopback host raises unless insecure_http = true",
    action = function()
      local url = "http://okta.example.com/oauth2/default/v1/token"
      local ok, msg = pcall(lusidauth.new_password, F.password_opts { token_url = url })
      assert.is_false(ok)
      assert.matches("https", msg, 1, true)
      assert.matches("token_url", msg, 1, true)
      local c = lusidauth.new_password(F.password_opts { token_url = url, insecure_http = true })
      assert.matches("^lusidauth%.client %(password", tostring(c))
      c:close()
      return "constructed"
    end,
    requests = 0, want = { value = "constructed" } },
}

---------------------------------------------------------------------------
-- Rows that start with a still-valid token inside its refresh window
---------------------------------------------------------------------------

local STALE = {
  { name = "stale token, refresh gets 503: the token is served, no retry",
    script = { { status = 503, body = html(503) } } },
  { name = "stale token, refresh gets 429 with Retry-After 120: served at once, no sleep",
    script = { { status = 429, headers = { ["Retry-After"] = "120" } } }, max_elapsed = 2 },
  { name = "stale token, refresh times out: served",
    opts = { timeout = 0.5 },
    script = { { delay = 2, status = 200, body = body() } }, max_elapsed = 1.8 },
  { name = "stale token, refresh answers non-JSON: served",
    script = { { status = 200, body = "<html>maintenance</html>" } } },
  { name = "stale token, refresh answers truncated JSON: served",
    script = { { status = 200, body = '{"access_token":"at.cu' } } },
  { name = "stale token, refresh answers a token with CR/LF: served",
    script = { { status = 200, body = body { access_token = "at.x\r\nSet-Cookie: a=b" } } } },
  { name = "stale token, refresh answers token_type mac: served",
    script = { { status = 200, body = body { token_type = "mac" } } } },
  { name = "stale token, refresh answers over 1 MiB: served",
    prepare = function()
      okta.config { token_type = ("B"):rep(600000) }
      okta.config { expires_in = ("9"):rep(600000) }
    end },
  { name = "stale token, refresh gets a 302: served, not followed",
    script = function()
      return { { status = 302, headers = { Location = okta.token_url("http", "localhost") } } }
    end },
  { name = "stale token, refresh cut mid-body: served",
    script = { { status = 200, body = body(), close_after = 5 } } },
  { name = "stale token, refresh gets invalid_client: served",
    script = { { status = 401,
                 body = { error = "invalid_client", error_description = "Client authentication failed." } } } },
  { name = "stale token, refresh gets 200 with an error body: served",
    script = { { status = 200, body = { error = "server_error" } } } },
  { name = "stale token (client credentials), grant gets 500: served",
    grant = "client_credentials",
    script = { { status = 500, body = html(500) } } },
  { name = "stale token, refresh gets invalid_grant: exactly one password login, a new token",
    prepare = function(ctx) okta.revoke { refresh_token = ctx.c:refresh_token() } end,
    requests = 2, grants = { refresh_token = 1, password = 1 },
    want = { token = "new" },
    check = function(ctx) assert.equal(1, H.count(ctx.lines, "password grant, once")) end },
}

---------------------------------------------------------------------------
-- The runner
---------------------------------------------------------------------------

local LEVELS = { debug = true, info = true, warn = true }
local GRANTS = { "password", "refresh_token", "client_credentials", "other" }

local function field(name, want, got)
  if want == nil then
    assert.is_nil(got, "err." .. name)
  elseif type(want) == "table" then
    assert.is_number(got, "err." .. name)
    assert.is_true(got >= want[1] and got <= want[2], ("err.%s = %s, not in [%s, %s]"):format(
      name, tostring(got), want[1], want[2]))
  else
    assert.equal(want, got, "err." .. name)
  end
end

local function check_expires(want, c, second)
  assert.is_number(second)
  local left = c:expires_in()
  assert.is_number(left)
  assert.is_true(left > 0, "expires_in() > 0")
  if want.expires then
    for _, v in ipairs { second, left } do
      assert.is_true(v >= want.expires[1] and v <= want.expires[2],
        ("expires_in %s not in [%s, %s]"):format(tostring(v), want.expires[1], want.expires[2]))
    end
  end
end

local function check_outcome(row, ctx, first, second)
  local want = row.want
  if want.value ~= nil then
    assert.equal(want.value, first)
  elseif want.kind then
    assert.is_nil(first, "no token")
    assert.is_true(lusidauth.is_error(second), "an error object")
    assert.equal(want.kind, second.kind, "err.kind")
    assert.equal(want.retryable, second.retryable, "err.retryable")
    field("status", want.status, second.status)
    field("error", want.error, second.error)
    field("retry_after", want.retry_after, second.retry_after)
    if want.error_description then assert.equal(want.error_description, second.error_description) end
    assert.is_string(second.message)
    assert.equal(second.message, tostring(second))
    assert.is_nil(second.message:find("[\r\n]"), "one line")
    if want.message then assert.matches(want.message, second.message, 1, true) end
  else
    assert.is_string(first, "a token, got " .. tostring(second))
    if want.token == "valid" or want.token == "new" or want.token == "stale" then
      assert.is_true(okta.validate(first).valid, "the fake Okta knows the token")
    else
      assert.equal(want.token, first)
    end
    if want.token == "stale" then assert.equal(ctx.old, first, "the still-valid token") end
    if want.token == "new" then assert.not_equal(ctx.old, first) end
    check_expires(want, ctx.c, second)
  end
end

-- After every case: a fresh client against the normal endpoint still gets a token.
local function unharmed(reset)
  if reset then okta.reset() else H.default_config() end
  local c = lusidauth.new_password(F.password_opts())
  local t, err = c:token()
  assert.is_string(t, tostring(err))
  assert.is_true(okta.validate(t).valid)
  c:close()
  collectgarbage()
  collectgarbage()
end

local function new_ctx(row)
  local ctx = { lines = {} }
  ctx.log = function(level, msg)
    ctx.lines[#ctx.lines + 1] = { level, msg }
    if row.log_raises then error("a broken log hook") end
  end
  return ctx
end

-- Runs one row on ctx (whose client, if any, is set up) and checks everything but unharmed().
local function run(row, ctx)
  if row.prepare then row.prepare(ctx) end
  if row.script then okta.script(value(row.script)) end
  local before = okta.stats()
  local t0 = socket.gettime()
  local first, second
  if row.action then
    first, second = row.action(ctx)
  else
    first, second = ctx.c:token()
  end
  local elapsed = socket.gettime() - t0
  local after = okta.stats()
  assert.equal(row.requests, after.requests - before.requests, "token requests sent")
  assert.equal(0, after.scripts_left, "scripted responses left over")
  if row.grants then
    for _, g in ipairs(GRANTS) do
      assert.equal(row.grants[g] or 0, after.grants[g] - before.grants[g], g .. " grants")
    end
  end
  check_outcome(row, ctx, first, second)
  assert.equal(row.retried or 0, H.count(ctx.lines, "retry %d+ of %d+"), "retry lines logged")
  for _, line in ipairs(ctx.lines) do
    assert.is_truthy(LEVELS[line[1]], "log level " .. tostring(line[1]))
    assert.is_string(line[2])
  end
  if row.min_elapsed then
    assert.is_true(elapsed >= row.min_elapsed, ("waited %.2f s, want >= %.2f s"):format(elapsed, row.min_elapsed))
  end
  assert.is_true(elapsed <= (row.max_elapsed or 1.5) * SLOW, ("took %.2f s"):format(elapsed))
  if row.check then row.check(ctx, first, second) end
end

describe("hostile server:", function()
  before_each(function() okta.reset() end)

  for _, row in ipairs(FRESH) do
    it(row.name, function()
      if type(row.config) == "function" then row.config() elseif row.config then okta.config(row.config) end
      local ctx = new_ctx(row)
      if not row.action then
        local opts = options(row, ctx.log)
        ctx.c = row.client and row.client(opts) or lusidauth.new(opts)
      end
      run(row, ctx)
      if ctx.c then ctx.c:close() end
      unharmed(true)
    end)
  end
end)

-- All stale clients get their tokens together and wait out lifetime/2 once; then the rows
-- run in order, each well inside the remaining half of the lifetime.
describe("hostile server, still-valid token:", function()
  local ctxs = {}

  lazy_setup(function()
    okta.reset()
    okta.config { expires_in = STALE_LIFETIME }
    for i, row in ipairs(STALE) do
      local ctx = new_ctx(row)
      local opts = options(row, ctx.log)
      opts.refresh_skew = STALE_SKEW
      ctx.c = lusidauth.new(opts)
      ctx.old = assert(ctx.c:token())
      ctxs[i] = ctx
    end
    H.default_config()
    socket.sleep(STALE_LIFETIME / 2 + 0.1)
  end)

  lazy_teardown(function()
    for _, ctx in ipairs(ctxs) do ctx.c:close() end
    okta.reset()
  end)

  for i, row in ipairs(STALE) do
    row.requests = row.requests or 1
    row.want = row.want or { token = "stale" }
    it(row.name, function()
      local ctx = ctxs[i]
      local left = ctx.c:expires_in()
      assert.is_true(left > 0 and left < STALE_LIFETIME / 2, "inside the refresh window, still valid")
      run(row, ctx)
      if row.want.token == "stale" then
        assert.equal(1, H.count(ctx.lines, "serving the still%-valid token"))
        -- the next call backs off: the same token, no request
        local before = okta.stats().requests
        assert.equal(ctx.old, (ctx.c:token()))
        assert.equal(before, okta.stats().requests)
        assert.is_true(ctx.c:expires_in() > 0)
      end
      unharmed(false)
    end)
  end
end)

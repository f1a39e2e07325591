-- The core: constructors, methods and flows, against the fake Okta on loopback.
local lusidauth = require "lusidauth"
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"

local function grants() return okta.stats().grants end

describe("lusidauth module", function()
  it("has a version and sets no globals", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    package.loaded["lusidauth"] = nil
    package.loaded["lusidauth.core"] = nil
    local m = require "lusidauth"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
    assert.matches("^%d+%.%d+%.%d+$", m._VERSION)
    assert.equal(m._VERSION, m.core._VERSION)
  end)
end)

describe("constructors", function()
  before_each(function() okta.reset() end)

  it("infer the grant in new()", function()
    assert.equal("pat", lusidauth.infer_grant { access_token = "x" })
    assert.equal("refresh_token", lusidauth.infer_grant { refresh_token = "x" })
    assert.equal("password", lusidauth.infer_grant { refresh_token = "x", password = "p", username = "u" })
    assert.equal("password", lusidauth.infer_grant { username = "u", password = "p" })
    assert.equal("client_credentials", lusidauth.infer_grant { client_id = "c" })
    assert.matches("%(password,", tostring(lusidauth.new(F.password_opts())))
    assert.matches("%(refresh_token,", tostring(lusidauth.new(F.cc_opts { refresh_token = "rt.x" })))
    assert.matches("%(client_credentials,", tostring(lusidauth.new(F.cc_opts())))
    assert.equal("lusidauth.client (pat)", tostring(lusidauth.new { access_token = "pat.x" }))
  end)

  it("send nothing until a token is needed", function()
    lusidauth.new_password(F.password_opts())
    lusidauth.new_client_credentials(F.cc_opts())
    assert.equal(0, okta.stats().requests)
  end)

  it("name the missing option for each grant", function()
    local cases = {
      { lusidauth.new_password, F.password_opts { password = false }, "password" },
      { lusidauth.new_password, F.password_opts { username = false }, "username" },
      { lusidauth.new_password, F.password_opts { client_secret = false }, "client_secret" },
      { lusidauth.new_password, F.password_opts { token_url = false }, "token_url" },
      { lusidauth.new_refresh_token, F.cc_opts(), "refresh_token" },
      { lusidauth.new_client_credentials, F.cc_opts { client_id = false }, "client_id" },
      { lusidauth.new_pat, {}, "access_token" },
    }
    for _, c in ipairs(cases) do
      local opts = {}
      for k, v in pairs(c[2]) do if v then opts[k] = v end end
      local ok, err = pcall(c[1], opts)
      assert.is_false(ok)
      assert.matches("needs option '" .. c[3] .. "'", err, 1, true)
    end
  end)

  it("raise on wrongly typed, empty, unknown or out-of-range options, naming them", function()
    local cases = {
      { { timeout = "30" }, "option 'timeout' must be a number, not a string" },
      { { client_id = 42 }, "option 'client_id' must be a string, not a number" },
      { { client_secret = "" }, "option 'client_secret' must not be empty" },
      { { insecure_http = 1 }, "option 'insecure_http' must be a boolean" },
      { { refresh_skew = -1 }, "option 'refresh_skew' must be from 0 to" },
      { { on_refresh_token = "f" }, "option 'on_refresh_token' must be a function" },
      { { tiemout = 3 }, "unknown option 'tiemout'" },
      { { token_url = "not a url" }, "option 'token_url' is not a valid URL" },
      { { token_url = "ftp://127.0.0.1/t" }, "option 'token_url' must be an http or https URL" },
      { { token_url = "http://okta.example.com/t" }, "option 'token_url' must use https" },
      { { token_url = "https://u:pw@okta.example.com/t" }, "must not contain credentials" },
      { { proxy = "http://u:pw@proxy:8080" }, "option 'proxy' must not contain credentials" },
      { { refresh_token = "has space" }, "option 'refresh_token' must not contain spaces" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(lusidauth.new_password, F.password_opts(c[1]))
      assert.is_false(ok, c[2])
      assert.matches(c[2], err, 1, true)
      assert.is_nil(err:find(F.password, 1, true))
      assert.is_nil(err:find(F.client_secret, 1, true))
    end
    assert.has_error(function() lusidauth.new("x") end, "lusidauth.new: expected an options table, got string")
    assert.has_error(function() lusidauth.new_pat(42) end)
    assert.has_error(function() lusidauth.new_pat("bad token") end)
  end)

  it("report errors at the caller's line", function()
    local ok, err = pcall(function()
      local c = lusidauth.new_password {} -- not a tail call: Lua 5.1 drops tail-call frames
      return c
    end)
    assert.is_false(ok)
    assert.matches("client_spec.lua:%d+: lusidauth: the password grant needs option", err)
  end)

  it("allow http to a non-loopback host only with insecure_http", function()
    local c = lusidauth.new_password(F.password_opts { token_url = "http://okta.invalid/t", insecure_http = true })
    assert.matches("lusidauth.client", tostring(c))
  end)
end)

describe("the password grant", function()
  before_each(function() okta.reset() end)

  it("logs in once and serves the cached token without I/O", function()
    local c = lusidauth.new_password(F.password_opts())
    local t1, exp1 = c:token()
    local t2, exp2 = c:token()
    assert.is_string(t1)
    assert.equal(t1, t2)
    assert.is_true(exp1 >= 3599 and exp1 <= 3600)
    assert.is_true(exp2 <= exp1)
    assert.same({ password = 1, refresh_token = 0, client_credentials = 0, other = 0 }, grants())
    assert.is_true(okta.validate(t1).valid)
    assert.is_string(c:refresh_token())
    assert.matches("token valid 3%d%d%d s", tostring(c))
  end)

  it("sends the credentials in the form body with the default scope, all urlencoded", function()
    okta.config { users = { ["a+b@example.com"] = "p&ss=w rd%+" } }
    local c = lusidauth.new_password(F.password_opts { username = "a+b@example.com", password = "p&ss=w rd%+" })
    assert.is_string((c:token()))
    local req = okta.requests()[1]
    assert.equal("password", req.form.grant_type)
    assert.equal("a+b@example.com", req.form.username)
    assert.equal("p&ss=w rd%+", req.form.password)
    assert.equal("openid client groups offline_access", req.form.scope)
    assert.equal(F.client_id, req.form.client_id)
    assert.equal(F.client_secret, req.form.client_secret)
    assert.is_nil(req.basic)
    assert.equal("application/json", req.headers["accept"])
    assert.matches("^lusidauth/", req.headers["user-agent"])
  end)

  it("uses the given scope", function()
    local c = lusidauth.new_password(F.password_opts { scope = "openid offline_access" })
    assert.is_string((c:token()))
    assert.equal("openid offline_access", okta.requests()[1].form.scope)
  end)

  it("never retries a password grant after invalid_grant", function()
    local c = lusidauth.new_password(F.password_opts { password = "wrong password" })
    local t, err = c:token()
    assert.is_nil(t)
    F.assert_error(err, { kind = "oauth", error = "invalid_grant", status = 400, retryable = false })
    assert.equal(1, okta.stats().requests)
  end)

  it("never retries after invalid_client", function()
    local c = lusidauth.new_password(F.password_opts { client_secret = "not-the-secret" })
    local t, err = c:token()
    assert.is_nil(t)
    F.assert_error(err, { kind = "oauth", error = "invalid_client", status = 401, retryable = false })
    assert.equal(1, okta.stats().requests)
  end)
end)

describe("the refresh grant", function()
  before_each(function() okta.reset() end)

  it("sends the client id and secret in HTTP Basic, form-encoded before base64", function()
    local c = lusidauth.new_password(F.password_opts())
    assert.is_string((c:login()))
    local t, exp = c:refresh()
    assert.is_string(t)
    assert.is_number(exp)
    local req = okta.requests()[2]
    assert.equal("refresh_token", req.form.grant_type)
    assert.same({ id = F.client_id, secret = F.client_secret }, req.basic)
    assert.is_nil(req.form.client_secret)
    assert.is_nil(req.form.password)
    assert.is_true(okta.validate(t).valid)
  end)

  it("with expires_in = 2 and refresh_skew = 1 sends exactly one refresh after expiry", function()
    okta.config { expires_in = 2 }
    local c = lusidauth.new_password(F.password_opts { refresh_skew = 1 })
    local t1 = c:token()
    F.sleep(2.2)
    local t2, exp = c:token()
    assert.not_equal(t1, t2)
    assert.is_true(exp >= 1 and exp <= 2)
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, grants())
    assert.is_true(okta.validate(t2).valid)
  end)

  it("refreshes inside the window min(refresh_skew, lifetime/2), not before", function()
    okta.config { expires_in = 2 }
    local c = lusidauth.new_password(F.password_opts()) -- skew 60 s, window 1 s
    local t1 = c:token()
    F.sleep(0.5)
    assert.equal(t1, (c:token()))
    assert.equal(0, grants().refresh_token)
    F.sleep(0.7)
    local t2 = c:token()
    assert.not_equal(t1, t2)
    assert.equal(1, grants().refresh_token)
  end)

  it("hands every rotated refresh token to on_refresh_token", function()
    local seen = {}
    local c = lusidauth.new_password(F.password_opts { on_refresh_token = function(rt) seen[#seen + 1] = rt end })
    c:login()
    c:refresh()
    c:refresh()
    assert.equal(3, #seen)
    assert.equal(c:refresh_token(), seen[3])
    assert.not_equal(seen[1], seen[2])
    assert.not_equal(seen[2], seen[3])
  end)

  it("keeps the old refresh token when a response has none", function()
    local c = lusidauth.new_password(F.password_opts())
    c:login()
    local rt = c:refresh_token()
    okta.script { { status = 200, body = '{"access_token":"at.scripted","token_type":"Bearer","expires_in":3600}' } }
    assert.equal("at.scripted", (c:refresh()))
    assert.equal(rt, c:refresh_token())
  end)

  it("falls back to exactly one password login when the refresh token is revoked", function()
    local c = lusidauth.new_password(F.password_opts())
    c:token()
    okta.revoke { refresh_token = c:refresh_token() }
    c:invalidate()
    local t = c:token()
    assert.is_true(okta.validate(t).valid)
    assert.same({ password = 2, refresh_token = 1, client_credentials = 0, other = 0 }, grants())
  end)

  it("stops after the one password login when that fails too", function()
    local c = lusidauth.new_password(F.password_opts())
    c:token()
    okta.revoke { refresh_token = c:refresh_token() }
    okta.config { users = { [F.username] = "changed password" } }
    c:invalidate()
    local t, err = c:token()
    assert.is_nil(t)
    assert.equal("oauth", err.kind)
    assert.equal("invalid_grant", err.error)
    assert.same({ password = 2, refresh_token = 1, client_credentials = 0, other = 0 }, grants())
  end)

  it("fails on a reused refresh token with kind oauth and error invalid_grant", function()
    local first = lusidauth.new_password(F.password_opts())
    first:login()
    local old = first:refresh_token()
    first:refresh() -- rotates: old is now used
    local c = lusidauth.new_refresh_token(F.cc_opts { refresh_token = old })
    local t, err = c:token()
    assert.is_nil(t)
    assert.equal("oauth", err.kind)
    assert.equal("invalid_grant", err.error)
    assert.equal(400, err.status)
    assert.is_false(err.retryable)
    assert.equal(1, okta.stats().reuse)
    -- the dead token is dropped: no further request, a clear error
    local before = okta.stats().requests
    local t2, err2 = c:token()
    assert.is_nil(t2)
    assert.equal("config", err2.kind)
    assert.matches("no refresh token", err2.message)
    assert.equal(before, okta.stats().requests)
  end)
end)

describe("a refresh-token client", function()
  before_each(function() okta.reset() end)

  it("uses only the stored refresh token, then the rotated one", function()
    local login = lusidauth.new_password(F.password_opts())
    login:login()
    local rt = login:refresh_token()
    local seen
    local c = lusidauth.new_refresh_token(F.cc_opts { refresh_token = rt, on_refresh_token = function(x) seen = x end })
    local t = c:token()
    assert.is_true(okta.validate(t).valid)
    assert.is_string(seen)
    assert.not_equal(rt, seen)
    assert.equal(seen, c:refresh_token())
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, grants())
    c:invalidate()
    assert.is_true(okta.validate((c:token())).valid)
    assert.equal(2, grants().refresh_token)
    assert.equal(0, okta.stats().reuse)
  end)
end)

describe("the client-credentials grant", function()
  before_each(function() okta.reset() end)

  it("authenticates with HTTP Basic and has no refresh token", function()
    local c = lusidauth.new_client_credentials(F.cc_opts())
    local t = c:token()
    assert.is_true(okta.validate(t).valid)
    local req = okta.requests()[1]
    assert.equal("client_credentials", req.form.grant_type)
    assert.same({ id = F.client_id, secret = F.client_secret }, req.basic)
    assert.is_nil(c:refresh_token())
    local t2, err = c:refresh()
    assert.is_nil(t2)
    assert.equal("config", err.kind)
    assert.matches("no refresh token", err.message)
    assert.equal(1, okta.stats().requests)
  end)
end)

describe("a personal access token", function()
  before_each(function() okta.reset() end)

  it("is never sent to the token endpoint", function()
    local c = lusidauth.new_pat("pat.abc123")
    assert.equal("pat.abc123", c:token())
    assert.is_nil(c:expires_in())
    assert.equal("Bearer pat.abc123", c:headers().Authorization)
    c:invalidate()
    assert.equal("pat.abc123", c:token())
    assert.has_error(function() c:login() end, "lusidauth: login() is not available on a personal access token client")
    assert.has_error(function() c:refresh() end)
    assert.equal(0, okta.stats().requests)
    local c2 = lusidauth.new_pat { access_token = "pat.def" }
    assert.equal("pat.def", c2:token())
  end)
end)

describe("client methods", function()
  before_each(function() okta.reset() end)

  it("login() forces the initial grant and refresh() the refresh grant", function()
    local c = lusidauth.new_password(F.password_opts())
    local t1 = c:token()
    local t2 = c:login()
    local t3 = c:refresh()
    assert.not_equal(t1, t2)
    assert.not_equal(t2, t3)
    assert.same({ password = 2, refresh_token = 1, client_credentials = 0, other = 0 }, grants())
  end)

  it("invalidate() drops the access token and keeps the refresh token", function()
    local c = lusidauth.new_password(F.password_opts())
    local t1 = c:token()
    c:invalidate()
    assert.is_nil(c:expires_in())
    local t2 = c:token()
    assert.not_equal(t1, t2)
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, grants())
  end)

  it("expires_in() is nil without a token and the seconds left with one", function()
    local c = lusidauth.new_password(F.password_opts())
    assert.is_nil(c:expires_in())
    c:token()
    local left = c:expires_in()
    assert.is_true(left >= 3599 and left <= 3600)
  end)

  it("headers() gives the Authorization header, merged with extra headers", function()
    local c = lusidauth.new_password(F.password_opts())
    local h = c:headers { ["X-Test"] = "1" }
    assert.equal("Bearer " .. c:token(), h.Authorization)
    assert.equal("1", h["X-Test"])
    assert.has_error(function() c:headers("x") end, "lusidauth: headers(extra) expects a table, got string")
    local bad = lusidauth.new_password(F.password_opts { password = "nope" })
    local h2, err = bad:headers()
    assert.is_nil(h2)
    assert.equal("oauth", err.kind)
  end)

  it("close() wipes the client; every method then raises; close is idempotent", function()
    local c = lusidauth.new_password(F.password_opts())
    c:token()
    c:close()
    c:close()
    assert.equal("lusidauth.client (closed)", tostring(c))
    for _, m in ipairs { "token", "login", "refresh", "invalidate", "expires_in", "refresh_token", "headers" } do
      assert.has_error(function() c[m](c) end, "lusidauth: attempt to use a closed client")
    end
  end)

  it("methods reject a non-client self", function()
    local c = lusidauth.new_pat("x.y")
    assert.has_error(function() c.token({}) end)
    assert.has_error(function() c.token(nil) end)
  end)

  it("is collected by the garbage collector", function()
    local weak = setmetatable({}, { __mode = "k" })
    do
      local c = lusidauth.new_password(F.password_opts { on_refresh_token = function() end })
      c:token()
      weak[c] = true
    end
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(weak))
  end)

  if _VERSION == "Lua 5.4" and not rawget(_G, "jit") then
    it("closes a to-be-closed variable", function()
      local chunk = assert(load([[
        local lusidauth, opts = ...
        local c <close> = lusidauth.new_password(opts)
        c:token()
        return c
      ]]))
      local c = chunk(lusidauth, F.password_opts())
      assert.equal("lusidauth.client (closed)", tostring(c))
    end)
  end
end)

describe("errors", function()
  before_each(function() okta.reset() end)

  it("are tables with kind, message, status and retryable, with __tostring and __concat", function()
    okta.script { {
      status = 503, body = "<html><body>Service Unavailable</body></html>", headers = { ["Retry-After"] = "7" },
    } }
    local c = lusidauth.new_client_credentials(F.cc_opts { retries = 0 })
    local t, err = c:token()
    assert.is_nil(t)
    assert.is_true(lusidauth.is_error(err))
    assert.equal("http", err.kind)
    assert.equal(503, err.status)
    assert.equal(7, err.retry_after)
    assert.is_true(err.retryable)
    assert.equal(err.message, tostring(err))
    assert.equal("x: " .. err.message, "x: " .. err)
    assert.equal(err.message .. "!", err .. "!")
    assert.matches("HTTP 503", err.message)
  end)

  it("of the network name the URL and are retryable", function()
    local c = lusidauth.new_client_credentials(F.cc_opts { token_url = "http://127.0.0.1:1/token", retries = 0 })
    local t, err = c:token()
    assert.is_nil(t)
    assert.equal("network", err.kind)
    assert.is_true(err.retryable)
    assert.matches("http://127.0.0.1:1/token", err.message, 1, true)
  end)

  it("of a body that is not JSON are protocol errors", function()
    okta.script { { status = 200, body = "<html>hi</html>" } }
    local c = lusidauth.new_client_credentials(F.cc_opts())
    local t, err = c:token()
    assert.is_nil(t)
    assert.equal("protocol", err.kind)
    assert.matches("not JSON", err.message)
  end)

  it("never contain a secret, even when the server echoes the request", function()
    local c = lusidauth.new_password(F.password_opts())
    c:token()
    local rt, at = c:refresh_token(), c:token()
    okta.script { { status = 400, body = ('{"error":"invalid_request","error_description":"bad: %s %s %s %s"}'):format(
      F.password, F.urlencode(F.client_secret), rt, at) } }
    local t, err = c:refresh()
    assert.is_nil(t)
    assert.equal("invalid_request", err.error)
    assert.matches("%[redacted%]", err.error_description)
    local all = tostring(err) .. err.error_description .. tostring(c)
    assert.is_nil(F.contains_any(all, F.secrets(rt, at)))
  end)
end)

describe("https", function()
  before_each(function() okta.reset() end)

  it("works with the test CA in ca_file", function()
    local c = lusidauth.new_password(F.password_opts {
      token_url = okta.token_url("https"), ca_file = os.getenv("LUSIDAUTH_TEST_CA"),
    })
    local t = c:token()
    assert.is_string(t)
    assert.is_true(okta.validate(t).valid)
  end)

  it("fails with kind tls without the CA", function()
    local c = lusidauth.new_password(F.password_opts { token_url = okta.token_url("https") })
    local t, err = c:token()
    assert.is_nil(t)
    assert.equal("tls", err.kind)
    assert.is_false(err.retryable)
    assert.equal(0, okta.stats().requests)
  end)
end)

describe("a client closed by its own hooks during a refresh", function()
  before_each(function() okta.reset() end)

  it("raises, releases the refresh, and leaves other clients working", function()
    local c
    c = lusidauth.new_password(F.password_opts { on_refresh_token = function() c:close() end })
    assert.has_error(function() c:token() end, "lusidauth: the client was closed during its refresh")
    local other = lusidauth.new_password(F.password_opts())
    assert.is_true(okta.validate((other:token())).valid)
    local d
    okta.script { { status = 503, body = "down" } }
    d = lusidauth.new_password(F.password_opts { shared = false, retry_base = 0.01, log = function() d:close() end })
    assert.has_error(function() d:token() end, "lusidauth: the client was closed during its refresh")
  end)
end)

describe("a proxy", function()
  before_each(function() okta.reset() end)

  it("carries token requests, with its credentials in their own options, never in the URL", function()
    -- the fake Okta also accepts absolute-form requests, so it can stand in for the proxy
    local mime = require "mime"
    local c = lusidauth.new_password(F.password_opts {
      proxy = okta.url("http"), proxy_username = "proxy user", proxy_password = "p@ss:w%rd/x",
    })
    local t = c:token()
    assert.is_true(okta.validate(t).valid)
    local req = okta.requests()[1]
    assert.equal("Basic " .. mime.b64("proxy user:p@ss:w%rd/x"), req.headers["proxy-authorization"])
    local bad = lusidauth.new_password(F.password_opts { proxy = "http://127.0.0.1:1", retries = 0, shared = false,
      proxy_password = "proxy-secret-1234", proxy_username = "u" })
    local t2, err = bad:token()
    assert.is_nil(t2)
    assert.equal("network", err.kind)
    assert.is_nil(tostring(err):find("proxy-secret-1234", 1, true))
  end)
end)

describe("review fixes", function()
  before_each(function() okta.reset() end)

  it("a refresh-token client keeps serving a still-valid token after invalid_grant", function()
    okta.config { expires_in = 4 }
    local login = lusidauth.new_password(F.password_opts { shared = false })
    login:login()
    local c = lusidauth.new_refresh_token(F.cc_opts { refresh_token = login:refresh_token(), refresh_skew = 3,
      shared = false })
    local t = c:token()
    okta.revoke { refresh_token = c:refresh_token() }
    F.sleep(2.2) -- stale: the refresh gets invalid_grant, the token is served
    assert.equal(t, (c:token()))
    F.sleep(1.1) -- past the backoff, still valid: still served, not an error
    assert.equal(t, (c:token()))
  end)

  it("never reuses a libcurl handle that refused an option", function()
    local c = lusidauth.new_password(F.password_opts { shared = false, retries = 0, proxy = "http://127.0.0.1:1",
      user_agent = ("u"):rep(9 * 1024 * 1024) })
    for _ = 1, 2 do
      local t, err = c:token()
      assert.is_nil(t)
      assert.matches("libcurl refused an option", err.message)
    end
    assert.equal(0, okta.stats().requests)
  end)

  it("an invalidate during another client's refresh gives an error, not a crash", function()
    okta.config { expires_in = 4 }
    local b = lusidauth.new_password(F.password_opts())
    local a = lusidauth.new_password(F.password_opts { refresh_skew = 3, log = function() b:invalidate() end })
    a:token()
    b:token()
    F.sleep(2.2)
    okta.script { { status = 503, body = "down" } }
    local t, err = a:token() -- 503: the still-valid token would be served, but b drops it first
    assert.is_nil(t)
    assert.equal("network", err.kind)
    assert.is_true(err.retryable)
    assert.matches("invalidated", err.message)
  end)
end)

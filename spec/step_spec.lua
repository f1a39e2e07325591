-- core.step: the flow stepped from Lua, as lusidauth.resty drives it (here without nginx).
local lusidauth = require "lusidauth"
local core = lusidauth.core
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"

describe("core.step", function()
  before_each(function() okta.reset() end)

  it("runs a refresh one step at a time, then serves the token on the fresh path", function()
    local c = lusidauth.new_password(F.password_opts { shared = false })
    local kind, run, action, grant = core.step(c, "token")
    assert.equal("run", kind)
    assert.equal("send", action)
    assert.equal("password", grant)
    local url, body, auth = run:request()
    assert.equal(okta.token_url("http"), url)
    assert.matches("grant_type=password", body)
    assert.is_nil(auth)
    local http, ltn12 = require "socket.http", require "ltn12"
    local chunks = {}
    local _, status = http.request { url = url, method = "POST", source = ltn12.source.string(body),
      headers = { ["content-type"] = "application/x-www-form-urlencoded", ["content-length"] = #body },
      sink = ltn12.sink.table(chunks) }
    assert.equal("done", (run:response(status, nil, nil, table.concat(chunks))))
    local token, expires_in = run:finish()
    assert.is_true(okta.validate(token).valid)
    assert.is_true(expires_in > 3500)
    local k2, t2 = core.step(c, "token")
    assert.equal("use", k2)
    assert.equal(token, t2)
    assert.has_error(function() run:finish() end, "lusidauth: this refresh has finished")
  end)

  it("tells a waiter that the refresh it waited for failed, instead of starting another", function()
    local a = lusidauth.new_password(F.password_opts { retries = 0 })
    local b = lusidauth.new_password(F.password_opts { retries = 0 })
    local kind, run = core.step(a, "token")
    assert.equal("run", kind)
    local bk, epoch = core.step(b, "token")
    assert.equal("busy", bk)
    assert.is_number(epoch)
    run:request()
    assert.equal("done", (run:fail("network", "connection reset")))
    local t, err = run:finish()
    assert.is_nil(t)
    assert.equal("network", err.kind)
    local k2, err2 = core.step(b, "token", false, epoch)
    assert.equal("fail", k2)
    assert.equal("network", err2.kind)
    assert.equal(0, okta.stats().requests)
  end)

  it("takes over a refresh whose owner went silent past its deadline", function()
    local opts = { deadline = 0.2, timeout = 0.2, connect_timeout = 0.1 }
    local a = lusidauth.new_password(F.password_opts(opts))
    local b = lusidauth.new_password(F.password_opts(opts))
    local kind, abandoned = core.step(a, "token") -- its coroutine is never resumed
    assert.equal("run", kind)
    assert.equal("busy", (core.step(b, "token")))
    F.sleep(0.6)
    local k2, run = core.step(b, "token")
    assert.equal("run", k2)
    run:abort()
    abandoned:abort() -- a late owner must not release the new one's refresh
    assert.equal("run", (core.step(b, "token")))
  end)
end)

-- The process-wide cache: clients of one identity share one token and one refresh.
local lusidauth = require "lusidauth"
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"

describe("shared entries", function()
  before_each(function() okta.reset() end)

  it("give clients of the same identity one token and one login", function()
    local a = lusidauth.new_password(F.password_opts())
    local b = lusidauth.new_password(F.password_opts())
    local ta, tb = a:token(), b:token()
    assert.equal(ta, tb)
    assert.equal(1, okta.stats().requests)
    assert.equal(a:refresh_token(), b:refresh_token())
  end)

  it("never hand a client with a different credential another client's token", function()
    local a = lusidauth.new_password(F.password_opts())
    a:token()
    for _, diff in ipairs {
      { password = "wrong password" }, { client_secret = "wrong-secret" }, { username = "bob@example.com" },
    } do
      local b = lusidauth.new_password(F.password_opts(diff))
      local t, err = b:token()
      assert.is_nil(t)
      assert.equal("oauth", err.kind)
    end
    assert.equal(4, okta.stats().requests)
  end)

  it("are not used with shared = false", function()
    local a = lusidauth.new_password(F.password_opts { shared = false })
    local b = lusidauth.new_password(F.password_opts { shared = false })
    assert.not_equal(a:token(), b:token())
    assert.equal(2, okta.stats().requests)
  end)

  it("rotate one refresh-token chain, and on_refresh_token fires once per rotation", function()
    local seen_a, seen_b = {}, {}
    okta.config { expires_in = 2 }
    local a = lusidauth.new_password(F.password_opts { on_refresh_token = function(rt) seen_a[#seen_a + 1] = rt end })
    local b = lusidauth.new_password(F.password_opts { on_refresh_token = function(rt) seen_b[#seen_b + 1] = rt end })
    a:token()
    F.sleep(1.2) -- stale: the next caller refreshes
    local tb = b:token()
    assert.equal(tb, (a:token()))
    assert.equal(1, #seen_a) -- a's login
    assert.equal(1, #seen_b) -- b's refresh
    assert.not_equal(seen_a[1], seen_b[1])
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, okta.stats().grants)
    assert.equal(0, okta.stats().reuse)
  end)

  it("invalidate() drops only the token this client had, not a newer one", function()
    local a = lusidauth.new_password(F.password_opts())
    local b = lusidauth.new_password(F.password_opts())
    local t1 = a:token()
    assert.equal(t1, b:token())
    b:invalidate()
    local t2 = b:token() -- b gets a new one for both
    assert.not_equal(t1, t2)
    a:invalidate() -- a's token was t1: t2 stays
    assert.equal(t2, (a:token()))
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, okta.stats().grants)
  end)

  it("join a refresh-token client to the chain its starting token began", function()
    local login = lusidauth.new_password(F.password_opts())
    login:login()
    local rt0 = login:refresh_token()
    local a = lusidauth.new_refresh_token(F.cc_opts { refresh_token = rt0 })
    a:token() -- rotates rt0
    local b = lusidauth.new_refresh_token(F.cc_opts { refresh_token = rt0 })
    assert.equal(a:token(), b:token()) -- b does not replay the used rt0
    assert.equal(0, okta.stats().reuse)
    assert.equal(1, okta.stats().grants.refresh_token)
  end)

  it("are freed when the last client goes", function()
    local a = lusidauth.new_password(F.password_opts())
    local t1 = a:token()
    a:close()
    local b = lusidauth.new_password(F.password_opts())
    assert.not_equal(t1, b:token())
    assert.equal(2, okta.stats().grants.password)
  end)
end)

-- c:request{...}: LUSID API calls through the client's libcurl handle, against the fake LUSID API.
local lusidauth = require "lusidauth"
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"

local function client(extra)
  local o = { api_url = okta.api_url("http"), app_name = "spec-app", correlation_id = "corr-1" }
  for k, v in pairs(extra or {}) do o[k] = v end
  return lusidauth.new_password(F.password_opts(o))
end

describe("client:request", function()
  before_each(function() okta.reset() end)

  it("joins path to api_url without doubling slashes and returns status, headers, body and json", function()
    local c = client { api_url = okta.api_url("http") .. "/" }
    local resp, err = c:request { path = "/api/portfolios" }
    assert.is_nil(err)
    assert.equal(200, resp.status)
    assert.matches("^application/json", resp.headers["content-type"])
    assert.is_string(resp.headers["lusid-meta-requestid"])
    assert.equal("UK-EQUITY", resp.json.values[1].id.code)
    assert.matches('"displayName"', resp.body)
    local echo = c:request { path = "api/echo" }
    assert.equal("/api/api/echo", echo.json.path)
  end)

  it("sends the LUSID headers and the bearer token", function()
    local c = client()
    local resp = assert(c:request { path = "/api/echo", headers = { ["X-Extra"] = "yes" } })
    local h = resp.json.headers
    assert.equal("spec-app", h["x-lusid-application"])
    assert.equal("Lua", h["x-lusid-sdk-language"])
    assert.equal(lusidauth._VERSION, h["x-lusid-sdk-version"])
    assert.equal("lusidauth/" .. lusidauth._VERSION, h["user-agent"])
    assert.equal("corr-1", h["correlationid"])
    assert.equal("application/json", h["accept"])
    assert.equal("yes", h["x-extra"])
    assert.equal(1, okta.stats().api_requests) -- the API accepted the token on the first try
  end)

  it("encodes query tables, json bodies and passes raw bodies", function()
    local c = client()
    local r1 = assert(c:request { path = "/api/echo", query = { b = 2, a = { 1, "x y&z" } } })
    assert.equal("a=1&a=x%20y%26z&b=2", r1.json.query)
    local r2 = assert(c:request { method = "post", path = "/api/echo", json = { n = 1 } })
    assert.equal("POST", r2.json.method)
    assert.equal('{"n":1}', r2.json.body)
    assert.equal("application/json", r2.json.headers["content-type"])
    local r3 = assert(c:request {
      method = "PUT", path = "/api/echo?x=1", body = "a=b", headers = { ["content-type"] = "text/plain" },
    })
    assert.equal("PUT", r3.json.method)
    assert.equal("x=1", r3.json.query)
    assert.equal("a=b", r3.json.body)
    assert.equal("text/plain", r3.json.headers["content-type"])
    local r4 = assert(c:request { method = "DELETE", url = okta.api_url("http") .. "/api/echo" })
    assert.equal("DELETE", r4.json.method)
    local r5 = assert(c:request { method = "POST", path = "/api/echo" }) -- no body: still a POST
    assert.equal("POST", r5.json.method)
  end)

  it("after a 401 invalidates the token and retries once: one token request, one API call more", function()
    local c = client()
    local token = c:token()
    okta.expire_all() -- the server ends it early: LUSID now answers 401, our cache still trusts it
    local resp, err = c:request { path = "/api/portfolios" }
    assert.is_nil(err)
    assert.equal(200, resp.status)
    assert.not_equal(token, c:token())
    local s = okta.stats()
    assert.equal(2, s.api_requests)
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, s.grants)
  end)

  it("returns the second 401 instead of looping", function()
    local c = client()
    okta.script { { endpoint = "api", status = 401, body = '{"name":"Unauthorized","code":401}', times = 2 } }
    local resp, err = c:request { path = "/api/portfolios" }
    assert.is_nil(resp)
    assert.equal("http", err.kind)
    assert.equal(401, err.status)
    assert.equal(2, okta.stats().api_requests)
    assert.equal(2, okta.stats().requests) -- the login, and one new token for the retry
  end)

  it("does not retry a 401 with a personal access token", function()
    local c = lusidauth.new_pat { access_token = "pat.not-known", api_url = okta.api_url("http") }
    local resp, err = c:request { path = "/api/portfolios" }
    assert.is_nil(resp)
    assert.equal(401, err.status)
    assert.equal(1, okta.stats().api_requests)
    assert.equal(0, okta.stats().requests)
  end)

  it("surfaces a LUSID error body in err", function()
    local c = client()
    local resp, err = c:request { path = "/api/status/404" }
    assert.is_nil(resp)
    assert.is_true(lusidauth.is_error(err))
    assert.equal("http", err.kind)
    assert.equal(404, err.status)
    assert.is_false(err.retryable)
    assert.equal("PortfolioNotFound", err.name)
    assert.equal(109, err.code)
    assert.equal("Could not find a portfolio", err.title)
    assert.equal("Fake error with status 404.", err.detail)
    assert.equal("/api/api/status/404", err.instance)
    assert.same({}, err.error_details)
    assert.equal(404, err.response.status)
    assert.equal("LUSID API GET /api/status/404: HTTP 404 PortfolioNotFound: Could not find a portfolio"
      .. " (Fake error with status 404.)", tostring(err))
    local _, err503 = c:request { path = "/api/status/503" }
    assert.is_true(err503.retryable)
  end)

  it("redacts the token from a LUSID error body that echoes it", function()
    local c = client()
    local token = c:token()
    okta.script { { endpoint = "api", status = 400,
      body = ('{"name":"BadRequest","title":"bad %s","detail":"Bearer %s"}'):format(token, token) } }
    local _, err = c:request { path = "/api/portfolios" }
    assert.equal(400, err.status)
    assert.is_nil(tostring(err):find(token, 1, true))
    assert.equal("Bearer [redacted]", err.detail)
  end)

  it("returns network errors as nil, err", function()
    local c = client { api_url = "http://127.0.0.1:1/api" }
    c:token()
    local resp, err = c:request { path = "/api/portfolios" }
    assert.is_nil(resp)
    assert.equal("network", err.kind)
  end)

  it("returns the token error when no token can be had", function()
    local c = client { password = "wrong" }
    local resp, err = c:request { path = "/api/portfolios" }
    assert.is_nil(resp)
    assert.equal("oauth", err.kind)
    assert.equal(0, okta.stats().api_requests)
  end)

  it("raises on misuse, naming what is wrong", function()
    local c = client()
    local cases = {
      { nil, "request expects a table" },
      { {}, "exactly one of path and url" },
      { { path = "/a", url = "http://127.0.0.1/a" }, "exactly one of path and url" },
      { { path = "/a", json = {}, body = "x" }, "json or body, not both" },
      { { path = "/a", query = { a = print } }, "query value for 'a'" },
      { { path = "/a", headers = "x" }, "headers must be a table" },
      { { url = "http://lusid.example.com/api" }, "option 'url' must use https" },
      { { path = "/a", method = "get me" }, "HTTP method" },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(c.request, c, case[1])
      assert.is_false(ok, case[2])
      assert.matches(case[2], err, 1, true)
    end
    local no_api = lusidauth.new_password(F.password_opts())
    assert.has_error(function() no_api:request { path = "/x" } end,
      "lusidauth: request{ path = ... } needs the client's api_url option (or pass url)")
    c:close()
    assert.has_error(function() c:request { path = "/x" } end, "lusidauth: attempt to use a closed client")
  end)
end)

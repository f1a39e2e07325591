-- bin/lusidauth as a subprocess against the fake Okta and LUSID API: stdout, stderr, exit codes,
-- and no secret in any output.
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"
local cjson = require "cjson"

local LUA = os.getenv("LUSIDAUTH_LUA") or "lua5.4"
local outputs = {} -- everything the CLI printed, for the secrets check

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  os.remove(path)
  return s
end

-- run(args, env) --> exit code, stdout, stderr. Only the variables given (and the Lua paths) are set.
local function run(args, env, cwd)
  local out, err = os.tmpname(), os.tmpname()
  local parts = { "env -i", "PATH=" .. quote(os.getenv("PATH")),
    "LUA_PATH=" .. quote(os.getenv("LUA_PATH") or ""), "LUA_CPATH=" .. quote(os.getenv("LUA_CPATH") or "") }
  for _, k in ipairs { "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS" } do -- the sanitizer run
    if os.getenv(k) then parts[#parts + 1] = k .. "=" .. quote(os.getenv(k)) end
  end
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. quote(v) end
  parts[#parts + 1] = LUA .. " " .. quote(os.getenv("PWD") .. "/bin/lusidauth")
  for _, a in ipairs(args) do parts[#parts + 1] = quote(a) end
  local cmd = table.concat(parts, " ") .. " >" .. out .. " 2>" .. err
  if cwd then cmd = "cd " .. quote(cwd) .. " && " .. cmd end
  local a, _, c = os.execute(cmd)
  local code
  if type(a) == "number" then code = a >= 256 and a / 256 or a else code = c end
  local o, e = read(out), read(err)
  outputs[#outputs + 1] = o .. e
  return code, o, e
end

local function env(extra)
  local e = {
    FBN_TOKEN_URL = okta.token_url("http"), FBN_CLIENT_ID = F.client_id, FBN_CLIENT_SECRET = F.client_secret,
    FBN_USERNAME = F.username, FBN_PASSWORD = F.password, FBN_LUSID_URL = okta.api_url("http"),
  }
  for k, v in pairs(extra or {}) do e[k] = v or nil end
  return e
end

describe("the lusidauth CLI", function()
  before_each(function() okta.reset() end)

  it("token prints the access token, and JSON with --json", function()
    local code, out, err = run({ "token" }, env())
    assert.equal(0, code)
    assert.equal("", err)
    local token = out:match("^(%S+)\n$")
    assert.is_true(okta.validate(token).valid)
    code, out = run({ "--json", "token" }, env())
    assert.equal(0, code)
    local j = cjson.decode(out)
    assert.is_true(okta.validate(j.access_token).valid)
    assert.is_true(j.expires_in > 3500)
  end)

  it("header prints an Authorization line that curl can send", function()
    local code, out = run({ "header" }, env())
    assert.equal(0, code)
    local token = out:match("^Authorization: Bearer (%S+)\n$")
    assert.is_true(okta.validate(token).valid)
    -- curl without the sanitizer runtime that tools/memcheck.sh preloads
    local p = io.popen("env -u LD_PRELOAD curl -s -H " .. quote(out:gsub("\n$", "")) .. " "
      .. okta.api_url("http") .. "/api/portfolios")
    local body = p:read("*a")
    p:close()
    assert.equal("UK-EQUITY", cjson.decode(body).values[1].id.code)
  end)

  it("refresh-token logs in with offline_access and prints the refresh token and how to use it", function()
    local code, out, err = run({ "refresh-token" }, env())
    assert.equal(0, code)
    local rt = out:match("^(%S+)\n$")
    local v = okta.validate(rt)
    assert.is_true(v.valid)
    assert.equal("refresh", v.type)
    assert.matches("new_refresh_token", err)
    assert.matches("rotates", err)
    assert.equal("openid client groups offline_access", okta.requests()[1].form.scope)
    assert.same({ password = 1, refresh_token = 0, client_credentials = 0, other = 0 }, okta.stats().grants)
  end)

  it("check shows sources, grant and keys, never values, and whether a token can be had", function()
    local code, out = run({ "check" }, env())
    assert.equal(0, code)
    assert.matches("sources: environment %(FBN_CLIENT_ID, FBN_CLIENT_SECRET, FBN_LUSID_URL, FBN_PASSWORD", out)
    assert.matches("grant:   password", out, 1, true)
    assert.matches("password (env)", out, 1, true)
    assert.matches("token:   ok, valid 3%d%d%d s", out)
    code, out = run({ "check" }, env { FBN_PASSWORD = "wrong password" })
    assert.equal(1, code)
    assert.matches("token:   FAILED: token request %(password grant%) rejected, HTTP 400: invalid_grant", out)
    local j
    code, out = run({ "check", "--json" }, env())
    assert.equal(0, code)
    j = cjson.decode(out)
    assert.equal("password", j.grant)
    assert.equal("ok", j.token)
  end)

  it("get and request call the API and print the JSON", function()
    local code, out = run({ "get", "/api/portfolios" }, env())
    assert.equal(0, code)
    assert.equal(2, #cjson.decode(out).values)
    code, out = run({ "request", "POST", "/api/echo", "--data", '{"a":1}' }, env())
    assert.equal(0, code)
    local echo = cjson.decode(out)
    assert.equal("POST", echo.method)
    assert.equal('{"a":1}', echo.body)
    assert.equal("application/json", echo.headers["content-type"])
  end)

  it("exits 1 with one line on stderr when the API or the login fails", function()
    local code, out, err = run({ "get", "/api/status/404" }, env())
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("lusidauth: LUSID API GET /api/status/404: HTTP 404 PortfolioNotFound: Could not find a portfolio"
      .. " (Fake error with status 404.)\n", err)
    code, out, err = run({ "token" }, env { FBN_PASSWORD = "wrong password" })
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^lusidauth: token request %(password grant%) rejected, HTTP 400: invalid_grant[^\n]*\n$", err)
  end)

  it("exits 2 on usage and configuration errors", function()
    local cases = {
      { {}, "usage: lusidauth" },
      { { "frob" }, "lusidauth: unknown command 'frob'" },
      { { "--nope", "token" }, "lusidauth: unknown option --nope" },
      { { "get" }, "lusidauth: usage: lusidauth get PATH" },
      { { "token", "extra" }, "lusidauth: usage: lusidauth token" },
      { { "request", "POST", "/api/echo", "--data", "{bad" }, "lusidauth: --data is not valid JSON" },
      { { "--secrets" }, "lusidauth: --secrets needs a value" },
      { { "--secrets", "/nonexistent/secrets.json", "token" }, "/nonexistent/secrets.json" },
    }
    for _, c in ipairs(cases) do
      local code, _, err = run(c[1], env())
      assert.equal(2, code, table.concat(c[1], " "))
      assert.matches(c[2], err, 1, true)
    end
    local code, _, err = run({ "token" }, env { FBN_TOKEN_URL = false })
    assert.equal(2, code)
    assert.matches("missing token_url", err, 1, true)
    assert.matches("FBN_TOKEN_URL", err, 1, true)
  end)

  it("has --help for every command", function()
    for _, cmd in ipairs { "token", "header", "refresh-token", "check", "get", "request" } do
      local code, out, err = run({ cmd, "--help" }, {})
      assert.equal(0, code)
      assert.equal("", err)
      assert.matches("^usage: lusidauth %[options%] " .. cmd:gsub("%-", "%%-"), out)
    end
    local code, out = run({ "--help" }, {})
    assert.equal(0, code)
    assert.matches("commands:", out, 1, true)
  end)

  it("reads --secrets FILE and --profile NAME", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(cjson.encode { profiles = { staging = {
      tokenUrl = okta.token_url("http"), clientId = F.client_id, clientSecret = F.client_secret,
      username = F.username, password = F.password, baseUrl = okta.api_url("http"),
    } } })
    f:close()
    local code, out = run({ "--secrets", path, "--profile", "staging", "get", "/api/portfolios" }, {})
    os.remove(path)
    assert.equal(0, code)
    assert.equal(2, #cjson.decode(out).values)
  end)

  it("prints what it does on stderr with -v", function()
    okta.script { { status = 503, body = "<html>down</html>", headers = { ["Retry-After"] = "0" } } }
    local code, out, err = run({ "-v", "token" }, env())
    assert.equal(0, code)
    assert.is_true(okta.validate(out:match("^(%S+)")).valid)
    assert.matches("lusidauth: warn: token request %(password grant%) failed: HTTP 503; waiting 0 s as the server"
      .. " asks %(Retry%-After%), then retry 1 of 3", err)
  end)

  it("says so on a terminal while it waits on a Retry-After", function()
    okta.script { { status = 429, body = "", headers = { ["Retry-After"] = "1" } } }
    local e = env()
    local parts = {}
    for k, v in pairs(e) do parts[#parts + 1] = k .. "=" .. quote(v) end
    -- script(1) gives the CLI a terminal for stdout and stderr
    local inner = table.concat(parts, " ") .. " " .. LUA .. " "
      .. quote(os.getenv("PWD") .. "/bin/lusidauth") .. " token"
    local p = io.popen("script -qec " .. quote(inner) .. " /dev/null")
    local out = p:read("*a")
    p:close()
    outputs[#outputs + 1] = out
    assert.matches("lusidauth: the server asked to wait 1 s (Retry-After); waiting", out, 1, true)
    assert.equal(2, okta.stats().requests)
    local code, _, err = run({ "token" }, env()) -- not a terminal: silent
    assert.equal(0, code)
    assert.equal("", err)
  end)

  it("never prints a configured secret, except the token it was asked for", function()
    run({ "check" }, env { FBN_PASSWORD = "wrong password" })
    run({ "token" }, env { FBN_CLIENT_SECRET = "wrong secret" })
    run({ "-v", "check" }, env { FBN_PROXY_ADDRESS = "http://127.0.0.1:1", FBN_PROXY_USERNAME = "pu",
      FBN_PROXY_PASSWORD = "proxy-secret-pw" })
    local pat = "pat.a-personal-access-token"
    run({ "check" }, env { FBN_ACCESS_TOKEN = pat })
    run({ "get", "/api/portfolios" }, env { FBN_ACCESS_TOKEN = pat })
    local all = table.concat(outputs, "\n")
    assert.is_true(#all > 0)
    local secrets = F.secrets("wrong password", "wrong secret", "proxy-secret-pw", pat)
    assert.is_nil(F.contains_any(all, secrets))
  end)
end)

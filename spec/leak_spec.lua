-- Nothing prints a secret: error objects and their fields, tostring(client), the log hook,
-- constructor and configuration errors, and what bin/lusidauth prints, across failing and
-- succeeding operations, including a token endpoint that echoes the request back.
local lusidauth = require "lusidauth"
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"
local H = require "spec.support.hostile"
local cjson = require "cjson"
local socket = require "socket"

local WRONG_PASSWORD = "wrong horse battery staple"
local WRONG_SECRET = "s3cr3t/wrong+secret&x"

-- The secrets of one test, and the text it captured.
local function new_book()
  local book = { secrets = {}, texts = {} }

  function book.secret(label, v)
    if type(v) == "string" and #v >= 4 then book.secrets[#book.secrets + 1] = { label, v } end
  end

  function book.text(where, s)
    if s ~= nil then book.texts[#book.texts + 1] = { where, tostring(s) } end
  end

  function book.err(where, err)
    if err == nil then return end
    book.text(where .. ": tostring(err)", tostring(err))
    if type(err) == "table" then
      for _, k in ipairs { "message", "error", "error_description", "error_uri" } do
        book.text(where .. ": err." .. k, err[k])
      end
    end
  end

  -- A client: its string, and every token it holds becomes a secret.
  function book.client(where, c)
    book.text(where .. ": tostring(client)", tostring(c))
    book.secret(where .. " refresh token", c:refresh_token())
  end

  function book.log(where)
    return function(level, msg) book.text(where .. ": log " .. tostring(level), msg) end
  end

  -- Asserts no captured text holds a secret, raw or urlencoded (space as + or as %20), or
  -- with prefix, its first prefix characters (a secret cut at a length limit). Lists every leak.
  function book.check(prefix)
    assert.is_true(#book.texts > 0, "nothing was captured")
    local leaks = {}
    for _, s in ipairs(book.secrets) do
      local forms = { s[2], F.urlencode(s[2]), (F.urlencode(s[2]):gsub("%+", "%%20")) }
      if prefix then forms[4] = s[2]:sub(1, prefix) end
      for i, v in ipairs(forms) do
        for _, t in ipairs(book.texts) do
          if t[2]:find(v, 1, true) then
            leaks[#leaks + 1] = ("%s (%s) in %s: %s"):format(
              s[1], ({ "raw", "form-urlencoded", "%20-encoded", "prefix" })[i], t[1], t[2])
          end
        end
      end
    end
    assert(#leaks == 0, #leaks .. " leaks:\n" .. table.concat(leaks, "\n"))
  end

  book.secret("password", F.password)
  book.secret("client secret", F.client_secret)
  book.secret("wrong password", WRONG_PASSWORD)
  book.secret("wrong client secret", WRONG_SECRET)
  return book
end

-- The form lusidauth sent in request i of the fake's log, encoded again in the client's order.
local ORDER = { "grant_type", "username", "password", "scope", "client_id", "client_secret", "refresh_token" }
local function form_of(req)
  local parts = {}
  for _, k in ipairs(ORDER) do
    if req.form[k] then parts[#parts + 1] = k .. "=" .. F.urlencode(req.form[k]) end
  end
  return table.concat(parts, "&")
end

local function echo(status, description, uri)
  return { status = status, body = cjson.encode {
    error = "invalid_request", error_description = description, error_uri = uri } }
end

describe("no secret is printed:", function()
  before_each(function() okta.reset() end)

  it("errors, their fields, tostring(client) and the log, for failing and succeeding calls", function()
    local book = new_book()
    local function opts(where, extra)
      local o = F.password_opts { retries = 1, retry_base = 0.01, log = book.log(where),
        on_refresh_token = function(rt) book.secret(where .. " rotated refresh token", rt) end }
      for k, v in pairs(extra or {}) do o[k] = v end
      return o
    end

    -- a wrong password, a wrong client secret
    local bad = lusidauth.new_password(opts("bad password", { password = WRONG_PASSWORD }))
    local t, err = bad:token()
    assert.is_nil(t)
    assert.equal("invalid_grant", err.error)
    book.err("bad password", err)
    book.client("bad password", bad)
    local badc = lusidauth.new_client_credentials(F.cc_opts {
      client_secret = WRONG_SECRET, log = book.log("bad secret") })
    t, err = badc:token()
    assert.is_nil(t)
    assert.equal("invalid_client", err.error)
    book.err("bad secret", err)
    book.client("bad secret", badc)

    -- success, refresh, a revoked refresh token with the password fallback
    local c = lusidauth.new_password(opts("client"))
    local at = assert(c:token())
    book.secret("access token 1", at)
    book.client("client", c)
    at = assert(c:refresh())
    book.secret("access token 2", at)
    local revoked = c:refresh_token()
    okta.revoke { refresh_token = revoked }
    c:invalidate()
    at = assert(c:token())
    book.secret("access token 3", at)
    book.client("client after fallback", c)

    -- a refresh-token client with the revoked token: invalid_grant, then a config error
    local rc = lusidauth.new_refresh_token(F.cc_opts { refresh_token = revoked, log = book.log("revoked") })
    t, err = rc:token()
    assert.is_nil(t)
    assert.equal("invalid_grant", err.error)
    book.err("revoked refresh token", err)
    t, err = rc:token()
    assert.is_nil(t)
    assert.equal("config", err.kind)
    book.err("dropped refresh token", err)
    book.client("revoked", rc)

    -- a server that echoes the password grant's form, raw and encoded secrets
    local reqs = okta.requests()
    local pw_req, rt_req
    for _, r in ipairs(reqs) do
      if r.form.grant_type == "password" and r.form.password == F.password then pw_req = r end
      if r.form.grant_type == "refresh_token" then rt_req = r end
    end
    assert.is_table(pw_req)
    assert.is_table(rt_req)
    local pw_echo = "you sent: " .. form_of(pw_req) .. " i.e. password " .. F.password .. " secret " .. F.client_secret
    local uri = "https://errors.example/e?p=" .. F.urlencode(F.password):gsub("%+", "%%20")
      .. "&s=" .. F.urlencode(F.client_secret)
    okta.script { echo(400, pw_echo, uri), echo(503, pw_echo, uri), echo(503, pw_echo, uri),
                  echo(200, pw_echo, uri) }
    for i = 1, 3 do
      t, err = c:login()
      assert.is_nil(t)
      book.err("password echo " .. i, err)
    end
    assert.is_truthy(err.error_description:find("[redacted]", 1, true))

    -- a server that echoes the refresh grant's form and the current tokens
    local rt, at_now = c:refresh_token(), c:token()
    local rt_echo = "you sent: grant_type=refresh_token&refresh_token=" .. F.urlencode(rt)
      .. " holding " .. at_now .. " raw " .. rt
    okta.script { echo(400, rt_echo, "https://errors.example/e?rt=" .. rt), echo(401, rt_echo) }
    t, err = c:refresh()
    assert.is_nil(t)
    book.err("refresh echo", err)
    t, err = c:refresh()
    assert.is_nil(t)
    book.err("refresh echo 401", err)
    book.client("client after echoes", c)
    assert.equal(0, okta.stats().scripts_left)

    -- a stale token whose refresh gets an echo: served, and the log line carries the message
    -- (shared = false: c has the same identity and would share its 3600 s token)
    okta.config { expires_in = 2 }
    local s = lusidauth.new_password(opts("stale", { refresh_skew = 3, shared = false }))
    local old = assert(s:token())
    book.secret("stale access token", old)
    book.client("stale", s)
    okta.config { expires_in = 3600 }
    socket.sleep(1.1)
    rt = s:refresh_token()
    okta.script { echo(400, "echo " .. F.urlencode(rt) .. " " .. old .. " " .. rt) }
    assert.equal(old, (s:token()))
    assert.equal(0, okta.stats().scripts_left)
    book.client("stale after echo", s)

    -- constructor errors must not echo what they refuse
    local enc = F.urlencode(F.password)
    for _, o in ipairs {
      { token_url = "https://alice:" .. enc .. "@okta.example/oauth2/default/v1/token" },
      { proxy = "http://bob:" .. enc .. "@proxy.example:8080" },
      { refresh_token = "rt with " .. F.password },
      { client_secret = F.client_secret, retries = F.password },
      { password = F.password, tiemout = F.password },
    } do
      local ok, msg = pcall(lusidauth.new_password, F.password_opts(o))
      assert.is_false(ok)
      book.text("constructor", msg)
    end
    local ok, msg = pcall(lusidauth.new_pat, "pat with " .. F.password)
    assert.is_false(ok)
    book.text("new_pat", msg)

    -- configuration errors from a secrets file holding the secrets
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"api": {"tokenUrl": "', okta.token_url("http"), '", "password": "', F.password,
      '", "clientSecret": "', F.client_secret, '", "username": 42, }')
    f:close()
    local cfg, cerr = lusidauth.config.load { secrets = path, env = {} }
    assert.is_nil(cfg)
    book.err("config: broken json", cerr)
    f = assert(io.open(path, "w"))
    f:write(cjson.encode { api = { tokenUrl = okta.token_url("http"), password = F.password,
      clientSecret = F.client_secret, clientId = 42 } })
    f:close()
    cfg, cerr = lusidauth.config.load { secrets = path, env = {} }
    assert.is_nil(cfg)
    book.err("config: wrong type", cerr)
    os.remove(path)

    for _, x in ipairs { bad, badc, c, rc, s } do x:close() end
    book.check()
  end)

  it("redacts an echoed HTTP Basic credential, in errors and in the log", function()
    local book = new_book()
    local basic = H.basic_credential()
    book.secret("Basic credential", basic)
    local c = lusidauth.new_client_credentials(F.cc_opts { retries = 1, retry_base = 0.01, log = book.log("cc") })
    assert.is_string((c:token()))
    local header = okta.requests()[1].headers.authorization
    assert.equal("Basic " .. basic, header)
    local text = "Authorization: " .. header .. " (" .. F.urlencode(basic) .. ")"
    okta.script { echo(401, text), echo(503, text), echo(503, text) }
    c:invalidate()
    local t, err = c:token()
    assert.is_nil(t)
    book.err("cc echo", err)
    t, err = c:token()
    assert.is_nil(t)
    book.err("cc echo 503", err)
    book.client("cc", c)
    c:close()
    book.check()
  end)

  it("never keeps part of a secret cut at a field's length limit", function()
    local book = new_book()
    local c = lusidauth.new_password(F.password_opts { retries = 0 })
    assert.is_string((c:login()))
    local rt = c:refresh_token()
    book.secret("refresh token", rt)
    -- the secret straddles error_description's limit, and error's
    okta.script {
      echo(400, ("x"):rep(490) .. rt),
      { status = 400, body = cjson.encode { error = ("e"):rep(40) .. rt } },
    }
    local t, err = c:refresh()
    assert.is_nil(t)
    book.err("long description", err)
    t, err = c:refresh()
    assert.is_nil(t)
    book.err("long error", err)
    c:close()
    book.check(10)
  end)

  describe("bin/lusidauth", function()
    local exists = io.open("bin/lusidauth", "r")
    if exists then exists:close() end

    local function env(extra)
      local e = {
        FBN_TOKEN_URL = okta.token_url("http"), FBN_CLIENT_ID = F.client_id,
        FBN_CLIENT_SECRET = F.client_secret, FBN_USERNAME = F.username, FBN_PASSWORD = F.password,
      }
      for k, v in pairs(extra or {}) do e[k] = v or nil end
      return e
    end

    it("prints no secret for failing configurations", function()
      if not exists then
        pending("bin/lusidauth is not there")
        return
      end
      local book = new_book()
      local function run(args, e, code)
        local out, rc = H.run_cli(args, e)
        book.text("lusidauth " .. args, out)
        assert.equal(code, rc, "exit code of lusidauth " .. args .. ": " .. out)
        assert.is_truthy(out:find("%S"), "lusidauth " .. args .. " printed nothing")
        return out
      end

      run("token", env { FBN_PASSWORD = WRONG_PASSWORD }, 1)
      run("-v token", env { FBN_CLIENT_SECRET = WRONG_SECRET }, 1)
      run("--json header", env { FBN_PASSWORD = WRONG_PASSWORD }, 1)
      run("check", env { FBN_PASSWORD = WRONG_PASSWORD }, 1)
      run("--json check", env { FBN_CLIENT_SECRET = WRONG_SECRET }, 1)
      run("refresh-token", env { FBN_PASSWORD = WRONG_PASSWORD }, 1)
      run("get /api/portfolios", env { FBN_PASSWORD = WRONG_PASSWORD, FBN_LUSID_URL = okta.api_url() }, 1)

      -- retries and their log lines
      okta.script { { status = 503, body = "<html>down</html>", times = 2 } }
      local out = run("-v token", env { FBN_RATE_LIMIT_RETRIES = "1" }, 1)
      assert.matches("retry", out, 1, true)
      assert.equal(0, okta.stats().scripts_left)

      -- a server that echoes the form, raw and encoded
      local pw_form = "grant_type=password&username=" .. F.urlencode(F.username) .. "&password="
        .. F.urlencode(F.password) .. "&client_id=" .. F.client_id .. "&client_secret=" .. F.urlencode(F.client_secret)
      local text = "you sent " .. pw_form .. " i.e. " .. F.password .. " / " .. F.client_secret
      okta.script { echo(400, text), echo(400, text), echo(400, text) }
      run("-v token", env(), 1)
      run("--json check", env(), 1)
      run("header", env(), 1)
      assert.equal(0, okta.stats().scripts_left)

      -- secrets files: broken, and with a wrong password
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write('{"api": {"tokenUrl": "', okta.token_url("http"), '", "password": "', F.password,
        '", "clientSecret": "', F.client_secret, '", "clientId": ', F.client_id, "}}")
      f:close()
      run("--secrets " .. H.shquote(path) .. " token", {}, 2)
      f = assert(io.open(path, "w"))
      f:write(cjson.encode { api = { tokenUrl = okta.token_url("http"), username = F.username,
        password = WRONG_PASSWORD, clientId = F.client_id, clientSecret = F.client_secret } })
      f:close()
      run("-v --secrets " .. H.shquote(path) .. " token", {}, 1)
      run("--secrets " .. H.shquote(path) .. " check", {}, 1)
      os.remove(path)

      -- refresh tokens the runs sent, if any
      for _, r in ipairs(okta.requests()) do book.secret("refresh token sent", r.form.refresh_token) end
      book.check()
    end)

    it("prints no echoed Basic credential", function()
      if not exists then
        pending("bin/lusidauth is not there")
        return
      end
      local book = new_book()
      book.secret("Basic credential", H.basic_credential())
      local text = "Authorization: Basic " .. H.basic_credential()
      okta.script { echo(401, text), echo(401, text) }
      local e = env { FBN_USERNAME = false, FBN_PASSWORD = false }
      for _, args in ipairs { "-v token", "--json check" } do
        local out, rc = H.run_cli(args, e)
        assert.equal(1, rc, out)
        book.text("lusidauth " .. args, out)
      end
      assert.equal(0, okta.stats().scripts_left)
      book.check()
    end)
  end)
end)

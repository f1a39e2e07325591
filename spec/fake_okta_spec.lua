-- Specs for the fake Okta fixture itself (spec/support/fake_okta.lua), using
-- plain LuaSocket/LuaSec. Needs a running server:
--   eval "$(spec/support/server.sh start /tmp/fo)"
--   lua5.4 /usr/bin/busted spec/fake_okta_spec.lua

local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local mime = require "mime"
local cjson = require "cjson"
local ssl = require "ssl"
local https = require "ssl.https"
local okta = require "spec.support.okta"

local CLIENT_ID, CLIENT_SECRET = "lusid-client", "p+w%d:x"
local USER, PASSWORD = "alice@example.com", "correct horse"
local FULL_SCOPE = "openid client groups offline_access"

local function urlencode(s)
  return (s:gsub("[^%w%-._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- Form-encodes a map, keys sorted so bodies are reproducible.
local function form(t)
  local keys, parts = {}, {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(t[k]) end
  return table.concat(parts, "&")
end

local function basic(id, secret)
  return "Basic " .. mime.b64(urlencode(id) .. ":" .. urlencode(secret))
end

local function decode(body)
  local ok, value = pcall(cjson.decode, body)
  return ok and value or body
end

-- One request through socket.http (or ssl.https for https URLs).
-- Returns status, body string, headers (lowercase names).
local function request(method, url, body, headers, tls)
  local chunks, h = {}, {}
  for k, v in pairs(headers or {}) do h[k:lower()] = v end
  if body then h["content-length"] = tostring(#body) end
  local req = {
    url = url, method = method, headers = h,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  }
  local ok, code, rh
  if url:match("^https:") then
    for k, v in pairs(tls or {}) do req[k] = v end
    ok, code, rh = https.request(req)
  else
    ok, code, rh = http.request(req)
  end
  assert(ok, code)
  return code, table.concat(chunks), rh
end

-- POST to the token endpoint. opts.basic = { id, secret }, opts.headers, opts.listener.
local function token_request(params, opts)
  opts = opts or {}
  local headers = { ["content-type"] = "application/x-www-form-urlencoded" }
  if opts.basic then headers.authorization = basic(opts.basic[1], opts.basic[2]) end
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local code, body, rh = request("POST", okta.token_url(opts.listener), form(params), headers, opts.tls)
  return code, decode(body), rh
end

local function password_grant(overrides)
  local params = {
    grant_type = "password", username = USER, password = PASSWORD, scope = FULL_SCOPE,
    client_id = CLIENT_ID, client_secret = CLIENT_SECRET,
  }
  for k, v in pairs(overrides or {}) do params[k] = v or nil end
  return token_request(params)
end

local function refresh_grant(rt, extra)
  local params = { grant_type = "refresh_token", refresh_token = rt }
  for k, v in pairs(extra or {}) do params[k] = v end
  return token_request(params, { basic = { CLIENT_ID, CLIENT_SECRET } })
end

local function api(method, path, token, body, headers)
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  if token then h.authorization = "Bearer " .. token end
  local code, text, rh = request(method, okta.api_url() .. path, body, h)
  return code, decode(text), rh, text
end

local function raw_connect(name)
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:connect("127.0.0.1", okta.port(name)))
  return c
end

-- Reads one response from a raw connection: status, headers, body, err, partial.
local function read_response(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.1 (%d%d%d) "))
  local headers = {}
  while true do
    local l = assert(c:receive("*l"))
    if l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.-)%s*$")
    headers[k:lower()] = v
  end
  local n = tonumber(headers["content-length"] or "0")
  if n == 0 then return status, headers, "" end -- receive(0) would wait
  local body, berr, partial = c:receive(n)
  return status, headers, body, berr, partial
end

local function raw_token_request(c, params, extra_headers)
  local body = form(params)
  c:send("POST /oauth2/default/v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    .. "Content-Type: application/x-www-form-urlencoded\r\n"
    .. (extra_headers or "")
    .. "Content-Length: " .. #body .. "\r\n\r\n" .. body)
end

local PASSWORD_PARAMS = {
  grant_type = "password", username = USER, password = PASSWORD, scope = FULL_SCOPE,
  client_id = CLIENT_ID, client_secret = CLIENT_SECRET,
}

local function is_token(s, prefix)
  return type(s) == "string" and #s == 43 and s:sub(1, 3) == prefix
    and s:match("^..%.[%w_%-]+$") ~= nil
end

local function server_alive()
  local code, body = request("GET", okta.url() .. "/_control/stats")
  return code == 200 and decode(body).requests ~= nil
end

local function tls_params()
  local ca = os.getenv("LUSIDAUTH_TEST_CA")
  assert(ca and ca ~= "", "LUSIDAUTH_TEST_CA is not set")
  return { cafile = ca, verify = "peer", protocol = "any", options = { "all" } }
end

local function tls_connect(name)
  local c = raw_connect(name)
  local params = tls_params()
  params.mode = "client"
  local s = assert(ssl.wrap(c, params))
  s:settimeout(5)
  local ok, err = s:dohandshake()
  if not ok then s:close() end
  return ok and s or nil, err
end

describe("fake Okta", function()
  before_each(function()
    okta.reset()
  end)

  describe("password grant", function()
    it("issues tokens in Okta's shape", function()
      local code, body, headers = password_grant()
      assert.equal(200, code)
      assert.equal("Bearer", body.token_type)
      assert.equal(3600, body.expires_in)
      assert.equal(FULL_SCOPE, body.scope)
      assert.equal("ignored.jwt.value", body.id_token)
      assert.is_true(is_token(body.access_token, "at."))
      assert.is_true(is_token(body.refresh_token, "rt."))
      assert.equal("application/json", headers["content-type"])
      assert.equal("no-store", headers["cache-control"])
      local v = okta.validate(body.access_token)
      assert.is_true(v.valid)
      assert.is_true(v.expires_in > 3590 and v.expires_in <= 3600)
    end)

    it("defaults scope to openid and issues no refresh token without offline_access", function()
      local code, body = password_grant({ scope = false })
      assert.equal(200, code)
      assert.equal("openid", body.scope)
      assert.is_nil(body.refresh_token)
      code, body = password_grant({ scope = "openid email" })
      assert.equal(200, code)
      assert.equal("openid email", body.scope)
      assert.is_nil(body.refresh_token)
    end)

    it("rejects wrong credentials with invalid_grant", function()
      for _, o in ipairs({ { password = "wrong" }, { username = "bob@example.com" } }) do
        local code, body = password_grant(o)
        assert.equal(400, code)
        assert.same({ error = "invalid_grant",
          error_description = "The credentials provided were invalid." }, body)
      end
    end)

    it("rejects an unknown scope with invalid_scope", function()
      local code, body = password_grant({ scope = "openid admin" })
      assert.equal(400, code)
      assert.equal("invalid_scope", body.error)
    end)

    it("requires username and password", function()
      local code, body = password_grant({ password = false })
      assert.equal(400, code)
      assert.equal("invalid_request", body.error)
    end)
  end)

  describe("client authentication", function()
    it("rejects a wrong or unknown client, or none, with 401 invalid_client", function()
      for _, o in ipairs({
        { client_secret = "nope" }, { client_id = "someone" },
        { client_id = false, client_secret = false },
      }) do
        local code, body, headers = password_grant(o)
        assert.equal(401, code)
        assert.same({ error = "invalid_client",
          error_description = "Client authentication failed." }, body)
        assert.is_nil(headers["www-authenticate"])
      end
    end)

    it("adds WWW-Authenticate when Basic was used", function()
      local code, body, headers = refresh_grant("rt.x")
      assert.equal(400, code) -- right client, unknown token
      assert.equal("invalid_grant", body.error)
      assert.is_nil(headers["www-authenticate"])
      code, body, headers = token_request({ grant_type = "refresh_token", refresh_token = "rt.x" },
        { basic = { CLIENT_ID, "wrong" } })
      assert.equal(401, code)
      assert.equal("invalid_client", body.error)
      assert.equal('Basic realm="fake-okta"', headers["www-authenticate"])
    end)

    it("form-decodes both halves of Basic, split on the first colon", function()
      local code = token_request({ grant_type = "client_credentials" },
        { basic = { CLIENT_ID, CLIENT_SECRET } })
      assert.equal(200, code)
      -- Unencoded: "+" decodes to a space, so the secret no longer matches.
      code = token_request({ grant_type = "client_credentials" }, { headers = {
        authorization = "Basic " .. mime.b64(CLIENT_ID .. ":" .. CLIENT_SECRET) } })
      assert.equal(401, code)
      local log = okta.requests()
      assert.same({ id = CLIENT_ID, secret = CLIENT_SECRET }, log[1].basic)
      assert.same({ id = CLIENT_ID, secret = "p w%d:x" }, log[2].basic)

      okta.config({ clients = { ["app:1 +x"] = "s:e%+cret" } })
      code = token_request({ grant_type = "client_credentials" },
        { basic = { "app:1 +x", "s:e%+cret" } })
      assert.equal(200, code)
    end)

    it("rejects malformed Basic credentials", function()
      for _, value in ipairs({ "Basic !!!!", "Basic " .. mime.b64("no-colon"), "Basic" }) do
        local code, body, headers = token_request({ grant_type = "client_credentials" },
          { headers = { authorization = value } })
        assert.equal(401, code)
        assert.equal("invalid_client", body.error)
        assert.equal('Basic realm="fake-okta"', headers["www-authenticate"])
      end
    end)

    it("rejects Basic together with body credentials", function()
      local code, body = token_request({
        grant_type = "client_credentials", client_id = CLIENT_ID, client_secret = CLIENT_SECRET,
      }, { basic = { CLIENT_ID, CLIENT_SECRET } })
      assert.equal(400, code)
      assert.equal("invalid_request", body.error)
    end)
  end)

  describe("client_credentials grant", function()
    it("issues an access token and no refresh token", function()
      local code, body = token_request({ grant_type = "client_credentials", scope = FULL_SCOPE },
        { basic = { CLIENT_ID, CLIENT_SECRET } })
      assert.equal(200, code)
      assert.is_true(is_token(body.access_token, "at."))
      assert.is_nil(body.refresh_token)
      assert.is_true(okta.validate(body.access_token).valid)
    end)

    it("accepts Basic authentication only", function()
      local code, body, headers = token_request({
        grant_type = "client_credentials", client_id = CLIENT_ID, client_secret = CLIENT_SECRET,
      })
      assert.equal(401, code)
      assert.equal("invalid_client", body.error)
      assert.is_nil(headers["www-authenticate"])
    end)
  end)

  describe("refresh grant", function()
    it("rotates the refresh token and marks the old one used", function()
      local _, first = password_grant()
      local code, second = refresh_grant(first.refresh_token)
      assert.equal(200, code)
      assert.is_true(is_token(second.refresh_token, "rt."))
      assert.are_not.equal(first.refresh_token, second.refresh_token)
      assert.are_not.equal(first.access_token, second.access_token)
      assert.equal(FULL_SCOPE, second.scope)
      assert.is_true(okta.validate(first.access_token).valid)
      assert.same({ valid = false, type = "refresh", reason = "used" },
        okta.validate(first.refresh_token))
      assert.same({ valid = true, type = "refresh" }, okta.validate(second.refresh_token))
      local third
      code, third = refresh_grant(second.refresh_token)
      assert.equal(200, code)
      assert.are_not.equal(second.refresh_token, third.refresh_token)
    end)

    it("revokes the whole chain when a used refresh token comes back", function()
      local _, first = password_grant()
      local _, second = refresh_grant(first.refresh_token)
      local _, other = password_grant() -- another chain, unaffected
      local code, body = refresh_grant(first.refresh_token)
      assert.equal(400, code)
      assert.same({ error = "invalid_grant",
        error_description = "The refresh token is invalid or expired." }, body)
      assert.equal(1, okta.stats().reuse)
      assert.same({ valid = false, type = "access", reason = "revoked" },
        okta.validate(first.access_token))
      assert.equal("revoked", okta.validate(second.access_token).reason)
      code, body = refresh_grant(second.refresh_token)
      assert.equal(400, code)
      assert.equal("invalid_grant", body.error)
      assert.equal(1, okta.stats().reuse) -- a revoked chain is not counted again
      assert.is_true(okta.validate(other.access_token).valid)
      assert.equal(200, (refresh_grant(other.refresh_token)))
    end)

    it("allows reuse within the grace period", function()
      okta.config({ grace = 30 })
      local _, first = password_grant()
      local _, second = refresh_grant(first.refresh_token)
      local code, again = refresh_grant(first.refresh_token)
      assert.equal(200, code)
      assert.are_not.equal(second.refresh_token, again.refresh_token)
      assert.equal(0, okta.stats().reuse)
    end)

    it("returns the same refresh token when rotation is off", function()
      okta.config({ rotate = false })
      local _, first = password_grant()
      for _ = 1, 2 do
        local code, body = refresh_grant(first.refresh_token)
        assert.equal(200, code)
        assert.equal(first.refresh_token, body.refresh_token)
      end
      assert.equal(0, okta.stats().reuse)
    end)

    it("omits refresh tokens when issue_refresh is off", function()
      local _, first = password_grant()
      okta.config({ issue_refresh = false })
      local code, body = password_grant()
      assert.equal(200, code)
      assert.is_nil(body.refresh_token)
      code, body = refresh_grant(first.refresh_token)
      assert.equal(200, code)
      assert.is_nil(body.refresh_token)
      assert.is_true(okta.validate(first.refresh_token).valid) -- not used up
    end)

    it("rejects unknown, missing, revoked and other clients' refresh tokens", function()
      local _, first = password_grant()
      local code, body = refresh_grant("rt.unknown")
      assert.equal(400, code)
      assert.equal("invalid_grant", body.error)
      code, body = token_request({ grant_type = "refresh_token" },
        { basic = { CLIENT_ID, CLIENT_SECRET } })
      assert.equal(400, code)
      assert.equal("invalid_request", body.error)
      okta.config({ clients = { [CLIENT_ID] = CLIENT_SECRET, other = "secret" } })
      code, body = token_request({ grant_type = "refresh_token", refresh_token = first.refresh_token },
        { basic = { "other", "secret" } })
      assert.equal(400, code)
      assert.equal("invalid_grant", body.error)
      okta.revoke({ refresh_token = first.refresh_token })
      code, body = refresh_grant(first.refresh_token)
      assert.equal(400, code)
      assert.equal("invalid_grant", body.error)
      assert.equal("revoked", okta.validate(first.access_token).reason)
      assert.equal(0, okta.stats().reuse)
    end)

    it("lets scope narrow but not widen", function()
      local _, first = password_grant({ scope = "openid offline_access" })
      local code, body = refresh_grant(first.refresh_token, { scope = "openid" })
      assert.equal(200, code)
      assert.equal("openid", body.scope)
      code, body = refresh_grant(body.refresh_token, { scope = "openid email" })
      assert.equal(400, code)
      assert.equal("invalid_scope", body.error)
    end)
  end)

  describe("token endpoint errors and counters", function()
    it("answers bad grant types, methods and content types", function()
      local code, body = token_request({ grant_type = "authorization_code" },
        { basic = { CLIENT_ID, CLIENT_SECRET } })
      assert.equal(400, code)
      assert.equal("unsupported_grant_type", body.error)
      code, body = token_request({}, { basic = { CLIENT_ID, CLIENT_SECRET } })
      assert.equal(400, code)
      assert.equal("invalid_request", body.error)
      local text
      code, text = request("GET", okta.token_url())
      assert.equal(405, code)
      assert.equal("invalid_request", decode(text).error)
      code, text = request("POST", okta.token_url(), cjson.encode(PASSWORD_PARAMS),
        { ["content-type"] = "application/json" })
      assert.equal(400, code)
      assert.equal("invalid_request", decode(text).error)
      code, text = request("POST", okta.token_url(),
        "grant_type=password&grant_type=password",
        { ["content-type"] = "application/x-www-form-urlencoded" })
      assert.equal(400, code)
      assert.equal("invalid_request", decode(text).error)
    end)

    it("counts every request by grant type", function()
      password_grant()
      local _, body = password_grant()
      refresh_grant(body.refresh_token)
      token_request({ grant_type = "client_credentials" }, { basic = { CLIENT_ID, CLIENT_SECRET } })
      token_request({ grant_type = "device_code" })
      token_request({})
      request("GET", okta.token_url())
      assert.same({
        requests = 7, reuse = 0, api_requests = 0, scripts_left = 0,
        grants = { password = 2, refresh_token = 1, client_credentials = 1, other = 3 },
      }, okta.stats())
    end)

    it("logs each request with its decoded form, Basic and headers", function()
      local _, body = password_grant()
      refresh_grant(body.refresh_token)
      local log = okta.requests()
      assert.equal(2, #log)
      assert.equal("password", log[1].grant_type)
      assert.same(PASSWORD_PARAMS, log[1].form)
      assert.is_nil(log[1].basic)
      assert.equal("application/x-www-form-urlencoded", log[1].headers["content-type"])
      assert.equal("number", type(log[1].at))
      assert.equal("refresh_token", log[2].grant_type)
      assert.same({ grant_type = "refresh_token", refresh_token = body.refresh_token }, log[2].form)
      assert.same({ id = CLIENT_ID, secret = CLIENT_SECRET }, log[2].basic)
      assert.equal(basic(CLIENT_ID, CLIENT_SECRET), log[2].headers.authorization)
      assert.equal("http", log[2].listener)
    end)

    it("accepts a chunked request body", function()
      local c = raw_connect()
      local body = form(PASSWORD_PARAMS)
      c:send("POST /oauth2/default/v1/token HTTP/1.1\r\nHost: x\r\n"
        .. "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. string.format("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n",
          10, body:sub(1, 10), #body - 10, body:sub(11)))
      local status, _, text = read_response(c)
      c:close()
      assert.equal(200, status)
      assert.is_true(is_token(decode(text).access_token, "at."))
    end)

    it("never writes tokens or secrets to its log", function()
      local ports = os.getenv("LUSIDAUTH_FAKE_OKTA_PORTS")
      local logfile = ports:gsub("[^/]*$", "") .. "fake_okta.log"
      local _, body = password_grant()
      local _, second = refresh_grant(body.refresh_token)
      okta.validate(second.access_token)
      api("GET", "/api/portfolios?x=" .. second.access_token, second.access_token)
      socket.sleep(0.1)
      local f = assert(io.open(logfile), "server.sh keeps the log beside the port file: " .. logfile)
      local text = f:read("*a")
      f:close()
      assert.truthy(text:find("POST /oauth2/default/v1/token grant=refresh_token 200", 1, true))
      for _, secret in ipairs({ body.access_token, body.refresh_token, second.access_token,
        second.refresh_token, PASSWORD, CLIENT_SECRET }) do
        assert.is_nil(text:find(secret, 1, true))
      end
    end)
  end)

  describe("config", function()
    it("sends expires_in as a string, or fractional, or not at all", function()
      okta.config({ expires_in = "3600" })
      local _, body = password_grant()
      assert.equal("3600", body.expires_in)
      assert.is_true(okta.validate(body.access_token).expires_in > 3590)
      okta.config({ expires_in = 0.3 })
      _, body = password_grant()
      assert.equal(0.3, body.expires_in)
      assert.is_true(okta.validate(body.access_token).valid)
      socket.sleep(0.4)
      assert.same({ valid = false, type = "access", reason = "expired" },
        okta.validate(body.access_token))
      okta.config({ expires_in = okta.null })
      _, body = password_grant()
      assert.is_nil(body.expires_in)
      assert.is_true(okta.validate(body.access_token).valid)
    end)

    it("changes or omits token_type", function()
      okta.config({ token_type = "bearer" })
      local _, body = password_grant()
      assert.equal("bearer", body.token_type)
      okta.config({ token_type = false })
      _, body = password_grant()
      assert.is_nil(body.token_type)
      assert.is_true(is_token(body.access_token, "at."))
    end)

    it("replaces users and clients", function()
      okta.config({ users = { ["bob@example.com"] = "pw" } })
      assert.equal(400, (password_grant()))
      assert.equal(200, (password_grant({ username = "bob@example.com", password = "pw" })))
      okta.config({ clients = { c2 = "s2" } })
      assert.equal(401, (password_grant({ username = "bob@example.com", password = "pw" })))
    end)

    it("is restored by reset", function()
      okta.config({ expires_in = 5, token_type = "bearer", users = {} })
      okta.reset()
      local code, body = password_grant()
      assert.equal(200, code)
      assert.equal(3600, body.expires_in)
      assert.equal("Bearer", body.token_type)
    end)

    it("rejects unknown keys and bad types", function()
      local ok, err = pcall(okta.config, { expire_in = 5 })
      assert.is_false(ok)
      assert.matches("400: .*unknown config key: expire_in", err)
      ok, err = pcall(okta.config, { rotate = "yes" })
      assert.is_false(ok)
      assert.matches("rotate must be a boolean", err)
    end)
  end)

  describe("control API", function()
    it("validates tokens", function()
      assert.same({ valid = false, reason = "unknown" }, okta.validate("at.nothing"))
      local _, body = password_grant()
      okta.expire_all()
      assert.same({ valid = false, type = "access", reason = "expired" },
        okta.validate(body.access_token))
      local _, fresh = refresh_grant(body.refresh_token) -- refresh still works
      assert.is_true(okta.validate(fresh.access_token).valid)
      okta.revoke({ all = true })
      assert.equal("revoked", okta.validate(fresh.access_token).reason)
      assert.equal(400, (refresh_grant(fresh.refresh_token)))
    end)

    it("answers unknown paths, wrong methods and bad JSON", function()
      assert.equal(404, (request("GET", okta.url() .. "/_control/nothing")))
      assert.equal(405, (request("GET", okta.url() .. "/_control/reset")))
      assert.equal(405, (request("POST", okta.url() .. "/_control/stats", "{}")))
      local code, text = request("POST", okta.url() .. "/_control/config", "{nope")
      assert.equal(400, code)
      assert.matches("not JSON", decode(text).error)
      assert.equal(404, (request("GET", okta.url() .. "/elsewhere")))
      local ok, err = pcall(okta.revoke, { refresh_token = "rt.unknown" })
      assert.is_false(ok)
      assert.matches("unknown token", err)
    end)
  end)

  describe("scripting", function()
    it("serves status, headers and body instead of the normal answer, then resumes", function()
      okta.script({ { status = 503, headers = { ["Retry-After"] = "2" },
        body = "<html>down</html>" } })
      assert.equal(1, okta.stats().scripts_left)
      local code, body, headers = password_grant()
      assert.equal(503, code)
      assert.equal("<html>down</html>", body)
      assert.equal("2", headers["retry-after"])
      assert.equal("text/html", headers["content-type"])
      code = password_grant()
      assert.equal(200, code)
      local stats = okta.stats()
      assert.equal(0, stats.scripts_left)
      assert.equal(2, stats.requests)
      assert.equal(2, stats.grants.password)
      assert.equal(2, #okta.requests())
    end)

    it("defaults to 200 with a JSON content type for JSON bodies", function()
      okta.script({ { body = '{"access_token":"x"}' }, { status = 400, body = { error = "invalid_grant" } },
        { status = 401, body = "" } })
      local code, body, headers = password_grant()
      assert.equal(200, code)
      assert.same({ access_token = "x" }, body)
      assert.equal("application/json", headers["content-type"])
      code, body = password_grant()
      assert.equal(400, code)
      assert.same({ error = "invalid_grant" }, body)
      code, body, headers = password_grant()
      assert.equal(401, code)
      assert.equal("", body)
      assert.equal("0", headers["content-length"])
    end)

    it("serves an entry times times, in FIFO order", function()
      okta.script({ { status = 429, times = 3 }, { status = 502 } })
      assert.equal(4, okta.stats().scripts_left)
      for left = 3, 1, -1 do
        assert.equal(429, (password_grant()))
        assert.equal(left, okta.stats().scripts_left)
      end
      assert.equal(502, (password_grant()))
      assert.equal(200, (password_grant()))
    end)

    it("applies a grant-filtered entry only to that grant", function()
      okta.script({ { grant = "refresh_token", status = 500 } })
      local code, body = password_grant()
      assert.equal(200, code)
      assert.equal(1, okta.stats().scripts_left)
      assert.equal(500, (refresh_grant(body.refresh_token)))
      assert.equal(200, (refresh_grant(body.refresh_token)))
      assert.same({ password = 1, refresh_token = 2, client_credentials = 0, other = 0 },
        okta.stats().grants)
    end)

    it("delays a scripted answer, or a real one with pass", function()
      okta.script({ { status = 503, delay = 0.5 }, { pass = true, delay = 0.5 } })
      local t0 = socket.gettime()
      assert.equal(503, (password_grant()))
      local t1 = socket.gettime()
      assert.is_true(t1 - t0 >= 0.5)
      local code, body = password_grant()
      assert.is_true(socket.gettime() - t1 >= 0.5)
      assert.equal(200, code)
      assert.is_true(okta.validate(body.access_token).valid)
    end)

    it("closes mid-body after close_after bytes", function()
      local full = '{"access_token":"at.cut","token_type":"Bearer","expires_in":3600}'
      okta.script({ { body = full, close_after = 10 } })
      local c = raw_connect()
      raw_token_request(c, PASSWORD_PARAMS)
      local status, headers, body, err, partial = read_response(c)
      c:close()
      assert.equal(200, status)
      assert.equal(tostring(#full), headers["content-length"])
      assert.is_nil(body)
      assert.equal("closed", err)
      assert.equal(full:sub(1, 10), partial)
    end)

    it("sends raw bytes and closes", function()
      local raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage"
      okta.script({ { raw = raw } })
      local c = raw_connect()
      raw_token_request(c, PASSWORD_PARAMS)
      local all = c:receive("*a")
      c:close()
      assert.equal(raw, all)
    end)

    it("hangs until the client goes away", function()
      okta.script({ { hang = true } })
      local c = raw_connect()
      raw_token_request(c, PASSWORD_PARAMS)
      c:settimeout(0.3)
      local line, err = c:receive("*l")
      assert.is_nil(line)
      assert.equal("timeout", err)
      c:close()
      assert.equal(0, okta.stats().scripts_left)
      assert.equal(200, (password_grant()))
    end)

    it("scripts the fake API with endpoint = \"api\"", function()
      okta.script({ { endpoint = "api", status = 502, body = "<html>bad gateway</html>" } })
      assert.equal(200, (password_grant())) -- token requests don't consume it
      local code, body = api("GET", "/api/portfolios")
      assert.equal(502, code)
      assert.equal("<html>bad gateway</html>", body)
      assert.equal(1, okta.stats().api_requests)
    end)

    it("rejects malformed entries", function()
      local ok, err = pcall(okta.script, { { status = 99 } })
      assert.is_false(ok)
      assert.matches("status must be an integer", err)
      ok, err = pcall(okta.script, { { sttaus = 500 } })
      assert.is_false(ok)
      assert.matches("unknown key sttaus", err)
      assert.equal(0, okta.stats().scripts_left)
    end)
  end)

  describe("connections", function()
    it("serves other connections while one response is delayed", function()
      okta.script({ { grant = "refresh_token", delay = 1.0, status = 503 } })
      local slow = raw_connect()
      local t0 = socket.gettime()
      raw_token_request(slow, { grant_type = "refresh_token", refresh_token = "rt.x" },
        "Authorization: " .. basic(CLIENT_ID, CLIENT_SECRET) .. "\r\n")
      -- Wait until the server has taken the slow request.
      while okta.stats().grants.refresh_token == 0 do socket.sleep(0.01) end
      local t1 = socket.gettime()
      local code = password_grant()
      local fast = socket.gettime() - t1
      assert.equal(200, code)
      assert.is_true(fast < 0.5, "fast request took " .. fast .. " s")
      local status = read_response(slow)
      slow:close()
      assert.equal(503, status)
      assert.is_true(socket.gettime() - t0 >= 1.0)
    end)

    it("keeps connections alive and honours Connection: close", function()
      local c = raw_connect()
      for _ = 1, 2 do
        raw_token_request(c, PASSWORD_PARAMS)
        local status, headers = read_response(c)
        assert.equal(200, status)
        assert.is_nil(headers.connection)
      end
      raw_token_request(c, PASSWORD_PARAMS, "Connection: close\r\n")
      local status, headers = read_response(c)
      assert.equal(200, status)
      assert.equal("close", headers.connection)
      assert.equal("closed", select(2, c:receive("*l")))
      c:close()
    end)

    it("answers Expect: 100-continue before the body", function()
      local c = raw_connect()
      local body = form(PASSWORD_PARAMS)
      c:send("POST /oauth2/default/v1/token HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        .. "Content-Type: application/x-www-form-urlencoded\r\n"
        .. "Content-Length: " .. #body .. "\r\n\r\n")
      assert.equal("HTTP/1.1 100 Continue", c:receive("*l"))
      assert.equal("", c:receive("*l"))
      c:send(body)
      local status, _, text = read_response(c)
      c:close()
      assert.equal(200, status)
      assert.is_true(is_token(decode(text).access_token, "at."))
    end)

    it("answers garbage with 400 and survives abandoned requests", function()
      local c = raw_connect()
      c:send("garbage\r\n\r\n")
      local status, headers = read_response(c)
      assert.equal(400, status)
      assert.equal("close", headers.connection)
      assert.equal("closed", select(2, c:receive("*l")))
      c:close()

      c = raw_connect()
      c:send("POST /oauth2/default/v1/token HTTP/1.1\r\nContent-Length: 100\r\n\r\ngrant")
      c:close()
      c = raw_connect()
      c:send(string.rep("x", 20000))
      assert.equal(400, (read_response(c)))
      c:close()
      c = raw_connect()
      c:send("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
      assert.equal(400, (read_response(c)))
      c:close()
      c = raw_connect()
      c:close()
      socket.sleep(0.05)
      assert.is_true(server_alive())
      assert.equal(200, (password_grant()))
    end)
  end)

  describe("https", function()
    it("serves the same state over TLS, trusted through the test CA", function()
      local code, body = token_request(PASSWORD_PARAMS, { listener = "https", tls = tls_params() })
      assert.equal(200, code)
      assert.is_true(okta.validate(body.access_token).valid)
      assert.equal("https", okta.requests()[1].listener)
      assert.equal(1, okta.stats().grants.password)
    end)

    it("presents a certificate for localhost and 127.0.0.1", function()
      local s = assert(tls_connect("https"))
      local san = s:getpeercertificate():extensions()["2.5.29.17"]
      s:close()
      assert.same({ "localhost" }, san.dNSName)
      assert.same({ "127.0.0.1", "::1" }, san.iPAddress)
    end)

    it("has a wrong-host listener whose certificate names only wrong.invalid", function()
      local s = assert(tls_connect("https-wronghost"))
      local san = s:getpeercertificate():extensions()["2.5.29.17"]
      s:close()
      assert.same({ "wrong.invalid" }, san.dNSName)
      assert.is_nil(san.iPAddress)
    end)

    it("has an untrusted listener, and survives failed and aborted handshakes", function()
      local s, err = tls_connect("https-untrusted")
      assert.is_nil(s)
      assert.equal("certificate verify failed", err)
      local c = raw_connect("https")
      c:send("GET / HTTP/1.1\r\n\r\n") -- plaintext to a TLS port
      c:settimeout(2)
      c:receive("*a")
      c:close()
      c = raw_connect("https")
      c:send("\22\3\1\0\200") -- a truncated ClientHello, then gone
      c:close()
      socket.sleep(0.05)
      assert.is_true(server_alive())
      local code = token_request(PASSWORD_PARAMS, { listener = "https", tls = tls_params() })
      assert.equal(200, code)
    end)
  end)

  describe("fake LUSID API", function()
    local token
    before_each(function()
      local _, body = password_grant()
      token = body.access_token
    end)

    it("requires a live bearer token", function()
      local code, body, headers = api("GET", "/api/portfolios")
      assert.equal(401, code)
      assert.same({ name = "Unauthorized", code = 401, title = "Unauthorized",
        detail = "No bearer token was supplied.", instance = "/api/api/portfolios" }, body)
      assert.equal("Bearer", headers["www-authenticate"])
      code, body = api("GET", "/api/portfolios", "at.unknown")
      assert.equal(401, code)
      assert.equal("The bearer token is not recognised.", body.detail)
      okta.expire_all()
      code, body = api("GET", "/api/portfolios", token)
      assert.equal(401, code)
      assert.equal("The bearer token has expired.", body.detail)
      local _, fresh = password_grant()
      okta.revoke({ access_token = fresh.access_token })
      code, body = api("GET", "/api/portfolios", fresh.access_token)
      assert.equal(401, code)
      assert.equal("The bearer token has been revoked.", body.detail)
      assert.equal(4, okta.stats().api_requests)
    end)

    it("lists portfolios", function()
      local code, body = api("GET", "/api/portfolios", token)
      assert.equal(200, code)
      assert.same({ values = {
        { id = { scope = "demo", code = "UK-EQUITY" }, displayName = "UK Equities" },
        { id = { scope = "demo", code = "US-BONDS" }, displayName = "US Bonds" },
      } }, body)
      assert.equal(1, okta.stats().api_requests)
    end)

    it("echoes requests without the Authorization header", function()
      local code, body = api("POST", "/api/echo?a=1&b=x%20y", token, '{"k":1}', {
        ["content-type"] = "application/json", ["X-LUSID-Application"] = "spec",
      })
      assert.equal(200, code)
      assert.equal("POST", body.method)
      assert.equal("/api/api/echo", body.path)
      assert.equal("a=1&b=x%20y", body.query)
      assert.equal('{"k":1}', body.body)
      assert.equal("spec", body.headers["x-lusid-application"])
      assert.equal("application/json", body.headers["content-type"])
      assert.is_nil(body.headers.authorization)
      code, body = api("GET", "/api/anything/else", token)
      assert.equal(200, code)
      assert.equal("/api/api/anything/else", body.path)
      assert.equal(cjson.null, body.query)
      assert.equal(cjson.null, body.body)
    end)

    it("answers /api/api/status/NNN with that status", function()
      local code, body, _, text = api("GET", "/api/status/404", token)
      assert.equal(404, code)
      assert.same({ name = "PortfolioNotFound", errorDetails = {}, code = 109,
        title = "Could not find a portfolio", detail = "Fake error with status 404.",
        instance = "/api/api/status/404" }, body)
      assert.truthy(text:find('"errorDetails":[]', 1, true))
      code, body = api("GET", "/api/status/503", token)
      assert.equal(503, code)
      assert.equal("PortfolioNotFound", body.name)
      code, body = api("GET", "/api/status/201", token)
      assert.equal(201, code)
      assert.same({ status = 201 }, body)
    end)
  end)
end)

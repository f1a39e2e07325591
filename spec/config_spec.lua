-- lusidauth.config: secrets.json, FBN_* variables and overrides, their precedence and their errors.
-- No server needed; files live under os.tmpname(), and env tables stand in for the environment.
local cjson = require "cjson"
local config = require "lusidauth.config"
local core = require "lusidauth.core"

local created = {}

local function tmpfile(text)
  local p = os.tmpname()
  local f = assert(io.open(p, "wb"))
  f:write(text)
  f:close()
  created[#created + 1] = p
  return p
end

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir " .. p))
  created[#created + 1] = p
  return p
end

local function json_file(doc) return tmpfile(cjson.encode(doc)) end

local function copy(t, extra)
  local o = {}
  for k, v in pairs(t or {}) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- A complete password-grant api section, and the same in the environment.
local API = {
  tokenUrl = "https://okta.example.com/oauth2/abc/v1/token",
  clientId = "file-client",
  clientSecret = "file-client-secret",
  username = "file-user",
  password = "file-password",
}
local ENV = {
  FBN_TOKEN_URL = "https://okta.example.com/oauth2/env/v1/token",
  FBN_CLIENT_ID = "env-client",
  FBN_CLIENT_SECRET = "env-client-secret",
  FBN_USERNAME = "env-user",
  FBN_PASSWORD = "env-password",
}

local function load_ok(load_opts)
  local opts, report = config.load(load_opts)
  assert(opts, report and tostring(report))
  return opts, report
end

local function load_err(load_opts)
  local opts, err = config.load(load_opts)
  assert.is_nil(opts)
  assert.equal("table", type(err))
  assert.equal(core.error_mt, getmetatable(err))
  assert.equal("config", err.kind)
  assert.is_false(err.retryable)
  assert.equal(err.message, tostring(err))
  return err.message
end

local function has(s, sub) assert.truthy(s:find(sub, 1, true), ("%q\n  does not contain\n%q"):format(s, sub)) end

teardown(function()
  for i = #created, 1, -1 do
    if not os.remove(created[i]) then os.execute("rm -rf " .. created[i]) end
  end
end)

describe("config module", function()
  it("sets no globals", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    package.loaded["lusidauth.config"] = nil
    require "lusidauth.config"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)

  it("raises on misuse of load_opts", function()
    local cases = {
      { nil, "expected a table of load options, got nil" },
      { "secrets.json", "expected a table of load options, got string" },
      { { secrets = 1 }, "'secrets' must be a path or false, not number" },
      { { secrets = "" }, "'secrets' must be a path or false, not empty" },
      { { secrets = true }, "'secrets' must be a path or false, not boolean" },
      { { profile = 1 }, "'profile' must be a non-empty string, not number" },
      { { env = "yes" }, "'env' must be a boolean or a table, not string" },
      { { env = { FBN_TOTAL_TIMEOUT_MS = 5 } }, "env.FBN_TOTAL_TIMEOUT_MS must be a string, not number" },
      { { overrides = "x" }, "'overrides' must be a table, not string" },
      { { overrides = { [1] = "x" } }, "override names must be strings, not number" },
      { { secret = "typo" }, "unknown load option 'secret'" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(config.load, c[1])
      assert.is_false(ok)
      has(err, "lusidauth.config.load: " .. c[2])
    end
  end)

  it("reports misuse at the caller's line", function()
    local ok, err = pcall(function() config.load(nil) end)
    assert.is_false(ok)
    assert.matches("config_spec%.lua:%d+:", err)
  end)
end)

-- Each secrets.json key: where it lives, a value, the option it sets and the value it becomes.
local FILE_KEYS = {
  { "api", "tokenUrl", "https://okta.example.com/oauth2/t/v1/token", "token_url" },
  { "api", "lusidUrl", "https://a.lusid.com/api", "api_url" },
  { "api", "apiUrl", "https://b.lusid.com/api", "api_url" },
  { "api", "username", "u@example.com", "username" },
  { "api", "password", "pw-1", "password" },
  { "api", "clientId", "cid-1", "client_id" },
  { "api", "clientSecret", "cs-1", "client_secret" },
  { "api", "applicationName", "my-app", "app_name" },
  { "api", "clientCertificate", "/etc/ssl/ca.pem", "ca_file" },
  { "api", "accessToken", "pat-1", "access_token" },
  { "api", "personalAccessToken", "pat-2", "access_token" },
  { "api", "totalTimeoutMs", 1500, "timeout", 1.5 },
  { "api", "connectTimeoutMs", 2000, "connect_timeout", 2 },
  { "api", "readTimeoutMs", 250, "read_timeout", 0.25 },
  { "api", "rateLimitRetries", 2, "retries", 2 },
  { "api", "correlationId", "corr-1", "correlation_id" },
  { "proxy", "address", "http://proxy.example:8080", "proxy" },
  { "proxy", "username", "proxy-user", "proxy_username" },
  { "proxy", "password", "proxy-pw", "proxy_password" },
}

-- Each FBN_* variable: a value, the option it sets and the value it becomes.
local ENV_KEYS = {
  { "FBN_TOKEN_URL", "https://okta.example.com/oauth2/e/v1/token", "token_url" },
  { "FBN_LUSID_URL", "https://c.lusid.com/api", "api_url" },
  { "FBN_LUSID_API_URL", "https://d.lusid.com/api", "api_url" },
  { "FBN_USERNAME", "v@example.com", "username" },
  { "FBN_PASSWORD", "pw-2", "password" },
  { "FBN_CLIENT_ID", "cid-2", "client_id" },
  { "FBN_CLIENT_SECRET", "cs-2", "client_secret" },
  { "FBN_APP_NAME", "env-app", "app_name" },
  { "FBN_CLIENT_CERTIFICATE", "/tmp/ca.pem", "ca_file" },
  { "FBN_ACCESS_TOKEN", "pat-3", "access_token" },
  { "FBN_TOTAL_TIMEOUT_MS", "30000", "timeout", 30 },
  { "FBN_CONNECT_TIMEOUT_MS", "5000", "connect_timeout", 5 },
  { "FBN_READ_TIMEOUT_MS", "12500", "read_timeout", 12.5 },
  { "FBN_RATE_LIMIT_RETRIES", "7", "retries", 7 },
  { "FBN_CORRELATION_ID", "corr-2", "correlation_id" },
  { "FBN_PROXY_ADDRESS", "http://proxy2.example:3128", "proxy" },
  { "FBN_PROXY_USERNAME", "proxy-user-2", "proxy_username" },
  { "FBN_PROXY_PASSWORD", "proxy-pw-2", "proxy_password" },
}

describe("config.load reads", function()
  it("every secrets.json key", function()
    for _, c in ipairs(FILE_KEYS) do
      local doc = { api = copy(API) }
      doc[c[1]] = doc[c[1]] or {}
      doc[c[1]][c[2]] = c[3]
      local path = json_file(doc)
      local opts, report = load_ok { secrets = path, env = false }
      local want = c[5] or c[3]
      assert.equal(want, opts[c[4]], c[1] .. "." .. c[2])
      assert.equal("file", report.keys[c[4]])
      assert.equal(c[1] .. "." .. c[2], report.origins[c[4]])
    end
  end)

  it("every FBN_* variable", function()
    for _, c in ipairs(ENV_KEYS) do
      local opts, report = load_ok { secrets = false, env = copy(ENV, { [c[1]] = c[2] }) }
      assert.equal(c[4] or c[2], opts[c[3]], c[1])
      assert.equal("env", report.keys[c[3]])
      assert.equal(c[1], report.origins[c[3]])
    end
  end)

  it("covers every row of the mapping table in these specs", function()
    local file_seen, env_seen = {}, {}
    for _, c in ipairs(FILE_KEYS) do file_seen[c[1] .. "." .. c[2]] = c[4] end
    for _, c in ipairs(ENV_KEYS) do env_seen[c[1]] = c[3] end
    for _, row in ipairs(config.mapping) do
      for _, k in ipairs(row.file) do
        local key = (row.section or "api") .. "." .. k
        if k ~= "baseUrl" then assert.equal(row.opt, file_seen[key], key) end -- baseUrl: profiles spec
      end
      for _, n in ipairs(row.env) do assert.equal(row.opt, env_seen[n], n) end
    end
  end)

  it("the real environment by default, and ignores it with env = false", function()
    local lua = os.getenv "LUSIDAUTH_LUA"
    if not lua then return pending("LUSIDAUTH_LUA is not set (tools/test.sh sets it)") end
    local script = tmpfile [[
      local o, r = require("lusidauth.config").load { secrets = false, env = ENV_ON }
      io.write(o and (o.token_url .. " " .. table.concat(r.sources[1].names, ",")) or tostring(r))
    ]]
    local function run(on)
      local cmd = ("env -i PATH=\"$PATH\" LD_PRELOAD=\"${LD_PRELOAD:-}\" ASAN_OPTIONS=\"${ASAN_OPTIONS:-}\" "
        .. "FBN_TOKEN_URL=https://okta.example.com/x FBN_CLIENT_ID=c "
        .. "FBN_CLIENT_SECRET=s FBN_APP_NAME= LUA_PATH='%s' LUA_CPATH='%s' %s -e 'ENV_ON = %s' %s 2>&1")
        :format(package.path, package.cpath, lua, on, script)
      local p = io.popen(cmd)
      local out = p:read("*a")
      p:close()
      return out
    end
    assert.equal("https://okta.example.com/x FBN_CLIENT_ID,FBN_CLIENT_SECRET,FBN_TOKEN_URL", run("nil"))
    assert.equal("https://okta.example.com/x FBN_CLIENT_ID,FBN_CLIENT_SECRET,FBN_TOKEN_URL", run("true"))
    has(run("false"), "missing token_url")
  end)

  it("secrets.json from the working directory by default, and no file when there is none", function()
    local lua = os.getenv "LUSIDAUTH_LUA"
    if not lua then return pending("LUSIDAUTH_LUA is not set (tools/test.sh sets it)") end
    local root = io.popen("pwd"):read("*l")
    local function abs(p) return (p:gsub("%./", (root:gsub("%%", "%%%%")) .. "/")) end
    local script = tmpfile [[
      local o, r = require("lusidauth.config").load { env = { FBN_TOKEN_URL = "https://okta.example.com/env" } }
      io.write(o and (o.token_url .. " " .. r.sources[1].kind .. " " .. tostring(r.sources[1].path)) or tostring(r))
    ]]
    local dir = tmpdir()
    local function run()
      local p = io.popen(("cd %s && LUA_PATH='%s' LUA_CPATH='%s' %s %s 2>&1"):format(dir, abs(package.path),
        abs(package.cpath), lua, script))
      local out = p:read("*a")
      p:close()
      return out
    end
    -- no secrets.json: not an error; only the environment was read
    assert.equal("lusidauth.config: missing client_id: set api.clientId in secrets.json, FBN_CLIENT_ID, or "
      .. "overrides.client_id (read: environment)", run())
    local f = assert(io.open(dir .. "/secrets.json", "wb"))
    f:write(cjson.encode { api = { tokenUrl = "https://okta.example.com/file", clientId = "c", clientSecret = "s" } })
    f:close()
    created[#created + 1] = dir .. "/secrets.json"
    assert.equal("https://okta.example.com/env file secrets.json", run())
  end)

  it("legacy names, which the current ones beat", function()
    local path = json_file { api = copy(API,
      { lusidUrl = "https://new.lusid.com/api", apiUrl = "https://old.lusid.com/api" }) }
    local opts = load_ok { secrets = path, env = false }
    assert.equal("https://new.lusid.com/api", opts.api_url)
    opts = load_ok { secrets = false,
      env = copy(ENV,
        { FBN_LUSID_URL = "https://new.lusid.com/api", FBN_LUSID_API_URL = "https://old.lusid.com/api" }) }
    assert.equal("https://new.lusid.com/api", opts.api_url)
    path = json_file { api = { accessToken = "pat-a", personalAccessToken = "pat-b" } }
    assert.equal("pat-a", load_ok { secrets = path, env = false }.access_token)
  end)

  it("empty strings and nulls as absent, and a 0 ms timeout as not set", function()
    local path = json_file { api = copy(API, { clientCertificate = "", lusidUrl = "",
      apiUrl = "https://x.lusid.com/api", totalTimeoutMs = 0, accessToken = "" }),
      proxy = { address = "", username = "", password = "" } }
    local opts = load_ok { secrets = path, env = { FBN_APP_NAME = "", FBN_CORRELATION_ID = "" } }
    assert.is_nil(opts.ca_file)
    assert.is_nil(opts.timeout)
    assert.is_nil(opts.access_token)
    assert.is_nil(opts.proxy)
    assert.is_nil(opts.app_name)
    assert.is_nil(opts.correlation_id)
    assert.equal("https://x.lusid.com/api", opts.api_url)
    path = tmpfile('{"api": {"tokenUrl": "https://o.example.com/t", "clientId": "c", "clientSecret": "s", '
      .. '"applicationName": null, "totalTimeoutMs": 5000}, "proxy": null}')
    opts = load_ok { secrets = path, env = { FBN_TOTAL_TIMEOUT_MS = "0" } }
    assert.is_nil(opts.app_name)
    assert.equal(5, opts.timeout) -- "0" in the environment does not set it, so the file's value stays
  end)

  it("api.username and api.password only as the LUSID user, never as the proxy's", function()
    local opts = load_ok { secrets = json_file { api = API }, env = false }
    assert.same({ token_url = API.tokenUrl, client_id = API.clientId, client_secret = API.clientSecret,
      username = API.username, password = API.password }, opts)
    opts = load_ok { secrets = json_file { api = { tokenUrl = API.tokenUrl, clientId = "c", clientSecret = "s" },
      proxy = API }, env = false }
    assert.equal(API.username, opts.proxy_username)
    assert.equal(API.password, opts.proxy_password)
    assert.is_nil(opts.username)
    assert.is_nil(opts.password)
  end)

  it("no file with secrets = false", function()
    local opts, report = load_ok { secrets = false, env = ENV }
    assert.equal(ENV.FBN_USERNAME, opts.username)
    assert.equal(1, #report.sources)
    assert.equal("env", report.sources[1].kind)
  end)
end)

describe("config.load precedence (overrides > environment > file)", function()
  -- For each row: a file value, an env value and an override, distinct.
  local function values(row)
    if row.kind == "ms" then return 1000, "2000", 3, 1, 2 end
    if row.kind == "count" then return 1, "2", 3, 1, 2 end
    local v = "x-" .. row.opt
    return v .. "-file", v .. "-env", v .. "-override", v .. "-file", v .. "-env"
  end

  local function setup(row, use_file, use_env, use_override)
    local fv, ev, ov = values(row)
    local doc = { api = copy(API), proxy = {} }
    if use_file then doc[row.section or "api"][row.file[1]] = fv end
    local env = {}
    if use_env then env[row.env[1]] = ev end
    return { secrets = json_file(doc), env = env, overrides = use_override and { [row.opt] = ov } or nil }
  end

  it("the environment beats the file", function()
    for _, row in ipairs(config.mapping) do
      local _, _, _, _, want = values(row)
      local opts, report = load_ok(setup(row, true, true, false))
      assert.equal(want, opts[row.opt], row.opt)
      assert.equal("env", report.keys[row.opt])
    end
  end)

  it("an override beats the environment", function()
    for _, row in ipairs(config.mapping) do
      local _, _, want = values(row)
      local opts, report = load_ok(setup(row, false, true, true))
      assert.equal(want, opts[row.opt], row.opt)
      assert.equal("overrides", report.keys[row.opt])
    end
  end)

  it("an override beats the file", function()
    for _, row in ipairs(config.mapping) do
      local _, _, want = values(row)
      local opts, report = load_ok(setup(row, true, false, true))
      assert.equal(want, opts[row.opt], row.opt)
      assert.equal("overrides", report.keys[row.opt])
    end
  end)

  it("an override beats both, and the file fills in what nothing else sets", function()
    for _, row in ipairs(config.mapping) do
      local fv, _, ov, fwant = values(row)
      assert.equal(ov, load_ok(setup(row, true, true, true))[row.opt], row.opt)
      assert.equal(fwant, load_ok(setup(row, true, false, false))[row.opt], row.opt)
      assert.is_not_nil(fv)
    end
  end)

  it("is per key: each source supplies what it has", function()
    local path = json_file { api = { tokenUrl = "https://okta.example.com/file", clientId = "file-client",
      clientSecret = "file-secret", applicationName = "file-app" } }
    local opts, report = load_ok { secrets = path, env = { FBN_CLIENT_ID = "env-client" },
      overrides = { client_secret = "override-secret", scope = "openid" } }
    assert.same({ token_url = "https://okta.example.com/file", client_id = "env-client",
      client_secret = "override-secret", app_name = "file-app", scope = "openid" }, opts)
    assert.same({ token_url = "file", client_id = "env", client_secret = "overrides", app_name = "file",
      scope = "overrides" }, report.keys)
    assert.equal("client_credentials", report.grant)
  end)

  it("passes other lusidauth options through overrides unchanged", function()
    local hook = function() end
    local opts = load_ok { secrets = false, env = ENV,
      overrides = { refresh_skew = 30, on_refresh_token = hook, shared = false, insecure_http = false } }
    assert.equal(30, opts.refresh_skew)
    assert.equal(hook, opts.on_refresh_token)
    assert.is_false(opts.shared)
    assert.is_false(opts.insecure_http)
  end)
end)

describe("config.load grants", function()
  it("password, client credentials and refresh token", function()
    local _, r = load_ok { secrets = false, env = ENV }
    assert.equal("password", r.grant)
    _, r = load_ok { secrets = false, env = copy(ENV, { FBN_USERNAME = "", FBN_PASSWORD = "" }) }
    assert.equal("client_credentials", r.grant)
    local opts
    opts, r = load_ok { secrets = false, env = copy(ENV, { FBN_PASSWORD = "" }),
      overrides = { refresh_token = "rt-1" } }
    assert.equal("refresh_token", r.grant)
    assert.equal("rt-1", opts.refresh_token)
    _, r = load_ok { secrets = false, env = ENV, overrides = { refresh_token = "rt-1" } }
    assert.equal("password", r.grant) -- a password client may start from a refresh token
  end)

  it("a PAT wins over Okta credentials, which are dropped", function()
    local path = json_file { api = copy(API, { lusidUrl = "https://x.lusid.com/api", applicationName = "app",
      clientCertificate = "/ca.pem", totalTimeoutMs = 60000, correlationId = "corr" }),
      proxy = { address = "http://p.example:1", username = "pu", password = "pp" } }
    local opts, report = load_ok { secrets = path, env = { FBN_ACCESS_TOKEN = "pat-env" },
      overrides = { refresh_token = "rt" } }
    assert.same({ access_token = "pat-env", api_url = "https://x.lusid.com/api", app_name = "app",
      ca_file = "/ca.pem", timeout = 60, correlation_id = "corr", proxy = "http://p.example:1",
      proxy_username = "pu", proxy_password = "pp" }, opts)
    assert.equal("pat", report.grant)
    assert.same({ "client_id", "client_secret", "password", "refresh_token", "token_url", "username" }, report.ignored)
    assert.is_nil(report.keys.token_url)
    assert.same({}, report.warnings)
  end)

  it("a PAT alone is enough: no api_url is not an error, only a warning", function()
    local opts, report = load_ok { secrets = false, env = { FBN_ACCESS_TOKEN = "pat-only" } }
    assert.same({ access_token = "pat-only" }, opts)
    assert.equal("pat", report.grant)
    assert.equal(1, #report.warnings)
    has(report.warnings[1], "no api_url")
  end)

  it("FBN_ACCESS_TOKEN_FILE, stripping the newline and surrounding whitespace", function()
    for _, text in ipairs { "pat-file\n", "pat-file", "pat-file\r\n", "  pat-file \t\n\n" } do
      local opts, report = load_ok { secrets = false, env = { FBN_ACCESS_TOKEN_FILE = tmpfile(text) } }
      assert.equal("pat-file", opts.access_token)
      assert.equal("FBN_ACCESS_TOKEN_FILE", report.origins.access_token)
      assert.equal("pat", report.grant)
    end
    -- FBN_ACCESS_TOKEN wins over the file, which is then not read
    local opts = load_ok { secrets = false,
      env = { FBN_ACCESS_TOKEN = "pat-direct", FBN_ACCESS_TOKEN_FILE = "/nonexistent/pat" } }
    assert.equal("pat-direct", opts.access_token)
  end)
end)

describe("config.load profiles", function()
  local doc = { profiles = {
    default = copy(API, { baseUrl = "https://default.lusid.com/api" }),
    prod = { accessToken = "pat-prod", baseUrl = "https://prod.lusid.com/api",
      proxy = { address = "http://proxy.prod:8080", username = "pu", password = "pp" } },
    test = { tokenUrl = "https://okta.example.com/test", clientId = "tc", clientSecret = "ts" },
  } }

  it("uses the default profile, baseUrl as the API URL", function()
    local opts, report = load_ok { secrets = json_file(doc), env = false }
    assert.equal("https://default.lusid.com/api", opts.api_url)
    assert.equal("file-user", opts.username)
    assert.equal("default", report.profile)
    assert.equal("default", report.sources[1].profile)
    assert.equal("profiles.default.baseUrl", report.origins.api_url)
  end)

  it("chooses by load_opts.profile, else FBN_PROFILE", function()
    local path = json_file(doc)
    local opts = load_ok { secrets = path, env = { FBN_PROFILE = "prod" } }
    assert.same({ access_token = "pat-prod", api_url = "https://prod.lusid.com/api",
      proxy = "http://proxy.prod:8080", proxy_username = "pu", proxy_password = "pp" }, opts)
    opts = load_ok { secrets = path, profile = "test", env = { FBN_PROFILE = "prod" } }
    assert.equal("https://okta.example.com/test", opts.token_url)
    local _, report = load_ok { secrets = path, profile = "test", env = false }
    assert.equal("client_credentials", report.grant)
  end)

  it("names a missing profile and lists those present", function()
    local path = json_file(doc)
    assert.equal(('lusidauth.config: profile "nope" (from load_opts.profile) not found in %s '
      .. "(profiles: default, prod, test)"):format(path), load_err { secrets = path, profile = "nope", env = false })
    has(load_err { secrets = path, env = { FBN_PROFILE = "stage" } }, 'profile "stage" (from FBN_PROFILE) not found')
    has(load_err { secrets = json_file { profiles = { a = { tokenUrl = "x" } } }, env = false },
      'profile "default" not found in')
  end)

  it("names profile keys in errors", function()
    local path = json_file { profiles = { default = { tokenUrl = "https://o.example.com/t", clientId = "c" } } }
    assert.equal(("lusidauth.config: missing client_secret: set profiles.default.clientSecret in %s, "
      .. "FBN_CLIENT_SECRET, or overrides.client_secret (read: secrets.json at %s (profile default))")
      :format(path, path),
      load_err { secrets = path, env = false })
    path = json_file { profiles = { default = { totalTimeoutMs = "10" } } }
    has(load_err { secrets = path, env = false }, "profiles.default.totalTimeoutMs must be a number, not a string")
    path = json_file { profiles = { default = { proxy = "http://p" } } }
    has(load_err { secrets = path, env = false }, '"profiles.default.proxy" must be an object, not a string')
  end)

  it("refuses a named profile for a file without profiles, and ignores FBN_PROFILE then", function()
    local path = json_file { api = API }
    has(load_err { secrets = path, profile = "prod", env = false }, 'profile "prod" requested but ' .. path
      .. ' has no "profiles"')
    assert.equal("file-user", load_ok { secrets = path, env = { FBN_PROFILE = "prod" } }.username)
  end)
end)

describe("config.load errors", function()
  it("name the first missing key, all of its sources and the sources read", function()
    local path = json_file { api = { clientId = "c" } }
    assert.equal(("lusidauth.config: missing token_url: set api.tokenUrl in %s, FBN_TOKEN_URL, or "
      .. "overrides.token_url (read: secrets.json at %s, environment)"):format(path, path),
      load_err { secrets = path, env = {} })
    assert.equal("lusidauth.config: missing client_id: set api.clientId in secrets.json, FBN_CLIENT_ID, or "
      .. "overrides.client_id (read: environment, overrides)",
      load_err { secrets = false, env = { FBN_TOKEN_URL = "https://o.example.com/t" }, overrides = {} })
    assert.equal("lusidauth.config: missing client_secret: set api.clientSecret in secrets.json, "
      .. "FBN_CLIENT_SECRET, or overrides.client_secret (read: overrides)",
      load_err { secrets = false, env = false, overrides = { token_url = "https://o.example.com/t", client_id = "c" } })
    has(load_err { secrets = false, env = false }, "missing token_url: set api.tokenUrl in secrets.json, "
      .. "FBN_TOKEN_URL, or overrides.token_url (read: nothing)")
  end)

  it("name the other half of username and password", function()
    has(load_err { secrets = false, env = copy(ENV, { FBN_USERNAME = "" }) },
      "missing username: set api.username in secrets.json, FBN_USERNAME, or overrides.username")
    has(load_err { secrets = false, env = copy(ENV, { FBN_PASSWORD = "" }) },
      "missing password: set api.password in secrets.json, FBN_PASSWORD, or overrides.password")
    -- a username with a refresh token and no password is a refresh-token client
    local _, r = load_ok { secrets = false, env = copy(ENV, { FBN_PASSWORD = "" }),
      overrides = { refresh_token = "r" } }
    assert.equal("refresh_token", r.grant)
  end)

  it("name an explicitly given secrets file that cannot be opened", function()
    assert.equal("lusidauth.config: cannot open secrets file /nonexistent/secrets.json: No such file or directory",
      load_err { secrets = "/nonexistent/secrets.json", env = false })
    has(load_err { secrets = tmpdir(), env = false }, "cannot read secrets file ")
  end)

  it("give the file and position of malformed JSON", function()
    local path = tmpfile '{"api": {"tokenUrl": }}'
    assert.equal(("lusidauth.config: %s is not valid JSON: Expected value but found T_OBJ_END at character 22")
      :format(path), load_err { secrets = path, env = false })
    has(load_err { secrets = tmpfile "", env = false }, "is not valid JSON: ")
    has(load_err { secrets = tmpfile "", env = false }, "at character 1")
  end)

  it("refuse wrongly typed values in the file, naming the key", function()
    local cases = {
      { '{"api": {"totalTimeoutMs": "1000"}}', "api.totalTimeoutMs must be a number, not a string (in " },
      { '{"api": {"rateLimitRetries": true}}', "api.rateLimitRetries must be a number, not a boolean" },
      { '{"api": {"rateLimitRetries": 1.5}}', "api.rateLimitRetries must be a whole number from 0 to 100" },
      { '{"api": {"rateLimitRetries": 101}}', "api.rateLimitRetries must be a whole number from 0 to 100" },
      { '{"api": {"connectTimeoutMs": -1}}', "api.connectTimeoutMs must be 0 (not set) or from 1 to 3600000" },
      { '{"api": {"readTimeoutMs": 3600001}}', "api.readTimeoutMs must be 0 (not set) or from 1 to 3600000" },
      { '{"api": {"tokenUrl": 5}}', "api.tokenUrl must be a string, not a number" },
      { '{"api": {"username": false}}', "api.username must be a string, not a boolean" },
      { '{"api": {"password": ["x"]}}', "api.password must be a string, not an array" },
      { '{"api": {"clientId": {"a": 1}}}', "api.clientId must be a string, not an object" },
      { '{"proxy": {"address": 8080}}', "proxy.address must be a string, not a number" },
      { '{"api": "https://x"}', '"api" must be an object, not a string' },
      { '{"api": [1]}', '"api" must be an object, not an array' },
      { '{"proxy": true}', '"proxy" must be an object, not a boolean' },
      { '{"profiles": [1]}', '"profiles" must be an object, not an array' },
      { '{"profiles": {"default": 1}}', '"profiles.default" must be an object, not a number' },
      { "[1, 2]", "must hold a JSON object, not an array" },
      { '"x"', "must hold a JSON object, not a string" },
      { "null", "must hold a JSON object, not null" },
    }
    for _, c in ipairs(cases) do
      has(load_err { secrets = tmpfile(c[1]), env = false }, c[2])
    end
  end)

  it("refuse numeric variables that are not numbers, naming the variable", function()
    local cases = {
      { "FBN_TOTAL_TIMEOUT_MS", "soon", "FBN_TOTAL_TIMEOUT_MS must be a number of milliseconds" },
      { "FBN_CONNECT_TIMEOUT_MS", "-5", "FBN_CONNECT_TIMEOUT_MS must be a number of milliseconds" },
      { "FBN_READ_TIMEOUT_MS", "1e3", "FBN_READ_TIMEOUT_MS must be a number of milliseconds" },
      { "FBN_READ_TIMEOUT_MS", "99999999", "FBN_READ_TIMEOUT_MS must be 0 (not set) or from 1 to 3600000" },
      { "FBN_RATE_LIMIT_RETRIES", "2.5", "FBN_RATE_LIMIT_RETRIES must be a whole number" },
      { "FBN_RATE_LIMIT_RETRIES", "0x10", "FBN_RATE_LIMIT_RETRIES must be a whole number" },
      { "FBN_RATE_LIMIT_RETRIES", "500", "FBN_RATE_LIMIT_RETRIES must be a whole number from 0 to 100" },
    }
    for _, c in ipairs(cases) do
      has(load_err { secrets = false, env = copy(ENV, { [c[1]] = c[2] }) }, "lusidauth.config: " .. c[3])
    end
    assert.equal(0, load_ok { secrets = false, env = copy(ENV, { FBN_RATE_LIMIT_RETRIES = "0" }) }.retries)
  end)

  it("name FBN_ACCESS_TOKEN_FILE and its path when it cannot be used", function()
    has(load_err { secrets = false, env = { FBN_ACCESS_TOKEN_FILE = "/nonexistent/pat" } },
      "lusidauth.config: cannot open FBN_ACCESS_TOKEN_FILE (/nonexistent/pat: No such file or directory)")
    local empty = tmpfile " \n"
    assert.equal(("lusidauth.config: FBN_ACCESS_TOKEN_FILE (%s) is empty"):format(empty),
      load_err { secrets = false, env = { FBN_ACCESS_TOKEN_FILE = empty } })
    local dir = tmpdir()
    has(load_err { secrets = false, env = { FBN_ACCESS_TOKEN_FILE = dir } },
      "cannot read FBN_ACCESS_TOKEN_FILE (" .. dir .. ": Is a directory)")
  end)

  it("never contain a secret value", function()
    local secrets = { "S3cret-password", "S3cret-client", "S3cret-pat", "S3cret-proxy", "S3cret-refresh",
      "S3cret-envpw", "S3cret-envcs", "S3cret-envpat", "S3cret-envproxy" }
    local api = { password = "S3cret-password", clientSecret = "S3cret-client", username = "u" }
    local envs = { FBN_PASSWORD = "S3cret-envpw", FBN_CLIENT_SECRET = "S3cret-envcs",
      FBN_PROXY_PASSWORD = "S3cret-envproxy" }
    local proxy = { password = "S3cret-proxy" }
    local cases = {
      { secrets = json_file { api = api, proxy = proxy }, env = envs,
        overrides = { refresh_token = "S3cret-refresh" } },
      { secrets = json_file { api = copy(api, { totalTimeoutMs = "S3cret-password" }), proxy = proxy }, env = envs },
      { secrets = json_file { api = copy(api, { tokenUrl = 1 }), proxy = proxy }, env = envs },
      { secrets = json_file { api = api, proxy = "S3cret-proxy" }, env = envs },
      { secrets = json_file { api = "S3cret-password" }, env = envs },
      { secrets = json_file { profiles = { S3 = { accessToken = "S3cret-pat" } } }, env = envs },
      { secrets = tmpfile '{"api": {"password": "S3cret-password" "clientSecret": "S3cret-client"}}', env = envs },
      { secrets = tmpfile '{"api": {"password": "S3cret-password", clientSecret: "S3cret-client"}}', env = envs },
      { secrets = tmpfile '{"api": {"password": S3cret-password}}', env = envs },
      { secrets = false, env = copy(envs, { FBN_TOTAL_TIMEOUT_MS = "S3cret-envpw" }) },
      { secrets = false, env = copy(envs, { FBN_RATE_LIMIT_RETRIES = "S3cret-envcs" }) },
      { secrets = false, env = copy(envs, { FBN_TOKEN_URL = "https://o.example.com/t", FBN_CLIENT_ID = "c",
        FBN_USERNAME = "" }) },
      { secrets = false, env = { FBN_ACCESS_TOKEN_FILE = tmpdir() } },
      { secrets = false, env = { FBN_ACCESS_TOKEN_FILE = tmpfile "" } },
      { secrets = false, env = { FBN_ACCESS_TOKEN_FILE = tmpfile "S3cret-envpat\n", FBN_READ_TIMEOUT_MS = "x" } },
    }
    for i, c in ipairs(cases) do
      local msg = load_err(c)
      for _, s in ipairs(secrets) do
        assert.is_nil(msg:find(s, 1, true), ("case %d leaks %s: %s"):format(i, s, msg))
        assert.is_nil(msg:find("S3cret", 1, true), ("case %d: %s"):format(i, msg))
      end
    end
  end)
end)

describe("config.load report", function()
  it("lists the sources read, the env names set, the grant, and where each key came from", function()
    local path = json_file { api = { tokenUrl = "https://okta.example.com/t", clientId = "c", password = "p" } }
    local opts, report = load_ok { secrets = path,
      env = { FBN_USERNAME = "u", FBN_CLIENT_SECRET = "s", FBN_APP_NAME = "", OTHER = "x", FBN_PROFILE = "p1" },
      overrides = { app_name = "a" } }
    assert.same({
      sources = {
        { kind = "file", path = path },
        { kind = "env", names = { "FBN_CLIENT_SECRET", "FBN_PROFILE", "FBN_USERNAME" } },
        { kind = "overrides" },
      },
      grant = "password",
      keys = { token_url = "file", client_id = "file", password = "file", username = "env",
        client_secret = "env", app_name = "overrides" },
      origins = { token_url = "api.tokenUrl", client_id = "api.clientId", password = "api.password",
        username = "FBN_USERNAME", client_secret = "FBN_CLIENT_SECRET", app_name = "overrides.app_name" },
      ignored = {},
      warnings = {},
    }, report)
    assert.equal("p", opts.password)
  end)

  it("holds no value, only source names", function()
    local _, report = load_ok { secrets = false, env = copy(ENV, { FBN_PROXY_PASSWORD = "pp-secret" }) }
    local function walk(t)
      for _, v in pairs(t) do
        if type(v) == "table" then
          walk(v)
        else
          for _, s in pairs(ENV) do assert.is_nil(tostring(v):find(s, 1, true), tostring(v)) end
          assert.is_nil(tostring(v):find("pp-secret", 1, true))
        end
      end
    end
    walk(report)
  end)
end)

describe("config.load output", function()
  local lusidauth = require "lusidauth"
  local FULL = {
    FBN_LUSID_URL = "https://x.lusid.com/api", FBN_APP_NAME = "app", FBN_CLIENT_CERTIFICATE = "/etc/ssl/ca.pem",
    FBN_TOTAL_TIMEOUT_MS = "30000", FBN_CONNECT_TIMEOUT_MS = "5000", FBN_READ_TIMEOUT_MS = "20000",
    FBN_RATE_LIMIT_RETRIES = "2", FBN_CORRELATION_ID = "corr-1", FBN_PROXY_ADDRESS = "http://proxy.example:3128",
    FBN_PROXY_USERNAME = "pu", FBN_PROXY_PASSWORD = "pp",
  }

  it("builds a password client", function()
    local opts = load_ok { secrets = false, env = copy(ENV, FULL) }
    local c = lusidauth.new(opts)
    assert.matches("^lusidauth.client %(password,", tostring(c))
    c:close()
  end)

  it("builds a client-credentials client", function()
    local opts = load_ok { env = FULL,
      secrets = json_file { api = { tokenUrl = API.tokenUrl, clientId = "c", clientSecret = "s" } } }
    local c = lusidauth.new(opts)
    assert.matches("^lusidauth.client %(client_credentials,", tostring(c))
    c:close()
  end)

  it("builds a PAT client", function()
    local opts = load_ok { secrets = json_file { api = API }, env = copy(FULL, { FBN_ACCESS_TOKEN = "pat-x" }) }
    local c = lusidauth.new(opts)
    assert.equal("pat-x", c:token())
    c:close()
  end)
end)

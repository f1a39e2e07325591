-- lusidauth.headers: the LUSID request headers, extra headers, and refusal of header injection.
local headers = require "lusidauth.headers"
local core = require "lusidauth.core"

local function build_ok(o)
  local h, err = headers.build(o)
  assert(h, err and tostring(err))
  return h
end

local function build_err(o)
  local h, err = headers.build(o)
  assert.is_nil(h)
  assert.equal(core.error_mt, getmetatable(err))
  assert.equal("config", err.kind)
  assert.is_false(err.retryable)
  return err.message
end

local function count_ci(h, name)
  local n = 0
  for k in pairs(h) do
    if k:lower() == name:lower() then n = n + 1 end
  end
  return n
end

describe("headers module", function()
  it("sets no globals", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    package.loaded["lusidauth.headers"] = nil
    require "lusidauth.headers"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)
end)

describe("headers.build", function()
  it("gives every LUSID header", function()
    assert.same({
      Authorization = "Bearer tok.123",
      ["X-LUSID-Application"] = "my-app",
      ["X-LUSID-SDK-Language"] = "Lua",
      ["X-LUSID-SDK-Version"] = "9.8.7",
      ["User-Agent"] = "lusidauth/9.8.7",
      CorrelationId = "corr-42",
      Accept = "application/json",
    }, build_ok { token = "tok.123", app_name = "my-app", correlation_id = "corr-42", version = "9.8.7" })
  end)

  it("leaves out the application and correlation id when not set, and defaults the version", function()
    local want = {
      Authorization = "Bearer t",
      ["X-LUSID-SDK-Language"] = "Lua",
      ["X-LUSID-SDK-Version"] = core._VERSION,
      ["User-Agent"] = "lusidauth/" .. core._VERSION,
      Accept = "application/json",
    }
    assert.same(want, build_ok { token = "t" })
    assert.same(want, build_ok { token = "t", app_name = "", correlation_id = "" })
  end)

  it("merges extra headers", function()
    local h = build_ok { token = "t", version = "1.0.0", extra = { ["Content-Type"] = "application/json",
      ["X-Custom"] = "v\tw", ["X-Utf8"] = "caf\195\169" } }
    assert.equal("application/json", h["Content-Type"])
    assert.equal("v\tw", h["X-Custom"]) -- a tab is allowed
    assert.equal("caf\195\169", h["X-Utf8"]) -- so are bytes >= 128
    assert.equal("Bearer t", h.Authorization)
    assert.equal("application/json", h.Accept)
  end)

  it("lets extra replace a default header, matching names case-insensitively", function()
    local h = build_ok { token = "t", app_name = "a", correlation_id = "c",
      extra = { ["user-agent"] = "me/1", ACCEPT = "text/csv", ["x-lusid-application"] = "b", correlationid = "d" } }
    assert.equal("me/1", h["user-agent"])
    assert.is_nil(h["User-Agent"])
    assert.equal("text/csv", h.ACCEPT)
    assert.is_nil(h.Accept)
    assert.equal("b", h["x-lusid-application"])
    assert.equal("d", h.correlationid)
    for _, n in ipairs { "user-agent", "accept", "x-lusid-application", "correlationid" } do
      assert.equal(1, count_ci(h, n), n)
    end
    h = build_ok { token = "t", extra = { ["X-LUSID-SDK-Version"] = "2.0" } }
    assert.equal("2.0", h["X-LUSID-SDK-Version"])
  end)

  it("never lets extra replace Authorization", function()
    for _, name in ipairs { "Authorization", "authorization", "AUTHORIZATION" } do
      local h = build_ok { token = "t", extra = { [name] = "Basic evil" } }
      assert.equal("Bearer t", h.Authorization)
      assert.equal(1, count_ci(h, "authorization"))
      h = build_ok { token = "t", extra = { [name] = false } }
      assert.equal("Bearer t", h.Authorization)
    end
  end)

  it("removes a default header given as false in extra", function()
    local h = build_ok { token = "t", app_name = "a", extra = { accept = false, ["X-LUSID-Application"] = false } }
    assert.is_nil(h.Accept)
    assert.is_nil(h["X-LUSID-Application"])
    assert.equal(0, count_ci(h, "accept"))
  end)

  it("refuses control characters in any value, naming the header and never printing the value", function()
    for _, bad in ipairs { "\r", "\n", "\0", "\1", "\27", "\127", "\r\nX-Injected: 1" } do
      local value = "secret-value" .. bad .. "tail"
      local cases = {
        { { token = "t", extra = { ["X-Thing"] = value } }, "X-Thing" },
        { { token = "t", app_name = value }, "X-LUSID-Application" },
        { { token = "t", correlation_id = value }, "CorrelationId" },
        { { token = "t", version = value }, "X-LUSID-SDK-Version" },
        { { token = value }, "Authorization" },
      }
      for _, c in ipairs(cases) do
        local msg = build_err(c[1])
        assert.truthy(msg:find("header '" .. c[2] .. "' refused", 1, true), msg)
        assert.is_nil(msg:find("secret-value", 1, true), msg)
        assert.is_nil(msg:find("tail", 1, true), msg)
        assert.is_nil(msg:find("[%c]"), "control character in: " .. msg)
      end
    end
  end)

  it("refuses an empty token or one with a space", function()
    for _, tok in ipairs { "", "secret tok", " " } do
      local msg = build_err { token = tok }
      assert.truthy(msg:find("header 'Authorization' refused", 1, true))
      if tok ~= "" and tok ~= " " then assert.is_nil(msg:find(tok, 1, true)) end
    end
  end)

  it("refuses a header name that is not an HTTP token, printing it escaped", function()
    local cases = {
      { "X Thing", "header name 'X Thing' is not an HTTP token" },
      { "X:Thing", "header name 'X:Thing' is not an HTTP token" },
      { "", "header name '' is not an HTTP token" },
      { "X-A\r\nX-B", "header name 'X-A\\13\\10X-B' is not an HTTP token" },
      { "X\0", "header name 'X\\0' is not an HTTP token" },
      { "X(y)", "header name 'X(y)' is not an HTTP token" },
    }
    for _, c in ipairs(cases) do
      assert.equal("lusidauth.headers: " .. c[2], build_err { token = "t", extra = { [c[1]] = "v" } })
    end
    local ok_names = { "X-A_b.c~d", "X!#$%&'*+^`|" }
    for _, name in ipairs(ok_names) do
      assert.equal("v", build_ok { token = "t", extra = { [name] = "v" } }[name])
    end
  end)

  it("raises on misuse", function()
    local cases = {
      { nil, "expected a table, got nil" },
      { {}, "'token' must be a string, not nil" },
      { { token = 1 }, "'token' must be a string, not number" },
      { { token = "t", app_name = 1 }, "'app_name' must be a string, not number" },
      { { token = "t", correlation_id = true }, "'correlation_id' must be a string, not boolean" },
      { { token = "t", version = {} }, "'version' must be a string, not table" },
      { { token = "t", extra = "x" }, "'extra' must be a table, not string" },
      { { token = "t", extra = { [1] = "x" } }, "extra header names must be strings, not number" },
      { { token = "t", extra = { X = 1 } }, "extra['X'] must be a string or false, not number" },
      { { token = "t", extra = { X = true } }, "extra['X'] must be a string or false, not boolean" },
      { { token = "t", extra = { ["X-A"] = "1", ["x-a"] = "2" } }, "extra has both '" },
      { { token = "t", tokne = "x" }, "unknown field 'tokne'" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(headers.build, c[1])
      assert.is_false(ok)
      assert.truthy(err:find("lusidauth.headers.build: " .. c[2], 1, true), err)
    end
    local ok, err = pcall(function() headers.build(nil) end)
    assert.is_false(ok)
    assert.matches("headers_spec%.lua:%d+:", err)
  end)
end)

describe("headers.lines", function()
  it("gives Name: value lines sorted by name, case-insensitively", function()
    assert.same({
      "accept: application/json",
      "Authorization: Bearer t",
      "b: 2",
      "C-d: 3",
      "c-e: 4",
    }, headers.lines { ["c-e"] = "4", b = "2", Authorization = "Bearer t", ["C-d"] = "3", accept = "application/json" })
    assert.same({}, headers.lines {})
  end)

  it("orders names equal but for case deterministically", function()
    assert.same({ "X-A: 1", "x-a: 2" }, headers.lines { ["x-a"] = "2", ["X-A"] = "1" })
  end)

  it("round-trips headers.build", function()
    assert.same({
      "Accept: application/json",
      "Authorization: Bearer t",
      "CorrelationId: c",
      "User-Agent: lusidauth/1.2.3",
      "X-LUSID-Application: a",
      "X-LUSID-SDK-Language: Lua",
      "X-LUSID-SDK-Version: 1.2.3",
    }, headers.lines(build_ok { token = "t", app_name = "a", correlation_id = "c", version = "1.2.3" }))
  end)

  it("raises on a bad header, naming it and never printing its value", function()
    for _, bad in ipairs { "\r", "\n", "\0", "\1" } do
      local ok, err = pcall(headers.lines, { Accept = "a", ["X-Thing"] = "secret-value" .. bad })
      assert.is_false(ok)
      assert.truthy(err:find("lusidauth.headers: header 'X-Thing' refused", 1, true), err)
      assert.is_nil(err:find("secret-value", 1, true))
    end
    local ok, err = pcall(headers.lines, { ["Bad Name"] = "v" })
    assert.is_false(ok)
    assert.truthy(err:find("header name 'Bad Name' is not an HTTP token", 1, true), err)
  end)

  it("raises on misuse", function()
    local cases = {
      { nil, "expected a table, got nil" },
      { { X = 1 }, "headers must be string = string, not string = number" },
      { { X = false }, "headers must be string = string, not string = boolean" },
      { { "x" }, "headers must be string = string, not number = string" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(headers.lines, c[1])
      assert.is_false(ok)
      assert.truthy(err:find("lusidauth.headers.lines: " .. c[2], 1, true), err)
    end
    local ok, err = pcall(function() headers.lines { X = "\n" } end)
    assert.is_false(ok)
    assert.matches("headers_spec%.lua:%d+:", err)
  end)
end)

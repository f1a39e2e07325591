-- Shared options and helpers for the specs: the fake Okta's default identities.
local okta = require "spec.support.okta"

local F = {
  client_id = "lusid-client",
  client_secret = "p+w%d:x",
  username = "alice@example.com",
  password = "correct horse",
}

function F.password_opts(extra)
  local o = {
    token_url = okta.token_url("http"),
    client_id = F.client_id,
    client_secret = F.client_secret,
    username = F.username,
    password = F.password,
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function F.cc_opts(extra)
  local o = { token_url = okta.token_url("http"), client_id = F.client_id, client_secret = F.client_secret }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function F.sleep(s)
  require("socket").sleep(s)
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c)
    if c == " " then return "+" end
    return ("%%%02X"):format(c:byte())
  end))
end
F.urlencode = urlencode

-- Every secret a test used, raw and form-encoded, to search outputs for.
function F.secrets(...)
  local list = {}
  for _, v in ipairs({ F.password, F.client_secret, ... }) do
    list[#list + 1] = v
    list[#list + 1] = urlencode(v)
  end
  return list
end

function F.contains_any(s, secrets)
  for _, v in ipairs(secrets) do
    if s:find(v, 1, true) then return v end
  end
  return nil
end

-- Asserts each field of an error object; a field given as F.NIL must be absent.
F.NIL = {}
function F.assert_error(err, want)
  assert(type(err) == "table", "expected an error object, got " .. type(err))
  for k, v in pairs(want) do
    if v == F.NIL then v = nil end
    assert(err[k] == v, ("err.%s: expected %s, got %s"):format(k, tostring(v), tostring(err[k])))
  end
end

return F

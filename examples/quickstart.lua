-- The flow LUSID documents, step by step: a password login with offline_access, the refresh
-- token it returns, a refresh grant with HTTP Basic, then a cached token and the header.
-- Reads FBN_TOKEN_URL, FBN_CLIENT_ID, FBN_CLIENT_SECRET, FBN_USERNAME, FBN_PASSWORD.
-- Run it with `make demo`, which starts the project's fake Okta on loopback. Prints no secret.
local lusidauth = require "lusidauth"

local function env(name)
  local v = os.getenv(name)
  if not v or v == "" then
    io.stderr:write("quickstart: set ", name, "\n")
    os.exit(2)
  end
  return v
end

local function step(n, text) print(("%d. %s"):format(n, text)) end

local rotations = 0
local client = lusidauth.new_password {
  token_url = env "FBN_TOKEN_URL",
  client_id = env "FBN_CLIENT_ID",
  client_secret = env "FBN_CLIENT_SECRET",
  username = env "FBN_USERNAME",
  password = env "FBN_PASSWORD",
  -- Okta rotates refresh tokens: a real program would persist each new one here.
  on_refresh_token = function() rotations = rotations + 1 end,
}
print("client: " .. tostring(client))

local token, expires_in = client:login()
if not token then
  io.stderr:write("quickstart: login failed: ", tostring(expires_in), "\n")
  os.exit(1)
end
step(1, ("password grant (scope openid client groups offline_access): access token of %d characters, valid %d s")
  :format(#token, expires_in))

local refresh_token = client:refresh_token()
step(2, ("the response carried a refresh token (%d characters, not shown); on_refresh_token saw it"):format(
  refresh_token and #refresh_token or 0))

local token2, err = client:refresh()
if not token2 then
  io.stderr:write("quickstart: refresh failed: ", tostring(err), "\n")
  os.exit(1)
end
step(3, ("refresh grant with the client id and secret in HTTP Basic: a new access token (%s), valid %d s")
  :format(token2 ~= token and "different from the first" or "the same as the first", select(2, client:token())))

local cached = client:token()
step(4, ("token() again: served from the C-side cache (%s), no request sent"):format(
  cached == token2 and "same token" or "a different token?"))

local headers = client:headers()
step(5, "the header for a LUSID API call: Authorization: Bearer <" .. #headers.Authorization - 7 .. " characters>")
print(("refresh tokens rotated: %d; client: %s"):format(rotations, tostring(client)))
client:close()

-- A personal access token (PAT): no Okta at all. Reads FBN_ACCESS_TOKEN (or FBN_ACCESS_TOKEN_FILE)
-- and FBN_LUSID_URL, then calls the API with "Authorization: Bearer <PAT>".
local lusidauth = require "lusidauth"

local opts, err = lusidauth.config.load { secrets = false }
if not opts then
  io.stderr:write("pat: ", tostring(err), "\n")
  os.exit(2)
end
if not opts.access_token then
  io.stderr:write("pat: set FBN_ACCESS_TOKEN or FBN_ACCESS_TOKEN_FILE\n")
  os.exit(2)
end
local client = lusidauth.new(opts) -- infers the PAT client
print("client: " .. tostring(client))
local resp, rerr = client:request { path = "/api/portfolios" }
if not resp then
  io.stderr:write("pat: ", tostring(rerr), "\n")
  os.exit(1)
end
print(("%d portfolios, with the PAT sent as a bearer token and never to Okta"):format(#resp.json.values))

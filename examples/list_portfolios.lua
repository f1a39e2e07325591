-- A quick automation script: configuration from secrets.json and FBN_* variables, as the LUSID
-- SDKs read it, then one API call. Run by `make demo` against the fake Okta and LUSID API.
local lusidauth = require "lusidauth"

local client, err = lusidauth.from_config { secrets = arg[1] } -- nil: ./secrets.json if present
if not client then
  io.stderr:write("list_portfolios: ", tostring(err), "\n")
  os.exit(2)
end

local resp, rerr = client:request { path = "/api/portfolios" }
if not resp then
  io.stderr:write("list_portfolios: ", tostring(rerr), "\n")
  os.exit(1)
end
for _, p in ipairs(resp.json.values) do
  print(("%-8s %-12s %s"):format(p.id.scope, p.id.code, p.displayName))
end
client:close()

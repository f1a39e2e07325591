-- Okta rotates the refresh token on every refresh and revokes the whole chain when an old one is
-- used again, so a program that keeps one across runs must store each new one. This script
-- starts from the stored refresh token (or logs in with the password the first time), and writes
-- every rotated one to a file of mode 0600, atomically (temporary file, then rename).
--   lua examples/persist_refresh_token.lua [FILE]     (default: ./refresh_token)
local lusidauth = require "lusidauth"

local path = arg[1] or "refresh_token"

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function store(token)
  local tmp = path .. ".tmp"
  -- create the file 0600 before any secret is written to it
  assert(os.execute("install -m 600 /dev/null " .. shell_quote(tmp)), "cannot create " .. tmp)
  local f = assert(io.open(tmp, "w"))
  f:write(token, "\n")
  assert(f:close())
  assert(os.rename(tmp, path))
end

local function stored()
  local f = io.open(path, "r")
  if not f then return nil end
  local t = f:read("*l")
  f:close()
  return t ~= "" and t or nil
end

local opts, err = lusidauth.config.load { secrets = false, overrides = { refresh_token = stored() } }
if not opts then
  io.stderr:write("persist_refresh_token: ", tostring(err), "\n")
  os.exit(2)
end
opts.on_refresh_token = store
local client = lusidauth.new(opts)
local had = opts.refresh_token ~= nil
local token, terr = client:token()
if not token then
  io.stderr:write("persist_refresh_token: ", tostring(terr), "\n")
  os.exit(1)
end
print(("%s; the rotated refresh token is stored in %s (mode 0600)"):format(
  had and "refreshed with the stored refresh token" or "logged in with the password (first run)", path))

-- The file store: short-lived processes share one token and one refresh-token chain.
-- Every client runs in a child process (the interpreter of the suite), as scripts do.
local okta = require "spec.support.okta"
local F = require "spec.support.fixtures"

local LUA = os.getenv("LUSIDAUTH_LUA") or "lua5.4"

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function tmpdir(mode)
  local p = io.popen("mktemp -d /tmp/lusidauth-store.XXXXXX")
  local dir = p:read("*l")
  p:close()
  os.execute("chmod " .. (mode or "700") .. " " .. dir)
  return dir
end

local function rmdir(dir) os.execute("rm -rf " .. quote(dir)) end

-- A script that gets one token through the store and prints "ok <token>" or "err <kind> <msg>".
local SCRIPT = [[
local l = require "lusidauth"
local ok, c = pcall(l.new_password, { token_url = arg[1], client_id = arg[2], client_secret = arg[3],
  username = arg[4], password = arg[5], store = "file", store_dir = arg[6], deadline = 20,
  log = function(level, msg) io.stderr:write(level, ": ", msg, "\n") end })
if not ok then print("raise " .. tostring(c)) return end
local t, e = c:token()
if t then print("ok " .. t) else print("err " .. e.kind .. " " .. tostring(e)) end
]]

local script_path = os.tmpname()
do
  local f = assert(io.open(script_path, "w"))
  f:write(SCRIPT)
  f:close()
end

local function command(dir, password)
  local args = { okta.token_url("http"), F.client_id, F.client_secret, F.username, password or F.password, dir }
  local parts = { LUA, quote(script_path) }
  for _, a in ipairs(args) do parts[#parts + 1] = quote(a) end
  return table.concat(parts, " ")
end

local function run(dir, password)
  local p = io.popen(command(dir, password) .. " 2>/dev/null")
  local out = p:read("*a")
  p:close()
  return out
end

-- Starts n runs at once; returns their outputs.
local function run_together(dir, n)
  local files = {}
  local cmds = {}
  for i = 1, n do
    files[i] = os.tmpname()
    cmds[#cmds + 1] = "(" .. command(dir) .. " > " .. files[i] .. " 2>/dev/null) &"
  end
  os.execute(table.concat(cmds, " ") .. " wait")
  local outs = {}
  for i = 1, n do
    local f = io.open(files[i])
    outs[i] = f:read("*a")
    f:close()
    os.remove(files[i])
  end
  return outs
end

local function token_of(out) return out:match("^ok (%S+)") end

describe("the file store", function()
  local dir
  before_each(function()
    okta.reset()
    dir = tmpdir()
  end)
  after_each(function() rmdir(dir) end)
  teardown(function() os.remove(script_path) end)

  it("lets 20 sequential runs make one password grant and no further request", function()
    local first
    for i = 1, 20 do
      local t = token_of(run(dir))
      assert.is_true(okta.validate(t).valid, "run " .. i)
      first = first or t
      assert.equal(first, t)
    end
    assert.same({ password = 1, refresh_token = 0, client_credentials = 0, other = 0 }, okta.stats().grants)
  end)

  it("lets 8 processes started together at expiry make exactly one refresh", function()
    okta.config { expires_in = 4 } -- fresh for 2 s after each refresh: longer than 8 starts
    assert.is_string(token_of(run(dir)))
    F.sleep(4.2) -- the stored token has expired
    local outs = run_together(dir, 8)
    local seen = {}
    for i, out in ipairs(outs) do
      local t = token_of(out)
      assert.is_string(t, "process " .. i .. ": " .. out)
      seen[t] = true
    end
    assert.equal(1, (function() local n = 0 for _ in pairs(seen) do n = n + 1 end return n end)())
    assert.same({ password = 1, refresh_token = 1, client_credentials = 0, other = 0 }, okta.stats().grants)
    assert.equal(0, okta.stats().reuse)
  end)

  it("is not blocked by a process killed while it held the refresh lock", function()
    okta.script { { pass = true, delay = 30 } } -- the first login hangs for 30 s
    local pidfile = os.tmpname()
    os.execute("(" .. command(dir) .. " >/dev/null 2>&1 & echo $! > " .. pidfile .. ")")
    F.sleep(1) -- it now holds the lock, waiting on the slow login
    local f = io.open(pidfile)
    local pid = f:read("*l")
    f:close()
    os.remove(pidfile)
    os.execute("kill -KILL " .. pid)
    local t0 = require("socket").gettime()
    local t = token_of(run(dir))
    assert.is_true(okta.validate(t).valid)
    assert.is_true(require("socket").gettime() - t0 < 15, "the lock died with its holder")
  end)

  it("gives a process with a wrong password nothing from the store", function()
    assert.is_string(token_of(run(dir)))
    local out = run(dir, "wrong password")
    assert.matches("^err oauth ", out)
    assert.same({ password = 2, refresh_token = 0, client_credentials = 0, other = 0 }, okta.stats().grants)
  end)

  it("refuses a directory others can read, and one that is not ours", function()
    os.execute("chmod 755 " .. dir)
    local out = run(dir)
    local pattern = "^raise .*token store: refusing " .. dir:gsub("%-", "%%-") .. ": its mode is 0755; it must be 0700"
    assert.matches(pattern, out)
    assert.equal(0, okta.stats().requests)
  end)

  it("refuses a state file others can read", function()
    assert.is_string(token_of(run(dir)))
    os.execute("chmod 644 " .. dir .. "/*.token")
    local out = run(dir)
    assert.matches("^err config .*token store: refusing .*: it must be a 0600 file owned by this user", out)
  end)

  it("recovers from a corrupt or truncated file, treating it as empty", function()
    assert.is_string(token_of(run(dir)))
    for _, junk in ipairs { "garbage\n\0\1\2", "lusidauth-store 1\nsalt 00\nverifier", "" } do
      local p = io.popen("ls " .. dir .. "/*.token")
      local path = p:read("*l")
      p:close()
      local f = io.open(path, "wb")
      f:write(junk)
      f:close()
      assert.is_true(okta.validate(token_of(run(dir))).valid)
    end
    assert.equal(4, okta.stats().grants.password)
  end)

  it("names files by a hash: no username or secret in a name or in the directory listing", function()
    assert.is_string(token_of(run(dir)))
    local p = io.popen("ls -a " .. dir)
    local names = p:read("*a")
    p:close()
    assert.matches("^%.\n%.%.\n%x+%.lock\n%x+%.token\n$", names)
    for _, s in ipairs { F.username, "alice", F.password, F.client_secret } do
      assert.is_nil(names:find(s, 1, true))
    end
  end)
end)

-- busted --helper: a full collection before every test and a collector that runs far more often
-- than usual, so use-after-free and missing references in the C module show up (ASan, valgrind).
local busted = require "busted"
collectgarbage("setpause", 10)
collectgarbage("setstepmul", 400)
busted.subscribe({ "test", "start" }, function()
  collectgarbage()
  return nil, true
end)

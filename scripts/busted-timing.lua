-- A busted output handler: busted's own utfTerminal, then the spec files
-- that took longest, by wall time. scripts/test.sh uses it, so that every
-- run (CI's too) shows where the suite's time budget goes. With
-- JWKE_SPEC_TIMINGS set, every file's time is appended there too (the
-- source of spec/timings.txt, which scripts/deal-specs.lua reads).
--   busted -o scripts/busted-timing.lua [--Xoutput --plain] ...
local SHOWN = 12

return function(options)
  local busted = require("busted")
  local handler = require("busted.outputHandlers.utfTerminal")(options)
  -- wall time, not os.clock's CPU time: the slow specs are the ones that wait
  local ok, core = pcall(require, "jwkengine.core")
  local now = ok and core.monotonic or os.time
  local started, took = {}, {}

  busted.subscribe({ "file", "start" }, function(file)
    started[file.name] = now()
    return nil, true
  end)
  busted.subscribe({ "file", "end" }, function(file)
    took[#took + 1] = { name = file.name, seconds = now() - (started[file.name] or now()) }
    return nil, true
  end)
  busted.subscribe({ "suite", "end" }, function()
    table.sort(took, function(a, b) return a.seconds > b.seconds end)
    -- every file's time, for scripts/deal-specs.lua's next deal
    local record = os.getenv("JWKE_SPEC_TIMINGS") and io.open(os.getenv("JWKE_SPEC_TIMINGS"), "a")
    if record then
      for _, file in ipairs(took) do record:write(string.format("%.1f %s\n", file.seconds, file.name)) end
      record:close()
    end
    io.write(string.format("\nthe %d slowest spec files (wall time):\n", math.min(SHOWN, #took)))
    for i = 1, math.min(SHOWN, #took) do
      io.write(string.format("  %6.1f s  %s\n", took[i].seconds, took[i].name))
    end
    io.flush()
    return nil, true
  end)
  return handler
end

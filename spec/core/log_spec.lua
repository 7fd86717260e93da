-- jwkengine.log: every line a logger made by log.new writes is one line,
-- whatever the message holds.
local log = require("jwkengine.log")

describe("jwkengine.log", function()
  it("escapes control characters and the backslash, once", function()
    local seen = {}
    local logger = log.new(function(level, message) seen[#seen + 1] = level .. " " .. message end)
    logger("info", "set 'a\nb' \\ \r\t\0\27[31m\127 é")
    assert.equals("info set 'a\\nb' \\\\ \\r\\t\\x00\\x1b[31m\\x7f é", seen[1])
    -- a logger passed on (as nginx passes its own to the engine) is not wrapped again
    assert.equals(logger, log.new(logger))
    log.new(logger)("warn", "x\ny")
    assert.equals("warn x\\ny", seen[2])
    -- non-string messages are written as text
    logger("info", 42)
    assert.equals("info 42", seen[3])
  end)

  it("writes one escaped line to stderr by default", function()
    local path = os.tmpname()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write('package.path = "lua/?.lua;" .. package.path\n',
      'require("jwkengine.log").new()("warn", "claim \'x\\ninjected\' refused")\n')
    f:close()
    assert.is_true(os.execute("lua5.4 " .. script .. " 2> " .. path))
    local text = assert(io.open(path)):read("*a")
    os.remove(path)
    os.remove(script)
    local _, lines = text:gsub("\n", "")
    assert.equals(1, lines)
    local expected = " level=warn msg=claim 'x\\ninjected' refused\n"
    assert.equals(expected, text:sub(-#expected))
  end)
end)

-- Logging. The engine logs what it does to the token (configuration, key
-- generation, recoveries) through one function a host can replace, e.g.
-- with ngx.log in OpenResty. Nothing secret is ever passed here.
local M = {}

-- Control characters (newlines above all) and the backslash, escaped: a
-- message may carry text from a request (a claim name, a kid), and a raw
-- newline there would let the request write a line of its own into the log.
local ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\\"] = "\\\\" }
for byte = 0, 31 do
  local c = string.char(byte)
  ESCAPES[c] = ESCAPES[c] or string.format("\\x%02x", byte)
end
ESCAPES["\127"] = "\\x7f"

function M.escape(message)
  return (tostring(message):gsub("[%c\\]", ESCAPES))
end

local function to_stderr(level, message)
  io.stderr:write(os.date("!%Y-%m-%dT%H:%M:%SZ"), " level=", level, " msg=", message, "\n")
end

-- Loggers made here; M.new returns them unchanged, so a message is escaped
-- exactly once however loggers are passed along.
local made = setmetatable({}, { __mode = "k" })

-- Returns a logger: `logger(level, message)`, which escapes the message
-- (M.escape) and hands it to `sink`: nil (stderr), false (silent) or a
-- function(level, message).
function M.new(sink)
  if sink == false then return function() end end
  if made[sink] then return sink end
  local write = sink or to_stderr
  local logger = function(level, message) return write(level, M.escape(message)) end
  made[logger] = true
  return logger
end

return M

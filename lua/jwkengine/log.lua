-- Logging. The engine logs what it does to the token (configuration, key
-- generation, recoveries) through one function a host can replace, e.g.
-- with ngx.log in OpenResty. Nothing secret is ever passed here.
local M = {}

local function to_stderr(level, message)
  io.stderr:write(os.date("!%Y-%m-%dT%H:%M:%SZ"), " level=", level, " msg=", message, "\n")
end

-- Returns a logger: `logger(level, message)`. `sink` may be nil (stderr),
-- false (silent) or a function(level, message).
function M.new(sink)
  if sink == false then return function() end end
  return sink or to_stderr
end

return M

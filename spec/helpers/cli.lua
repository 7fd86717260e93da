-- scripts/keys.lua run through the real runner, as an operator would, with
-- an environment given as a table (the only settings the process sees
-- beside the inherited ones).
local softhsm = require("helpers.softhsm")

local M = {}

-- "env NAME='value' ..." for a table of variables, in a stable order.
function M.env_prefix(env)
  local parts = {}
  for k, v in pairs(env) do
    parts[#parts + 1] = k .. "=" .. softhsm.quote(v)
  end
  table.sort(parts)
  return "env " .. table.concat(parts, " ")
end

-- Runs the CLI; returns stdout, stderr, exit status. cpu_seconds: a limit
-- on the CPU time it may use (ulimit -t), not on the wall clock, so a busy
-- machine does not make it fail.
function M.keys(env, args, stdin, cpu_seconds)
  local out, err = os.tmpname(), os.tmpname()
  local input = os.tmpname()
  softhsm.write_file(input, stdin or "")
  local ok, _, status = os.execute(string.format("%s%s %s/jwkengine scripts/keys.lua %s < %s > %s 2> %s",
    cpu_seconds and ("ulimit -t " .. cpu_seconds .. "; ") or "",
    M.env_prefix(env), softhsm.BUILD, args, input, out, err))
  local stdout = assert(io.open(out)):read("*a")
  local stderr = assert(io.open(err)):read("*a")
  os.remove(out); os.remove(err); os.remove(input)
  return stdout, stderr, ok and 0 or status
end

-- `command` (shell) with its start and end times (date +%s.%N) written to
-- PATH.start and PATH.end, for M.together: processes started side by side
-- on a loaded machine may still run one after the other, and a race spec
-- must show they did not.
function M.timed(command, path)
  return string.format("{ date +%%s.%%N > %s.start; %s; date +%%s.%%N > %s.end; }", softhsm.quote(path), command,
    softhsm.quote(path))
end

-- Seconds during which every run timed to these paths (M.timed) was
-- running at once; 0 or less when they did not all run together.
function M.together(paths)
  local latest_start, first_end = -math.huge, math.huge
  for _, path in ipairs(paths) do
    latest_start = math.max(latest_start, (assert(tonumber(softhsm.read_file(path .. ".start")), path)))
    first_end = math.min(first_end, (assert(tonumber(softhsm.read_file(path .. ".end")), path)))
    os.remove(path .. ".start"); os.remove(path .. ".end")
  end
  return first_end - latest_start
end

return M

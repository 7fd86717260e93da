-- Driving the fault-injecting PKCS#11 module (spec/faultmod) from a spec
-- running in this process: its control file is re-read on the next call,
-- and a reload writes the per-function call counts to the stats file.
-- scripts/test.sh exports JWKE_FAULT_CONTROL and JWKE_FAULT_STATS before
-- busted starts, since the module reads them from the environment.
local softhsm = require("helpers.softhsm")

local M = {}

M.MODULE = (os.getenv("JWKE_FAULTMOD_DIR") or (softhsm.BUILD .. "/spec/faultmod")) .. "/libjwke_faultmod.so"

local function pid()
  local f = assert(io.open("/proc/self/stat"))
  local line = f:read("*l")
  f:close()
  return line:match("^(%d+)")
end

function M.check_environment()
  assert(os.getenv("JWKE_FAULT_CONTROL") and os.getenv("JWKE_FAULT_STATS"),
    "JWKE_FAULT_CONTROL and JWKE_FAULT_STATS are not set: run the specs through scripts/test.sh")
end

-- Replaces every setting of the control file (keys not given are reset).
-- Written to a temporary file and renamed, so the module never reads half.
local generation = 0
function M.set(settings)
  M.check_environment()
  generation = generation + 1
  local path = os.getenv("JWKE_FAULT_CONTROL")
  local lines = { "# generation " .. generation }
  for _, key in ipairs({ "faults", "latency", "removed", "max_sessions", "token_flags", "lengths",
    "token_max_sessions", "session_idle_ms", "corrupt_signature" }) do
    if settings[key] ~= nil then lines[#lines + 1] = key .. "=" .. tostring(settings[key]) end
  end
  softhsm.write_file(path .. ".tmp", table.concat(lines, "\n") .. "\n")
  assert(os.rename(path .. ".tmp", path))
end

-- The call counts since the previous reload: rewrites the control file with
-- `next_settings` (default none) and makes one PKCS#11 call through the
-- module so it reloads and writes its stats.
function M.counts(next_settings)
  M.set(next_settings or {})
  require("jwkengine").slots(M.MODULE)
  local stats_path = os.getenv("JWKE_FAULT_STATS"):gsub("%%p", pid())
  local counts = {}
  for line in io.lines(stats_path) do
    local name, value = line:match("^(%S+)%s+(%d+)")
    if name then counts[name] = tonumber(value) end
  end
  return counts
end

-- A new SoftHSM token for a spec driving the module, with no faults set.
function M.fresh_token(prefix)
  M.check_environment()
  M.set({})
  return softhsm.new_token(prefix)
end

-- The environment of an engine on `token` through the fault module.
function M.environment(token, extra)
  local env = softhsm.environment(token, extra)
  env.HSM_LIBRARY = M.MODULE
  return env
end

-- An nginx (helpers.nginx) on the fault module: opts as nginx.new's, with
-- opts.environment passed on to the workers (an `env` line each) and
-- opts.edit(text) changing the rendered configuration further.
function M.nginx_server(opts)
  local nginx = require("helpers.nginx")
  local environment = { HSM_LIBRARY = M.MODULE }
  local names = {}
  for name, value in pairs(opts.environment or {}) do
    environment[name] = value
    names[#names + 1] = "env " .. name .. ";"
  end
  table.sort(names)
  return nginx.new({ token = opts.token, workers = opts.workers, environment = environment,
    render = function(render_opts)
      local text = nginx.replace_once(nginx.render_config(render_opts), "env SOFTHSM2_CONF;",
        "env SOFTHSM2_CONF;\n" .. table.concat(names, "\n"))
      return opts.edit and opts.edit(text) or text
    end })
end

-- An engine on `token` through the module, opened quietly (no startup
-- sets, no logger), with `hsm` as its hsm options.
function M.open_engine(token, hsm)
  return assert(require("jwkengine").open({ environment = M.environment(token), startup = false,
    logger = false, hsm = hsm }))
end

return M

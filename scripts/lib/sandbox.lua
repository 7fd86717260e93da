-- For scripts that need their own SoftHSM token folder (benchmarks, soaks).
--
-- SoftHSM reads SOFTHSM2_CONF when the module initializes, and Lua cannot
-- set environment variables: the first run makes a temporary folder and
-- runs the script again with it (and any extra variables), then removes the
-- folder. The second run finds JWKE_SANDBOX_DIR set and carries on.
local M = {}

function M.shell(command)
  local pipe = assert(io.popen(command .. " 2>&1"))
  local out = pipe:read("*a")
  local ok = pipe:close()
  if not ok then error(command .. " failed: " .. out, 2) end
  return out
end

-- Returns the sandbox folder (in the second run); never returns in the first.
-- extra_env: more variables for the second run; "$DIR" in a value becomes
-- the folder.
function M.enter(extra_env)
  local dir = os.getenv("JWKE_SANDBOX_DIR")
  if dir then return dir end
  -- tmpfs when there is one: SoftHSM's file store re-reads its folder on
  -- every change, which on disk dominates generating many keys
  local base = os.execute("test -d /dev/shm -a -w /dev/shm") and "/dev/shm" or "/tmp"
  dir = M.shell("mktemp -d " .. base .. "/jwkengine-sandbox.XXXXXX"):gsub("%s+$", "")
  M.shell("mkdir -p " .. dir .. "/tokens")
  local conf = assert(io.open(dir .. "/softhsm2.conf", "w"))
  conf:write("directories.tokendir = ", dir, "/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
  conf:close()
  local env = { string.format("SOFTHSM2_CONF=%s/softhsm2.conf", dir), "JWKE_SANDBOX_DIR=" .. dir }
  for name, value in pairs(extra_env or {}) do
    env[#env + 1] = string.format("%s=%q", name, (value:gsub("%$DIR", dir)))
  end
  local args = {}
  for i = 1, #arg do args[#args + 1] = string.format("%q", arg[i]) end
  local ok = os.execute(string.format("env %s %s %s %s", table.concat(env, " "), arg[-1], arg[0],
    table.concat(args, " ")))
  M.shell("rm -rf " .. dir)
  os.exit(ok and 0 or 1)
end

-- A token in the sandbox, labelled `label`, user PIN 1234.
function M.new_token(label)
  M.shell(string.format("softhsm2-util --init-token --free --label %s --so-pin 0000 --pin 1234", label))
end

return M

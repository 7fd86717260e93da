-- Throwaway SoftHSM tokens for the specs.
--
-- The test command gives each run its own SOFTHSM2_CONF (a temp token
-- folder). SoftHSM only sees tokens that existed when the module was
-- initialized, so tokens are made while no engine holds the module: specs
-- close their engines, and new_token collects garbage first.
local M = {}

M.LIBRARY = os.getenv("SOFTHSM2_LIBRARY") or "/usr/lib/softhsm/libsofthsm2.so"
M.PIN = "1234"
-- The build folder under test (scripts/test.sh also runs the suite against
-- a sanitizer build in another folder).
M.BUILD = os.getenv("JWKE_BUILD_DIR") or "build"
-- A plain lua5.4 that loads a sanitizer build of the module needs the
-- sanitizer runtime preloaded (the runner links it itself).
M.LUA = (os.getenv("JWKE_PRELOAD") and ("env LD_PRELOAD=" .. os.getenv("JWKE_PRELOAD") .. " ") or "")
  .. "lua5.4"
M.SO_PIN = "0000"

local counter = 0

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = shell_quote

-- Runs a shell command; returns its output (stdout and stderr) and success.
function M.run(command)
  local pipe = assert(io.popen(command .. " 2>&1"))
  local out = pipe:read("*a")
  local ok = pipe:close()
  return out, ok == true or ok == 0
end

function M.check_environment()
  local conf = os.getenv("SOFTHSM2_CONF")
  assert(conf and conf ~= "", "SOFTHSM2_CONF is not set: run the specs through scripts/test.sh")
end

-- Initializes a new token with a unique label (and PIN, M.PIN unless
-- given); returns { label, slot, pin }.
function M.new_token(prefix, pin)
  pin = pin or M.PIN
  M.check_environment()
  collectgarbage()
  collectgarbage()
  counter = counter + 1
  local label = string.format("%s-%d-%d", prefix or "spec", os.time() % 100000, counter)
  local out, ok = M.run(string.format("softhsm2-util --init-token --free --label %s --so-pin %s --pin %s",
    shell_quote(label), M.SO_PIN, shell_quote(pin)))
  assert(ok, "softhsm2-util failed: " .. out)
  local slot = tonumber(out:match("reassigned to slot (%d+)"))
  return { label = label, slot = slot, pin = pin }
end

-- pkcs11-tool on a token; returns output and success.
function M.pkcs11_tool(token, args)
  return M.run(string.format("pkcs11-tool --module %s --token-label %s --pin %s %s",
    shell_quote(M.LIBRARY), shell_quote(token.label), token.pin, args))
end

-- pkcs11-tool on a token for a step a spec needs done (a key pair made, an
-- object deleted): fails the test with the tool's output unless it
-- succeeds; returns the output.
function M.pkcs11_tool_ok(token, args)
  local out, ok = M.pkcs11_tool(token, args)
  assert(ok, out)
  return out
end

-- The objects of one class (privkey, pubkey, data, ...) on a token, as
-- pkcs11-tool lists them after a login: { label, id (hex), application (data
-- objects) } each.
function M.objects(token, class)
  local out, ok = M.pkcs11_tool(token, "--login --list-objects --type " .. class)
  assert(ok, out)
  return M.parse_objects(out)
end

-- The objects of a pkcs11-tool --list-objects listing (of any token), as
-- M.objects returns them.
function M.parse_objects(out)
  local objects = {}
  for line in out:gmatch("[^\n]+") do
    if line:find("Object;", 1, true) or line:find("^Data object") then
      objects[#objects + 1] = {}
    elseif #objects > 0 then
      local name, value = line:match("^%s+(%a+):%s*(.-)%s*$")
      -- data objects' labels are quoted
      if name == "label" or name == "application" then objects[#objects][name] = value:match("^'(.*)'$") or value end
      if name == "ID" then objects[#objects].id = value end
    end
  end
  return objects
end

-- The ids (hex) of the objects labelled `label`, as a set: a key set's
-- kids, for telling which token holds a kid.
function M.ids(objects, label)
  local ids = {}
  for _, object in ipairs(objects) do
    if object.label == label then ids[object.id] = true end
  end
  return ids
end

-- The environment table an engine is opened with (instead of os.getenv).
function M.environment(token, extra)
  local env = {
    HSM_ENABLED = "true",
    HSM_LIBRARY = M.LIBRARY,
    HSM_TOKEN_LABEL = token.label,
    HSM_PIN = token.pin,
  }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

-- Opens an engine on an environment table, quietly (no logger, no startup
-- sets) unless options (consumed) say otherwise.
function M.open_engine(environment, options)
  options = options or {}
  options.environment = environment
  if options.logger == nil then options.logger = false end
  if options.startup == nil then options.startup = false end
  return require("jwkengine").open(options)
end

-- Bytes as lowercase hex (pkcs11-tool --id wants hex).
function M.hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- n random bytes from the kernel as hex: a PIN or secret no other process saw.
function M.random_hex(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(n)
  f:close()
  return M.hex(bytes)
end

function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

function M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

function M.tmpname()
  return os.tmpname()
end

return M

-- Secrets left in memory: after the engine has used a PIN or a store key,
-- a child process's memory (every writable mapping) and its environment
-- hold no copy of them. The values are random per run, so a match cannot
-- be a coincidence; spec/helpers/memscan.py reads the child from outside.
local jwkengine = require("jwkengine")
local softhsm = require("helpers.softhsm")

local MEMSCAN = "spec/helpers/memscan.py"

-- A random printable secret (hex), never seen in any other process.
local function random_secret(bytes)
  return softhsm.random_hex(bytes)
end

-- Every byte percent-encoded, so the URI text never holds the PIN in clear.
local function percent_encoded(s)
  return (s:gsub(".", function(c) return string.format("%%%02X", c:byte()) end))
end

-- The child: opens the engine from its environment, uses it as `mode`
-- says, collects garbage, closes what held the secret, then lets memscan
-- look. It checks engine.config itself (no PIN in any path).
local CHILD = [[
local jwkengine = require("jwkengine")
local mode = arg[1]
-- the canary: made on the Lua heap only (argv holds one half), so seeing
-- it proves the scan reads where Lua strings live
local canary = arg[2] .. arg[2]
local engine = assert(jwkengine.open({ logger = false, startup = false }))
assert(engine.config.hsm.pin == nil, "engine.config.hsm.pin is set")
assert(not tostring(engine.config.hsm.uri):find("pin-value=%%"), "the URI keeps its pin-value")
if mode == "store" then
  assert(engine:key_set_json("memscan"))
  assert(engine:sign("memscan", "payload"))
elseif mode == "rotate" then
  assert(assert(engine:rotate_secrets()) == 1, "one row re-sealed")
end
collectgarbage() collectgarbage()
if mode ~= "store" then engine:close() end -- the token's locked copy is wiped on close
collectgarbage() collectgarbage()
io.write("READY\n") io.flush()
io.read("a")
assert(#canary > 0)
]]

-- Runs the child under memscan with env (a table); returns the counts of
-- the needles in memory and in /proc/PID/environ.
local function scan(env, mode, needles)
  local script, needles_file = os.tmpname(), os.tmpname()
  softhsm.write_file(script, CHILD)
  local half = random_secret(16)
  local lines = { "canary " .. softhsm.hex(half .. half) }
  for label, value in pairs(needles) do lines[#lines + 1] = label .. " " .. softhsm.hex(value) end
  softhsm.write_file(needles_file, table.concat(lines, "\n") .. "\n")
  local assignments = {}
  for k, v in pairs(env) do assignments[#assignments + 1] = k .. "=" .. softhsm.quote(v) end
  local out, ok = softhsm.run(string.format(
    "env -u HSM_PIN -u HSM_URI -u SECRETS_SYSTEM %s LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
      .. "LUA_CPATH='%s/lib/?.so;;' python3 %s %s -- %s %s %s %s",
    table.concat(assignments, " "), softhsm.BUILD, MEMSCAN, needles_file, softhsm.LUA, script, mode, half))
  os.remove(script)
  os.remove(needles_file)
  assert(ok, out)
  local found = {}
  for label, in_memory, in_environ in out:gmatch("(%S+) (%d+) (%d+)\n") do
    found[label] = { memory = tonumber(in_memory), environ = tonumber(in_environ) }
  end
  -- a scan that cannot see the Lua heap would find no secret either
  assert(found.canary and found.canary.memory >= 1, "the scan did not see the child's Lua heap:\n" .. out)
  return found
end

describe("secrets left in memory", function()
  it("HSM_PIN: taken into C, erased from the environment, no Lua copy", function()
    local pin = random_secret(12)
    local token = softhsm.new_token("memscan", pin)
    local found = scan({ HSM_ENABLED = "true", HSM_LIBRARY = softhsm.LIBRARY,
      HSM_TOKEN_LABEL = token.label, HSM_PIN = pin }, "pin", { pin = pin })
    assert.equals(0, found.pin.environ)
    -- one copy only: the locked, undumpable one the process keeps for
    -- re-login (pin_source.c); no Lua string, no environment string. A
    -- sanitizer runtime reads /proc/self/environ into a buffer of its own
    -- before main runs: under ASan (scripts/test.sh step 3 sets
    -- JWKE_PRELOAD) that copy is not the engine's to wipe.
    local allowed = 1 + (os.getenv("JWKE_PRELOAD") and 1 or 0)
    assert.is_true(found.pin.memory <= allowed, found.pin.memory .. " copies of the PIN in memory")
  end)

  it("a URI pin-value: decoded in C, no copy after close", function()
    local pin = random_secret(12)
    local token = softhsm.new_token("memscan", pin)
    local found = scan({ HSM_ENABLED = "true", HSM_LIBRARY = softhsm.LIBRARY,
      HSM_URI = "pkcs11:token=" .. token.label .. "?pin-value=" .. percent_encoded(pin) }, "uri",
      { pin = pin })
    assert.same({ memory = 0, environ = 0 }, found.pin)
  end)

  it("a store key's private d: never a Lua string on the load path", function()
    local db, secret = os.tmpname(), random_secret(16)
    local env = { SECRETS_SYSTEM = secret, DSN = "sqlite://" .. db }
    local engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))
    assert(engine:generate("memscan", "ES256"))
    local d = assert(engine:signing_key("memscan")):private_jwk().d
    engine:close()
    local found = scan(env, "store", { d = d })
    os.remove(db)
    assert.same({ memory = 0, environ = 0 }, found.d)
  end)

  it("a store key's private d: never a Lua string on the rotation path", function()
    local db, old, new = os.tmpname(), random_secret(16), random_secret(16)
    local env = { SECRETS_SYSTEM = old, DSN = "sqlite://" .. db }
    local engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))
    assert(engine:generate("memscan", "ES256"))
    local d = assert(engine:signing_key("memscan")):private_jwk().d
    engine:close()
    local found = scan({ SECRETS_SYSTEM = new .. "," .. old, DSN = env.DSN }, "rotate", { d = d })
    -- the row is sealed with the new secret alone now
    engine = assert(jwkengine.open({ environment = { SECRETS_SYSTEM = new, DSN = env.DSN },
      logger = false, startup = false }))
    local rotated, err = engine:signing_key("memscan")
    engine:close()
    os.remove(db)
    assert.truthy(rotated, err)
    assert.same({ memory = 0, environ = 0 }, found.d)
  end)

  it("engine:configuration() holds no PIN when the HSM is disabled", function()
    local db = os.tmpname()
    local engine = assert(jwkengine.open({ logger = false, startup = false,
      environment = { HSM_ENABLED = "false", HSM_PIN = random_secret(8),
        SECRETS_SYSTEM = random_secret(16), DSN = "sqlite://" .. db } }))
    local pin = engine:configuration().hsm.pin
    engine:close()
    os.remove(db)
    assert.is_nil(pin)
  end)
end)

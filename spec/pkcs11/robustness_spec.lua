-- The PKCS#11 layer under production conditions, on SoftHSM: threads
-- sharing a small session pool, PIN files.
local jwkengine = require("jwkengine")
local softhsm = require("helpers.softhsm")
local refused = require("helpers.refusal").refused
local refused_keeping = require("helpers.refusal").refused_keeping

local function open_engine(token, extra)
  return jwkengine.open({ environment = softhsm.environment(token, extra), logger = false,
    startup = false })
end

describe("session pool", function()
  it("bounds the sessions many threads share, makes them wait, and every signature verifies", function()
    local token = softhsm.new_token("pool")
    softhsm.pkcs11_tool_ok(token,
      "--keypairgen --key-type EC:prime256v1 --usage-sign --label pooled --id 01")
    local out, ok = softhsm.run(string.format("%s/pool_threads %s %s %s pooled 8 500 2", softhsm.BUILD,
      softhsm.LIBRARY, softhsm.quote(token.label), token.pin))
    assert.is_true(ok, out)
    assert.matches("signatures=4000 failures=0", out)
    local opened = tonumber(out:match("sessions_opened=(%d+)"))
    assert.is_true(opened <= 2, out)
    assert.is_true(tonumber(out:match("session_waits=(%d+)")) > 0, out)
  end)
end)

-- The pre-forking host (8 children signing beside the parent) is proven by
-- scripts/soak.lua's fork check, run from spec/engine/soak_spec.lua.

describe("PIN hygiene", function()
  local token
  setup(function() token = softhsm.new_token("pin") end)

  local function pin_file(content)
    local path = os.tmpname()
    softhsm.write_file(path, content)
    return path
  end

  it("logs in with HSM_PIN_FILE (trailing newline dropped)", function()
    local path = pin_file(token.pin .. "\n")
    local env = softhsm.environment(token, { HSM_PIN_FILE = path })
    env.HSM_PIN = nil
    local engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))
    assert(engine:generate("pinfile", "ES256"))
    engine:close()
    os.remove(path)
  end)

  it("says which PIN file cannot be read, and refuses a wrong PIN from a file", function()
    local env = softhsm.environment(token, { HSM_PIN_FILE = "/nonexistent/pin" })
    env.HSM_PIN = nil
    refused("ERR_CONFIG", "cannot read the PIN file '/nonexistent/pin'",
      jwkengine.open({ environment = env, logger = false, startup = false }))

    local path = pin_file("55555\n")
    env.HSM_PIN_FILE = path
    local engine, err, code = jwkengine.open({ environment = env, logger = false, startup = false })
    os.remove(path)
    refused_keeping("55555", "CKR_PIN_INCORRECT", nil, engine, err, code)
    assert.equals("C_Login: CKR_PIN_INCORRECT", err)
  end)

  it("refuses HSM_PIN and HSM_PIN_FILE together", function()
    refused("ERR_CONFIG", "not both", open_engine(token, { HSM_PIN_FILE = "/tmp/x" }))
  end)
end)

-- One data object the engine cannot read must not fail the read of the
-- others (issue 19: "one 70,000-byte data object beside the valid one ...
-- fails the whole read"). token:data_objects returns every object it read
-- and, as a second list, { error, code } for each it could not; destroying
-- by value goes past such an object. A real 70,000-byte CKO_DATA object
-- written by pkcs11-tool on SoftHSM, and lengths misreported by the
-- fault-injecting module.
local config = require("jwkengine.config")
local hsm = require("jwkengine.hsm")
local faults = require("helpers.faults")
local jose = require("helpers.jose")
local softhsm = require("helpers.softhsm")

local APP, LABEL = "jwkengine-spec", "oversized"

local function open(token, library)
  local cfg = assert(config.load({ environment = softhsm.environment(token, { HSM_LIBRARY = library }) }))
  return assert(hsm.open(cfg.hsm))
end

-- A private CKO_DATA object of `size` bytes, written by another program
-- (PyKCS11: pkcs11-tool --write-object stops at 5000 bytes).
local function write_object(token, size)
  local path = softhsm.tmpname()
  softhsm.write_file(path, string.rep("z", size))
  local out, ok = softhsm.run(string.format("%s spec/helpers/p11_other.py %s %s %s create %s %s %s",
    jose.PYTHON, softhsm.LIBRARY, softhsm.quote(token.label), token.pin, softhsm.quote(APP), LABEL, path))
  assert(ok, out)
  out = softhsm.run(string.format("%s spec/helpers/p11_other.py %s %s %s list %s %s",
    jose.PYTHON, softhsm.LIBRARY, softhsm.quote(token.label), token.pin, softhsm.quote(APP), LABEL))
  assert.matches("\n?" .. size .. " ", out)
  os.remove(path)
end

describe("token:data_objects beside an object it cannot read", function()
  local token, manager
  setup(function()
    faults.check_environment()
    faults.set({})
    token = softhsm.new_token("data-objects")
    manager = open(token, faults.MODULE)
    assert.is_true(manager.token:create_data(APP, LABEL, '{"valid":true}'))
    write_object(token, 70000)
  end)
  teardown(function()
    faults.set({})
    manager:close()
  end)

  it("returns the valid object and names the 70,000-byte one in a second list", function()
    local objects, unreadable, extra = manager.token:data_objects(APP, LABEL)
    assert.is_table(objects, unreadable)
    assert.same({ { label = LABEL, value = '{"valid":true}' } }, objects)
    assert.is_table(unreadable)
    assert.equals(1, #unreadable)
    assert.equals("ERR_TOKEN_LENGTH", unreadable[1].code)
    assert.matches("CKA_VALUE is larger than 65536 bytes", unreadable[1].error, 1, true)
    assert.is_nil(extra)
    -- all of the application's objects: the same
    objects, unreadable = manager.token:data_objects(APP)
    assert.equals(1, #objects)
    assert.equals(1, #unreadable)
  end)

  it("answers one list (no second value) when every object was read", function()
    local objects, unreadable = manager.token:data_objects(APP, "no-such-label")
    assert.same({}, objects)
    assert.is_nil(unreadable)
  end)

  it("destroys by value past the object it cannot read", function()
    assert.is_true(manager.token:create_data(APP, LABEL, "second"))
    assert.equals(1, manager.token:destroy_data(APP, LABEL, "second"))
    assert.equals(1, #manager.token:data_objects(APP, LABEL))
  end)

  it("a length the token should not report makes that object unreadable, not the call a failure", function()
    faults.set({ lengths = "C_GetAttributeValue:CKA_VALUE=buffer+1,CKR_OK" })
    local objects, unreadable = manager.token:data_objects(APP, LABEL)
    faults.set({})
    assert.same({}, objects)
    assert.equals(2, #unreadable)
    for _, problem in ipairs(unreadable) do assert.equals("ERR_TOKEN_LENGTH", problem.code) end
    faults.set({ lengths = "C_GetAttributeValue:CKA_LABEL=-1,CKR_ATTRIBUTE_SENSITIVE" })
    objects, unreadable = manager.token:data_objects(APP, LABEL)
    faults.set({})
    assert.same({}, objects)
    assert.equals(2, #unreadable)
    assert.equals(1, #manager.token:data_objects(APP, LABEL))
  end)

  it("a failing session still fails the whole read", function()
    faults.set({ faults = "C_GetAttributeValue:CKR_DEVICE_MEMORY" })
    local objects, err, code = manager.token:data_objects(APP, LABEL)
    faults.set({})
    assert.is_nil(objects)
    assert.equals("CKR_DEVICE_MEMORY", code, err)
  end)
end)

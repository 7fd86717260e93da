-- A second, independent PKCS#11 implementation: Mozilla's NSS softokn
-- (libsoftokn3.so from Debian's libnss3), which loads only with its
-- initialization arguments (HSM_INIT_ARGS, passed as
-- CK_C_INITIALIZE_ARGS.pReserved). The whole HSM suite runs there
-- (spec/helpers/hsm_suite.lua), with pkcs11-tool as the independent tool.
--
-- NSS softokn keeps the configdir of its first C_Initialize until it is
-- finalized, so this spec makes one database and every test shares it
-- (spec/helpers/nss.lua makes it, and runs pkcs11-tool there).
local jwkengine = require("jwkengine")
local hsm_suite = require("helpers.hsm_suite")
local nss = require("helpers.nss")
local softhsm = require("helpers.softhsm")

local SOFTOKN, PASSWORD, LABEL, init_args = nss.SOFTOKN, nss.PASSWORD, nss.LABEL, nss.init_args

local dir, tool = nss.new_database()

describe("NSS softokn without its initialization arguments", function()
  it("does not load, and says why with a code", function()
    local engine, err, code = jwkengine.open({ logger = false, startup = false, environment = {
      HSM_ENABLED = "true", HSM_LIBRARY = SOFTOKN, HSM_TOKEN_LABEL = LABEL, HSM_PIN = PASSWORD } })
    assert.is_nil(engine)
    assert.matches("C_Initialize: CKR_ARGUMENTS_BAD", err, 1, true)
    assert.equals("CKR_ARGUMENTS_BAD", code)
  end)
end)

hsm_suite.define({
  name = "the HSM suite on NSS softokn",
  rsa_bits = 2048,
  -- NSS 3.87 cannot generate Ed25519 keys (no CKM_EC_EDWARDS_KEY_PAIR_GEN)
  lacks = { "EdDSA" },
  -- NSS 3.87 refuses token CKO_DATA objects (C_CreateObject:
  -- CKR_ATTRIBUTE_VALUE_INVALID): key states are not recorded there
  state_objects = false,
  -- and refuses CKA_ALLOWED_MECHANISMS on a generated pair
  -- (C_GenerateKeyPair: CKR_GENERAL_ERROR): no PS256 keys there
  allowed_mechanisms = false,
  new_token = function()
    return { library = SOFTOKN, label = LABEL, pin = PASSWORD, init_args = init_args(dir),
      environment = { HSM_MIN_RSA_BITS = "2048" }, tool = tool,
      cleanup = function() os.execute("rm -rf " .. softhsm.quote(dir)) end }
  end,
}, _ENV)

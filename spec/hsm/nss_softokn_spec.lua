-- A second, independent PKCS#11 implementation: Mozilla's NSS softokn
-- (libsoftokn3.so from Debian's libnss3), which loads only with its
-- initialization arguments (HSM_INIT_ARGS, passed as
-- CK_C_INITIALIZE_ARGS.pReserved). The whole HSM suite runs there
-- (spec/helpers/hsm_suite.lua), with pkcs11-tool as the independent tool.
--
-- pkcs11-tool cannot pass init args; p11-kit's proxy module can
-- (x-init-reserved in a module config), but p11-kit reads a user's module
-- configs only for a user other than root: as root the tool runs as
-- `nobody` (setpriv), with HOME pointing at the config and the database
-- handed to that user.
--
-- NSS softokn is initialized once per process with the first configdir it
-- is given, so this spec makes one database and every test shares it.
local jwkengine = require("jwkengine")
local hsm_suite = require("helpers.hsm_suite")
local softhsm = require("helpers.softhsm")

local SOFTOKN = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
local P11_KIT_PROXY = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"
local PASSWORD = "nss-db-password-1"
local LABEL = "NSS Certificate DB"

local function init_args(dir)
  return string.format("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", dir)
end

-- A fresh NSS database in a temp folder, with what pkcs11-tool needs.
local function new_database()
  local dir = softhsm.run("mktemp -d /tmp/jwkengine-nss.XXXXXX"):gsub("%s+$", "")
  softhsm.write_file(dir .. "/pw", PASSWORD .. "\n")
  local out, ok = softhsm.run(string.format("certutil -N -d sql:%s -f %s/pw", dir, dir))
  assert(ok, "certutil -N: " .. out)
  assert(os.execute("mkdir -p " .. dir .. "/home/.config/pkcs11/modules"))
  softhsm.write_file(dir .. "/home/.config/pkcs11/modules/nss-softokn.module",
    string.format("module: %s\nx-init-reserved: %s\n", SOFTOKN, init_args(dir)))
  local as_user = ""
  if softhsm.run("id -u"):match("^0") then
    assert(os.execute("chown -R nobody:nogroup " .. dir))
    as_user = "setpriv --reuid=nobody --regid=nogroup --clear-groups "
  end
  local tool = string.format("%senv HOME=%s/home pkcs11-tool --module %s --token-label %s --pin %s",
    as_user, dir, P11_KIT_PROXY, softhsm.quote(LABEL), PASSWORD)
  return dir, function(args) return softhsm.run(tool .. " " .. args) end
end

local dir, tool = new_database()

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

-- A second, independent PKCS#11 implementation: Mozilla's NSS softokn
-- (libsoftokn3.so from Debian's libnss3), which loads only with its
-- initialization arguments (HSM_INIT_ARGS, passed as
-- CK_C_INITIALIZE_ARGS.pReserved). The engine maps, generates and signs
-- there as on SoftHSM, and python3-jwcrypto verifies the tokens.
local jwkengine = require "jwkengine"
local softhsm = require "helpers.softhsm"
local verifier = require "helpers.verifier"

local SOFTOKN = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
local PASSWORD = "nss-db-password-1"

describe("NSS softokn as the HSM", function()
  local dir, env

  setup(function()
    dir = softhsm.run("mktemp -d"):gsub("%s+$", "")
    softhsm.write_file(dir .. "/pw", PASSWORD .. "\n")
    local out, ok = softhsm.run(string.format("certutil -N -d sql:%s -f %s/pw", dir, dir))
    assert(ok, "certutil -N: " .. out)
    env = { HSM_ENABLED = "true", HSM_LIBRARY = SOFTOKN, HSM_TOKEN_LABEL = "NSS Certificate DB",
      HSM_PIN = PASSWORD, HSM_MIN_RSA_BITS = "2048",
      HSM_INIT_ARGS = string.format("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", dir) }
  end)

  teardown(function() os.execute("rm -rf " .. softhsm.quote(dir)) end)

  it("does not load without its initialization arguments, and says why with a code", function()
    local without = {}
    for k, v in pairs(env) do without[k] = v end
    without.HSM_INIT_ARGS = nil
    local engine, err, code = jwkengine.open({ environment = without, logger = false, startup = false })
    assert.is_nil(engine)
    assert.is_string(err)
    assert.is_string(code)
  end)

  it("generates, publishes and signs with ES256, ES512 and RS256 keys that jwcrypto verifies", function()
    local engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))
    finally(function() engine:close() end)
    for _, case in ipairs({ { set = "nss-es256", alg = "ES256" }, { set = "nss-es512", alg = "ES512" },
        { set = "nss-rs256", alg = "RS256", rsa_bits = 2048 } }) do
      local jwk = assert(engine:generate(case.set, case.alg, { kid = case.set .. "-1", rsa_bits = case.rsa_bits }))
      assert.equals(case.alg, jwk.alg)
      local token = assert(engine:sign_jwt(case.set, { sub = "nss" }))
      local ok, out = verifier.jwcrypto(assert(engine:key_set_json(case.set)), token)
      assert.is_true(ok, case.alg .. ": " .. out)
      assert.matches('"sub":"nss"', assert(engine:verify(case.set, token)), 1, true)
    end
  end)
end)

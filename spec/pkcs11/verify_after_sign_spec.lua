-- hsm.verify_after_sign against a token that signs wrongly without saying
-- so: the fault-injecting module (spec/faultmod) flips a byte of every
-- signature SoftHSM makes. A checked signature that does not verify is an
-- ERR_SIGNATURE_FAULT, logged and counted, never a token; an unchecked one
-- goes out and python3-jwcrypto refuses it (the check is what stops it).
local jwkengine = require("jwkengine")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")

describe("verify after sign", function()
  local token

  setup(function()
    token = faults.fresh_token("vas")
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false, hsm = { min_rsa_bits = 2048 } }))
    assert(engine:generate("rsa", "RS256", { kid = "r1", rsa_bits = 2048 }))
    assert(engine:generate("ec", "ES256", { kid = "e1" }))
    assert(engine:generate("ps", "PS256", { kid = "p1", rsa_bits = 2048 }))
    engine:close()
  end)
  teardown(function() faults.set({}) end)

  -- Opens an engine with verify_after_sign (nil: the default) and signs
  -- once on `set` while the module corrupts signatures (or not).
  local function sign_once(set, verify_after_sign, corrupt)
    local lines = {}
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      hsm = { min_rsa_bits = 2048, verify_after_sign = verify_after_sign },
      logger = function(level, message)
        if level ~= "info" then lines[#lines + 1] = level .. " " .. message end
      end }))
    local jwks = engine:key_set_json(set)
    assert(engine:sign(set, "warm-up")) -- loads the set before the fault
    faults.set({ corrupt_signature = corrupt and 1 or 0 })
    local jws, err, code = engine:sign(set, "payload")
    local counts = faults.counts()
    local stats = assert(engine:stats())
    engine:close()
    return { jws = jws, err = err, code = code, stats = stats, lines = lines, counts = counts,
      jwks = jwks }
  end

  local function assert_caught(r, alg, kid)
    assert.is_nil(r.jws)
    assert.equals("ERR_SIGNATURE_FAULT", r.code)
    assert.matches("the token's " .. alg .. " signature with key '" .. kid .. "' does not verify",
      r.err, 1, true)
    assert.equals(1, r.counts.corrupted_signatures) -- the module did corrupt one
    assert.equals(1, r.stats.signature_faults)
    assert.equals(1, #r.lines, table.concat(r.lines, "\n"))
    assert.matches("warn the token's " .. alg .. " signature", r.lines[1], 1, true)
  end

  it("catches a corrupted RS256 signature by default", function()
    assert_caught(sign_once("rsa", nil, true), "RS256", "r1")
  end)

  -- RSASSA-PSS signs with the same RSA-CRT arithmetic as PKCS#1 v1.5
  it("catches a corrupted PS256 signature by default", function()
    assert_caught(sign_once("ps", nil, true), "PS256", "p1")
  end)

  -- spec/c/wiped_signature.c: the caller's own buffer, not only what Lua
  -- sees, holds zeros after a signature that did not verify
  it("wipes the refused signature from the caller's buffer", function()
    local out, ok = softhsm.run(string.format("env -u JWKE_FAULT_CONTROL JWKE_FAULT_CORRUPT_SIGNATURE=1 "
      .. "JWKE_FAULT_MODULE=%s %s/wiped_signature %s %s %s rsa", softhsm.quote(softhsm.LIBRARY), softhsm.BUILD,
      faults.MODULE, softhsm.quote(token.label), token.pin))
    assert.is_true(ok, out)
    assert.matches("code=ERR_SIGNATURE_FAULT wiped=yes", out, 1, true)
  end)

  -- A CKA_ID is bytes: the message (and the log line) names an unprintable
  -- one in hex, never with its control characters.
  it("names a key with an unprintable CKA_ID in hex", function()
    local out, ok = softhsm.pkcs11_tool(token,
      "--keypairgen --key-type rsa:2048 --usage-sign --label ctl --id 0a31")
    assert.is_true(ok, out)
    local r = sign_once("ctl", nil, true)
    assert.matches("a kid is not printable ASCII (CKA_ID 0a31)", table.remove(r.lines, 1), 1, true)
    assert_caught(r, "RS256", "0x0a31")
  end)

  it("catches a corrupted ES256 signature with verify_after_sign on", function()
    assert_caught(sign_once("ec", true, true), "ES256", "e1")
  end)

  it("lets a corrupted ES256 signature through by default, and jwcrypto refuses it", function()
    local r = sign_once("ec", nil, true)
    assert.truthy(r.jws, r.err)
    assert.equals(1, r.counts.corrupted_signatures)
    assert.equals(0, r.stats.signature_faults)
    assert.is_false((verifier.jwcrypto(r.jwks, r.jws)))
  end)

  it("lets a corrupted RS256 signature through with verify_after_sign off (jwcrypto refuses it)", function()
    local r = sign_once("rsa", false, true)
    assert.truthy(r.jws, r.err)
    assert.equals(0, r.stats.signature_faults)
    assert.is_false((verifier.jwcrypto(r.jwks, r.jws)))
  end)

  it("passes good signatures, which jwcrypto accepts", function()
    for _, case in ipairs({ { "rsa", nil }, { "ec", true } }) do
      local r = sign_once(case[1], case[2], false)
      assert.truthy(r.jws, r.err)
      assert.equals(0, r.counts.corrupted_signatures)
      assert.equals(0, r.stats.signature_faults)
      assert.is_true((verifier.jwcrypto(r.jwks, r.jws)))
    end
  end)

  it("reads HSM_VERIFY_AFTER_SIGN from the environment", function()
    local engine = assert(jwkengine.open({ environment = faults.environment(token,
      { HSM_VERIFY_AFTER_SIGN = "true" }), startup = false, logger = false,
      hsm = { min_rsa_bits = 2048 } }))
    assert(engine:sign("ec", "warm-up"))
    faults.set({ corrupt_signature = 1 })
    local jws, _, code = engine:sign("ec", "payload")
    faults.set({})
    engine:close()
    assert.is_nil(jws)
    assert.equals("ERR_SIGNATURE_FAULT", code)
  end)
end)

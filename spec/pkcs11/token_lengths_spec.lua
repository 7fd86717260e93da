-- Lengths a token reports are checked against the buffer the engine gave,
-- whatever the return code. The fault-injecting module (spec/faultmod, its
-- `lengths` setting) sits in front of a real SoftHSM token and misreports
-- the lengths of C_GetAttributeValue, C_Sign, C_FindObjects and
-- C_GetSlotList; each misbehaviour must end in `nil, message, code` naming
-- the function and what it reported, never in a copy past a buffer (the
-- ASan run of scripts/test.sh runs this spec too).
local jwkengine = require("jwkengine")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")
local refused = require("helpers.refusal").refused

describe("lengths a PKCS#11 token reports", function()
  local token, engine, tmp

  -- An RSA public key with a 2060-byte modulus (more than the 2048 bytes
  -- the engine reads one into) onto the token as set "big": DER written by
  -- openssl from a template, since no tool generates such a key quickly.
  local function write_big_public_key()
    local n = "C1" .. string.rep("5A", 2058) .. "01"
    softhsm.write_file(tmp .. "/big.cnf", table.concat({
      "asn1=SEQUENCE:spki", "[spki]", "algorithm=SEQUENCE:alg", "key=BITWRAP,SEQUENCE:rsa",
      "[alg]", "algorithm=OID:rsaEncryption", "parameter=NULL",
      "[rsa]", "n=INTEGER:0x" .. n, "e=INTEGER:0x010001", "" }, "\n"))
    local out, ok = softhsm.run(string.format("openssl asn1parse -genconf %s -out %s",
      softhsm.quote(tmp .. "/big.cnf"), softhsm.quote(tmp .. "/big.der")))
    assert(ok, out)
    out, ok = softhsm.pkcs11_tool(token, string.format(
      "--login --write-object %s --type pubkey --id 01 --label big", softhsm.quote(tmp .. "/big.der")))
    assert(ok, out)
  end

  setup(function()
    faults.check_environment()
    faults.set({})
    token = softhsm.new_token("lengths")
    engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      hsm = { min_rsa_bits = 1024 } }))
    assert(engine:generate("ec", "ES256", { kid = "e1" }))
    assert(engine:generate("rsa", "RS256", { kid = "r1", rsa_bits = 1024 }))
    tmp = (softhsm.run("mktemp -d /tmp/jwke-lengths.XXXXXX")):match("[^\n]+")
    write_big_public_key()
  end)

  teardown(function()
    faults.set({})
    if engine then engine:close() end
    if tmp then softhsm.run("rm -rf " .. softhsm.quote(tmp)) end
  end)

  after_each(function()
    faults.set({})
  end)

  -- The set read afresh from the token (nothing cached).
  local function load(set)
    engine:refresh(set)
    return engine:key_set(set)
  end

  it("reads the sets when nothing misbehaves", function()
    assert.equals(1, #assert(load("ec")).keys)
    assert.equals(1, #assert(load("rsa")).keys)
    -- SoftHSM leaves the too-long modulus unavailable, as PKCS#11 says: that
    -- half is not read, and the set fails for it
    local jwks, err = load("big")
    assert.is_nil(jwks)
    assert.matches("key '0x01' has a public half but no private half", err, 1, true)
  end)

  for _, rv in ipairs({ "", ",CKR_BUFFER_TOO_SMALL", ",CKR_OK", ",CKR_ATTRIBUTE_TYPE_INVALID" }) do
    it("refuses a modulus reported with its real length for a smaller buffer" .. (rv ~= "" and " (" .. rv:sub(2) .. ")" or ""), function()
      faults.set({ lengths = "C_GetAttributeValue:CKA_MODULUS=real" .. rv })
      refused("ERR_TOKEN_LENGTH", "C_GetAttributeValue: token reported 2060 bytes for CKA_MODULUS, buffer holds 2048",
        load("big"))
    end)
  end

  it("refuses a modulus longer than its buffer in a call that also answers CKR_ATTRIBUTE_TYPE_INVALID", function()
    faults.set({ lengths = "C_GetAttributeValue:CKA_MODULUS=buffer+1,CKR_ATTRIBUTE_TYPE_INVALID" })
    refused("ERR_TOKEN_LENGTH", "C_GetAttributeValue: token reported 2049 bytes for CKA_MODULUS, buffer holds 2048",
      load("rsa"))
  end)

  local absurd = {
    { "C_GetAttributeValue:CKA_EC_POINT=2147483648,CKR_OK", "2147483648 bytes for CKA_EC_POINT, buffer holds 160" },
    { "C_GetAttributeValue:CKA_EC_POINT=-2", "18446744073709551614 bytes for CKA_EC_POINT, buffer holds 160" },
    { "C_GetAttributeValue:CKA_EC_PARAMS=+100", "110 bytes for CKA_EC_PARAMS, buffer holds 64" },
    { "C_GetAttributeValue:CKA_PUBLIC_EXPONENT=-2,CKR_ATTRIBUTE_TYPE_INVALID", "18446744073709551614 bytes for CKA_PUBLIC_EXPONENT, buffer holds 16", "rsa" },
    { "C_GetAttributeValue:CKA_CLASS=4", "4 bytes for CKA_CLASS, a 8-byte value" },
    { "C_GetAttributeValue:CKA_SIGN=0x80000000", "2147483648 bytes for CKA_SIGN, buffer holds 1" },
  }
  for _, case in ipairs(absurd) do
    it("refuses an absurd attribute length: " .. case[1], function()
      faults.set({ lengths = case[1] })
      refused("ERR_TOKEN_LENGTH", "C_GetAttributeValue: token reported " .. case[2], load(case[3] or "ec"))
    end)
  end

  local signs = {
    { "C_Sign=buffer+1", "C_Sign: token reported 65 bytes for the signature, buffer holds 64" },
    { "C_Sign=+1,CKR_OK", "C_Sign: token reported 65 bytes for the signature, buffer holds 64" },
    { "C_Sign=-2", "C_Sign: token reported 18446744073709551614 bytes for the signature, buffer holds 64" },
    { "C_Sign=32", "C_Sign: token reported 32 bytes for the signature, but ES256 with this key makes 64" },
  }
  for _, case in ipairs(signs) do
    it("refuses a signature length the token did not write: " .. case[1], function()
      assert(load("ec"))
      faults.set({ lengths = case[1] })
      refused("ERR_TOKEN_LENGTH", case[2], engine:sign("ec", "payload"))
      faults.set({})
      local jws = assert(engine:sign("ec", "payload"))
      assert.equals("payload", (engine:verify("ec", jws, { algorithms = { "ES256" } })))
    end)
  end

  it("refuses more object handles than C_FindObjects had room for", function()
    faults.set({ lengths = "C_FindObjects=buffer+1" })
    refused("ERR_TOKEN_LENGTH", "C_FindObjects: token reported 17 handles, buffer holds 16", load("ec"))
    faults.set({})
    assert.equals(1, #assert(load("ec")).keys)
  end)

  it("refuses more slots than C_GetSlotList had room for", function()
    faults.set({ lengths = "C_GetSlotList=buffer+1" })
    local opened, err, code = jwkengine.open({ environment = faults.environment(token), startup = false })
    assert.is_nil(opened)
    assert.equals("ERR_TOKEN_LENGTH", code, err)
    assert.matches("C_GetSlotList: the module reported %d+ slots, buffer holds %d+", err)
  end)
end)

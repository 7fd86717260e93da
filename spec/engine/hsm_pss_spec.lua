-- PS256/PS384/PS512 on the HSM (FAPI: PS256 or ES256, never RS256): a set
-- declares PSS by generating with a PS* alg (at generation or in
-- startup_sets), which leaves the private key's CKA_ALLOWED_MECHANISMS
-- PSS-only on the token; a pair made elsewhere says so the same way. The
-- token signs with CKM_RSA_PKCS_PSS over a host-made digest; jwcrypto and
-- npm jose verify, and a token without the mechanism gets an error naming it.
local cjson = require("cjson")
local jwkengine = require("jwkengine")
local cli = require("helpers.cli")
local softhsm = require("helpers.softhsm")
local faults = require("helpers.faults")
local jose = require("helpers.jose")

local PSS = { "PS256", "PS384", "PS512" }

-- Both independent verifiers on each { jwks, token, alg }.
local function assert_verified(cases)
  for _, verifier in ipairs({ "jwcrypto", "npm jose" }) do
    local verdicts = verifier == "jwcrypto" and jose.jwcrypto_verify(cases) or jose.node("verify.mjs", cases)
    for i, verdict in ipairs(verdicts) do
      assert.is_true(verdict.ok, verifier .. " " .. cases[i].alg .. ": " .. tostring(verdict.error))
    end
  end
end

local function open(token, extra)
  return assert(jwkengine.open({ environment = softhsm.environment(token, { HSM_MIN_RSA_BITS = "2048" }),
    logger = false, startup = extra ~= nil, startup_sets = extra }))
end

describe("PSS on the HSM", function()
  local token

  setup(function() token = softhsm.new_token("pss") end)
  teardown(function() jose.npm_cleanup() end)

  it("generates PS256/384/512 sets whose JWK alg says so, also after a restart, and both verifiers accept their tokens",
    function()
      local engine = open(token)
      for _, alg in ipairs(PSS) do
        local jwk = assert(engine:generate("pss." .. alg, alg, { kid = alg .. "-1", rsa_bits = 2048 }))
        assert.equals(alg, jwk.alg)
        assert.equals("RSA", jwk.kty)
      end
      engine:close()
      -- a new engine knows the alg only from the token
      engine = open(token)
      finally(function() engine:close() end)
      local cases = {}
      for _, alg in ipairs(PSS) do
        local set = "pss." .. alg
        local jwks = assert(engine:key_set(set))
        assert.equals(alg, jwks.keys[1].alg)
        local jwt = assert(engine:sign_jwt(set, { sub = alg }))
        assert.equals(alg, require("cjson").decode(jose.unb64(jwt:match("^[^.]+"))).alg)
        assert.matches('"sub":"' .. alg .. '"', assert(engine:verify(set, jwt)), 1, true)
        cases[#cases + 1] = { jwks = jwks, token = jwt, alg = alg }
        -- a PSS set never signs PKCS#1 v1.5
        local _, _, code = engine:sign(set, "x", { alg = "RS256" })
        assert.equals("ERR_KEY_USE", code)
      end
      assert_verified(cases)
    end)

  it("keys cert gives a PSS-only key a certificate signed with RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) that openssl verifies",
    function()
      local engine = open(token)
      assert(engine:generate("pss.cert", "PS256", { kid = "pc-1", rsa_bits = 2048 }))
      engine:close()
      local env = softhsm.environment(token, { HSM_MIN_RSA_BITS = "2048" })
      local out, err, status = cli.keys(env, "cert pss.cert pc-1 --subject CN=pss --days 30")
      assert.equals(0, status, err)
      local jwk = cjson.decode(out)
      assert.equals("PS256", jwk.alg)
      assert.equals(1, #jwk.x5c)
      local dir = softhsm.run("mktemp -d /tmp/jwke-pss-cert.XXXXXX"):match("[^\n]+")
      finally(function() os.execute("rm -rf " .. softhsm.quote(dir)) end)
      local pem = dir .. "/cert.pem"
      softhsm.write_file(pem, "-----BEGIN CERTIFICATE-----\n" .. jwk.x5c[1]:gsub(string.rep(".", 64), "%0\n")
        :gsub("\n$", "") .. "\n-----END CERTIFICATE-----\n")
      local verified, ok = softhsm.run(string.format("openssl verify -CAfile %s %s", pem, pem))
      assert.is_true(ok, verified)
      assert.matches(": OK", verified, 1, true)
      local text
      text, ok = softhsm.run(string.format("openssl x509 -in %s -noout -text", pem))
      assert.is_true(ok, text)
      -- both places X.509 names the signature algorithm: the TBSCertificate's and the outer one
      local _, places = text:gsub("Signature Algorithm: rsassaPss", "")
      assert.equals(2, places, text)
      assert.matches("Hash Algorithm: sha256", text, 1, true)
      assert.matches("Mask Algorithm: mgf1 with sha256", text, 1, true)
      assert.matches("Salt Length: 0x20", text, 1, true)
      -- the key's public half is the certificate's, and the key still signs PS256
      engine = open(token)
      finally(function() engine:close() end)
      assert.same(jwk.x5c, assert(engine:key("pss.cert", "pc-1")).x5c)
      local jwt = assert(engine:sign_jwt("pss.cert", { sub = "x5c" }))
      assert.truthy(engine:verify_jwt("pss.cert", jwt))
    end)

  it("generates a startup set configured with alg PS256", function()
    local engine = open(token, { { set = "pss.startup", alg = "PS256" } })
    finally(function() engine:close() end)
    local jwks = assert(engine:key_set("pss.startup"))
    assert.equals("PS256", jwks.keys[1].alg)
    local jwt = assert(engine:sign_jwt("pss.startup", { sub = "startup" }))
    assert_verified({ { jwks = jwks, token = jwt, alg = "PS256" } })
  end)

  it("reads an operator's pkcs11-tool pair restricted to PSS with SHA-384 as PS384", function()
    local out, ok = softhsm.pkcs11_tool(token, "--login --keypairgen --key-type rsa:2048 --usage-sign "
      .. "--allowed-mechanisms RSA-PKCS-PSS,SHA384-RSA-PKCS-PSS --label pss.operator --id "
      .. softhsm.hex("op-1"))
    assert.is_true(ok, out)
    local engine = open(token)
    finally(function() engine:close() end)
    local jwks = assert(engine:key_set("pss.operator"))
    assert.same({ "op-1", "PS384" }, { jwks.keys[1].kid, jwks.keys[1].alg })
    local jwt = assert(engine:sign_jwt("pss.operator", { sub = "operator" }))
    assert_verified({ { jwks = jwks, token = jwt, alg = "PS384" } })
  end)

  it("says which mechanism is missing when the token does not sign with CKM_RSA_PKCS_PSS", function()
    faults.check_environment()
    local engine = assert(jwkengine.open({ environment = faults.environment(token, { HSM_MIN_RSA_BITS = "2048" }),
      logger = false, startup = false }))
    finally(function() faults.set({}); engine:close() end)
    assert(engine:key_set("pss.PS256"))
    faults.set({ faults = "C_SignInit:CKR_MECHANISM_INVALID" })
    local jws, err, code = engine:sign("pss.PS256", "payload")
    assert.is_nil(jws)
    assert.equals("CKR_MECHANISM_INVALID", code)
    assert.matches("CKM_RSA_PKCS_PSS", err, 1, true)
    assert.matches("PS256", err, 1, true)
  end)
end)

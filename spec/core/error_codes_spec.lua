-- About the binding (jwkengine.core): every C entry point's failure codes.
-- Every failure of a C entry point (jwkengine.core) comes back as
-- `nil, message, code`, with the code set in C where the failure happened:
-- a registered ERR_* code or the CKR_* name of a PKCS#11 failure, never
-- missing and never ERR_INTERNAL (the binding's default for a failure C
-- gave no code, which would be a bug). One representative failure per entry
-- point, against real OpenSSL and a throwaway SoftHSM token.
local core = require("jwkengine.core")
local errors = require("jwkengine.errors")
local softhsm = require("helpers.softhsm")

-- Asserts that a call failed with `expected` and that the code is one the
-- registry knows (or a CKR_* name); returns the message.
local function fails_with(expected, value, message, code, extra)
  assert.is_nil(value, "the call succeeded")
  assert.is_nil(extra, "more than three values")
  assert.is_string(message)
  assert.equals(expected, code, message)
  assert.is_true(errors.codes[code] ~= nil or code:find("^CKR_") ~= nil, code)
  assert.are_not.equals("ERR_INTERNAL", code)
  return message
end

local SECRET = "a-secret-of-at-least-sixteen-bytes"
local EC_PUBLIC = {
  kty = "EC", crv = "P-256",
  x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
  y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}

describe("codes of C failures", function()
  describe("software keys", function()
    it("import_jwk: ERR_KEY_IMPORT", function()
      fails_with("ERR_KEY_IMPORT", core.import_jwk({ kty = "EC", crv = "P-256", x = "AA", y = "AA", d = "AA" }))
      fails_with("ERR_KEY_IMPORT", core.import_jwk({ kty = "RSA", n = 5 }))
    end)

    it("import_pem: ERR_KEY_IMPORT", function()
      fails_with("ERR_KEY_IMPORT", core.import_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
      fails_with("ERR_KEY_IMPORT", core.import_pem("no key here"))
    end)

    it("generate_software_key: ERR_KEY_GENERATE", function()
      fails_with("ERR_KEY_GENERATE", core.generate_software_key("RS256", { bits = 1024 }))
    end)

    it("public_key: ERR_JWK_INVALID", function()
      fails_with("ERR_JWK_INVALID", core.public_key({ kty = "EC", crv = "P-256", x = "AA", y = "AA" }))
      fails_with("ERR_JWK_INVALID", core.public_key({ kty = "OKP", crv = "X448", x = "AA" }))
    end)

    -- Signing fails ERR_JWS_SIGN whatever the reason (jws.sign has always
    -- said so); the message says which.
    it("a public key neither signs (ERR_JWS_SIGN) nor exports a private JWK (ERR_KEY_NOT_PRIVATE)", function()
      local public = assert(core.import_jwk(EC_PUBLIC))
      fails_with("ERR_JWS_SIGN", public:sign("input", "ES256"))
      fails_with("ERR_JWS_SIGN", public:sign_compact("e30", "payload", "ES256"))
      fails_with("ERR_KEY_NOT_PRIVATE", public:private_jwk())
    end)

    it("a key signs only with an algorithm that fits it: ERR_JWS_SIGN", function()
      local key = assert(core.generate_software_key("ES256"))
      fails_with("ERR_JWS_SIGN", key:sign("input", "ES384"))
      fails_with("ERR_JWS_SIGN", key:sign_compact("e30", "payload", "RS256"))
    end)
  end)

  describe("the store's sealing", function()
    it("aes_gcm_seal: ERR_KEY_ENCRYPT", function()
      fails_with("ERR_KEY_ENCRYPT", core.aes_gcm_seal("short", "plaintext"))
    end)

    it("aes_gcm_open: ERR_KEY_DECRYPT", function()
      fails_with("ERR_KEY_DECRYPT", core.aes_gcm_open({ SECRET }, "not*base64url"))
      fails_with("ERR_KEY_DECRYPT", core.aes_gcm_open({ SECRET }, "AAAA"))
      fails_with("ERR_KEY_DECRYPT", core.aes_gcm_open({}, "AAAA"))
      local sealed = assert(core.aes_gcm_seal(SECRET, "text"))
      fails_with("ERR_KEY_DECRYPT", core.aes_gcm_open({ "another-secret-of-sixteen-bytes" }, sealed))
    end)

    it("open_sealed_key: ERR_KEY_DECRYPT, or ERR_KEY_INVALID once it decrypts", function()
      fails_with("ERR_KEY_DECRYPT", core.open_sealed_key({ SECRET }, "AAAA"))
      fails_with("ERR_KEY_INVALID", core.open_sealed_key({ SECRET }, assert(core.aes_gcm_seal(SECRET, "[]"))))
      fails_with("ERR_KEY_INVALID", core.open_sealed_key({ SECRET },
        assert(core.aes_gcm_seal(SECRET, '{"kty":"EC","crv":"P-256","x":"AA","y":"AA","d":"AA"}'))))
    end)
  end)

  describe("JOSE helpers", function()
    it("jws_decode: ERR_JWS_INVALID or ERR_JWS_TOO_LARGE", function()
      fails_with("ERR_JWS_INVALID", core.jws_decode("a.b"))
      fails_with("ERR_JWS_INVALID", core.jws_decode("e30.e30.*"))
      fails_with("ERR_JWS_INVALID", core.jws_decode("eyJhIjoxLCJhIjoyfQ.e30.AA")) -- {"a":1,"a":2}
      fails_with("ERR_JWS_TOO_LARGE", core.jws_decode(string.rep("A", 100) .. ".e30.AA", 50))
      fails_with("ERR_JWS_TOO_LARGE", core.jws_decode(string.rep("A", 100) .. ".e30.AA", 0, 10))
    end)

    it("json_check, b64url_decode: ERR_INVALID_ARGUMENT", function()
      fails_with("ERR_INVALID_ARGUMENT", core.json_check('{"a":1,"a":2}', true))
      fails_with("ERR_INVALID_ARGUMENT", core.json_check("[1]", true))
      fails_with("ERR_INVALID_ARGUMENT", core.b64url_decode("a+b"))
    end)

    it("json_claims: ERR_JWT_CLAIMS", function()
      fails_with("ERR_JWT_CLAIMS", core.json_claims({ x = 0 / 0 }))
      fails_with("ERR_JWT_CLAIMS", core.json_claims({ [true] = 1 }))
    end)
  end)

  -- a token through the module object, as hsm.lua opens one
  local function open_token(library, slot, options)
    local module, err, code = core.load_module(library)
    if not module then return nil, err, code end
    return module:open_token(slot, options)
  end

  describe("tokens and HSM keys", function()
    local token, fresh, hsm
    setup(function()
      -- both tokens before the module is loaded: SoftHSM sees no later ones
      token = softhsm.new_token("codes")
      fresh = softhsm.new_token("codes-pin")
      hsm = assert(open_token(softhsm.LIBRARY, token.slot, { label = token.label }))
      assert(hsm:login(token.pin))
    end)
    teardown(function()
      if hsm then hsm:close() end
    end)

    it("slots, load_module and open_token: ERR_CONFIG, or the CKR name", function()
      fails_with("ERR_CONFIG", core.slots("/nonexistent/libpkcs11.so"))
      fails_with("ERR_CONFIG", open_token("/nonexistent/libpkcs11.so", 0))
      fails_with("CKR_SLOT_ID_INVALID", open_token(softhsm.LIBRARY, 4000000000))
    end)

    it("login from a PIN file that is missing: ERR_CONFIG", function()
      local other = assert(open_token(softhsm.LIBRARY, token.slot, { label = token.label }))
      fails_with("ERR_CONFIG", other:login_file("/nonexistent/pin"))
      other:close()
    end)

    it("generate refuses what the HSM does not make: ERR_UNSUPPORTED_ALG, ERR_INVALID_ARGUMENT", function()
      fails_with("ERR_UNSUPPORTED_ALG", hsm:generate("set", "RS384", "k1"))
      fails_with("ERR_INVALID_ARGUMENT", hsm:generate("set", "ES256", "k1", "enc"))
      fails_with("ERR_INVALID_ARGUMENT", hsm:generate("set", "ES256", string.rep("k", 200)))
      fails_with("ERR_INVALID_ARGUMENT", hsm:set_id("set", "k1", string.rep("k", 200)))
    end)

    it("load_set refuses a pair it cannot use: ERR_KEY_INVALID", function()
      assert(hsm:generate("small", "RS256", "r1", "sig", 2048))
      local msg = fails_with("ERR_KEY_INVALID", hsm:load_set("small", 4096))
      assert.matches("below the minimum", msg, 1, true)
    end)

    it("an HSM key signs only with what fits it and only for sig: ERR_JWS_SIGN", function()
      assert(hsm:generate("use", "RS256", "sig1", "sig", 2048))
      assert(hsm:generate("use", "RS256", "enc1", "enc", 2048))
      local keys = assert(hsm:load_set("use", 2048))
      assert.equals(2, #keys)
      for _, key in ipairs(keys) do
        if key:use() == "enc" then
          fails_with("ERR_JWS_SIGN", key:sign("input"))
        else
          fails_with("ERR_JWS_SIGN", key:sign("input", "ES256"))
          fails_with("ERR_JWS_SIGN", key:sign_compact("e30", "payload", "EdDSA"))
        end
      end
    end)

    it("a key of a closed token: ERR_JWS_SIGN", function()
      local other = assert(open_token(softhsm.LIBRARY, token.slot, { label = token.label }))
      assert(other:login(token.pin))
      assert(other:generate("closed", "ES256", "c1"))
      local key = assert(other:load_set("closed", 2048))[1]
      assert(key:sign("input"))
      other:close()
      fails_with("ERR_JWS_SIGN", key:sign("input"))
      fails_with("ERR_JWS_SIGN", key:sign_compact("e30", "payload"))
    end)

    -- (ERR_LOGIN_REFUSED, set where C refuses to log in, is recovery_spec's)
    it("a wrong PIN, and a write without a login: the CKR names", function()
      local t = assert(open_token(softhsm.LIBRARY, fresh.slot, { label = fresh.label }))
      fails_with("CKR_PIN_INCORRECT", t:login("9999"))
      fails_with("CKR_USER_NOT_LOGGED_IN", t:generate("refused", "ES256", "k1"))
      t:close()
    end)
  end)
end)

describe("OpenSSL's random generator failing", function()
  -- An operational failure, not a programming error: random_bytes and uuid
  -- (kids, writer ids, jitter) answer nil, message, ERR_RANDOM and an
  -- engine's import passes it on, where the binding used to raise. The
  -- failure is real: OpenSSL configured with a generator that does not exist.
  it("is nil, message, ERR_RANDOM from the binding and the engine, never a raise", function()
    local dir = softhsm.tmpname() -- a file: the folder goes beside it
    os.remove(dir)
    assert(os.execute("mkdir " .. softhsm.quote(dir)))
    softhsm.write_file(dir .. "/openssl.cnf", "openssl_conf = init\n[init]\nrandom = random\n"
      .. "[random]\nrandom = NO-SUCH-DRBG\n")
    softhsm.write_file(dir .. "/child.lua", [[
local core = require("jwkengine.core")
local jwkengine = require("jwkengine")
local function show(...) print(select("#", ...), (select(3, ...))) end
show(core.random_bytes(4))
show(core.uuid())
local engine = assert(jwkengine.open({ logger = false, startup = false, environment = {
  HSM_ENABLED = "false", SECRETS_SYSTEM = "rand-child-secret-0123456789", DSN = "memory" } }))
local jwk = { kty = "EC", crv = "P-256", x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
  y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", d = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI" }
show(engine:import("s", jwk, { alg = "ES256" }))
]])
    local out, ok = softhsm.run(string.format("OPENSSL_CONF=%s %s -e %s %s", softhsm.quote(dir .. "/openssl.cnf"),
      softhsm.LUA, softhsm.quote(string.format("package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path; "
        .. "package.cpath = '%s/lib/?.so;' .. package.cpath", softhsm.BUILD)), softhsm.quote(dir .. "/child.lua")))
    os.execute("rm -rf " .. softhsm.quote(dir))
    assert.is_true(ok, out)
    assert.equals("3\tERR_RANDOM\n3\tERR_RANDOM\n3\tERR_RANDOM\n", out)
  end)
end)

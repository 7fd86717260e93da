-- About the binding (jwkengine.core): the software key class and AES-GCM sealing in C.
-- Software keys and the store's AES-GCM sealing (jwkengine.core), checked
-- against independent implementations: python3-jwcrypto verifies the
-- signatures, python3-cryptography the Hydra sealing format, and the
-- openssl command line makes the PEM files.
local core = require("jwkengine.core")
local cjson = require("cjson")
local softhsm = require("helpers.softhsm")
local refused = require("helpers.refusal").refused

local python = require("helpers.jose").python_text

local quote, write_file, read_file, run = softhsm.quote, softhsm.write_file, softhsm.read_file, softhsm.run

local JWCRYPTO_VERIFY = [=[
import json, sys
from jwcrypto import jwk, jws
doc = json.load(open(sys.argv[1]))
key = jwk.JWK(**doc["jwk"])
for token in doc["tokens"]:
    obj = jws.JWS()
    obj.allowed_algs = [doc["alg"]]
    try:
        obj.deserialize(token)
        obj.verify(key, alg=doc["alg"])
        print("valid")
    except Exception as e:
        print("invalid")
]=]

-- jwcrypto's verdict on each token: a list of "valid" / "invalid".
local function jwcrypto_verdicts(jwk, alg, tokens)
  local out = python(JWCRYPTO_VERIFY, { jwk = jwk, alg = alg, tokens = tokens })
  local verdicts = {}
  for line in out:gmatch("[^\n]+") do
    verdicts[#verdicts + 1] = line
  end
  return verdicts
end

local function header_for(alg)
  return core.b64url_encode('{"alg":"' .. alg .. '"}')
end

-- signing input, decoded signature
local function split(token)
  local input, sig = token:match("^([^.]+%.[^.]+)%.([^.]+)$")
  return input, core.b64url_decode(sig)
end

-- The token with one signature byte flipped.
local function tampered(token)
  local input, sig = split(token)
  local flipped = string.char(sig:byte(1) ~ 1) .. sig:sub(2)
  return input .. "." .. core.b64url_encode(flipped)
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = v
  end
  return c
end

local ALGS = { "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA" }

-- One key per kind and curve, made once: RSA generation is the slow part.
local keys = {}
local function key_for(alg)
  local info = core.alg_info(alg)
  local which = info.kty == "RSA" and "RSA" or info.crv
  if not keys[which] then
    keys[which] = assert(core.generate_software_key(alg, { bits = 2048 }))
  end
  return keys[which]
end

describe("software keys", function()
  describe("sign and verify", function()
    for _, alg in ipairs(ALGS) do
      it(alg .. " signs a compact JWS that both jwkengine and jwcrypto accept", function()
        local key = key_for(alg)
        assert.is_true(key:is_private())
        assert.is_true(key:fits(alg))
        local token = assert(key:sign_compact(header_for(alg), '{"sub":"alice"}', alg))
        local input, sig = split(token)
        assert.equal(header_for(alg), input:match("^[^.]+"))
        assert.equal('{"sub":"alice"}', core.b64url_decode(input:match("%.(.+)$")))

        local public = key:public_key()
        assert.is_true(public:verify(alg, input, sig))
        local bad_input, bad_sig = split(tampered(token))
        -- nil, message, code through the binding's one error exit, never false
        local ok, err, code = public:verify(alg, bad_input, bad_sig)
        assert.is_nil(ok)
        assert.is_string(err)
        assert.equals("ERR_JWS_SIGNATURE_INVALID", code)
        -- A changed payload with the original signature fails too.
        assert.is_nil(public:verify(alg, input .. "x", sig))

        local verdicts = jwcrypto_verdicts(key:public_jwk(), alg, { token, tampered(token) })
        assert.same({ "valid", "invalid" }, verdicts)
      end)
    end

    it("signs raw input with key:sign", function()
      local key = key_for("ES256")
      local sig = assert(key:sign("payload", "ES256"))
      assert.equal(64, #sig)
      assert.is_true(key:public_key():verify("ES256", "payload", sig))
    end)

    it("refuses algorithms that do not fit the key", function()
      local key = key_for("ES256")
      local ok, err, code = key:fits("ES384")
      assert.is_nil(ok)
      assert.matches("P%-384", err)
      assert.equals("ERR_KEY_USE", code)
      local token, sign_err = key:sign_compact(header_for("RS256"), "x", "RS256")
      assert.is_nil(token)
      assert.matches("does not fit", sign_err)
      assert.has_error(function() key:sign("x", "HS256") end)
      assert.has_error(function() key:sign("x", "none") end)
    end)

    it("refuses to sign with RSA keys below 2048 bits", function()
      local out, ok = run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024")
      assert(ok, out)
      local key = assert(core.import_pem(out))
      assert.equal(1024, key:bits())
      local sig, err = key:sign("x", "RS256")
      assert.is_nil(sig)
      assert.matches("below the minimum", err)
    end)

    it("refuses to sign with a public-only key", function()
      local public = assert(core.import_jwk(key_for("EdDSA"):public_jwk()))
      assert.is_false(public:is_private())
      local sig, err = public:sign("x", "EdDSA")
      assert.is_nil(sig)
      assert.matches("public only", err)
      local jwk, jwk_err = public:private_jwk()
      assert.is_nil(jwk)
      assert.is_string(jwk_err)
    end)
  end)

  describe("generation", function()
    it("makes RSA 4096 with e = 65537 by default", function()
      local key = assert(core.generate_software_key("RS256"))
      assert.equal(4096, key:bits())
      assert.equal("RSA", key:kty())
      assert.equal("AQAB", key:public_jwk().e)
    end)

    it("uses the curve of the algorithm", function()
      assert.equal("P-256", key_for("ES256"):public_jwk().crv)
      assert.equal("P-384", key_for("ES384"):public_jwk().crv)
      assert.equal("P-521", key_for("ES512"):public_jwk().crv)
      assert.same("OKP", key_for("EdDSA"):kty())
      assert.same("Ed25519", key_for("EdDSA"):public_jwk().crv)
      assert.equal(521, key_for("ES512"):bits())
    end)

    it("refuses RSA sizes out of range and unknown algorithms", function()
      refused("ERR_KEY_GENERATE", "outside", core.generate_software_key("RS256", { bits = 1024 }))
      assert.has_error(function() core.generate_software_key("HS256") end)
      -- a size from data answers (the binding never raises on bad input)
      refused("ERR_INVALID_ARGUMENT", "bits", core.generate_software_key("RS256", { bits = "big" }))
    end)
  end)

  describe("JWK import", function()
    for _, alg in ipairs({ "RS256", "ES256", "ES384", "ES512", "EdDSA" }) do
      it("round-trips a private " .. alg .. " key", function()
        local key = key_for(alg)
        local private = key:private_jwk()
        assert.is_string(private.d)
        local again = assert(core.import_jwk(private))
        assert.is_true(again:is_private())
        assert.same(key:public_jwk(), again:public_jwk())
        assert.same(private, again:private_jwk())
        local token = assert(again:sign_compact(header_for(alg), "p", alg))
        assert.is_true(key:public_key():verify(alg, split(token)))
      end)
    end

    it("exports all RSA members, CRT included", function()
      local private = key_for("RS256"):private_jwk()
      for _, name in ipairs({ "kty", "n", "e", "d", "p", "q", "dp", "dq", "qi" }) do
        assert.is_string(private[name], name)
      end
    end)

    it("signs with an RSA JWK that has no CRT members", function()
      local key = key_for("RS256")
      local private = key:private_jwk()
      private.p, private.q, private.dp, private.dq, private.qi = nil, nil, nil, nil, nil
      local bare = assert(core.import_jwk(private))
      assert.is_true(bare:is_private())
      local token = assert(bare:sign_compact(header_for("PS256"), "p", "PS256"))
      assert.is_true(key:public_key():verify("PS256", split(token)))
      assert.same({ "valid" }, jwcrypto_verdicts(key:public_jwk(), "PS256", { token }))
    end)

    it("refuses inconsistent RSA members", function()
      local private = key_for("RS256"):private_jwk()
      local other = assert(core.generate_software_key("RS256", { bits = 2048 })):private_jwk()
      local wrong_d = { kty = "RSA", n = private.n, e = private.e, d = other.d }
      refused("ERR_KEY_IMPORT", "does not match", core.import_jwk(wrong_d))
      local bad_crt = copy(private)
      bad_crt.dp = private.dq
      refused("ERR_KEY_IMPORT", "inconsistent", core.import_jwk(bad_crt))
      local partial = copy(private)
      partial.qi = nil
      refused("ERR_KEY_IMPORT", "all of p, q", core.import_jwk(partial))
    end)

    it("imports public JWKs as public-only keys", function()
      for _, alg in ipairs({ "RS256", "ES384", "EdDSA" }) do
        local public = assert(core.import_jwk(key_for(alg):public_jwk()))
        assert.is_false(public:is_private())
        assert.same(key_for(alg):public_jwk(), public:public_jwk())
      end
    end)

    it("refuses symmetric keys", function()
      assert.equal("symmetric keys (kty 'oct') are not supported",
        refused("ERR_KEY_IMPORT", nil, core.import_jwk({ kty = "oct", k = "c2VjcmV0" })))
    end)

    it("refuses an EC point that is not on the curve", function()
      local private = key_for("ES256"):private_jwk()
      local y = core.b64url_decode(private.y)
      local off = copy(private)
      off.y = core.b64url_encode(y:sub(1, -2) .. string.char(y:byte(-1) ~ 1))
      refused("ERR_KEY_IMPORT", "not on curve", core.import_jwk(off))
      off.d = nil
      refused("ERR_KEY_IMPORT", "not on curve", core.import_jwk(off))
    end)

    it("refuses an EC point that does not belong to d", function()
      local mixed = key_for("ES256"):private_jwk()
      local other = assert(core.generate_software_key("ES256")):public_jwk()
      mixed.x, mixed.y = other.x, other.y
      refused("ERR_KEY_IMPORT", "does not match the private key d", core.import_jwk(mixed))
    end)

    it("refuses an Ed25519 x that does not match d", function()
      local mixed = key_for("EdDSA"):private_jwk()
      mixed.x = assert(core.generate_software_key("EdDSA")):public_jwk().x
      assert.equal("Ed25519 public key x does not match the private key d",
        refused("ERR_KEY_IMPORT", nil, core.import_jwk(mixed)))
    end)

    it("names badly typed or encoded members", function()
      local private = key_for("ES256"):private_jwk()
      local bad = copy(private)
      bad.d = 42
      refused("ERR_KEY_IMPORT", "'d'", core.import_jwk(bad))
      bad.d = private.d .. "=" -- JOSE base64url has no padding
      refused("ERR_KEY_IMPORT", "'d' is not valid base64url", core.import_jwk(bad))
      bad.d = private.d:gsub("_", "/"):gsub("-", "+")
      if bad.d ~= private.d then
        refused("ERR_KEY_IMPORT", "'d' is not valid base64url", core.import_jwk(bad))
      end
      refused("ERR_KEY_IMPORT", "'crv' must be a string",
        core.import_jwk({ kty = "EC", crv = {}, x = private.x, y = private.y }))
      refused("ERR_KEY_IMPORT", "X25519", core.import_jwk({ kty = "OKP", crv = "X25519", x = private.x }))
    end)

    it("never puts key material in errors", function()
      local mixed = key_for("EdDSA"):private_jwk()
      local d = mixed.d
      mixed.x = assert(core.generate_software_key("EdDSA")):public_jwk().x
      local _, err = core.import_jwk(mixed)
      assert.is_nil(err:find(d, 1, true))
    end)
  end)

  describe("PEM import", function()
    local dir

    local function openssl(args)
      local out, ok = run("cd " .. quote(dir) .. " && openssl " .. args)
      assert(ok, "openssl " .. args .. ": " .. out)
    end

    local function pem(name)
      return read_file(dir .. "/" .. name)
    end

    setup(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(run("mkdir -p " .. quote(dir)))
      openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem")
      openssl("rsa -in rsa.pem -traditional -out rsa_traditional.pem")
      openssl("pkey -in rsa.pem -pubout -out rsa_public.pem")
      openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec.pem")
      openssl("ec -in ec.pem -out ec_traditional.pem")
      openssl("pkey -in ec.pem -pubout -out ec_public.pem")
      openssl("ecparam -name prime256v1 -genkey -out ec_with_params.pem")
      openssl("genpkey -algorithm ED25519 -out ed.pem")
      openssl("pkey -in ed.pem -pubout -out ed_public.pem")
      openssl("pkey -in ec.pem -aes256 -passout pass:not-used -out encrypted.pem")
      openssl("rsa -in rsa.pem -traditional -aes256 -passout pass:not-used -out encrypted_traditional.pem")
      openssl("genpkey -algorithm ED448 -out ed448.pem")
      openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1 -out secp256k1.pem")
    end)

    teardown(function()
      run("rm -rf " .. quote(dir))
    end)

    it("imports PKCS#8, traditional and SubjectPublicKeyInfo RSA keys", function()
      local pkcs8 = assert(core.import_pem(pem("rsa.pem")))
      local traditional = assert(core.import_pem(pem("rsa_traditional.pem")))
      local public = assert(core.import_pem(pem("rsa_public.pem")))
      assert.is_true(pkcs8:is_private())
      assert.is_true(traditional:is_private())
      assert.is_false(public:is_private())
      assert.equal(2048, pkcs8:bits())
      assert.same(pkcs8:public_jwk(), traditional:public_jwk())
      assert.same(pkcs8:public_jwk(), public:public_jwk())
      local token = assert(traditional:sign_compact(header_for("RS512"), "p", "RS512"))
      assert.is_true(public:public_key():verify("RS512", split(token)))
    end)

    it("imports PKCS#8, traditional and SubjectPublicKeyInfo EC keys", function()
      local pkcs8 = assert(core.import_pem(pem("ec.pem")))
      local traditional = assert(core.import_pem(pem("ec_traditional.pem")))
      local public = assert(core.import_pem(pem("ec_public.pem")))
      assert.equal("P-384", pkcs8:public_jwk().crv)
      assert.same(pkcs8:public_jwk(), traditional:public_jwk())
      assert.same(pkcs8:public_jwk(), public:public_jwk())
      local token = assert(pkcs8:sign_compact(header_for("ES384"), "p", "ES384"))
      assert.is_true(public:public_key():verify("ES384", split(token)))
      assert.same({ "valid" }, jwcrypto_verdicts(public:public_jwk(), "ES384", { token }))
    end)

    it("skips the EC PARAMETERS block of `openssl ecparam -genkey`", function()
      local key = assert(core.import_pem(pem("ec_with_params.pem")))
      assert.equal("P-256", key:public_jwk().crv)
      assert.is_true(key:is_private())
    end)

    it("imports Ed25519 keys", function()
      local private = assert(core.import_pem(pem("ed.pem")))
      local public = assert(core.import_pem(pem("ed_public.pem")))
      assert.same(private:public_jwk(), public:public_jwk())
      local token = assert(private:sign_compact(header_for("EdDSA"), "p", "EdDSA"))
      assert.is_true(public:public_key():verify("EdDSA", split(token)))
      -- PEM keys export to JWK and back.
      assert.same(private:public_jwk(), assert(core.import_jwk(private:private_jwk())):public_jwk())
    end)

    it("refuses encrypted PEM without asking for a passphrase", function()
      for _, name in ipairs({ "encrypted.pem", "encrypted_traditional.pem" }) do
        refused("ERR_KEY_IMPORT", "encrypted PEM keys are not supported", core.import_pem(pem(name)))
      end
    end)

    it("refuses other key types and curves", function()
      refused("ERR_KEY_IMPORT", "unsupported key type 'ED448'", core.import_pem(pem("ed448.pem")))
      refused("ERR_KEY_IMPORT", "unsupported EC curve", core.import_pem(pem("secp256k1.pem")))
    end)

    it("refuses text that is not one PEM key", function()
      assert.equal("no PEM key found", refused("ERR_KEY_IMPORT", nil, core.import_pem("not a key")))
      refused("ERR_KEY_IMPORT", "more than one key", core.import_pem(pem("ec.pem") .. pem("ed.pem")))
      local damaged = pem("ec.pem"):gsub("\n(....)", "\nAAAA", 1)
      refused("ERR_KEY_IMPORT", nil, core.import_pem(damaged))
    end)
  end)
end)

describe("AES-GCM sealing", function()
  local SECRET = "a-system-secret-of-some-length"
  local OLD = "an-older-rotated-system-secret"

  -- Hydra's format, recomputed with python3-cryptography: SHA-256 of the
  -- secret as key, base64url with padding of nonce || ciphertext || tag.
  local HYDRA_FORMAT = [=[
import base64, hashlib, json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
doc = json.load(open(sys.argv[1]))
key = hashlib.sha256(doc["secret"].encode()).digest()
raw = base64.urlsafe_b64decode(doc["sealed"])
print(AESGCM(key).decrypt(raw[:12], raw[12:], None).decode())
nonce = os.urandom(12)
print(base64.urlsafe_b64encode(nonce + AESGCM(key).encrypt(nonce, doc["plain"].encode(), None)).decode())
]=]

  it("round-trips and uses a fresh nonce each time", function()
    local a = assert(core.aes_gcm_seal(SECRET, '{"kty":"EC"}'))
    local b = assert(core.aes_gcm_seal(SECRET, '{"kty":"EC"}'))
    assert.not_equal(a, b)
    local plain, index = core.aes_gcm_open({ SECRET }, a)
    assert.equal('{"kty":"EC"}', plain)
    assert.equal(1, index)
  end)

  it("is byte-compatible with Hydra's aead.AESGCM", function()
    local sealed = assert(core.aes_gcm_seal(SECRET, "from jwkengine"))
    local out = python(HYDRA_FORMAT, { secret = SECRET, sealed = sealed, plain = "from python" })
    local opened_by_python, sealed_by_python = out:match("^([^\n]*)\n([^\n]*)")
    assert.equal("from jwkengine", opened_by_python)
    assert.equal("from python", (core.aes_gcm_open({ SECRET }, sealed_by_python)))
  end)

  it("fails on a tampered ciphertext", function()
    local sealed = assert(core.aes_gcm_seal(SECRET, "private key"))
    local i = #sealed // 2
    local c = sealed:sub(i, i) == "A" and "B" or "A"
    local plain, err = core.aes_gcm_open({ SECRET }, sealed:sub(1, i - 1) .. c .. sealed:sub(i + 1))
    assert.is_nil(plain)
    assert.equal("cannot decrypt: no secret matches", err)
  end)

  it("decrypts with a rotated secret and says which", function()
    local sealed = assert(core.aes_gcm_seal(OLD, "rotated"))
    local plain, index = core.aes_gcm_open({ SECRET, OLD }, sealed)
    assert.equal("rotated", plain)
    assert.equal(2, index)
    local none, err = core.aes_gcm_open({ SECRET }, sealed)
    assert.is_nil(none)
    assert.equal("cannot decrypt: no secret matches", err)
    assert.is_nil(err:find(SECRET, 1, true))
  end)

  it("reports truncated and malformed text clearly", function()
    local plain, err = core.aes_gcm_open({ SECRET }, "AAAA")
    assert.is_nil(plain)
    assert.matches("ciphertext is truncated", err)
    plain, err = core.aes_gcm_open({ SECRET }, "not base64!")
    assert.is_nil(plain)
    assert.matches("not valid base64url", err)
  end)

  it("refuses a short encryption secret", function()
    local sealed, err = core.aes_gcm_seal("short", "x")
    assert.is_nil(sealed)
    assert.matches("at least 16 bytes", err)
  end)

  it("seals a private JWK for the store and opens it back into a key", function()
    local key = key_for("ES256")
    local sealed = assert(core.aes_gcm_seal(SECRET, cjson.encode(key:private_jwk())))
    local restored = assert(core.import_jwk(cjson.decode((core.aes_gcm_open({ OLD, SECRET }, sealed)))))
    assert.same(key:public_jwk(), restored:public_jwk())
  end)
end)

describe("software keys in the engine follow the same key rules as the HSM", function()
  local jwkengine = require("jwkengine")
  local engine

  setup(function()
    engine = assert(jwkengine.open({ environment = { SECRETS_SYSTEM = "a-secret-of-24-characters", DSN = "memory" },
      logger = false, startup = false }))
    assert(engine:generate("r", "RS256", { kid = "r", rsa_bits = 2048 }))
  end)
  teardown(function() engine:close() end)


  it("signs only with the key's own alg", function()
    local err = refused("ERR_KEY_USE", nil, engine:sign("r", "x", { alg = "PS256" }))
    assert.matches("RS256", err, 1, true)
    refused("ERR_KEY_USE", nil, engine:sign_jwt("r", { sub = "a" }, { alg = "ES256" }))
    refused("ERR_UNSUPPORTED_ALG", nil, engine:sign("r", "x", { alg = "HS256" }))
    local token = assert(engine:sign("r", "x", { alg = "RS256" }))
    assert.equals("x", (engine:verify("r", token)))
  end)

  it("refuses to import an EC or Ed25519 key for use enc, as generate does", function()
    refused("ERR_INVALID_ARGUMENT", nil, engine:generate("e", "ES256", { use = "enc" }))
    local ec = assert(core.generate_software_key("ES256"))
    refused("ERR_INVALID_ARGUMENT", nil, engine:import("e", ec:private_jwk(), { use = "enc" }))
    local ed = assert(core.generate_software_key("EdDSA"))
    local jwk = ed:private_jwk()
    jwk.use = "enc"
    refused("ERR_INVALID_ARGUMENT", nil, engine:import("e", jwk))
    refused("ERR_KEY_SET_NOT_FOUND", nil, engine:key_set("e"))
  end)

  it("refuses public-only keys at import: rows hold private keys", function()
    local ec = assert(core.generate_software_key("ES256"))
    refused("ERR_KEY_NOT_PRIVATE", nil, engine:import("p", ec:public_jwk()))
    local path = os.tmpname()
    local out, ok = run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null"
      .. " | openssl pkey -pubout -out " .. quote(path))
    assert(ok, out)
    refused("ERR_KEY_NOT_PRIVATE", nil, engine:import("p", read_file(path)))
    os.remove(path)
    refused("ERR_KEY_SET_NOT_FOUND", nil, engine:key_set("p"))
  end)
end)

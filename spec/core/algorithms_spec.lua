-- About the binding (jwkengine.core): the C algorithm table and limits as the binding returns them.
-- The one algorithm table (core/alg.c, core.algorithms()) and the one set
-- of limits (core/engine_limits.h, core.limits()): checked against facts
-- that do not come from jwkengine (the openssl command line's digests, curve
-- OIDs and signatures), and every layer checked to agree with them (what
-- software and the HSM generate, what verify allows, the configuration's
-- defaults).
local core = require("jwkengine.core")
local cjson = require("cjson")
local jwkengine = require("jwkengine")
local jws = require("jwkengine.jws")
local config = require("jwkengine.config")
local softhsm = require("helpers.softhsm")

local ALGORITHMS = core.algorithms()
local LIMITS = core.limits()

local function tmpfile(data)
  local path = os.tmpname()
  softhsm.write_file(path, data)
  return path
end

local read_file = softhsm.read_file

-- Runs openssl; the output must exist.
local function openssl(args)
  local out, ok = softhsm.run("openssl " .. args)
  assert(ok, "openssl " .. args .. ": " .. out)
  return out
end

local function names(filter)
  local list = {}
  for name, info in pairs(ALGORITHMS) do
    if not filter or filter(info) then list[#list + 1] = name end
  end
  table.sort(list)
  return list
end

-- OpenSSL's name of a JOSE digest ("SHA-256" -> "sha256"), as openssl dgst takes it.
local function dgst_name(digest) return (digest:lower():gsub("-", "")) end

-- The OpenSSL group of a JWK crv, as RFC 7518 section 6.2.1.1 and SEC 2 name them.
local GROUPS = { ["P-256"] = "prime256v1", ["P-384"] = "secp384r1", ["P-521"] = "secp521r1" }

-- Dotted text of a DER OBJECT IDENTIFIER (X.690 8.19).
local function dotted_oid(der)
  assert(der:byte(1) == 0x06 and der:byte(2) == #der - 2, "not a short DER OID")
  local first = der:byte(3)
  local parts = { math.floor(first / 40), first % 40 }
  local value = 0
  for i = 4, #der do
    local b = der:byte(i)
    value = value * 128 + (b & 0x7f)
    if b < 0x80 then
      parts[#parts + 1] = value
      value = 0
    end
  end
  return table.concat(parts, ".")
end

describe("core.algorithms()", function()
  it("lists the JWS algorithms jwkengine signs with, each under its own name", function()
    assert.same({ "ES256", "ES384", "ES512", "EdDSA", "PS256", "PS384", "PS512", "RS256", "RS384",
      "RS512" }, names())
    for name, info in pairs(ALGORITHMS) do
      assert.equals(name, info.name)
      assert.same(info, core.alg_info(name))
    end
    assert.is_nil(core.alg_info("HS256"))
    assert.is_nil(core.alg_info("none"))
  end)

  it("gives digests whose names and sizes openssl dgst agrees with", function()
    local data = "jwkengine algorithm table"
    local path = tmpfile(data)
    for _, name in ipairs(names(function(info) return info.digest ~= nil end)) do
      local info = ALGORITHMS[name]
      local out = openssl(string.format("dgst -%s -hex -r %s", dgst_name(info.digest), path))
      local hex = assert(out:match("^(%x+)"), out)
      assert.equals(#hex / 2, info.digest_size, name)
      assert.equals(hex, softhsm.hex(core.digest(info.digest, data)), name)
    end
    os.remove(path)
  end)

  it("gives the DigestInfo prefix a real RSASSA-PKCS1-v1_5 signature by openssl carries", function()
    local key = os.tmpname()
    openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. key)
    local public = os.tmpname()
    openssl(string.format("pkey -in %s -pubout -out %s", key, public))
    local data = "signed by openssl"
    local data_path = tmpfile(data)
    local rs = names(function(info) return info.scheme == "RSASSA-PKCS1-v1_5" end)
    assert.same({ "RS256", "RS384", "RS512" }, rs)
    for _, name in ipairs(rs) do
      local info = ALGORITHMS[name]
      local sig, recovered = os.tmpname(), os.tmpname()
      openssl(string.format("dgst -%s -sign %s -out %s %s", dgst_name(info.digest), key, sig, data_path))
      assert.equals(2048 / 8, #read_file(sig), name)
      openssl(string.format("pkeyutl -verifyrecover -pubin -inkey %s -pkeyopt rsa_padding_mode:pkcs1 -in %s -out %s",
        public, sig, recovered))
      assert.equals(softhsm.hex(info.digest_info .. core.digest(info.digest, data)),
        softhsm.hex(read_file(recovered)), name)
      os.remove(sig)
      os.remove(recovered)
    end
    for _, path in ipairs({ key, public, data_path }) do os.remove(path) end
  end)

  it("gives PSS parameters of the same hash, salted by its size (RFC 7518 3.5)", function()
    for _, name in ipairs(names(function(info) return info.scheme == "RSASSA-PSS" end)) do
      local info = ALGORITHMS[name]
      assert.same({ hash = info.digest, mgf1 = info.digest, salt_length = info.digest_size }, info.pss)
      assert.equals("CKM_RSA_PKCS_PSS", info.mechanism)
    end
  end)

  it("gives the named-curve OIDs openssl encodes for each curve", function()
    for _, name in ipairs(names(function(info) return info.kty == "EC" end)) do
      local info = ALGORITHMS[name]
      local der = os.tmpname()
      openssl(string.format("ecparam -name %s -outform DER -out %s", GROUPS[info.crv], der))
      assert.equals(softhsm.hex(read_file(der)), softhsm.hex(info.curve_oid_der), name)
      assert.equals(dotted_oid(info.curve_oid_der), info.curve_oid, name)
      os.remove(der)
    end
    -- Ed25519: the OID in the SubjectPublicKeyInfo openssl writes (RFC 8410)
    local key, spki = os.tmpname(), os.tmpname()
    openssl("genpkey -algorithm ed25519 -out " .. key)
    openssl(string.format("pkey -in %s -pubout -outform DER -out %s", key, spki))
    local eddsa = ALGORITHMS.EdDSA
    local bytes = read_file(spki)
    assert.equals(softhsm.hex(bytes:sub(5, 4 + #eddsa.curve_oid_der)), softhsm.hex(eddsa.curve_oid_der))
    assert.equals(#bytes - 12, eddsa.public_key_size) -- SEQUENCE, AlgorithmIdentifier, BIT STRING header
    assert.equals(dotted_oid(eddsa.curve_oid_der), eddsa.curve_oid)
    os.remove(key)
    os.remove(spki)
  end)

  it("gives signature sizes that real signatures have", function()
    local rsa = assert(core.generate_software_key("RS256", { bits = 2048 }))
    for _, name in ipairs(names()) do
      local info = ALGORITHMS[name]
      local key = info.kty == "RSA" and rsa or assert(core.generate_software_key(name))
      local sig = assert(key:sign("input", name))
      assert.equals(info.signature_size or 2048 / 8, #sig, name)
      if info.kty == "EC" then
        -- R || S: two coordinates, as long as the key's uncompressed point says
        local point = core.b64url_decode(key:public_jwk().x)
        assert.equals(info.coordinate_size, #point, name)
        assert.equals(2 * #point, #sig, name)
      end
    end
    -- openssl's own Ed25519 signature
    local key, data, sig = os.tmpname(), tmpfile("ed"), os.tmpname()
    openssl("genpkey -algorithm ed25519 -out " .. key)
    openssl(string.format("pkeyutl -sign -rawin -inkey %s -in %s -out %s", key, data, sig))
    assert.equals(ALGORITHMS.EdDSA.signature_size, #read_file(sig))
    for _, path in ipairs({ key, data, sig }) do os.remove(path) end
  end)

  it("names one default alg per key type and curve, the one a key without alg signs with", function()
    local defaults = {}
    for _, name in ipairs(names(function(info) return info.default end)) do
      local info = ALGORITHMS[name]
      local which = info.crv or info.kty
      assert.is_nil(defaults[which], which)
      defaults[which] = name
      local key = assert(core.generate_software_key(name, info.kty == "RSA" and { bits = 2048 } or nil))
      local token = assert(jws.sign(key, "payload"))
      local header = cjson.decode(core.b64url_decode(token:match("^[^.]+")))
      assert.equals(name, header.alg)
    end
    assert.same({ RSA = "RS256", ["P-256"] = "ES256", ["P-384"] = "ES384", ["P-521"] = "ES512",
      Ed25519 = "EdDSA" }, defaults)
  end)
end)

-- Generates `set` with algorithm `name` on the side `generates` describes
-- (the table's software_generates or hsm_generates): a key of the table's
-- type and curve when it says so, else ERR_UNSUPPORTED_ALG. Returns the
-- JWK, or nil and the refusal's message.
local function generated_as_table_says(engine, set, name, generates)
  local info = ALGORITHMS[name]
  local jwk, err, code = engine:generate(set, name, { rsa_bits = 2048 })
  if not generates then
    assert.equals("ERR_UNSUPPORTED_ALG", code, name)
    return nil, err
  end
  assert(jwk, err)
  assert.equals(info.kty, jwk.kty, name)
  assert.equals(info.crv, jwk.crv, name)
  return jwk
end

describe("the layers agree with the algorithm table", function()
  it("software generates keys for exactly the algorithms the table says", function()
    local engine = assert(jwkengine.open({ environment = { SECRETS_SYSTEM = "a-secret-of-24-characters",
      DSN = "memory" }, logger = false, startup = false }))
    for _, name in ipairs(names()) do
      if generated_as_table_says(engine, "sw." .. name, name, ALGORITHMS[name].software_generates) then
        local token = assert(engine:sign("sw." .. name, "payload", { alg = name }))
        assert(engine:verify("sw." .. name, token, { algorithms = { name } }))
      end
    end
    local _, _, code = engine:generate("sw.x", "ES256K")
    assert.equals("ERR_UNSUPPORTED_ALG", code)
    engine:close()
  end)

  it("the HSM generates keys for exactly the algorithms the table says, each with its default alg", function()
    local token = softhsm.new_token("algorithms")
    local engine = assert(jwkengine.open({ environment = softhsm.environment(token, { HSM_MIN_RSA_BITS = "2048" }),
      logger = false, startup = false }))
    for _, name in ipairs(names()) do
      local info = ALGORITHMS[name]
      local jwk, err = generated_as_table_says(engine, "hsm." .. name, name, info.hsm_generates)
      if jwk then
        -- the token's key is read back with the alg its type and curve
        -- imply, or, for PS*, its PSS-only CKA_ALLOWED_MECHANISMS
        assert.equals(name, jwk.alg, name)
        assert.is_true(info.default or info.scheme == "RSASSA-PSS", name)
        local signed = assert(engine:sign("hsm." .. name, "payload"))
        local sig = core.b64url_decode(signed:match("[^.]+$"))
        assert.equals(info.signature_size or 2048 / 8, #sig, name)
      else
        -- the message lists the table's algorithms, never a list of its own
        local listed = table.concat(names(function(i) return i.hsm_generates end), ", ")
        assert.matches("(" .. listed .. ")", err, 1, true)
      end
    end
    engine:close()
  end)

  it("verify allows every algorithm of the table and nothing else", function()
    for _, name in ipairs(names()) do
      local ok, err = pcall(jws.verify, "a.b.c", { keys = {} }, { algorithms = { name } })
      assert(ok, err)
    end
    local ok, err = pcall(jws.verify, "a.b.c", { keys = {} }, { algorithms = { "ES256K" } })
    assert.is_false(ok)
    assert.matches("unknown algorithm 'ES256K'", err, 1, true)
  end)
end)

describe("core.limits()", function()
  it("is what the configuration, verify and the store apply", function()
    local cfg = assert(config.load({ environment = {} }))
    assert.equals(LIMITS.hsm_min_rsa_bits, cfg.hsm.min_rsa_bits)
    assert.equals(LIMITS.max_sessions, cfg.hsm.max_sessions)
    assert.equals(LIMITS.session_wait_ms, cfg.hsm.session_wait_ms)
    assert.equals(LIMITS.reinit_interval_ms, cfg.hsm.reinit_interval_ms)
    assert.equals(LIMITS.rsa_min_bits, jws.MIN_RSA_BITS)
    assert.equals(LIMITS.min_secret_length, config.MIN_SECRET_LENGTH)
    assert.is_true(LIMITS.rsa_min_bits < LIMITS.rsa_generate_bits and LIMITS.rsa_generate_bits <= LIMITS.rsa_max_bits)

    -- the secret minimum holds in C too
    local short = string.rep("s", LIMITS.min_secret_length - 1)
    assert.is_nil(core.aes_gcm_seal(short, "x"))
    assert(core.aes_gcm_seal(short .. "s", "x"))

    -- the RSA floor: a key one step under it neither signs nor generates
    assert.is_nil(core.generate_software_key("RS256", { bits = LIMITS.rsa_min_bits - 8 }))
    local key = assert(core.generate_software_key("RS256", { bits = LIMITS.rsa_min_bits }))
    assert(key:sign("x", "RS256"))
    -- and a generated key without a size has the default one
    assert.equals(LIMITS.rsa_generate_bits, #core.b64url_decode(
      assert(core.generate_software_key("RS256")):public_jwk().n) * 8)
  end)
end)

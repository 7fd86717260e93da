-- The engine core against a real SoftHSM token: mapping pkcs11-tool keys to
-- JWKs, generation, prefixes, slot choice, startup, signing and errors.
local jwkengine = require("jwkengine")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")
local refused = require("helpers.refusal").refused
local refused_keeping = require("helpers.refusal").refused_keeping

local function hex_of_b64url(s)
  return softhsm.hex(assert(jwkengine.b64url_decode(s)))
end

-- The public key the token reports, through pkcs11-tool and openssl: the
-- hex of the EC point / Ed25519 key, or of the RSA modulus.
local function token_public_hex(token, label, kind)
  local path = os.tmpname()
  softhsm.pkcs11_tool_ok(token, string.format(
    "--read-object --type pubkey --label %s -o %s", softhsm.quote(label), path))
  if kind == "RSA" then
    local out = softhsm.run(string.format("openssl rsa -pubin -inform DER -in %s -modulus -noout", path))
    os.remove(path)
    return (out:match("Modulus=(%x+)")):lower()
  end
  -- pkcs11-tool writes EC keys as DER and Ed25519 keys as PEM
  local out = softhsm.run(string.format(
    "openssl pkey -pubin -inform DER -in %s -text -noout 2>/dev/null || openssl pkey -pubin -in %s -text -noout",
    path, path))
  os.remove(path)
  local block = assert(out:match("pub:%s*(.-)\n%S") or out:match("pub:%s*(.*)$"), out)
  return (block:gsub("[%s:]", ""))
end

local function open_engine(token, extra, options)
  return softhsm.open_engine(softhsm.environment(token, extra), options)
end

describe("engine core on SoftHSM", function()
  local token, engine

  setup(function()
    token = softhsm.new_token("core")
    engine = assert(open_engine(token))
  end)

  teardown(function()
    engine:close()
  end)

  it("maps the documented pkcs11-tool RSA example to kid test-key-id, RS256, sig", function()
    softhsm.pkcs11_tool_ok(token,
      "--keypairgen --key-type rsa:4096 --usage-sign --label hydra.openid.id-token --id 746573742d6b65792d6964")
    -- SoftHSM also sets CKA_DECRYPT on such a pair: that is what makes this a real test
    local listing = softhsm.pkcs11_tool(token, "--list-objects --type privkey --label hydra.openid.id-token")
    assert.matches("decrypt", listing)

    local jwks = assert(engine:key_set("hydra.openid.id-token"))
    assert.equals(1, #jwks.keys)
    local jwk = jwks.keys[1]
    assert.equals("test-key-id", jwk.kid)
    assert.equals("RS256", jwk.alg)
    assert.equals("sig", jwk.use)
    assert.equals("RSA", jwk.kty)
    assert.equals("AQAB", jwk.e)
    assert.equals(token_public_hex(token, "hydra.openid.id-token", "RSA"), hex_of_b64url(jwk.n))
    assert.is_nil(jwk.d)
  end)

  for _, case in ipairs({
    { key_type = "EC:prime256v1", alg = "ES256", crv = "P-256", size = 32, id = "01" },
    { key_type = "EC:secp521r1", alg = "ES512", crv = "P-521", size = 66, id = "02" },
    { key_type = "EC:edwards25519", alg = "EdDSA", crv = "Ed25519", size = 32, id = "03" },
  }) do
    it("maps a pkcs11-tool " .. case.key_type .. " pair to " .. case.alg, function()
      local label = "tool-" .. case.alg
      softhsm.pkcs11_tool_ok(token, string.format(
        "--keypairgen --key-type %s --usage-sign --label %s --id %s", case.key_type, label, case.id))
      local jwk = assert(engine:key_set(label)).keys[1]
      assert.equals(case.alg, jwk.alg)
      assert.equals(case.crv, jwk.crv)
      assert.equals("sig", jwk.use)
      assert.equals(string.char(tonumber(case.id, 16)), jwk.kid)
      local reported = token_public_hex(token, label, "EC")
      if case.alg == "EdDSA" then
        assert.equals("OKP", jwk.kty)
        assert.is_nil(jwk.y)
        assert.equals(reported, hex_of_b64url(jwk.x))
      else
        assert.equals("EC", jwk.kty)
        assert.equals(case.size, #jwkengine.b64url_decode(jwk.x))
        assert.equals(reported, "04" .. hex_of_b64url(jwk.x) .. hex_of_b64url(jwk.y))
      end
      -- and it signs: the token's key, our verifier and jwcrypto agree
      local jwt = assert(engine:sign_jwt(label, { sub = "tool" }))
      assert.truthy(engine:verify(label, jwt))
      assert.is_true((verifier.jwcrypto(engine:key_set_json(label), jwt)))
    end)
  end

  it("maps a pair generated with use enc to enc and refuses to sign with it", function()
    local jwk = assert(engine:generate("encryption", "RS256", { use = "enc", kid = "enc-1", rsa_bits = 4096 }))
    assert.equals("enc", jwk.use)
    local listing = softhsm.pkcs11_tool(token, "--list-objects --type privkey --label encryption")
    assert.matches("Usage:%s+decrypt\n", listing)
    local jws, err = engine:sign("encryption", "payload", { kid = "enc-1" })
    assert.is_nil(jws)
    assert.matches("encryption key", err)
  end)

  it("generates private keys that are sensitive, private and not extractable", function()
    for _, alg in ipairs({ "RS256", "ES256", "ES512", "EdDSA" }) do
      local jwk = assert(engine:generate("attrs-" .. alg, alg, { kid = "k-" .. alg }))
      assert.equals("k-" .. alg, jwk.kid)
      local listing = softhsm.pkcs11_tool(token, "--list-objects --type privkey --label attrs-" .. alg)
      assert.matches("Access:%s+sensitive, always sensitive, never extractable, local", listing)
      assert.matches("Usage:%s+sign\n", listing)
      -- CKA_PRIVATE: without logging in the private half is invisible
      local anonymous = softhsm.run(string.format(
        "pkcs11-tool --module %s --token-label %s --list-objects --type privkey",
        softhsm.LIBRARY, softhsm.quote(token.label)))
      assert.not_matches("attrs%-" .. alg, anonymous)
    end
  end)

  it("gives generated keys a random UUID kid when none is given", function()
    local a = assert(engine:generate("uuid-set", "ES256"))
    assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x+$", a.kid)
    assert.equals(36, #a.kid)
  end)

  for _, alg in ipairs({ "RS256", "ES256", "ES512", "EdDSA" }) do
    it("signs " .. alg .. " JWS that our verifier and jwcrypto accept, and both reject tampering", function()
      local set = "sign-" .. alg
      assert(engine:generate(set, alg, { kid = "kid-" .. alg }))
      local jws = assert(engine:sign(set, "hello " .. alg, { typ = "JOSE" }))
      local payload, header = engine:verify(set, jws)
      assert.equals("hello " .. alg, payload)
      assert.same({ alg = alg, kid = "kid-" .. alg, typ = "JOSE" }, header)

      local jwks = engine:key_set_json(set)
      local ok, out = verifier.jwcrypto(jwks, jws)
      assert.is_true(ok, out)
      assert.matches("hello " .. alg, out)

      -- flip one bit of the payload's first character
      local dot = jws:find(".", 1, true)
      local c = jws:sub(dot + 1, dot + 1)
      local tampered = jws:sub(1, dot) .. (c == "a" and "b" or "a") .. jws:sub(dot + 2)
      local bad, err, code = engine:verify(set, tampered)
      assert.is_nil(bad)
      assert.equals("ERR_JWS_SIGNATURE_INVALID", code, err)
      assert.is_false((verifier.jwcrypto(jwks, tampered)))
    end)
  end

  it("keeps signing with the current key when a second key is added, which is next until prepublish", function()
    assert(engine:generate("multi", "ES256", { kid = "one" }))
    assert(engine:sign("multi", "x")) -- "one" is seen alone: current
    assert(engine:generate("multi", "ES256", { kid = "two" }))
    local _, header = assert(engine:verify("multi", assert(engine:sign("multi", "x"))))
    assert.equals("one", header.kid)
    assert.equals(2, #assert(engine:key_set("multi")).keys)
    local _, err, code = engine:sign("multi", "x", { kid = "two" })
    assert.equals("ERR_KEY_STATE", code, err)
    assert.matches("is next", err, 1, true)
    local jws = assert(engine:sign("multi", "x", { kid = "one" }))
    _, header = assert(engine:verify("multi", jws))
    assert.equals("one", header.kid)
  end)

  it("signs with whatever typ the caller names, however many (the header cache is bounded)", function()
    assert(engine:generate("typs", "ES256", { kid = "t" }))
    for i = 1, 40 do
      local _, header = assert(engine:verify("typs", assert(engine:sign("typs", "x", { typ = "t" .. i }))))
      assert.equals("t" .. i, header.typ)
    end
    for _, typ in ipairs({ "count", "t1", "t40", "JWT" }) do
      local _, header = assert(engine:verify("typs", assert(engine:sign("typs", "x", { typ = typ }))))
      assert.equals(typ, header.typ)
    end
  end)

  it("refuses to generate a second pair with a kid the set already has", function()
    assert(engine:generate("dup", "ES256", { kid = "same" }))
    local jwk, err, code = engine:generate("dup", "ES256", { kid = "same" })
    assert.is_nil(jwk)
    assert.equals("ERR_KEY_EXISTS", code)
    assert.matches("key 'same' already exists", err, 1, true)
    assert.equals(1, #assert(engine:key_set("dup")).keys)
  end)

  it("deletes one key and then the whole set", function()
    assert(engine:generate("doomed", "ES256", { kid = "a" }))
    assert(engine:generate("doomed", "ES256", { kid = "b" }))
    -- a is current, b next: either is refused without force
    local refused_ok, _, refused_code = engine:delete("doomed", "a")
    assert.is_nil(refused_ok)
    assert.equals("ERR_KEY_STATE", refused_code)
    assert.is_true(engine:delete("doomed", "a", { force = true }))
    local jwks = assert(engine:key_set("doomed"))
    assert.equals(1, #jwks.keys)
    assert.equals("b", jwks.keys[1].kid)
    assert.is_true(engine:delete("doomed"))
    local none, _, code = engine:key_set("doomed")
    assert.is_nil(none)
    assert.equals("ERR_KEY_SET_NOT_FOUND", code)
    local _, _, code2 = engine:delete("doomed")
    assert.equals("ERR_KEY_SET_NOT_FOUND", code2)
  end)

  it("refuses to generate an RSA key below the minimum it would then refuse to load", function()
    local jwk, err, code = engine:generate("too-small", "RS256", { rsa_bits = 2048 })
    assert.is_nil(jwk)
    assert.equals("ERR_INVALID_ARGUMENT", code)
    assert.matches("below hsm.min_rsa_bits %(4096%)", err)
    assert.not_matches("too%-small", (softhsm.pkcs11_tool(token, "--list-objects")))
  end)

  it("refuses an unsupported algorithm with a clear error", function()
    local jwk, err, code = engine:generate("bad-alg", "HS256")
    assert.is_nil(jwk)
    assert.equals("ERR_UNSUPPORTED_ALG", code)
    assert.matches("HS256", err)
  end)

  it("refuses an RSA-2048 pair under the default minimum, and accepts it when lowered", function()
    softhsm.pkcs11_tool_ok(token,
      "--keypairgen --key-type rsa:2048 --usage-sign --label small-rsa --id 0a")
    local jwks, err = engine:key_set("small-rsa")
    assert.is_nil(jwks)
    assert.matches("2048 bits is below the minimum of 4096", err)
    engine:close()
    engine = assert(open_engine(token, { HSM_MIN_RSA_BITS = "2048" }))
    jwks = assert(engine:key_set("small-rsa"))
    assert.equals("RS256", jwks.keys[1].alg)
  end)

  it("publishes an unprintable CKA_ID as its bytes (Hydra's rule) and warns once", function()
    softhsm.pkcs11_tool_ok(token, "--keypairgen --key-type EC:prime256v1 --usage-sign "
      .. "--label control-kid --id 02")
    local lines = {}
    local e = assert(open_engine(token, nil,
      { logger = function(level, message) lines[#lines + 1] = level .. " " .. message end }))
    local set = assert(e:key_set("control-kid"))
    assert.equals("\2", set.keys[1].kid)
    assert.equals('{"keys":[' , e:key_set_json("control-kid"):sub(1, 9))
    assert.matches('"kid":"\\u0002"', e:key_set_json("control-kid"), 1, true)
    local warnings = {}
    for _, line in ipairs(lines) do
      if line:find("not printable", 1, true) then warnings[#warnings + 1] = line end
    end
    assert.equals(1, #warnings)
    assert.matches("^warn key set 'control%-kid': a kid is not printable ASCII %(CKA_ID 02%)", warnings[1])
    -- a reload of the set does not say it again
    e:refresh("control-kid")
    assert(e:key_set("control-kid"))
    local again = 0
    for _, line in ipairs(lines) do
      if line:find("not printable", 1, true) then again = again + 1 end
    end
    assert.equals(1, again)
    -- verify names the key that verified (README: payload, header, key)
    local jws = assert(e:sign("control-kid", "payload"))
    local payload, header, key = e:verify("control-kid", jws)
    assert.equals("payload", payload)
    assert.equals("\2", header.kid)
    assert.equals("\2", key.kid)
    assert.equals("ES256", key.alg)
    e:close()
  end)

  it("reports a set whose private half has no public half", function()
    softhsm.pkcs11_tool_ok(token,
      "--keypairgen --key-type EC:prime256v1 --usage-sign --label lonely --id 0b")
    softhsm.pkcs11_tool_ok(token, "--delete-object --type pubkey --label lonely")
    local jwks, err = engine:key_set("lonely")
    assert.is_nil(jwks)
    assert.matches("private half but no public half", err)
  end)

  -- Another process making (or renaming) a pair shows one half of it for a
  -- moment. When this process has just changed the set, its next read may
  -- meet that half: it signs with the keys it had, says so, and an
  -- explicit refresh still reports the set as it is.
  it("signs with the keys it had when the read after its own change meets a half-made pair", function()
    local lines = {}
    local e = assert(open_engine(token, nil, { logger = function(level, message)
      lines[#lines + 1] = level .. " " .. message
    end }))
    assert(e:generate("halfway", "ES256", { kid = "first" }))
    assert(e:sign("halfway", "x"))
    -- the other process's pair, caught between its two halves
    softhsm.pkcs11_tool_ok(token,
      "--keypairgen --key-type EC:prime256v1 --usage-sign --label halfway --id 0c")
    softhsm.pkcs11_tool_ok(token, "--delete-object --type pubkey --label halfway --id 0c")
    -- this process's change: a second key of its own
    assert(e:generate("halfway", "ES256", { kid = "second" }))
    local jws = assert(e:sign("halfway", "x"))
    local _, header = assert(e:verify("halfway", jws))
    assert.equals("first", header.kid)
    local warned = false
    for _, line in ipairs(lines) do
      if line:find("^warn key set 'halfway': .*private half but no public half.*the keys read before go on signing") then
        warned = true
      end
    end
    assert.is_true(warned, table.concat(lines, "\n"))
    -- the keys it had are not read again per signature: one warning
    assert(e:sign("halfway", "x"))
    local count = 0
    for _, line in ipairs(lines) do
      if line:find("go on signing", 1, true) then count = count + 1 end
    end
    assert.equals(1, count)
    -- an explicit refresh forgets them, and the set's state is reported
    assert(e:refresh("halfway"))
    local signed, err = e:sign("halfway", "x")
    assert.is_nil(signed)
    assert.matches("private half but no public half", err)
    e:close()
  end)
end)

describe("key set prefix", function()
  it("stores sets as prefix..set on the token while callers see the set name", function()
    local token = softhsm.new_token("prefix")
    local engine = assert(open_engine(token, { HSM_KEY_SET_PREFIX = "app1." }))
    local jwk = assert(engine:generate("hydra.jwt.access-token", "ES256", { kid = "p1" }))
    assert.equals("p1", jwk.kid)
    local listing = softhsm.pkcs11_tool(token, "--list-objects")
    assert.matches("label:%s+app1%.hydra%.jwt%.access%-token", listing)
    assert.not_matches("label:%s+hydra%.jwt%.access%-token", listing)
    assert.equals("p1", assert(engine:key_set("hydra.jwt.access-token")).keys[1].kid)
    engine:close()

    -- without the prefix, the same engine sees nothing
    local plain = assert(open_engine(token))
    refused("ERR_KEY_SET_NOT_FOUND", nil, plain:key_set("hydra.jwt.access-token"))
    plain:close()
  end)
end)

describe("token choice", function()
  it("uses the token label over the slot when both are set, with two tokens present", function()
    local first = softhsm.new_token("first")
    local second = softhsm.new_token("second")
    -- mark each token with a set of its own
    softhsm.pkcs11_tool_ok(first,
      "--keypairgen --key-type EC:prime256v1 --label marker --id 01")
    softhsm.pkcs11_tool_ok(second,
      "--keypairgen --key-type EC:prime256v1 --label marker --id 02")

    local engine = assert(open_engine(second, { HSM_SLOT = tostring(first.slot) }))
    assert.equals("\2", assert(engine:key_set("marker")).keys[1].kid)
    engine:close()

    -- with no label, the slot decides
    local env = softhsm.environment(first, { HSM_SLOT = tostring(first.slot) })
    env.HSM_TOKEN_LABEL = nil
    engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))
    assert.equals("\1", assert(engine:key_set("marker")).keys[1].kid)
    engine:close()
  end)
end)

describe("PKCS#11 URIs", function()
  it("names token, module and PIN by an RFC 7512 URI, and picks a token by its serial", function()
    local token = softhsm.new_token("uri")
    local serial
    for _, slot in ipairs(assert(jwkengine.slots(softhsm.LIBRARY))) do
      if slot.label == token.label then serial = slot.serial end
    end
    local uri = string.format("pkcs11:serial=%s?module-path=%s&pin-value=%s", serial, softhsm.LIBRARY, token.pin)
    local engine = assert(jwkengine.open({ environment = { HSM_ENABLED = "true", HSM_URI = uri },
      logger = false, startup = false }))
    assert(engine:generate("by-uri", "ES256", { kid = "u" }))
    engine:close()
    assert.matches("label:%s+by%-uri", (softhsm.pkcs11_tool(token, "--list-objects")))

    engine = assert(jwkengine.open({ environment = { HSM_ENABLED = "true", HSM_URI = uri },
      logger = false, startup = false }))
    -- the PIN the URI carried is not kept in the engine's configuration
    local hsm_config = engine:configuration().hsm
    assert.not_matches("pin%-value=" .. token.pin, hsm_config.uri)
    assert.is_nil(hsm_config.pin)
    engine:close()

    local missing, err, code = jwkengine.open({ environment = { HSM_ENABLED = "true",
      HSM_URI = "pkcs11:serial=ffffffffffffffff?module-path=" .. softhsm.LIBRARY .. "&pin-value=1234" },
      logger = false, startup = false })
    assert.is_nil(missing)
    assert.equals("ERR_TOKEN_NOT_FOUND", code)
    assert.matches("no token with serial 'ffffffffffffffff'", err, 1, true)
  end)
end)

describe("startup generation", function()
  it("creates both default sets on an empty token and nothing on a second start", function()
    local token = softhsm.new_token("startup")
    local lines = {}
    local function logger(level, message) lines[#lines + 1] = message end
    local engine = assert(open_engine(token, nil, { logger = logger, startup = true }))
    assert.same({
      "Hardware Security Module is configured.",
      "JSON Web Key Set 'hydra.openid.id-token' doesn't exist yet, generating new key pair...",
      "JSON Web Key Set 'hydra.jwt.access-token' doesn't exist yet, generating new key pair...",
    }, lines)
    for _, set in ipairs({ "hydra.openid.id-token", "hydra.jwt.access-token" }) do
      local jwks = assert(engine:key_set(set))
      assert.equals(1, #jwks.keys)
      assert.equals("RS256", jwks.keys[1].alg)
      assert.equals(4096, #jwkengine.b64url_decode(jwks.keys[1].n) * 8)
    end
    engine:close()

    lines = {}
    engine = assert(open_engine(token, nil, { logger = logger, startup = true }))
    assert.same({ "Hardware Security Module is configured." }, lines)
    local listing = softhsm.pkcs11_tool(token, "--list-objects --type privkey")
    local _, count = listing:gsub("Private Key Object", "")
    assert.equals(2, count)
    engine:close()
  end)

  it("generates startup sets with the configured algorithm", function()
    local token = softhsm.new_token("startup-alg")
    local engine = assert(open_engine(token, nil, { startup = true,
      startup_sets = { { set = "edge", alg = "EdDSA" } } }))
    assert.equals("EdDSA", assert(engine:key_set("edge")).keys[1].alg)
    engine:close()
  end)
end)

describe("clear errors", function()
  local token
  setup(function() token = softhsm.new_token("errors") end)

  it("names a missing module file", function()
    local engine, err = open_engine(token, { HSM_LIBRARY = "/nonexistent/libpkcs11.so" })
    assert.is_nil(engine)
    assert.matches("PKCS#11 module '/nonexistent/libpkcs11.so' cannot be read", err, 1, true)
  end)

  it("names an unknown token label and lists the tokens present", function()
    local err = refused("ERR_TOKEN_NOT_FOUND", "no token with label 'no-such-token'",
      open_engine(token, { HSM_TOKEN_LABEL = "no-such-token" }))
    assert.matches(token.label, err, 1, true)
  end)

  -- issue 21: nginx's worker (user nobody) and a token folder root owns
  -- showed only "no token with label ... (tokens present: '' in slot 0)"
  it("names the likely cause and the fix when the token's files are not readable by the process's user", function()
    local unreadable = require("helpers.unreadable_token")
    local t = unreadable.new("unreadable", pending)
    if not t then return end
    local chunk = string.format([[
local e, err, code = require("jwkengine").open({ startup = false, logger = false, environment = {
  HSM_ENABLED = "true", HSM_LIBRARY = %q, HSM_TOKEN_LABEL = %q, HSM_PIN = %q } })
print(e and "opened" or (tostring(code) .. " " .. tostring(err)))
]], softhsm.LIBRARY, t.label, unreadable.PIN)
    local as_nobody = unreadable.run_lua(t, chunk)
    local as_root = unreadable.run_lua(t, chunk, true)
    -- a token folder nobody may not even enter: SoftHSM fails C_Initialize
    assert(os.execute("chmod 700 " .. softhsm.quote(t.dir .. "/tokens")))
    local no_entry = unreadable.run_lua(t, chunk)
    unreadable.remove(t)
    assert.matches("C_Initialize: CKR_GENERAL_ERROR (a module answers so when it cannot read its own " ..
      "configuration or files, SoftHSM among them: check that this process's user (nobody (uid 65534)) can " ..
      "read the file SOFTHSM2_CONF names", no_entry, 1, true)
    assert.matches("^opened", as_root) -- the token is there and opens (the check below can fail)
    assert.matches("ERR_TOKEN_NOT_FOUND no token with label 'unreadable' (tokens present: '' in slot",
      as_nobody, 1, true)
    assert.matches("shows an empty, uninitialized token: if the token exists, this process's user " ..
      "(nobody (uid 65534)) probably cannot read its files", as_nobody, 1, true)
    assert.matches("SOFTHSM2_CONF", as_nobody, 1, true)
  end)

  it("says CKR_PIN_INCORRECT for a wrong PIN and never shows the PIN", function()
    local err = refused_keeping("98765", "CKR_PIN_INCORRECT", nil, open_engine(token, { HSM_PIN = "98765" }))
    assert.equals("C_Login: CKR_PIN_INCORRECT", err)
  end)

  it("refuses a wrong PIN even while another engine is logged in", function()
    local good = assert(open_engine(token))
    local engine, err, code = open_engine(token, { HSM_PIN = "98765" })
    good:close()
    refused_keeping("98765", "CKR_PIN_INCORRECT", "PIN", engine, err, code)
  end)

  it("rejects a malformed setting and names it", function()
    refused("ERR_CONFIG", "HSM_SLOT must be a non-negative integer", open_engine(token, { HSM_SLOT = "first" }))
  end)
end)

describe("a code on every failure", function()
  local token, engine
  setup(function()
    token = softhsm.new_token("codes")
    engine = assert(open_engine(token, { HSM_MIN_RSA_BITS = "2048" }))
    assert(engine:generate("rsa", "RS256", { kid = "r", rsa_bits = 2048 }))
    assert(engine:generate("ec", "ES256", { kid = "e" }))
  end)
  teardown(function() engine:close() end)


  it("says ERR_CONFIG for a module file that is missing, not loadable, or not PKCS#11", function()
    local not_a_library = os.tmpname()
    softhsm.write_file(not_a_library, "not a shared object")
    -- a real shared object without C_GetFunctionList
    local other_library = assert(package.searchpath("cjson", package.cpath))
    for _, library in ipairs({ "/nonexistent/libpkcs11.so", not_a_library, other_library }) do
      local err = refused("ERR_CONFIG", nil, open_engine(token, { HSM_LIBRARY = library }))
      assert.matches(library, err, 1, true)
      refused("ERR_CONFIG", nil, jwkengine.slots(library))
    end
    os.remove(not_a_library)
  end)

  it("says ERR_CONFIG for a PIN file that is missing, empty or over 255 bytes, never showing it", function()
    local empty, long = os.tmpname(), os.tmpname()
    softhsm.write_file(empty, "\n")
    softhsm.write_file(long, string.rep("7", 300))
    for _, path in ipairs({ "/nonexistent/pin", empty, long }) do
      local environment = softhsm.environment(token, { HSM_PIN_FILE = path })
      environment.HSM_PIN = nil
      local err = refused("ERR_CONFIG", nil, jwkengine.open({ environment = environment, logger = false,
        startup = false }))
      assert.matches(path, err, 1, true)
      assert.not_matches("7777", err)
    end
    os.remove(empty)
    os.remove(long)
  end)

  it("refuses an empty HSM_PIN as a configuration error", function()
    local err = refused("ERR_CONFIG", nil, open_engine(token, { HSM_PIN = "" }))
    assert.matches("HSM_PIN", err, 1, true)
  end)

  it("signs with a key's own alg only, on sign, sign_jwt and jws.sign", function()
    refused("ERR_KEY_USE", nil, engine:sign("rsa", "x", { alg = "ES256" }))
    refused("ERR_KEY_USE", nil, engine:sign("rsa", "x", { alg = "PS256" }))
    refused("ERR_KEY_USE", nil, engine:sign_jwt("rsa", { sub = "a" }, { alg = "ES256" }))
    refused("ERR_KEY_USE", nil, engine:sign("ec", "x", { alg = "ES384" }))
    local key = assert(engine:signing_key("rsa"))
    refused("ERR_KEY_USE", nil, jwkengine.jws.sign(key, "x", { alg = "PS256" }))
    local token_rs = assert(engine:sign("rsa", "x", { alg = "RS256" }))
    assert.equals("x", (engine:verify("rsa", token_rs)))
  end)

  it("says ERR_UNSUPPORTED_ALG for an HMAC alg instead of raising", function()
    refused("ERR_UNSUPPORTED_ALG", nil, engine:sign("rsa", "x", { alg = "HS256" }))
    refused("ERR_UNSUPPORTED_ALG", nil, engine:sign_jwt("rsa", { sub = "a" }, { alg = "none" }))
  end)

  it("says ERR_TOKEN_NOT_FOUND when select_slot chooses nothing", function()
    refused("ERR_TOKEN_NOT_FOUND", nil, open_engine(token, nil, { select_slot = function() return nil end }))
  end)

  it("hands select_slot the settings without the PIN, and refuses what is not one of its slots", function()
    local seen
    local err = refused("ERR_INVALID_ARGUMENT", nil, open_engine(token, nil, { select_slot = function(list, hsm)
      seen = hsm
      for _, slot in ipairs(list) do
        if slot.label == token.label then return slot.id end
      end
    end }))
    assert.matches("one of the slot tables", err, 1, true)
    assert.is_nil(seen.pin)
    assert.equals(token.label, seen.token_label)
    local chosen = assert(open_engine(token, { HSM_MIN_RSA_BITS = "2048" }, { select_slot = function(list)
      for _, slot in ipairs(list) do
        if slot.label == token.label then return slot end
      end
    end }))
    assert.equals("r", assert(chosen:key("rsa", "r")).kid)
    chosen:close()
  end)

  it("answers ERR_CLOSED after close instead of raising", function()
    local closed = assert(open_engine(token))
    closed:close()
    refused("ERR_CLOSED", nil, closed:sign("rsa", "x"))
    refused("ERR_CLOSED", nil, closed:sign_jwt("rsa", { sub = "a" }))
    refused("ERR_CLOSED", nil, closed:key_set("rsa"))
    refused("ERR_CLOSED", nil, closed:key_set_json("rsa"))
    refused("ERR_CLOSED", nil, closed:verify("rsa", "a.b.c"))
    refused("ERR_CLOSED", nil, closed:generate("rsa", "ES256"))
    closed:close() -- twice is harmless
  end)
end)

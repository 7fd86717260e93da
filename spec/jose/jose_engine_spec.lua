-- The JOSE layer through the engine: sign_jwt / verify_jwt with claim
-- checks on HSM keys, thumbprints of a set's keys, and thumbprints as the
-- kid of new software and HSM keys.
local jwkengine = require("jwkengine")
local helper = require("helpers.jose")
local softhsm = require("helpers.softhsm")

local SECRET = "jose-engine-spec-secret-0123456789abcdef"

describe("JOSE through the engine", function()
  local hsm_engine, sw_engine, db, token

  setup(function()
    token = softhsm.new_token("jose-engine")
    hsm_engine = assert(jwkengine.open({ environment = softhsm.environment(token), logger = false, startup = false }))
    assert(hsm_engine:generate("jose.es256", "ES256", { kid = "e1" }))
    assert(hsm_engine:generate("jose.eddsa", "EdDSA", { kid = "d1" }))
    db = os.tmpname() .. ".sqlite"
    sw_engine = assert(jwkengine.open({ environment = { SECRETS_SYSTEM = SECRET, DSN = "sqlite://" .. db },
      logger = false, startup = false }))
  end)

  teardown(function()
    if hsm_engine then hsm_engine:close() end
    if sw_engine then sw_engine:close() end
    os.remove(db)
  end)

  it("signs and verifies JWTs with the claim checks, allowing the set's own algorithms", function()
    local now = os.time()
    local token = assert(hsm_engine:sign_jwt("jose.es256", { sub = "alice" },
      { lifetime = 60, issuer = "https://issuer.example", audience = "api", now = now }))
    local claims, header = hsm_engine:verify_jwt("jose.es256", token,
      { issuer = "https://issuer.example", audience = "api", typ = "JWT", now = now + 1 })
    assert.is_table(claims, header)
    assert.equals("alice", claims.sub)
    assert.equals(now + 60, claims.exp)
    assert.equals("e1", header.kid)

    local ok, _, code = hsm_engine:verify_jwt("jose.es256", token, { now = now + 60 })
    assert.is_nil(ok)
    assert.equals("ERR_JWT_EXPIRED", code)
    ok, _, code = hsm_engine:verify_jwt("jose.es256", token, { audience = "other", now = now })
    assert.is_nil(ok)
    assert.equals("ERR_JWT_AUDIENCE_MISMATCH", code)
    -- another set's keys do not verify it, and its algorithm is not theirs
    ok, _, code = hsm_engine:verify_jwt("jose.eddsa", token, { now = now })
    assert.is_nil(ok)
    assert.equals("ERR_JOSE_ALG_NOT_ALLOWED", code)
    ok, _, code = hsm_engine:verify_jwt("jose.eddsa", token, { now = now, algorithms = { "ES256", "EdDSA" } })
    assert.is_nil(ok)
    assert.equals("ERR_JWKS_NO_MATCHING_KEY", code)
  end)

  it("round-trips with the defaults: sign_jwt without options gives exp, and a caller's exp is kept", function()
    for _, engine_set in ipairs({ { hsm_engine, "jose.es256" }, { sw_engine, "jose.default" } }) do
      local engine, set = engine_set[1], engine_set[2]
      if engine == sw_engine then assert(engine:generate(set, "ES256", { kid = "s1" })) end
      local before = os.time()
      local claims = assert(engine:verify_jwt(set, assert(engine:sign_jwt(set, { sub = "alice" }))))
      assert.equals("alice", claims.sub)
      assert.is_true(claims.exp - claims.iat == 300 and claims.iat >= before, "exp = iat + 300")
      -- the other encoder (options it fills in) has the same default
      claims = assert(engine:verify_jwt(set, assert(engine:sign_jwt(set, {}, { issuer = "https://i.example" }))))
      assert.equals(300, claims.exp - claims.iat)
      local exp = os.time() + 7200
      for _, options in ipairs({ {}, { lifetime = 60 }, { issuer = "https://i.example" } }) do
        claims = assert(engine:verify_jwt(set, assert(engine:sign_jwt(set, { exp = exp }, options))))
        assert.equals(exp, claims.exp)
      end
      -- lifetime = false: no exp, which verify_jwt refuses unless told
      local forever = assert(engine:sign_jwt(set, { sub = "x" }, { lifetime = false }))
      local ok, _, code = engine:verify_jwt(set, forever)
      assert.is_nil(ok)
      assert.equals("ERR_JWT_CLAIM_MISSING", code)
    end
  end)

  it("caps the default lifetime at tokens.max_lifetime", function()
    local file = os.tmpname() .. ".yaml"
    local f = assert(io.open(file, "w"))
    f:write("tokens: { max_lifetime: 120 }\n")
    f:close()
    local engine = assert(jwkengine.open({ config = file, environment = { SECRETS_SYSTEM = SECRET, DSN = "memory" },
      logger = false, startup = false }))
    os.remove(file)
    assert(engine:generate("capped", "ES256", { kid = "c1" }))
    local claims = assert(engine:verify_jwt("capped", assert(engine:sign_jwt("capped", {}))))
    assert.equals(120, claims.exp - claims.iat)
    engine:close()
  end)

  it("refuses wrongly typed claims when signing", function()
    local ok, _, code = hsm_engine:sign_jwt("jose.es256", { exp = "soon" })
    assert.is_nil(ok)
    assert.equals("ERR_JWT_CLAIM_INVALID", code)
  end)

  it("refuses claims that are not valid UTF-8, naming the claim, and signs what verify_jwt accepts", function()
    local cases = {
      { { sub = "a\255" }, "claim 'sub' is not valid UTF%-8" },
      { { ["a\255"] = 1 }, "claim 'a\\xff' has a name that is not valid UTF%-8" },
      { { ctx = { roles = { "ok", "\192\128" } } }, "claim 'ctx%.roles%[1%]' is not valid UTF%-8" }, -- overlong
      { { x = "\237\160\128" }, "claim 'x' is not valid UTF%-8" }, -- a UTF-16 surrogate
      { { x = "\244\144\128\128" }, "claim 'x' is not valid UTF%-8" }, -- above U+10FFFF
      { { x = "ab\226\130" }, "claim 'x' is not valid UTF%-8" }, -- cut short
    }
    for _, c in ipairs(cases) do
      -- both encoders: the fast path and the one that fills in options
      for _, options in ipairs({ { lifetime = 60 }, { lifetime = 60, issuer = "https://issuer.example" } }) do
        local token, err, code = hsm_engine:sign_jwt("jose.es256", c[1], options)
        assert.is_nil(token, c[2])
        assert.equals("ERR_JWT_CLAIMS", code)
        assert.matches(c[2], err)
      end
    end
    local text = "h\195\169llo \226\130\172 \240\159\152\128" -- héllo € and an emoji
    local token = assert(hsm_engine:sign_jwt("jose.es256", { sub = text, [text] = true }, { lifetime = 60 }))
    local claims = assert(hsm_engine:verify_jwt("jose.es256", token))
    assert.equals(text, claims.sub)
    assert.is_true(claims[text])
  end)

  it("gives the thumbprint of a set's key", function()
    local key = assert(hsm_engine:key("jose.eddsa", "d1"))
    assert.equals(helper.jwcrypto_thumbprint(key), hsm_engine:thumbprint("jose.eddsa", "d1"))
    assert.equals(helper.jwcrypto_thumbprint(key, "SHA-512"), hsm_engine:thumbprint("jose.eddsa", "d1", "SHA-512"))
    local ok, _, code = hsm_engine:thumbprint("jose.eddsa", "nope")
    assert.is_nil(ok)
    assert.equals("ERR_KEY_NOT_FOUND", code)
  end)

  it("uses the thumbprint as the kid of new software keys", function()
    local public = assert(sw_engine:generate("jose.sw", "ES384", { thumbprint_kid = true }))
    assert.equals(helper.jwcrypto_thumbprint(public), public.kid)
    local rsa = assert(sw_engine:generate("jose.sw2", "PS256", { thumbprint_kid = "SHA-512", rsa_bits = 2048 }))
    assert.equals(helper.jwcrypto_thumbprint(rsa, "SHA-512"), rsa.kid)
    assert.equals(86, #rsa.kid)

    local token = assert(sw_engine:sign_jwt("jose.sw", { sub = "bob" }, { lifetime = 60 }))
    local claims, header = sw_engine:verify_jwt("jose.sw", token)
    assert.is_table(claims, header)
    assert.equals(public.kid, header.kid)
    assert.has_error(function() sw_engine:generate("jose.sw3", "ES256", { kid = "x", thumbprint_kid = true }) end)
  end)

  it("uses the thumbprint as the kid of new HSM keys (CKA_ID set on both halves)", function()
    local public = assert(hsm_engine:generate("jose.thumb", "ES256", { thumbprint_kid = true }))
    assert.equals(helper.jwcrypto_thumbprint(public), public.kid)
    -- the token itself carries the thumbprint as CKA_ID, on both halves
    local listing = softhsm.pkcs11_tool(token, "--list-objects --label jose.thumb")
    local _, ids = listing:gsub("ID:%s+" .. softhsm.hex(public.kid), "")
    assert.equals(2, ids)
    assert.equals(1, #assert(hsm_engine:key_set("jose.thumb")).keys)
    local jws = assert(hsm_engine:sign("jose.thumb", "named by its thumbprint"))
    local payload, header = assert(hsm_engine:verify("jose.thumb", jws))
    assert.equals("named by its thumbprint", payload)
    assert.equals(public.kid, header.kid)
    local sha512 = assert(hsm_engine:generate("jose.thumb512", "EdDSA", { thumbprint_kid = "SHA-512" }))
    assert.equals(helper.jwcrypto_thumbprint(sha512, "SHA-512"), sha512.kid)
  end)
end)

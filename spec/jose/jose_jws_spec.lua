-- JWS verification policy: allow-list, none and HMAC, algorithm/key fit,
-- RSA size, crit and b64, key selection from a JWK Set, signature sizes,
-- and signing with software keys.
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local cjson = require("cjson")
local jws = require("jwkengine.jws")
local jwk = require("jwkengine.jwk")
local helper = require("helpers.jose")
local refused = require("helpers.refusal").refused

local function header_b64(header)
  return helper.b64(type(header) == "string" and header or cjson.encode(header))
end

-- A token over any header, signed by key (header members as given).
local function signed(key, header, payload, alg)
  return assert(key:sign_compact(header_b64(header), payload or "hello", alg or header.alg))
end

local function public(key, members)
  local j = key:public_jwk()
  for k, v in pairs(members or {}) do j[k] = v end
  return j
end


describe("JWS verification policy", function()
  local es256, es384, rsa, rsa1024, rsa1024_pem, ed

  setup(function()
    es256 = assert(core.generate_software_key("ES256"))
    es384 = assert(core.generate_software_key("ES384"))
    rsa = assert(core.generate_software_key("RS256", { bits = 2048 }))
    ed = assert(core.generate_software_key("EdDSA"))
    -- too small to generate here; made by openssl for the size checks
    local path = os.tmpname()
    local out, ok = helper.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " .. path)
    assert(ok, out)
    rsa1024 = assert(core.import_pem(helper.read_file(path)))
    rsa1024_pem = path
  end)

  teardown(function() os.remove(rsa1024_pem) end)

  -- software keys refuse to sign with RSA under 2048 bits: openssl signs
  local function openssl_rs256(pem, header)
    local input = header_b64(header) .. "." .. helper.b64("hello")
    local path = os.tmpname()
    helper.write_file(path, input)
    local out, ok = helper.run(string.format("openssl dgst -sha256 -sign %s %s | base64 -w0", pem, path))
    os.remove(path)
    assert(ok, out)
    return input .. "." .. out:gsub("=", ""):gsub("%+", "-"):gsub("/", "_")
  end

  describe("the allow-list", function()
    it("is required, non-empty, and can never hold none, HMAC or unknown names", function()
      local token = signed(es256, { alg = "ES256" })
      local keys = { keys = { public(es256) } }
      assert.has_error(function() jws.verify(token, keys) end)
      assert.has_error(function() jws.verify(token, keys, {}) end)
      assert.has_error(function() jws.verify(token, keys, { algorithms = {} }) end)
      assert.has_error(function() jws.verify(token, keys, { algorithms = { "none" } }) end)
      assert.has_error(function() jws.verify(token, keys, { algorithms = { "HS256" } }) end)
      assert.has_error(function() jws.verify(token, keys, { algorithms = { "ES256K" } }) end)
      assert.truthy(jws.verify(token, keys, { algorithms = { "RS256", "ES256" } }))
    end)

    it("refuses a token whose alg is not listed, even when the key would fit", function()
      local token = signed(es256, { alg = "ES256" })
      refused("ERR_JOSE_ALG_NOT_ALLOWED", "'ES256' is not allowed",
        jws.verify(token, { keys = { public(es256) } }, { algorithms = { "ES384", "RS256" } }))
    end)

    it("notices a list narrowed in place after it was used", function()
      local token = signed(es256, { alg = "ES256" })
      local keys = { keys = { public(es256) } }
      local allowed = { "RS256", "ES256" }
      assert.truthy(jws.verify(token, keys, { algorithms = allowed }))
      allowed[2] = "ES384" -- the same table, no longer allowing ES256
      refused("ERR_JOSE_ALG_NOT_ALLOWED", "'ES256' is not allowed",
        jws.verify(token, keys, { algorithms = allowed }))
      allowed[3] = "ES256"
      assert.truthy(jws.verify(token, keys, { algorithms = allowed }))
    end)

    it("never accepts none, in any spelling, signed or not", function()
      for _, alg in ipairs({ "none", "None", "NONE", "nOnE" }) do
        local token = header_b64({ alg = alg }) .. ".aGVsbG8.AAAA"
        refused("ERR_JOSE_ALG_NOT_ALLOWED", "none", jws.verify(token, { keys = { public(es256) } },
          { algorithms = { "ES256" } }))
      end
    end)

    it("never accepts HMAC: a public key cannot be used as an HMAC secret", function()
      -- the classic confusion: HS256 with the RSA public key's bytes as the secret
      local secret = cjson.encode(public(rsa))
      local input = header_b64({ alg = "HS256" }) .. "." .. helper.b64("{}")
      local path = os.tmpname()
      helper.write_file(path, input)
      local mac = helper.run(string.format("openssl dgst -sha256 -mac HMAC -macopt key:%s -binary %s | base64 -w0",
        helper.quote(secret), path))
      os.remove(path)
      local token = input .. "." .. mac:gsub("=", ""):gsub("%+", "-"):gsub("/", "_")
      for _, alg in ipairs({ "HS256", "HS384", "HS512" }) do
        local t = token:gsub("^[^.]+", header_b64({ alg = alg }))
        refused("ERR_JOSE_ALG_NOT_ALLOWED", "HMAC", jws.verify(t, { keys = { public(rsa) } },
          { algorithms = { "RS256" } }))
      end
    end)
  end)

  describe("algorithm and key", function()
    it("refuses an algorithm that does not fit the key type or curve", function()
      -- an ES384 token over an ES256 key, an RS256 token over an EC key, EdDSA over RSA
      local cases = {
        { signer = es384, alg = "ES384", key = es256, fragment = "needs curve P-384" },
        { signer = rsa, alg = "RS256", key = es256, fragment = "does not fit a EC key" },
        { signer = ed, alg = "EdDSA", key = rsa, fragment = "does not fit a RSA key" },
      }
      for _, c in ipairs(cases) do
        local token = signed(c.signer, { alg = c.alg })
        refused("ERR_JWKS_NO_MATCHING_KEY", c.fragment,
          jws.verify(token, { keys = { public(c.key) } }, { algorithms = { c.alg } }))
      end
    end)

    it("accepts every algorithm for the key it fits", function()
      local by_alg = { EdDSA = ed, ES256 = es256, ES384 = es384, ES512 = assert(core.generate_software_key("ES512")) }
      for _, alg in ipairs(helper.ALGORITHMS) do
        local key = by_alg[alg] or rsa
        local token = signed(key, { alg = alg, kid = "k" })
        local payload, header = jws.verify(token, { keys = { public(key, { kid = "k" }) } }, { algorithms = { alg } })
        assert.equals("hello", payload, alg)
        assert.equals(alg, header.alg)
      end
    end)

    it("needs RSA keys of at least 2048 bits, whatever min_rsa_bits says", function()
      local token = openssl_rs256(rsa1024_pem, { alg = "RS256" })
      local keys = { keys = { public(rsa1024) } }
      -- the signature itself is good: only the key size stands in the way
      local input, sig = token:match("^(.*)%.([^.]+)$")
      assert.is_true(rsa1024:public_key():verify("RS256", input, helper.unb64(sig), 1024))
      refused("ERR_JWKS_NO_MATCHING_KEY", "1024 bits is below the minimum of 2048",
        jws.verify(token, keys, { algorithms = { "RS256" } }))
      refused("ERR_JWKS_NO_MATCHING_KEY", "below the minimum of 2048",
        jws.verify(token, keys, { algorithms = { "RS256" }, min_rsa_bits = 512 }))
      local big = signed(rsa, { alg = "RS256" })
      refused("ERR_JWKS_NO_MATCHING_KEY", "below the minimum of 3072",
        jws.verify(big, { keys = { public(rsa) } }, { algorithms = { "RS256" }, min_rsa_bits = 3072 }))
    end)

    it("never takes a key from the token itself (jwk, jku, x5u, x5c headers)", function()
      local attacker = assert(core.generate_software_key("ES256"))
      local token = signed(attacker, { alg = "ES256", jwk = public(attacker), jku = "https://evil.example/jwks" })
      refused("ERR_JWS_SIGNATURE_INVALID", nil,
        jws.verify(token, { keys = { public(es256) } }, { algorithms = { "ES256" } }))
      refused("ERR_JWKS_NO_MATCHING_KEY", "empty",
        jws.verify(token, { keys = {} }, { algorithms = { "ES256" } }))
    end)
  end)

  describe("signature size", function()
    local function with_signature(token, bytes)
      return token:match("^(.*%.)") .. helper.b64(bytes)
    end

    it("must be raw R || S of 64, 96 or 132 bytes for ES256, ES384, ES512", function()
      local es512 = assert(core.generate_software_key("ES512"))
      for _, c in ipairs({ { es256, "ES256", 64 }, { es384, "ES384", 96 }, { es512, "ES512", 132 } }) do
        local token = signed(c[1], { alg = c[2] })
        local sig = helper.unb64(token:match("[^.]+$"))
        assert.equals(c[3], #sig)
        for _, bad in ipairs({ sig:sub(2), sig .. "\0", sig:sub(1, c[3] / 2) }) do
          refused("ERR_JWS_SIGNATURE_INVALID", string.format("must be %d bytes", c[3]),
            jws.verify(with_signature(token, bad), { keys = { public(c[1]) } }, { algorithms = { c[2] } }))
        end
      end
    end)

    it("refuses a DER-encoded ECDSA signature and says why", function()
      local token = signed(es256, { alg = "ES256" })
      local raw = helper.unb64(token:match("[^.]+$"))
      local function integer(bytes)
        bytes = bytes:gsub("^%z+", "")
        if bytes:byte(1) >= 0x80 then bytes = "\0" .. bytes end
        return "\2" .. string.char(#bytes) .. bytes
      end
      local body = integer(raw:sub(1, 32)) .. integer(raw:sub(33))
      local der = "\48" .. string.char(#body) .. body
      refused("ERR_JWS_SIGNATURE_INVALID", "DER-encoded",
        jws.verify(with_signature(token, der), { keys = { public(es256) } }, { algorithms = { "ES256" } }))
    end)

    it("must be the modulus size for RSA and 64 bytes for EdDSA", function()
      local token = signed(rsa, { alg = "PS256" })
      local sig = helper.unb64(token:match("[^.]+$"))
      refused("ERR_JWS_SIGNATURE_INVALID", "must be 256 bytes, got 255",
        jws.verify(with_signature(token, sig:sub(2)), { keys = { public(rsa) } }, { algorithms = { "PS256" } }))
      refused("ERR_JWS_SIGNATURE_INVALID", "must be 256 bytes, got 257",
        jws.verify(with_signature(token, "\0" .. sig), { keys = { public(rsa) } }, { algorithms = { "PS256" } }))
      token = signed(ed, { alg = "EdDSA" })
      sig = helper.unb64(token:match("[^.]+$"))
      refused("ERR_JWS_SIGNATURE_INVALID", "must be 64 bytes, got 63",
        jws.verify(with_signature(token, sig:sub(2)), { keys = { public(ed) } }, { algorithms = { "EdDSA" } }))
    end)
  end)

  describe("crit and b64", function()
    local keys

    setup(function() keys = { keys = { public(es256) } } end)

    it("refuses an unknown critical extension, and accepts one the caller understands", function()
      local token = signed(es256, { alg = "ES256", crit = { "exp" }, exp = 1 })
      refused("ERR_JWS_CRIT_UNSUPPORTED", "'exp'", jws.verify(token, keys, { algorithms = { "ES256" } }))
      local payload, header = jws.verify(token, keys, { algorithms = { "ES256" }, critical = { "exp" } })
      assert.equals("hello", payload)
      assert.equals(1, header.exp)
    end)

    it("refuses a critical name that is not in the protected header", function()
      local token = signed(es256, { alg = "ES256", crit = { "exp" } })
      refused("ERR_JWS_INVALID", "not in the protected header",
        jws.verify(token, keys, { algorithms = { "ES256" }, critical = { "exp" } }))
    end)

    it("refuses crit that is empty, not a list, lists non-strings, duplicates or registered names", function()
      local cases = {
        { '{"alg":"ES256","crit":[]}', "must not be empty" },
        { '{"alg":"ES256","crit":"exp","exp":1}', "must be an array" },
        { '{"alg":"ES256","crit":{"exp":1},"exp":1}', "must be an array" },
        { '{"alg":"ES256","crit":[1]}', "must list strings" },
        { '{"alg":"ES256","crit":["exp","exp"],"exp":1}', "twice" },
        { '{"alg":"ES256","crit":["kid"],"kid":"k"}', "defined by RFC 7515" },
        { '{"alg":"ES256","crit":["alg"]}', "defined by RFC 7515" },
      }
      for _, c in ipairs(cases) do
        local token = assert(es256:sign_compact(header_b64(c[1]), "x", "ES256"))
        refused("ERR_JWS_INVALID", c[2], jws.verify(token, keys, { algorithms = { "ES256" }, critical = { "exp" } }))
      end
    end)

    it("refuses b64: false (RFC 7797), with or without crit, and allows b64: true", function()
      for _, header in ipairs({ '{"alg":"ES256","b64":false,"crit":["b64"]}', '{"alg":"ES256","b64":false}' }) do
        local token = assert(es256:sign_compact(header_b64(header), "x", "ES256"))
        refused("ERR_JWS_B64_UNSUPPORTED", "RFC 7797", jws.verify(token, keys, { algorithms = { "ES256" } }))
      end
      local token = assert(es256:sign_compact(header_b64('{"alg":"ES256","b64":"no"}'), "x", "ES256"))
      refused("ERR_JWS_INVALID", "'b64' must be a boolean", jws.verify(token, keys, { algorithms = { "ES256" } }))
      token = assert(es256:sign_compact(header_b64('{"alg":"ES256","b64":true,"crit":["b64"]}'), "x", "ES256"))
      assert.equals("x", (jws.verify(token, keys, { algorithms = { "ES256" } })))
    end)
  end)

  describe("key selection from a JWK Set", function()
    local a, b, enc

    setup(function()
      a = public(es256, { kid = "a", use = "sig", alg = "ES256" })
      b = public(es384, { kid = "b" })
      enc = public(rsa, { kid = "r", use = "enc" })
    end)

    it("picks the key named by kid", function()
      local token = signed(es384, { alg = "ES384", kid = "b" })
      local payload, _, key = jws.verify(token, { keys = { a, b, enc } }, { algorithms = { "ES256", "ES384" } })
      assert.equals("hello", payload)
      assert.equals("b", key.kid)
    end)

    it("picks the only fitting key when the token has no kid", function()
      local token = signed(es384, { alg = "ES384" })
      local _, _, key = jws.verify(token, { keys = { a, b, enc } }, { algorithms = { "ES384" } })
      assert.equals("b", key.kid)
    end)

    it("says none matched, and why, when no key fits", function()
      local token = signed(es256, { alg = "ES256", kid = "missing" })
      refused("ERR_JWKS_NO_MATCHING_KEY", "no key with this kid",
        jws.verify(token, { keys = { a, b } }, { algorithms = { "ES256" } }))
      token = signed(rsa, { alg = "RS256", kid = "r" })
      refused("ERR_JWKS_NO_MATCHING_KEY", "its use is 'enc'",
        jws.verify(token, { keys = { a, b, enc } }, { algorithms = { "RS256" } }))
      token = signed(es256, { alg = "ES256", kid = "a" })
      local ops = public(es256, { kid = "a", key_ops = { "sign" } })
      refused("ERR_JWKS_NO_MATCHING_KEY", "key_ops do not include 'verify'",
        jws.verify(token, { keys = { ops } }, { algorithms = { "ES256" } }))
      local other_alg = public(rsa, { kid = "a", alg = "PS256" })
      token = signed(rsa, { alg = "RS256", kid = "a" })
      refused("ERR_JWKS_NO_MATCHING_KEY", "it is for alg PS256",
        jws.verify(token, { keys = { other_alg } }, { algorithms = { "RS256" } }))
      refused("ERR_JWKS_NO_MATCHING_KEY", "the key set is empty",
        jws.verify(token, { keys = {} }, { algorithms = { "RS256" } }))
    end)

    it("says several matched when the token has no kid and more than one key fits", function()
      local second = assert(core.generate_software_key("ES256"))
      local token = signed(es256, { alg = "ES256" })
      refused("ERR_JWKS_MULTIPLE_MATCHING_KEYS", "2 keys match the JWS",
        jws.verify(token, { keys = { a, public(second, { kid = "c" }) } }, { algorithms = { "ES256" } }))
      local ok, err = jws.verify(token, { keys = { a, public(second, { kid = "c" }) } }, { algorithms = { "ES256" } })
      assert.is_nil(ok)
      assert.matches("a kid is needed", err)
    end)

    it("says several matched when two keys share the token's kid", function()
      local second = assert(core.generate_software_key("ES256"))
      local token = signed(es256, { alg = "ES256", kid = "a" })
      refused("ERR_JWKS_MULTIPLE_MATCHING_KEYS", "several keys with this kid",
        jws.verify(token, { keys = { a, public(second, { kid = "a" }) } }, { algorithms = { "ES256" } }))
    end)

    it("answers a token without a kid and one with kid \"\" apart, in either order, as a fresh verifier does", function()
      local second = assert(core.generate_software_key("ES256"))
      local set = { keys = { public(es256, { kid = "" }), public(second, { kid = "other" }) } }
      local empty_kid = signed(es256, { alg = "ES256", kid = "" })
      local no_kid = signed(es256, { alg = "ES256" })
      local options = { algorithms = { "ES256" } }
      -- a fresh candidate list per call has no memo: the reference answers
      local function fresh(token)
        local payload, _, code = jws.verify(token, assert(jwk.parse_set(set)), options)
        return { payload ~= nil, payload == nil and code or nil }
      end
      local expected = { [empty_kid] = fresh(empty_kid), [no_kid] = fresh(no_kid) }
      assert.same({ true }, expected[empty_kid])
      assert.same({ false, "ERR_JWKS_MULTIPLE_MATCHING_KEYS" }, expected[no_kid])
      for _, order in ipairs({ { empty_kid, no_kid, empty_kid }, { no_kid, empty_kid, no_kid } }) do
        local shared = assert(jwk.parse_set(set)) -- one list: the memo is used
        for _, token in ipairs(order) do
          local payload, err, code = jws.verify(token, shared, options)
          assert.same(expected[token], { payload ~= nil, payload == nil and code or nil }, err)
        end
      end
    end)

    it("matches use sig and key_ops verify, and ignores keys for other algorithms when choosing", function()
      local token = signed(es256, { alg = "ES256" })
      local keys = { public(es256, { key_ops = { "verify" }, use = "sig" }), b, enc }
      local _, _, key = jws.verify(token, { keys = keys }, { algorithms = { "ES256" } })
      assert.equals(1, key.index)
    end)

    it("reports a key of the set that was ignored when the token needed it", function()
      local broken = public(es256, { kid = "a" })
      broken.y = b.x -- off the curve (and the wrong size)
      local token = signed(es256, { alg = "ES256", kid = "a" })
      refused("ERR_JWKS_NO_MATCHING_KEY", "key 'a' was ignored",
        jws.verify(token, { keys = { broken, b } }, { algorithms = { "ES256" } }))
    end)

    it("takes candidates, a JWK Set table or JSON, a single JWK, or a parsed set", function()
      local token = signed(es256, { alg = "ES256", kid = "a" })
      local options = { algorithms = { "ES256" } }
      assert.truthy(jws.verify(token, { keys = { a } }, options))
      assert.truthy(jws.verify(token, cjson.encode({ keys = { a } }), options))
      assert.truthy(jws.verify(token, a, options))
      assert.truthy(jws.verify(token, assert(jwk.parse_set({ keys = { a, b } })), options))
      assert.truthy(jws.verify(token, { { kid = "a", public_key = es256:public_key() } }, options))
      assert.has_error(function() jws.verify(token, 42, options) end)
    end)
  end)

  describe("signing", function()
    it("signs with software keys, the algorithm implied by the key or given", function()
      local token = assert(jws.sign(es384, "data", { kid = "k", typ = "JOSE", cty = "text/plain" }))
      local payload, header = jws.verify(token, public(es384, { kid = "k" }), { algorithms = { "ES384" } })
      assert.equals("data", payload)
      assert.same({ alg = "ES384", kid = "k", typ = "JOSE", cty = "text/plain" }, header)
      -- members in a fixed order (cjson writes "/" as "\/", which is the same JSON)
      assert.equals('{"alg":"ES384","kid":"k","typ":"JOSE","cty":"text\\/plain"}', helper.unb64(token:match("^[^.]+")))
      token = assert(jws.sign(rsa, "data", { alg = "PS512" }))
      assert.equals("data", (jws.verify(token, public(rsa), { algorithms = { "PS512" } })))
    end)

    it("refuses an algorithm that does not fit the key", function()
      local ok, err, code = jws.sign(es256, "data", { alg = "ES384" })
      assert.is_nil(ok)
      assert.equals("ERR_JWS_SIGN", code)
      assert.matches("P%-384", err)
      assert.has_error(function() jws.sign(es256, 42) end)
      assert.has_error(function() jws.encode_header("ES256", nil, nil, { alg = "none" }) end)
    end)

    it("keeps encode_header(alg, kid, typ) as the HSM and store managers use it", function()
      assert.equals(helper.b64('{"alg":"RS256","kid":"k1","typ":"JWT"}'), jws.encode_header("RS256", "k1", "JWT"))
      assert.equals(helper.b64('{"alg":"EdDSA"}'), jws.encode_header("EdDSA"))
    end)
  end)
end)

-- A corpus of malformed tokens, key sets and keys. Each one is rejected
-- with a stable code and a message that says what is wrong, and none of
-- them crashes or hangs the verifier.
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local jws = require("jwkengine.jws")
local jwk = require("jwkengine.jwk")
local errors = require("jwkengine.errors")
local refused = require("helpers.refusal").refused
local helper = require("helpers.jose")

local b64 = helper.b64

describe("malformed input", function()
  local key, public, good, h, p, s

  setup(function()
    key = assert(core.generate_software_key("ES256"))
    public = key:public_jwk()
    public.kid = "k1"
    good = assert(jws.sign(key, '{"sub":"a"}', { kid = "k1" }))
    h, p, s = good:match("^([^.]+)%.([^.]+)%.([^.]+)$")
  end)

  local function check(token, code, fragment, options)
    local o = { algorithms = { "ES256" } }
    for k, v in pairs(options or {}) do o[k] = v end
    local ok, err, got = jws.verify(token, { keys = { public } }, o)
    assert.is_nil(ok, "accepted: " .. tostring(token):sub(1, 80))
    assert.equals(code, got, err)
    assert.is_string(errors.codes[got])
    if fragment then assert.matches(fragment, err, 1, true) end
  end

  -- A token over the header JSON text, signed for real: only the header is wrong.
  local function with_header(json)
    return assert(key:sign_compact(b64(json), '{"sub":"a"}', "ES256"))
  end

  it("accepts the token the corpus is made from", function()
    assert.equals('{"sub":"a"}', (jws.verify(good, { keys = { public } }, { algorithms = { "ES256" } })))
  end)

  describe("tokens", function()
    it("rejects bad base64url and padding", function()
      local last = s:sub(-1)
      local cases = {
        { "+" .. h:sub(2) .. "." .. p .. "." .. s, "not base64url" },
        { h .. "." .. p .. "." .. s:sub(1, 10) .. "/" .. s:sub(12), "not base64url" },
        { h .. "." .. p .. "." .. s .. "=", "padding" },
        { h .. "." .. p .. "." .. s .. "==", "padding" },
        { h .. "==." .. p .. "." .. s, "padding" },
        { h .. "." .. p .. "." .. s:sub(1, -2) .. (last == "B" and "C" or "B"), "non-zero trailing bits" },
        { b64('{"alg":"ES256"}') .. "A." .. p .. "." .. s, "JWS header is not valid base64url: impossible length" },
        { h .. "." .. p .. string.rep("A", (1 - #p) % 4) .. "." .. s, "impossible length" },
        { h .. "." .. p .. "." .. s:sub(1, 20) .. " " .. s:sub(21), "whitespace" },
        { h .. "." .. p .. "." .. s:sub(1, 20) .. "\t" .. s:sub(21), "whitespace" },
        { h .. ".\255" .. p .. "." .. s, "not base64url" },
        { h .. "." .. p .. "\0." .. s, "not base64url" },
      }
      for _, c in ipairs(cases) do check(c[1], "ERR_JWS_INVALID", c[2]) end
    end)

    it("rejects the wrong number of segments", function()
      local cases = {
        { "", "empty" },
        { h, "got 1" },
        { h .. "." .. p, "got 2" },
        { good .. "." .. s, "got 4" },
        { good .. ".a.b.c", "got 6" },
        { h .. ".a.b.c.d", "JWE" },
        { ".", "got 2" },
      }
      for _, c in ipairs(cases) do check(c[1], "ERR_JWS_INVALID", c[2]) end
    end)

    it("rejects empty segments", function()
      check("." .. p .. "." .. s, "ERR_JWS_INVALID", "header segment is empty")
      check(h .. ".." .. s, "ERR_JWS_INVALID", "payload segment is empty")
      check(h .. "." .. p .. ".", "ERR_JWS_INVALID", "signature segment is empty")
      check("..", "ERR_JWS_INVALID", "header segment is empty")
    end)

    it("rejects headers that are not JSON", function()
      local cases = {
        { "not json", "not an object" },
        { "{", "expected a member name" },
        { '{"alg":"ES256"', "expected ','" },
        { "{'alg':'ES256'}", "member name" },
        { '{"alg":"ES256"}x', "after the JSON value" },
        { '{"alg":"ES256"} {}', "after the JSON value" },
        { '{"alg":"ES256",}', "member name" },
        { '{"alg":"ES256","x":NaN}', "unexpected character" },
        { '{"alg":"ES256","x":0x1}', "expected ','" },
        { '{"alg":"ES256","x":.5}', "unexpected character" },
        { "\239\187\191{\"alg\":\"ES256\"}", "not an object" }, -- a byte order mark
        { '{"alg":"ES256","x":"\195\40"}', "UTF-8" },
        { '{"alg":"ES256","x":"\192\175"}', "UTF-8" },
        { '{"alg":"ES256","x":"\\ud800"}', "surrogate" },
        { '{"alg":"ES256","x":"a\nb"}', "control character" },
        { '{"alg":"ES256","x":' .. string.rep("[", 1000) .. string.rep("]", 1000) .. "}", "nested more than" },
      }
      for _, c in ipairs(cases) do check(with_header(c[1]), "ERR_JWS_INVALID", c[2]) end
    end)

    it("rejects headers that are JSON but not an object", function()
      for _, json in ipairs({ "[]", '["alg","ES256"]', '"ES256"', "42", "null", "true", " " }) do
        check(b64(json) .. "." .. p .. "." .. s, "ERR_JWS_INVALID", nil)
      end
    end)

    it("rejects duplicate header members, which cjson would silently collapse", function()
      local cases = {
        '{"alg":"ES256","alg":"ES256"}',
        '{"alg":"none","alg":"ES256"}',
        '{"kid":"other","alg":"ES256","kid":"k1"}',
        '{"alg":"ES256","\\u0061lg":"ES256"}',
        '{"alg":"ES256","x":{"a":1,"a":2}}',
      }
      for _, json in ipairs(cases) do check(with_header(json), "ERR_JWS_INVALID", "duplicate member name") end
    end)

    it("rejects wrongly typed header members", function()
      local cases = {
        { "{}", "has no 'alg'" },
        { '{"alg":256}', "'alg' must be a string" },
        { '{"alg":null}', "'alg' must be a string" },
        { '{"alg":["ES256"]}', "'alg' must be a string" },
        { '{"alg":"ES256","kid":1}', "'kid' must be a string" },
        { '{"alg":"ES256","kid":{}}', "'kid' must be a string" },
        { '{"alg":"ES256","kid":null}', "'kid' must be a string, got null" },
        { '{"alg":"ES256","typ":1}', "'typ' must be a string" },
        { '{"alg":"ES256","cty":[]}', "'cty' must be a string" },
        { '{"alg":"ES256","crit":"x"}', "'crit' must be an array" },
        { '{"alg":"ES256","b64":"false"}', "'b64' must be a boolean" },
        { '{"alg":"ES256","jwk":"x"}', "'jwk' must be an object" },
        { '{"alg":"ES256","jku":1}', "'jku' must be a string" },
        { '{"alg":"ES256","x5c":"MIIB"}', "'x5c' must be an array" },
        { '{"alg":"ES256","x5t#S256":false}', "'x5t#S256' must be a string" },
      }
      for _, c in ipairs(cases) do check(with_header(c[1]), "ERR_JWS_INVALID", c[2]) end
      check(with_header('{"alg":""}'), "ERR_JOSE_ALG_NOT_ALLOWED", "not allowed")
      check(with_header('{"alg":"ES256 "}'), "ERR_JOSE_ALG_NOT_ALLOWED", "not allowed")
    end)

    it("rejects a 10 MB header early, by size", function()
      -- Not base64url where reading should have stopped: a check that read
      -- those bytes first would answer ERR_JWS_INVALID, so the code shows
      -- which check came first (where a CPU-time bound would be a guess).
      local huge = string.rep("!", 10 * 1024 * 1024) .. "." .. p .. "." .. s
      check(huge, "ERR_JWS_TOO_LARGE", "larger than the limit of 262144 bytes")
      -- with the token limit raised, the header limit stops reading at 16384
      local long_header = string.rep("A", 16384) .. string.rep("!", 10 * 1024 * 1024) .. "." .. p .. "." .. s
      check(long_header, "ERR_JWS_TOO_LARGE", "header segment is larger than the limit of 16384",
        { max_token_size = 64 * 1024 * 1024 })
      local big_json = '{"alg":"ES256","x":"' .. string.rep("x", 20000) .. '"}'
      check(with_header(big_json), "ERR_JWS_TOO_LARGE", "header segment")
      assert.truthy(jws.verify(with_header(big_json), { keys = { public } },
        { algorithms = { "ES256" }, max_header_size = 32 * 1024 }))
      check(good, "ERR_JWS_TOO_LARGE", nil, { max_token_size = 100 })
    end)

    it("rejects trailing and leading garbage", function()
      local cases = {
        { good .. "\n", "whitespace" },
        { good .. "\r\n", "whitespace" },
        { good .. " ", "whitespace" },
        { good .. "\0", "not base64url" },
        { good .. ".", "got 4" },
        { good .. "=", "padding" },
        { " " .. good, "whitespace" },
        { "Bearer " .. good, "whitespace" },
        { '{"payload":"' .. p .. '"}', "JSON serialization" },
      }
      for _, c in ipairs(cases) do check(c[1], "ERR_JWS_INVALID", c[2]) end
      -- one more base64url character changes the signature: wrong size or bad encoding
      local ok, _, code = jws.verify(good .. "A", { keys = { public } }, { algorithms = { "ES256" } })
      assert.is_nil(ok)
      assert.is_truthy(code == "ERR_JWS_INVALID" or code == "ERR_JWS_SIGNATURE_INVALID")
      refused("ERR_JWS_SIGNATURE_INVALID", nil,
        jws.verify(good .. "AA", { keys = { public } }, { algorithms = { "ES256" } }))
    end)

    it("rejects signatures of the wrong length", function()
      local sig = helper.unb64(s)
      for _, bad in ipairs({ "\0", sig:sub(2), sig .. "\0", sig .. sig, string.rep("\0", 64) }) do
        check(h .. "." .. p .. "." .. b64(bad), "ERR_JWS_SIGNATURE_INVALID",
          #bad == 64 and "does not verify" or "must be 64 bytes")
      end
    end)

    it("rejects tokens that are not strings without raising", function()
      for _, token in ipairs({ 42, true, {} }) do
        check(token, "ERR_JWS_INVALID", "must be a string")
      end
      refused("ERR_JWS_INVALID", nil, jws.verify(nil, { keys = { public } }, { algorithms = { "ES256" } }))
    end)
  end)

  describe("keys", function()
    local ec, rsa_n

    setup(function()
      ec = key:public_jwk()
      local rsa = assert(core.generate_software_key("RS256", { bits = 2048 }))
      rsa_n = helper.unb64(rsa:public_jwk().n)
    end)

    local function with(base, changes)
      local j = {}
      for k, v in pairs(base) do j[k] = v end
      for k, v in pairs(changes) do
        if v == false then j[k] = nil else j[k] = v end
      end
      return j
    end

    local function flip_last_bit(text)
      local bytes = helper.unb64(text)
      local last = bytes:byte(-1)
      return b64(bytes:sub(1, -2) .. string.char(last % 2 == 0 and last + 1 or last - 1))
    end

    -- Each bad key: ignored in a set (with the reason), fatal when strict,
    -- reported when a token needs it, and refused by core.public_key when
    -- the key material itself is bad.
    local function check_key(bad, fragment, material)
      bad = with(bad, { kid = "k1" })
      local set = assert(jwk.parse_set({ keys = { bad } }))
      assert.equals(0, #set)
      assert.equals(1, #set.unusable)
      assert.matches(fragment, set.unusable[1].reason, 1, true)
      refused("ERR_JWKS_INVALID", fragment, jwk.parse_set({ keys = { bad } }, { strict = true }))
      refused("ERR_JWKS_NO_MATCHING_KEY", "key 'k1' was ignored: ",
        jws.verify(good, { keys = { bad } }, { algorithms = { "ES256" } }))
      if material then
        local ok, err = core.public_key(bad)
        assert.is_nil(ok)
        assert.matches(fragment, err, 1, true)
      end
    end

    it("rejects EC points off the curve and coordinates of the wrong size", function()
      check_key(with(ec, { y = flip_last_bit(ec.y) }), "not on curve P-256", true)
      check_key(with(ec, { x = b64(string.rep("\0", 32)), y = b64(string.rep("\0", 32)) }), "not on curve", true)
      check_key(with(ec, { x = b64(helper.unb64(ec.x):sub(2)) }), "must be 32 bytes each", true)
      check_key(with(ec, { crv = "P-521" }), "must be 66 bytes each", true)
      check_key(with(ec, { y = false }), "'y' is missing", true)
      check_key(with(ec, { crv = false }), "'crv' is missing", true)
      check_key(with(ec, { crv = "P-192" }), "unsupported EC curve 'P-192'", true)
      check_key(with(ec, { crv = "secp256k1" }), "unsupported EC curve", true)
      check_key(with(ec, { x = "AAAA+AAA" }), "not valid base64url", true)
    end)

    it("rejects OKP keys on other curves or of the wrong size", function()
      local okp = { kty = "OKP", crv = "Ed25519", x = b64(string.rep("\1", 32)) }
      check_key(with(okp, { crv = "X25519" }), "unsupported OKP curve 'X25519'", true)
      check_key(with(okp, { crv = "Ed448" }), "unsupported OKP curve", true)
      check_key(with(okp, { x = b64(string.rep("\1", 31)) }), "must be 32 bytes", true)
      check_key(with(okp, { x = false }), "'x' is missing", true)
    end)

    it("rejects RSA moduli that are tiny or even, and bad exponents", function()
      local rsa = { kty = "RSA", n = b64(rsa_n), e = "AQAB" }
      check_key(with(rsa, { n = b64("\193\2\3\4\5\6\7\9") }), "outside 512..16384 bits", true)
      local even = rsa_n:sub(1, -2) .. string.char(rsa_n:byte(-1) - rsa_n:byte(-1) % 2)
      check_key(with(rsa, { n = b64(even) }), "RSA modulus is even", true)
      check_key(with(rsa, { e = "AQ" }), "exponent is invalid", true)
      check_key(with(rsa, { e = "AQA" }), "exponent is invalid", true)
      check_key(with(rsa, { n = "" }), "empty", true)
      check_key(with(rsa, { e = false }), "'e' is missing", true)
      -- 512 bits builds, but no token is ever verified with it
      local small = "\193" .. string.rep("\7", 62) .. "\9"
      local set = assert(jwk.parse_set({ keys = { with(rsa, { n = b64(small), kid = "k1" }) } }))
      assert.equals(1, #set)
      local ok, err, code = jws.verify(
        assert(key:sign_compact(b64('{"alg":"RS256","kid":"k1"}'), "x", "ES256")), set, { algorithms = { "RS256" } })
      assert.is_nil(ok)
      assert.equals("ERR_JWKS_NO_MATCHING_KEY", code)
      assert.matches("512 bits is below the minimum of 2048", err, 1, true)
    end)

    it("rejects symmetric keys, unknown key types and wrongly typed members", function()
      check_key({ kty = "oct", k = "c2VjcmV0" }, "symmetric keys")
      check_key(with(ec, { kty = false }), "'kty' is missing")
      check_key(with(ec, { kty = 7 }), "'kty' is missing or not a string")
      check_key(with(ec, { kty = "ECDH" }), "unsupported JWK kty", true)
      check_key(with(ec, { alg = 1 }), "'alg' must be a string")
      check_key(with(ec, { use = true }), "'use' must be a string")
      check_key(with(ec, { key_ops = "verify" }), "'key_ops' must be an array")
      check_key(with(ec, { key_ops = { 1 } }), "'key_ops' must be an array of strings")
      check_key(with(ec, { key_ops = { "verify", "verify" } }), "lists 'verify' twice")
      check_key(with(ec, { use = "sig", key_ops = { "encrypt" } }), "contradict")
      check_key(with(ec, { alg = "HS256" }), "not a JWS algorithm")
      check_key(with(ec, { alg = "RSA-OAEP" }), "not a JWS algorithm")
      check_key(with(ec, { alg = "ES384" }), "needs curve P-384")
      check_key(with(ec, { d = ec.x }), "private member 'd'")
    end)

    it("rejects a kid of the wrong type in the set without naming it", function()
      local set = assert(jwk.parse_set({ keys = { with(ec, { kid = 5 }) } }))
      assert.equals(0, #set)
      assert.matches("'kid' must be a string", set.unusable[1].reason)
    end)

    it("rejects key sets that are not JWK Sets", function()
      local cases = {
        { "not json", "not valid JSON" },
        { "[]", "not an object" },
        { "{}", "no 'keys' member" },
        { '{"keys":"x"}', "not an array" },
        { '{"keys":{"a":1}}', "not an array" },
        { '{"keys":[],"keys":[]}', "duplicate member name 'keys'" },
        { '{"keys":[{"kty":"EC","kty":"RSA"}]}', "duplicate member name 'kty'" },
        { '{"keys":[]} trailing', "after the JSON value" },
      }
      for _, c in ipairs(cases) do
        local ok, err, code = jwk.parse_set(c[1])
        assert.is_nil(ok, c[1])
        assert.equals("ERR_JWKS_INVALID", code)
        assert.matches(c[2], err, 1, true)
        refused("ERR_JWKS_INVALID", c[2], jws.verify(good, c[1], { algorithms = { "ES256" } }))
      end
      local set = assert(jwk.parse_set('{"keys":[1,"a",null,[]]}'))
      assert.equals(0, #set)
      assert.equals(4, #set.unusable)
      assert.matches("not a JSON object", set.unusable[1].reason)
      local huge = '{"keys":[],"x":"' .. string.rep("x", 2 * 1024 * 1024) .. '"}'
      refused("ERR_JWKS_INVALID", "larger than the limit", jwk.parse_set(huge))
    end)
  end)
end)

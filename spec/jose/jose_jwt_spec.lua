-- JWT signing and verification with claim checks: exp, nbf, iat, max age,
-- iss, aud, sub, typ, required claims, clock tolerance and an injected
-- clock; each failure has its stable code.
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local cjson = require("cjson")
local jwt = require("jwkengine.jwt")
local errors = require("jwkengine.errors")
local helper = require("helpers.jose")
local refused = require("helpers.refusal").refused

local NOW = 1700000000

describe("JWT", function()
  local key, keys

  setup(function()
    key = assert(core.generate_software_key("ES256"))
    local public = key:public_jwk()
    public.kid = "k1"
    keys = { keys = { public } }
  end)

  local function sign(claims, options)
    options = options or {}
    options.now = options.now or NOW
    options.kid = options.kid or "k1"
    return assert(jwt.sign(key, claims, options))
  end

  -- A token over raw payload bytes (for claims jwt.sign would refuse).
  local function raw(payload, header)
    return assert(key:sign_compact(helper.b64(header or '{"alg":"ES256","kid":"k1","typ":"JWT"}'), payload, "ES256"))
  end

  local function verify(token, options)
    local o = { algorithms = { "ES256" }, now = NOW }
    for k, v in pairs(options or {}) do o[k] = v end
    return jwt.verify(token, keys, o)
  end

  -- Asserts that a token over each { payload, fragment } is refused with
  -- `code`, the message holding the fragment.
  local function refuses_payloads(code, cases)
    for _, c in ipairs(cases) do
      refused(code, c[2], verify(raw(c[1])))
    end
  end


  describe("signing", function()
    it("times a signature in C: sign_timed gives the token and its seconds, sign_compact the token alone", function()
      local payload = '{"sub":"alice","exp":' .. (NOW + 60) .. '}'
      local token, seconds, extra = key:sign_timed(helper.b64('{"alg":"ES256","kid":"k1"}'), payload, "ES256")
      assert.equals("number", math.type(seconds) and "number")
      assert.is_true(seconds >= 0 and seconds < 10)
      assert.is_nil(extra)
      assert.same({ sub = "alice", exp = NOW + 60 }, (verify(token)))
      assert.equals(1, select("#", key:sign_compact(helper.b64('{"alg":"ES256","kid":"k1"}'), payload, "ES256")))
      local none, err, code = key:sign_timed(helper.b64('{"alg":"ES256"}'), payload, "RS256")
      assert.is_nil(none)
      assert.is_string(err)
      assert.is_string(code)
    end)

    it("sets iat from the clock and exp from the lifetime, with typ JWT", function()
      local token = sign({ sub = "alice" }, { lifetime = 300 })
      local claims, header = verify(token)
      assert.same({ sub = "alice", iat = NOW, exp = NOW + 300 }, claims)
      assert.same({ alg = "ES256", kid = "k1", typ = "JWT" }, header)
    end)

    it("keeps iat and exp given in the claims, and fills iss, sub, aud and jti from options", function()
      local token = sign({ iat = NOW - 5, exp = NOW + 5 }, { lifetime = 300, issuer = "https://issuer.example",
        subject = "bob", audience = { "a", "b" }, jti = true })
      local claims = verify(token)
      assert.equals(NOW - 5, claims.iat)
      assert.equals(NOW + 5, claims.exp)
      assert.equals("https://issuer.example", claims.iss)
      assert.equals("bob", claims.sub)
      assert.same({ "a", "b" }, claims.aud)
      assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", claims.jti)
    end)

    it("takes the clock as a function, and a typ of the caller's choosing", function()
      local token = sign({}, { now = function() return NOW + 1 end, lifetime = 10, typ = "at+jwt" })
      local claims, header = verify(token, { typ = "application/at+jwt", now = NOW + 1 })
      assert.equals(NOW + 1, claims.iat)
      assert.equals("at+jwt", header.typ)
    end)

    it("refuses wrongly typed registered claims and claims JSON cannot hold", function()
      for _, claims in ipairs({ { exp = "tomorrow" }, { iat = true }, { nbf = 0 / 0 }, { iss = 1 },
        { sub = { "x" } }, { aud = 7 }, { aud = { 1, 2 } }, { jti = false } }) do
        local ok, err, code = jwt.sign(key, claims, { now = NOW })
        refused("ERR_JWT_CLAIM_INVALID", nil, ok, err, code)
      end
      refused("ERR_JWT_CLAIMS", "cannot be encoded", jwt.sign(key, { f = print }, { now = NOW }))
      assert.has_error(function() jwt.sign(key, "claims") end)
      assert.has_error(function() jwt.sign(key, { "a", "b" }) end)
      assert.has_error(function() jwt.sign(key, {}, { lifetime = -1 }) end)
    end)
  end)

  describe("time claims", function()
    it("refuses an expired token: exp is the first instant it is invalid", function()
      local token = sign({}, { lifetime = 60 })
      assert.truthy(verify(token, { now = NOW + 59 }))
      refused("ERR_JWT_EXPIRED", "expired at 1700000060 (2023-11-14T22:14:20Z)", verify(token, { now = NOW + 60 }))
      refused("ERR_JWT_EXPIRED", nil, verify(token, { now = NOW + 3600 }))
    end)

    it("applies the clock tolerance to exp", function()
      local token = sign({}, { lifetime = 60 })
      assert.truthy(verify(token, { now = NOW + 89, clock_tolerance = 30 }))
      refused("ERR_JWT_EXPIRED", "tolerance 30s", verify(token, { now = NOW + 90, clock_tolerance = 30 }))
    end)

    it("refuses a token before nbf, with tolerance", function()
      local token = sign({ nbf = NOW + 100 }, { lifetime = 600 })
      refused("ERR_JWT_NOT_YET_VALID", "not valid before", verify(token, { now = NOW + 99 }))
      assert.truthy(verify(token, { now = NOW + 100 }))
      assert.truthy(verify(token, { now = NOW + 90, clock_tolerance = 10 }))
      refused("ERR_JWT_NOT_YET_VALID", nil, verify(token, { now = NOW + 89, clock_tolerance = 10 }))
    end)

    it("refuses a token issued in the future beyond the tolerance", function()
      local token = sign({ iat = NOW + 120 }, { lifetime = 600 })
      refused("ERR_JWT_ISSUED_IN_FUTURE", "issued in the future", verify(token))
      assert.truthy(verify(token, { clock_tolerance = 120 }))
    end)

    it("enforces a maximum age from iat, and then needs iat", function()
      local token = sign({}, { lifetime = 3600 })
      assert.truthy(verify(token, { now = NOW + 300, max_age = 300 }))
      refused("ERR_JWT_TOO_OLD", "more than 300s ago", verify(token, { now = NOW + 301, max_age = 300 }))
      assert.truthy(verify(token, { now = NOW + 310, max_age = 300, clock_tolerance = 10 }))
      local no_iat = raw(cjson.encode({ exp = NOW + 60 }))
      refused("ERR_JWT_CLAIM_MISSING", "'iat'", verify(no_iat, { max_age = 300 }))
    end)

    it("requires exp unless told otherwise, and sign's defaults give one", function()
      local claims = verify(sign({ sub = "default" }))
      assert.equals(NOW + jwt.DEFAULT_LIFETIME, claims.exp)
      assert.equals(300, jwt.DEFAULT_LIFETIME)
      local token = sign({ sub = "forever" }, { lifetime = false })
      refused("ERR_JWT_CLAIM_MISSING", "'exp'", verify(token))
      assert.equals("forever", verify(token, { require_exp = false }).sub)
    end)

    it("refuses time claims that are not finite numbers", function()
      refuses_payloads("ERR_JWT_CLAIM_INVALID", {
        { '{"exp":"1700000060"}', "'exp' must be a NumericDate" },
        { '{"exp":1e999}', "'exp' must be a NumericDate" }, -- cjson makes this infinity
        { '{"exp":-1e999}', "'exp' must be a NumericDate" },
        { '{"exp":1700000060,"nbf":null}', "'nbf' must be a NumericDate (a finite number of seconds), got null" },
        { '{"exp":1700000060,"iat":[1]}', "'iat' must be a NumericDate" },
      })
    end)
  end)

  describe("identity claims", function()
    local token

    setup(function()
      token = assert(jwt.sign(key, { sub = "alice", aud = { "api", "web" } },
        { now = NOW, kid = "k1", lifetime = 60, issuer = "https://issuer.example" }))
    end)

    it("checks iss against one accepted issuer or a list", function()
      assert.truthy(verify(token, { issuer = "https://issuer.example" }))
      assert.truthy(verify(token, { issuer = { "https://other.example", "https://issuer.example" } }))
      refused("ERR_JWT_ISSUER_MISMATCH", "'https://issuer.example' is not accepted",
        verify(token, { issuer = "https://other.example" }))
      local no_iss = sign({ sub = "x" }, { lifetime = 60 })
      refused("ERR_JWT_CLAIM_MISSING", "'iss'", verify(no_iss, { issuer = "https://issuer.example" }))
    end)

    it("checks aud: the token's string or list must hold an accepted audience", function()
      assert.truthy(verify(token, { audience = "web" }))
      assert.truthy(verify(token, { audience = { "other", "api" } }))
      refused("ERR_JWT_AUDIENCE_MISMATCH", "audience", verify(token, { audience = "admin" }))
      local single = sign({ aud = "api" }, { lifetime = 60 })
      assert.truthy(verify(single, { audience = { "api" } }))
      refused("ERR_JWT_AUDIENCE_MISMATCH", nil, verify(single, { audience = "ap" }))
      local none = sign({}, { lifetime = 60 })
      refused("ERR_JWT_CLAIM_MISSING", "'aud'", verify(none, { audience = "api" }))
      refused("ERR_JWT_CLAIM_INVALID", "'aud'", verify(raw('{"exp":1700000060,"aud":[]}'), { audience = "api" }))
      refused("ERR_JWT_CLAIM_INVALID", "'aud'", verify(raw('{"exp":1700000060,"aud":{"api":true}}'), { audience = "api" }))
    end)

    it("checks sub", function()
      assert.truthy(verify(token, { subject = "alice" }))
      refused("ERR_JWT_SUBJECT_MISMATCH", "'alice'", verify(token, { subject = "bob" }))
    end)

    it("checks typ, case-insensitively and with or without application/", function()
      assert.truthy(verify(token, { typ = "JWT" }))
      assert.truthy(verify(token, { typ = "jwt" }))
      assert.truthy(verify(token, { typ = "application/jwt" }))
      refused("ERR_JWT_TYPE_MISMATCH", "expected 'at+jwt'", verify(token, { typ = "at+jwt" }))
      local untyped = raw(cjson.encode({ exp = NOW + 60 }), '{"alg":"ES256","kid":"k1"}')
      refused("ERR_JWT_TYPE_MISMATCH", "typ is absent", verify(untyped, { typ = "JWT" }))
    end)

    it("requires the claims it is told to", function()
      assert.truthy(verify(token, { required_claims = { "sub", "aud" } }))
      refused("ERR_JWT_CLAIM_MISSING", "'jti'", verify(token, { required_claims = { "sub", "jti" } }))
    end)

    it("checks option types as programming errors", function()
      assert.has_error(function() verify(token, { clock_tolerance = -1 }) end)
      assert.has_error(function() verify(token, { audience = 5 }) end)
      assert.has_error(function() verify(token, { now = "noon" }) end)
      assert.has_error(function() jwt.verify(token, keys) end)
      assert.has_error(function() jwt.verify(token, keys, { now = NOW }) end)
    end)
  end)

  describe("claims sets that are not", function()
    it("refuses payloads that are not a strict JSON object", function()
      refuses_payloads("ERR_JWT_INVALID", {
        { "not json", "not a JSON object" },
        { "[1,2]", "not an object" },
        { '"claims"', "not an object" },
        { "null", "not an object" },
        { '{"exp":1700000060,"sub":"a","sub":"admin"}', "duplicate member name 'sub'" },
        { '{"exp":1700000060,"s\\u0075b":"a","sub":"admin"}', "duplicate member name 'sub'" },
        { '{"exp":1700000060}garbage', "after the JSON value" },
        { '{"exp":NaN}', "unexpected character" },
        { '{"exp":1700000060,"x":"\255"}', "UTF-8" },
      })
    end)

    it("refuses nested JWTs", function()
      local inner = sign({}, { lifetime = 60 })
      local outer = raw(inner, '{"alg":"ES256","kid":"k1","cty":"JWT"}')
      refused("ERR_JWT_INVALID", "nested", verify(outer))
    end)

    it("passes JWS failures through with their codes", function()
      local token = sign({}, { lifetime = 60 })
      refused("ERR_JOSE_ALG_NOT_ALLOWED", nil, verify(token, { algorithms = { "ES384" } }))
      refused("ERR_JWS_SIGNATURE_INVALID", nil, verify(token:sub(1, -3) .. (token:sub(-2) == "AA" and "AQ" or "AA")))
    end)
  end)

  it("writes claim text byte for byte: plain runs as they are, quote, backslash and controls escaped", function()
    local plain = string.rep("https://issuer.example/~a-Z_0.9 ", 4) .. "\127"
    local cases = {
      { plain, plain },
      { 'a"b\\c', 'a\\"b\\\\c' },
      { "\n\r\t\b\f\0\31", "\\n\\r\\t\\b\\f\\u0000\\u001f" },
      { "x\1yy\"", "x\\u0001yy\\\"" },
      { "caf\195\169 \226\130\172 \240\159\152\128!", "caf\195\169 \226\130\172 \240\159\152\128!" },
      { "", "" },
    }
    for _, c in ipairs(cases) do
      local payload = core.b64url_decode(sign({ x = c[1] }, { lifetime = 60 }):match("^[^.]+%.([^.]+)"))
      assert.truthy(payload:find('"x":"' .. c[2] .. '"', 1, true), payload)
      assert.equals(c[1], cjson.decode(payload).x)
    end
    local _, message, code = jwt.sign(key, { x = "ok then \255" }, { now = NOW, kid = "k1", lifetime = 60 })
    assert.equals("ERR_JWT_CLAIMS", code)
    assert.matches("UTF%-8", message)
  end)

  it("decodes without verifying, for routing only", function()
    local token = sign({ iss = "https://issuer.example" }, { lifetime = 60 })
    local claims, header = jwt.decode_unverified(token)
    assert.equals("https://issuer.example", claims.iss)
    assert.equals("k1", header.kid)
    local ok, _, code = jwt.decode_unverified("a.b")
    assert.is_nil(ok)
    assert.equals("ERR_JWS_INVALID", code)
  end)
end)

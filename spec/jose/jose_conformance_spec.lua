-- Conformance with the published examples: RFC 7515 A.2-A.4, RFC 7520
-- 4.1-4.3, RFC 8037 A.4 and RFC 7638 3.1 (spec/vectors). Each example
-- verifies; deterministic signatures (RS256, EdDSA) made by jwkengine over
-- the same input are byte-for-byte the published ones; and every one-bit
-- change to a token makes it fail.
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local jws = require("jwkengine.jws")
local jwk = require("jwkengine.jwk")
local helper = require("helpers.jose")
local refused = require("helpers.refusal").refused

-- Every example as { name, alg, jwk (private), protected, payload, signature, deterministic }.
local function examples()
  local list = {}
  for _, e in ipairs(helper.vector("rfc7515").examples) do
    list[#list + 1] = { name = "RFC 7515 " .. e.section, alg = e.alg, jwk = e.jwk, protected = e.protected,
      payload = e.payload, signature = e.signature, deterministic = e.deterministic }
  end
  local v7520 = helper.vector("rfc7520")
  for _, e in ipairs(v7520.examples) do
    list[#list + 1] = { name = "RFC 7520 " .. e.section, alg = e.alg, jwk = v7520.keys[e.key],
      protected = e.protected, payload = e.payload, signature = e.signature, deterministic = e.deterministic }
  end
  local v8037 = helper.vector("rfc8037")
  for _, e in ipairs(v8037.examples) do
    list[#list + 1] = { name = "RFC 8037 " .. e.section, alg = e.alg, jwk = v8037.jwk, protected = e.protected,
      payload = e.payload, signature = e.signature, deterministic = e.deterministic }
  end
  return list
end

describe("JOSE conformance with the RFC examples", function()
  it("has the payload text RFC 7520 section 4 describes", function()
    local v = helper.vector("rfc7520")
    assert.equals(v.payload_text, helper.unb64(v.examples[1].payload))
    assert.equals("Example of Ed25519 signing", helper.unb64(helper.vector("rfc8037").examples[1].payload))
  end)

  for _, e in ipairs(examples()) do
    local token = e.protected .. "." .. e.payload .. "." .. e.signature
    local public = helper.public_jwk(e.jwk)

    describe(e.name .. " (" .. e.alg .. ")", function()
      it("verifies with the published public key", function()
        local payload, header = jws.verify(token, { keys = { public } }, { algorithms = { e.alg } })
        assert.equals(helper.unb64(e.payload), payload)
        assert.equals(e.alg, header.alg)
      end)

      it("verifies with the public half of the imported private key", function()
        local key = assert(core.import_jwk(e.jwk))
        local candidate = { kid = e.jwk.kid, public_key = key:public_key() }
        assert.equals(helper.unb64(e.payload), (jws.verify(token, { candidate }, { algorithms = { e.alg } })))
      end)

      it("is refused when its algorithm is not in the allow-list", function()
        local other = e.alg == "RS256" and "PS256" or "RS256"
        refused("ERR_JOSE_ALG_NOT_ALLOWED", nil, jws.verify(token, { keys = { public } }, { algorithms = { other } }))
      end)

      if e.deterministic then
        it("is reproduced byte for byte by jwkengine's signature", function()
          local key = assert(core.import_jwk(e.jwk))
          assert.equals(token, key:sign_compact(e.protected, helper.unb64(e.payload), e.alg))
        end)
      else
        it("verifies jwkengine's own (randomized) signature over the same input", function()
          local key = assert(core.import_jwk(e.jwk))
          local ours = assert(key:sign_compact(e.protected, helper.unb64(e.payload), e.alg))
          assert.equals(e.protected .. "." .. e.payload .. ".", ours:sub(1, #e.protected + #e.payload + 2))
          assert.not_equals(token, ours)
          assert.truthy(jws.verify(ours, { keys = { public } }, { algorithms = { e.alg } }))
        end)
      end

      it("fails after any one-bit change (header, payload or signature)", function()
        local variants = helper.one_bit_variants(token)
        assert.is_true(#variants > 100)
        local accepted, codes = 0, {}
        for _, variant in ipairs(variants) do
          local ok, _, code = jws.verify(variant, { keys = { public } }, { algorithms = { e.alg } })
          if ok then accepted = accepted + 1 end
          codes[code or "none"] = true
        end
        assert.equals(0, accepted)
        -- a flipped payload or signature bit is a bad signature, not a parse error
        assert.is_true(codes.ERR_JWS_SIGNATURE_INVALID)
      end)

      it("fails when a character of the encoded token changes", function()
        local accepted = 0
        for pos = 1, #token do
          local c = token:sub(pos, pos)
          if c ~= "." then
            local swapped = c == "A" and "B" or "A"
            local variant = token:sub(1, pos - 1) .. swapped .. token:sub(pos + 1)
            if jws.verify(variant, { keys = { public } }, { algorithms = { e.alg } }) then
              accepted = accepted + 1
            end
          end
        end
        assert.equals(0, accepted)
      end)
    end)
  end

  describe("RFC 7638 thumbprints", function()
    local v7638 = helper.vector("rfc7638")

    it("builds the section 3.1 hash input and thumbprint", function()
      assert.equals(v7638.thumbprint_input, jwk.thumbprint_input(v7638.jwk))
      assert.equals(v7638.thumbprint_sha256, jwk.thumbprint(v7638.jwk))
      assert.equals(v7638.thumbprint_sha256, jwk.thumbprint(v7638.jwk, "SHA-256"))
      assert.equals("urn:ietf:params:oauth:jwk-thumbprint:sha-256:" .. v7638.thumbprint_sha256,
        jwk.thumbprint_uri(v7638.jwk))
    end)

    it("gives the RFC 8037 A.3 thumbprint of the Ed25519 key, public or private", function()
      local v8037 = helper.vector("rfc8037")
      assert.equals(v8037.thumbprint_sha256, jwk.thumbprint(helper.public_jwk(v8037.jwk)))
      assert.equals(v8037.thumbprint_sha256, jwk.thumbprint(v8037.jwk))
      assert.equals(v8037.thumbprint_sha256, jwk.thumbprint(assert(core.import_jwk(v8037.jwk))))
    end)

    it("ignores optional members and member order, and works from JSON text and key objects", function()
      local j = v7638.jwk
      local text = '{"kid":"other","n":"' .. j.n .. '","use":"sig","e":"AQAB","kty":"RSA"}'
      assert.equals(v7638.thumbprint_sha256, jwk.thumbprint(text))
      assert.equals(v7638.thumbprint_sha256, jwk.thumbprint(assert(core.public_key(j))))
    end)

    it("drops a leading zero byte of the modulus (section 3.3)", function()
      local j = v7638.jwk
      local padded = { kty = "RSA", e = j.e, n = helper.b64("\0" .. helper.unb64(j.n)) }
      assert.equals(v7638.thumbprint_sha256, jwk.thumbprint(padded))
    end)

    it("computes SHA-384 and SHA-512 thumbprints of RSA, EC and OKP keys as jwcrypto does", function()
      local keys = { v7638.jwk, helper.public_jwk(helper.vector("rfc7520").keys.ec),
        helper.public_jwk(helper.vector("rfc7515").examples[2].jwk),
        helper.public_jwk(helper.vector("rfc8037").jwk) }
      local theirs = helper.python([=[
import json, sys
from cryptography.hazmat.primitives import hashes
from jwcrypto import jwk
out = []
for k in json.load(open(sys.argv[1])):
    key = jwk.JWK(**k)
    out.append([key.thumbprint(h) for h in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512())])
print(json.dumps(out))
]=], keys)
      for i, key in ipairs(keys) do
        assert.equals(theirs[i][1], jwk.thumbprint(key, "SHA-256"))
        assert.equals(theirs[i][2], jwk.thumbprint(key, "SHA-384"))
        assert.equals(theirs[i][3], jwk.thumbprint(key, "SHA-512"))
        assert.equals(86, #jwk.thumbprint(key, "sha512"))
      end
    end)

    it("refuses symmetric and invalid keys, and unknown hashes", function()
      refused("ERR_JWK_INVALID", nil, jwk.thumbprint({ kty = "oct", k = "AAAA" }))
      refused("ERR_JWK_INVALID", nil, jwk.thumbprint({ kty = "EC", crv = "P-256", x = "AAAA", y = "AAAA" }))
      assert.has_error(function() jwk.thumbprint(v7638.jwk, "MD5") end)
    end)
  end)

  describe("examples jwkengine must refuse", function()
    it("refuses the RFC 7515 A.1 HMAC example and A.5 unsecured example", function()
      local a1 = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
      refused("ERR_JOSE_ALG_NOT_ALLOWED", "HMAC", jws.verify(a1, {}, { algorithms = { "RS256" } }))
      local a5 = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
      refused("ERR_JWS_INVALID", "unsecured", jws.verify(a5, {}, { algorithms = { "RS256" } }))
    end)

    it("refuses the RFC 7515 appendix E example, and its crit with a real algorithm", function()
      local e = "eyJhbGciOiJub25lIiwNCiAiY3JpdCI6WyJodHRwOi8vZXhhbXBsZS5jb20vVU5ERUZJTkVEIl0sDQogImh0dHA6Ly9leGFtcGxlLmNvbS9VTkRFRklORUQiOnRydWUNCn0.RkFJTA.AAAA"
      refused("ERR_JOSE_ALG_NOT_ALLOWED", nil, jws.verify(e, {}, { algorithms = { "RS256" } }))
      local header = helper.b64('{"alg":"RS256",\r\n "crit":["http://example.com/UNDEFINED"],\r\n "http://example.com/UNDEFINED":true\r\n}')
      refused("ERR_JWS_CRIT_UNSUPPORTED", "UNDEFINED",
        jws.verify(header .. ".RkFJTA.AAAA", {}, { algorithms = { "RS256" } }))
    end)
  end)
end)

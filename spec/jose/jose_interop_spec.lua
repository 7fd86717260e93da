-- Interoperability with independent JOSE implementations, for every
-- algorithm: tokens signed by jwkengine (keys in a SoftHSM token and
-- software keys) verify in python3-jwcrypto and in the npm `jose` package,
-- and tokens and JWK Sets made by those verify in jwkengine.
local cjson = require("cjson")
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local jwkengine = require("jwkengine")
local jwt = require("jwkengine.jwt")
local jwk = require("jwkengine.jwk")
local softhsm = require("helpers.softhsm")
local helper = require("helpers.jose")

local ALGORITHMS = helper.ALGORITHMS

-- The independent implementations: each verifies a list of { jwks, token,
-- alg } and signs a list of { alg, kid, claims } (spec/helpers/jose.lua).
local PEERS = {
  { who = "jwcrypto", package = "python3-jwcrypto", verify = helper.jwcrypto_verify, sign = helper.jwcrypto_sign },
  { who = "jose", package = "the npm jose package",
    verify = function(list) return helper.node("verify.mjs", list) end,
    sign = function(list) return helper.node("sign.mjs", list) end },
}

-- The HSM set of each algorithm: the RSA key (RS256, the only alg it signs
-- with) stands for the RSA family, each curve has its own set.
local HSM_SETS = {
  { set = "interop.rsa", alg = "RS256", kid = "hsm-rsa" },
  { set = "interop.es256", alg = "ES256", kid = "hsm-es256" },
  { set = "interop.es384", alg = "ES384", kid = "hsm-es384" },
  { set = "interop.es512", alg = "ES512", kid = "hsm-es512" },
  { set = "interop.eddsa", alg = "EdDSA", kid = "hsm-eddsa" },
}

local function hsm_set_for(alg)
  if alg:match("^[RP]S") then return HSM_SETS[1] end
  for _, s in ipairs(HSM_SETS) do
    if s.alg == alg then return s end
  end
end

-- A public JWK made to announce `alg` (RSA keys sign several algorithms,
-- and verifiers rightly refuse a key whose JWK names another one).
local function for_alg(public, alg)
  local copy = {}
  for k, v in pairs(public) do copy[k] = v end
  copy.alg = alg
  return copy
end

describe("JOSE interop", function()
  local engine, now
  local ours = {} -- { source, alg, token, jwks, claims }

  setup(function()
    now = os.time()
    local token = softhsm.new_token("interop")
    engine = assert(jwkengine.open({
      environment = softhsm.environment(token, { HSM_MIN_RSA_BITS = "2048" }),
      logger = false, startup = false,
    }))
    for _, s in ipairs(HSM_SETS) do
      assert(engine:generate(s.set, s.alg, { kid = s.kid, rsa_bits = 2048 }))
    end

    local software = {}
    for _, alg in ipairs(ALGORITHMS) do
      local kind = alg:match("^[RP]S") and "RSA" or alg
      software[kind] = software[kind] or assert(core.generate_software_key(alg, { bits = 2048 }))
    end

    for _, alg in ipairs(ALGORITHMS) do
      -- HSM: the engine signs the claims jwt.encode_claims makes, with
      -- each key's own alg (the only one a key signs with)
      local s = hsm_set_for(alg)
      if s.alg == alg then
        local claims = { sub = "hsm-" .. alg, aud = "interop" }
        local payload = assert(jwt.encode_claims(claims, { now = now, lifetime = 300, issuer = "jwkengine" }))
        local signed = assert(engine:sign(s.set, payload, { kid = s.kid, alg = alg, typ = "JWT" }))
        local jwks = assert(engine:key_set(s.set))
        ours[#ours + 1] = { source = "HSM", alg = alg, token = signed, payload = payload,
          jwks = { keys = { for_alg(jwks.keys[1], alg) } } }
      end

      -- software: jwt.sign with a key object
      local key = software[alg:match("^[RP]S") and "RSA" or alg]
      local kid = "sw-" .. alg
      signed = assert(jwt.sign(key, { sub = "software-" .. alg, aud = "interop" },
        { now = now, lifetime = 300, issuer = "jwkengine", alg = alg, kid = kid }))
      local public = key:public_jwk()
      public.kid, public.alg, public.use = kid, alg, "sig"
      ours[#ours + 1] = { source = "software", alg = alg, token = signed,
        payload = helper.unb64(signed:match("%.([^.]+)%.")), jwks = { keys = { public } } }
    end
  end)

  teardown(function()
    if engine then engine:close() end
    helper.npm_cleanup()
  end)

  it("signed a token for every algorithm with software keys, and for each HSM key's own alg", function()
    assert.equals(#ALGORITHMS + #HSM_SETS, #ours)
  end)

  -- Our tokens, and one tampered token that must fail, as verify cases.
  local function cases()
    local list = {}
    for _, t in ipairs(ours) do
      list[#list + 1] = { jwks = t.jwks, token = t.token, alg = t.alg }
    end
    local last = ours[1]
    local tampered = last.token:gsub("%.([^.]+)%.", "." .. helper.b64('{"sub":"admin"}') .. ".")
    list[#list + 1] = { jwks = last.jwks, token = tampered, alg = last.alg }
    return list
  end

  local function expect_verdicts(verdicts, who)
    assert.equals(#ours + 1, #verdicts)
    for i, t in ipairs(ours) do
      assert.is_true(verdicts[i].ok, string.format("%s refused %s %s: %s", who, t.source, t.alg,
        tostring(verdicts[i].error)))
      assert.equals(t.payload, verdicts[i].payload)
    end
    assert.is_false(verdicts[#verdicts].ok, who .. " accepted a tampered token")
  end

  for _, peer in ipairs(PEERS) do
    it("verifies in " .. peer.package, function()
      expect_verdicts(peer.verify(cases()), peer.who)
    end)
  end

  it("verifies in jwkengine itself, with the claim checks", function()
    for _, t in ipairs(ours) do
      local claims, header = jwt.verify(t.token, t.jwks, { algorithms = { t.alg }, now = now + 10,
        issuer = "jwkengine", audience = "interop", typ = "JWT" })
      assert.is_table(claims, header)
      assert.equals(t.alg, header.alg)
    end
  end)

  it("publishes JWK Sets that jwcrypto and jose accept as they are", function()
    -- the engine's own key set JSON, with each key's own algorithm
    local list = {}
    for _, t in ipairs(ours) do
      if t.source == "HSM" and hsm_set_for(t.alg).alg == t.alg then
        list[#list + 1] = { jwks = cjson.decode((assert(engine:key_set_json(hsm_set_for(t.alg).set)))),
          token = t.token, alg = t.alg }
      end
    end
    assert.equals(#HSM_SETS, #list)
    for _, peer in ipairs(PEERS) do
      local verdicts = peer.verify(list)
      assert.equals(#list, #verdicts)
      for i, v in ipairs(verdicts) do
        assert.is_true(v.ok, list[i].alg .. ": " .. tostring(v.error))
      end
    end
  end)

  describe("tokens and key sets from others", function()
    local function their_cases()
      local list = {}
      for _, alg in ipairs(ALGORITHMS) do
        list[#list + 1] = { alg = alg, kid = "theirs-" .. alg,
          claims = { sub = "them-" .. alg, iss = "elsewhere", aud = { "jwkengine", "x" }, iat = now, exp = now + 300 } }
      end
      return list
    end

    local function verify_theirs(signed, who)
      assert.equals(#ALGORITHMS, #signed)
      local combined = { keys = {} }
      for i, alg in ipairs(ALGORITHMS) do
        local s = signed[i]
        -- their JWK Set as JSON text, the way it would arrive from a jwks_uri
        local claims, header = jwt.verify(s.token, cjson.encode(s.jwks), { algorithms = { alg }, now = now + 10,
          issuer = "elsewhere", audience = "jwkengine", subject = "them-" .. alg, typ = "JWT" })
        assert.is_table(claims, who .. " " .. alg .. ": " .. tostring(header))
        assert.equals("theirs-" .. alg, header.kid)
        combined.keys[#combined.keys + 1] = s.jwks.keys[1]
      end
      -- all their keys in one set: each token finds its own key by kid
      local set = assert(jwk.parse_set(cjson.encode(combined), { strict = true }))
      assert.equals(#ALGORITHMS, #set)
      for i, alg in ipairs(ALGORITHMS) do
        local claims, err = jwt.verify(signed[i].token, set, { algorithms = ALGORITHMS, now = now })
        assert.is_table(claims, who .. " " .. alg .. ": " .. tostring(err))
        assert.equals(jwk.thumbprint(signed[i].jwks.keys[1]), jwk.thumbprint(set[i].public_key))
      end
      -- and a token from them fails when its algorithm is not allowed
      local ok, _, code = jwt.verify(signed[1].token, set, { algorithms = { "ES256" }, now = now })
      assert.is_nil(ok)
      assert.equals("ERR_JOSE_ALG_NOT_ALLOWED", code)
    end

    for _, peer in ipairs(PEERS) do
      it(string.format("verifies %s's tokens against %s's JWK Sets", peer.who, peer.who), function()
        verify_theirs(peer.sign(their_cases()), peer.who)
      end)
    end
  end)
end)

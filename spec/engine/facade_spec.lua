-- The Engine facade is the only way in (no manager reachable from outside),
-- and HSM and software keys answer one key interface. Real SoftHSM token,
-- real SQLite store.
local jwkengine = require("jwkengine")
local softhsm = require("helpers.softhsm")
local refused = require("helpers.refusal").refused

local SECRET = "facade-secret-0123456789"

-- A private key made outside jwkengine (as an operator brings one), PEM.
local function outside_key(curve)
  local pipe = assert(io.popen("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:" .. curve
    .. " 2>/dev/null"))
  local pem = pipe:read("a")
  pipe:close()
  assert(pem:find("PRIVATE KEY"), "openssl genpkey made no key")
  return pem
end


describe("the Engine facade", function()
  local token, db, engine

  local function environment(extra)
    local env = softhsm.environment(token, { SECRETS_SYSTEM = SECRET, DSN = "sqlite://" .. db })
    for k, v in pairs(extra or {}) do env[k] = v end
    return env
  end

  setup(function()
    token = softhsm.new_token("facade")
    db = os.tmpname()
    engine = assert(jwkengine.open({ environment = environment(), logger = false, startup = false }))
    assert(engine:generate("hsm-ec", "ES256", { kid = "hsm-ec" }))
    assert(engine:import("sw-ec", outside_key("P-256"), { kid = "sw-ec" }))
  end)
  teardown(function()
    engine:close()
    os.remove(db)
  end)

  it("keeps its managers out of reach", function()
    for _, name in ipairs({ "keys", "hsm", "software", "fallback" }) do
      assert.is_nil(engine[name], name)
    end
  end)

  it("gives the HSM's pool and recovery counters as engine:stats()", function()
    local stats = assert(engine:stats())
    for _, class in ipairs({ "session", "login", "object", "reinit" }) do
      assert.is_number(stats.recoveries[class], class)
    end
    assert.is_number(stats.failed_recoveries)
    assert.is_true(stats.max_sessions >= 1)
    local software_only = assert(jwkengine.open({ logger = false, startup = false,
      environment = { SECRETS_SYSTEM = SECRET, DSN = "sqlite://" .. db } }))
    refused("ERR_CONFIG", nil, software_only:stats())
    assert.is_nil(software_only:slot())
    software_only:close()
  end)

  it("names the HSM's slot as engine:slot()", function()
    local slot = assert(engine:slot())
    assert.equals(token.label, slot.label)
    local listed
    for _, s in ipairs(assert(jwkengine.slots(softhsm.LIBRARY))) do
      if s.label == token.label then listed = s end
    end
    assert.equals(listed.id, slot.id)
  end)

  it("ensure_startup_sets generates the missing sets and keeps the present ones", function()
    local before = assert(engine:key_set("hsm-ec")).keys[1].kid
    assert.is_true(engine:ensure_startup_sets({ { set = "hsm-ec", alg = "ES256" },
      { set = "started", alg = "ES256" } }))
    assert.equals(before, assert(engine:key_set("hsm-ec")).keys[1].kid)
    assert.equals(1, #assert(engine:key_set("started")).keys)
    assert.has_error(function() engine:ensure_startup_sets("started") end)
  end)

  it("reload reads a set again now, and trusts the HSM again once it holds the set", function()
    local clock = 1000
    local cached = assert(jwkengine.open({ environment = environment(), logger = false, startup = false,
      now = function() return clock end, hsm = { negative_cache_ttl = 60 } }))
    assert(cached:import("reloaded", outside_key("P-256"), { kid = "in-software" }))
    assert.equals("in-software", assert(cached:key_set("reloaded")).keys[1].kid)
    -- an operator adds a pair to the token behind the engine's back (kid "op")
    local out, ok = softhsm.pkcs11_tool(token,
      "--keypairgen --key-type EC:prime256v1 --usage-sign --label reloaded --id 6f70")
    assert.is_true(ok, out)
    assert.equals("in-software", assert(cached:key_set("reloaded")).keys[1].kid)
    assert.equals("op", assert(cached:reload("reloaded")).keys[1].kid)
    -- the HSM's earlier "not found" is forgotten: its set is served and signs
    assert.equals("op", assert(cached:key_set("reloaded")).keys[1].kid)
    local _, header = assert(cached:verify("reloaded", assert(cached:sign("reloaded", "x"))))
    assert.equals("op", header.kid)
    refused("ERR_KEY_SET_NOT_FOUND", nil, cached:reload("nowhere"))
    cached:close()
  end)

  it("update replaces a key and import never does, whatever its options say", function()
    local first, second = outside_key("P-256"), outside_key("P-256")
    local first_x = assert(engine:import("updated", first, { kid = "k" })).x
    refused("ERR_KEY_EXISTS", nil, engine:import("updated", second, { kid = "k", replace = true }))
    assert.same(first_x, assert(engine:key("updated", "k")).x)
    local second_x = assert(engine:update("updated", second, { kid = "k" })).x
    assert.are_not.same(first_x, second_x)
    assert.same(second_x, assert(engine:key("updated", "k")).x)
  end)

  it("answers every facade method of a closed engine with ERR_CLOSED", function()
    local closing = assert(jwkengine.open({ environment = environment(), logger = false, startup = false }))
    closing:close()
    refused("ERR_CLOSED", nil, closing:stats())
    refused("ERR_CLOSED", nil, closing:reload("hsm-ec"))
    refused("ERR_CLOSED", nil, closing:signing_key("hsm-ec"))
    refused("ERR_CLOSED", nil, closing:ensure_startup_sets({ { set = "hsm-ec", alg = "ES256" } }))
  end)

  describe("one key interface", function()
    local METHODS = { "kid", "alg", "use", "kty", "bits", "is_private", "public_jwk", "public_key",
      "fits", "sign", "sign_compact", "sign_timed" }

    it("HSM and software keys answer the same methods", function()
      local hsm_key = assert(engine:signing_key("hsm-ec"))
      local software_key = assert(engine:signing_key("sw-ec"))
      for _, key in ipairs({ hsm_key, software_key }) do
        for _, method in ipairs(METHODS) do assert.is_function(key[method], method) end
        assert.equals("EC", key:kty())
        assert.equals(256, key:bits())
        assert.is_true(key:is_private())
        assert.equals("P-256", key:public_jwk().crv)
        assert.is_true(key:fits("ES256"))
        local fits, why, code = key:fits("ES384")
        assert.is_nil(fits)
        assert.is_string(why)
        assert.equals("ERR_KEY_USE", code)
        local signature = assert(key:sign("input", "ES256"))
        assert.equals(64, #signature)
        assert.is_true(key:public_key():verify("ES256", "input", signature))
      end
      -- an HSM key is bound to its kid, alg and use; a software key to none
      -- (its store row holds them)
      assert.equals("hsm-ec", hsm_key:kid())
      assert.equals("ES256", hsm_key:alg())
      assert.equals("sig", hsm_key:use())
      assert.equals("hsm-ec", hsm_key:public_jwk().kid)
      assert.is_nil(software_key:kid())
      assert.is_nil(software_key:alg())
      assert.is_nil(software_key:use())
    end)

    it("jws.sign signs with both kinds alike; a bound key only with its alg", function()
      local jws = jwkengine.jws
      for _, set in ipairs({ "hsm-ec", "sw-ec" }) do
        local key = assert(engine:signing_key(set))
        local token_text = assert(jws.sign(key, "payload", { kid = set }))
        assert.equals("payload", (engine:verify(set, token_text)))
      end
      refused("ERR_KEY_USE", nil, jws.sign(assert(engine:signing_key("hsm-ec")), "x", { alg = "ES384" }))
      local p384_jwk = assert(engine:import("sw-p384", outside_key("P-384"), { kid = "p384" }))
      local token_text = assert(jws.sign(assert(engine:signing_key("sw-p384")), "x"))
      assert.equals("x", (jws.verify(token_text, p384_jwk, { algorithms = { "ES384" } })))
    end)
  end)
end)

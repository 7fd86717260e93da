-- engine:health() against a SoftHSM token through the fault module: ok
-- when the token is present and each set's probe verifies; the failing
-- part named when the token is pulled, the probe is slower than the budget,
-- the token refuses the login, or the probe's signature does not verify
-- (verify-after-sign off, the module corrupting it); probes are not
-- counted as signatures. Budgets on the passing side are
-- generous, so a loaded machine cannot fail them; the "too slow" case has
-- the module add 300 ms to C_Sign against a 50 ms budget, which load only
-- makes slower.
local jwkengine = require("jwkengine")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")

describe("engine:health()", function()
  local token, engine

  setup(function()
    faults.check_environment()
    faults.set({})
    token = softhsm.new_token("health")
  end)

  -- a fresh engine per test: a pulled token leaves the engine's handles
  -- stale (re-finding keys after an outage is the PKCS#11 layer's work)
  before_each(function()
    faults.set({})
    engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup_sets = { { set = "h.es", alg = "ES256" }, { set = "h.ed", alg = "EdDSA" } },
      hsm = { reinit_interval_ms = 1 } }))
  end)

  after_each(function()
    faults.set({})
    engine:close()
  end)

  it("is ok with a verified probe per startup set, naming its kid and alg", function()
    local result = engine:health({ budget = 60 })
    assert.are.equal("ok", result.status, result.failure)
    assert.is_nil(result.failure)
    assert.are.equal("ok", result.checks.token)
    assert.are.equal("ES256", result.checks.sets["h.es"].alg)
    assert.are.equal("EdDSA", result.checks.sets["h.ed"].alg)
    assert.are.equal(assert(engine:signing_key("h.es")):kid(), result.checks.sets["h.es"].kid)
    assert.is_true(result.checks.sets["h.es"].ok)
  end)

  it("names 'token not present' when the token is pulled, without signing", function()
    faults.set({ removed = 1 })
    local result = engine:health({ budget = 60 })
    assert.are.equal("unavailable", result.status)
    assert.are.equal("token not present", result.failure)
    assert.are.same({}, result.checks.sets)
  end)

  it("names 'probe too slow' when a signature takes longer than the budget", function()
    faults.set({ latency = "C_Sign:300000" })
    local result = engine:health({ sets = { "h.es" }, budget = 0.05 })
    faults.set({})
    assert.are.equal("unavailable", result.status)
    assert.matches("^h%.es: probe too slow", result.failure)
    assert.is_false(result.checks.sets["h.es"].ok)
    assert.is_true(result.checks.sets["h.es"].seconds >= 0.3)
  end)

  it("names 'login refused' when the token logged out and will not take the PIN again", function()
    faults.set({ faults = "C_SignInit:CKR_USER_NOT_LOGGED_IN@1", token_flags = "CKF_USER_PIN_LOCKED" })
    local result = engine:health({ sets = { "h.es" }, budget = 60 })
    faults.set({})
    assert.are.equal("unavailable", result.status)
    assert.are.equal("h.es: login refused", result.failure)
  end)

  -- verify-after-sign off: only the probe's own verification stands
  -- between a corrupted signature and "ok"
  it("names 'probe did not verify' when the token returns a wrong signature and nothing else checks it", function()
    local unchecked = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, hsm = { verify_after_sign = false } }))
    assert.are.equal("ok", unchecked:health({ sets = { "h.es" }, budget = 60 }).status)
    faults.set({ corrupt_signature = 1 })
    local result = unchecked:health({ sets = { "h.es" }, budget = 60 })
    faults.set({})
    unchecked:close()
    assert.are.equal("unavailable", result.status)
    assert.are.equal("h.es: probe did not verify", result.failure)
    assert.is_false(result.checks.sets["h.es"].ok)
  end)

  it("does not count its probe signatures as the engine's signatures", function()
    local prometheus = require("helpers.prometheus")
    for _ = 1, 3 do assert.are.equal("ok", engine:health({ budget = 60 }).status) end
    local m = prometheus.parse(engine:metrics({ sets = { "h.es" } }))
    assert.are.equal(0, prometheus.sum(m, "jwkengine_signatures_total"))
    assert.are.equal(0, prometheus.sum(m, "jwkengine_signing_duration_seconds_count"))
    -- a signature of the engine's own is counted (the check above can fail)
    assert(engine:sign("h.es", "counted"))
    m = prometheus.parse(engine:metrics({ sets = { "h.es" } }))
    assert.are.equal(1, prometheus.sum(m, "jwkengine_signatures_total", { set = "h.es" }))
  end)

  it("raises for a budget that is not a positive number (a programming error)", function()
    assert.has_error(function() engine:health({ budget = 0 }) end)
    assert.has_error(function() engine:health({ budget = "1" }) end)
  end)
end)

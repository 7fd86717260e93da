-- engine:metrics(): Prometheus text exposition of one process, read back
-- with Debian's python3-prometheus-client parser and checked against the
-- calls the test made, on a SoftHSM token with the software store behind
-- it, and through the fault module for PKCS#11 recoveries.
local jwkengine = require("jwkengine")
local faults = require("helpers.faults")
local prometheus = require("helpers.prometheus")
local softhsm = require("helpers.softhsm")

local SECRETS = { SECRETS_SYSTEM = "a-secret-of-24-characters", DSN = "memory" }
-- a kid with the characters the format escapes in a label value (a kid
-- holds no line feed)
local ODD_KID = 'q"uo\\te'

local function ec_pem()
  local out, ok = softhsm.run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>&1")
  assert(ok, out)
  return out
end

describe("engine:metrics()", function()
  local token, engine

  setup(function()
    token = softhsm.new_token("metrics")
    engine = assert(jwkengine.open({ environment = softhsm.environment(token, SECRETS), startup = false,
      logger = false }))
    assert(engine:generate("m.hsm", "ES256", { kid = "h1" }))
    assert(engine:import("m.soft", ec_pem(), { kid = ODD_KID, alg = "ES256" }))
  end)

  teardown(function() engine:close() end)

  it("counts every signature, failure and fallback exactly, by set, kid, alg and backend", function()
    local before = prometheus.parse(engine:metrics())
    assert.are.equal(0, prometheus.sum(before, "jwkengine_signatures_total"))
    local N, S, F = 7, 3, 2
    for i = 1, N do
      local jwt = assert(engine:sign_jwt("m.hsm", { sub = "user" .. i }, { lifetime = 60 }))
      assert.truthy(engine:verify_jwt("m.hsm", jwt))
    end
    for i = 1, S do
      local jws = assert(engine:sign("m.soft", "payload " .. i))
      assert.truthy(engine:verify("m.soft", jws))
    end
    for _ = 1, F do
      local jws, _, code = engine:sign("m.hsm", "x", { kid = "no-such-kid" })
      assert.is_nil(jws)
      assert.are.equal("ERR_KEY_NOT_FOUND", code)
    end

    local m = prometheus.parse(engine:metrics())
    assert.are.equal("counter", m.jwkengine_signatures.type)
    assert.are.equal(N, prometheus.sum(m, "jwkengine_signatures_total",
      { set = "m.hsm", kid = "h1", alg = "ES256", backend = "hsm" }))
    assert.are.equal(S, prometheus.sum(m, "jwkengine_signatures_total",
      { set = "m.soft", kid = ODD_KID, alg = "ES256", backend = "software" }))
    assert.are.equal(N + S, prometheus.sum(m, "jwkengine_signatures_total"))
    assert.are.equal(F, prometheus.sum(m, "jwkengine_signing_failures_total", { code = "ERR_KEY_NOT_FOUND" }))
    assert.are.equal(F, prometheus.sum(m, "jwkengine_signing_failures_total"))
    -- every call the HSM held no key for went on to the store: the software
    -- set's signatures, and the unknown kid (which the store lacks too)
    assert.are.equal(S, prometheus.sum(m, "jwkengine_fallbacks_total", { set = "m.soft" }))
    assert.are.equal(F, prometheus.sum(m, "jwkengine_fallbacks_total", { set = "m.hsm" }))
  end)

  it("hands each call's counts over from a last_call recorder (nginx's thread VMs), exactly", function()
    -- an engine of its own, as a thread VM opens one, counting into a
    -- last_call recorder; each call's counts are added to another recorder
    local metrics = require("jwkengine.metrics")
    local relay = jwkengine.open({ environment = softhsm.environment(token, SECRETS), startup = false,
      logger = false, metrics = metrics.last_call() })
    assert(relay:import("m.soft", ec_pem(), { kid = ODD_KID, alg = "ES256" }))
    local counts = metrics.new()
    local function relayed(set, ok, ...)
      counts:add_call(set, relay.metrics_recorder:take())
      return ok, ...
    end
    local N, S, F = 5, 4, 3
    for i = 1, N do assert(relayed("m.hsm", relay:sign_jwt("m.hsm", { sub = "user" .. i }, { lifetime = 60 }))) end
    for i = 1, S do assert(relayed("m.soft", relay:sign("m.soft", "payload " .. i))) end
    for _ = 1, F do
      local jws, _, code = relayed("m.hsm", relay:sign("m.hsm", "x", { kid = "no-such-kid" }))
      assert.is_nil(jws)
      assert.are.equal("ERR_KEY_NOT_FOUND", code)
    end
    relay:close()
    local m = prometheus.parse(metrics.text(counts:counters()))
    assert.are.equal(N, prometheus.sum(m, "jwkengine_signatures_total",
      { set = "m.hsm", kid = "h1", alg = "ES256", backend = "hsm" }))
    assert.are.equal(S, prometheus.sum(m, "jwkengine_signatures_total",
      { set = "m.soft", kid = ODD_KID, alg = "ES256", backend = "software" }))
    assert.are.equal(N, prometheus.sum(m, "jwkengine_signing_duration_seconds_count", { backend = "hsm" }))
    assert.are.equal(S, prometheus.sum(m, "jwkengine_signing_duration_seconds_count", { backend = "software" }))
    assert.are.equal(F, prometheus.sum(m, "jwkengine_signing_failures_total", { code = "ERR_KEY_NOT_FOUND" }))
    assert.are.equal(S, prometheus.sum(m, "jwkengine_fallbacks_total", { set = "m.soft" }))
    assert.are.equal(F, prometheus.sum(m, "jwkengine_fallbacks_total", { set = "m.hsm" }))
  end)

  it("has a signing-latency histogram per backend whose count is the number of signatures", function()
    local m = prometheus.parse(engine:metrics())
    local family = m.jwkengine_signing_duration_seconds
    assert.are.equal("histogram", family.type)
    local signed = prometheus.sum(m, "jwkengine_signatures_total", { backend = "hsm" })
    assert.is_true(signed > 0)
    assert.are.equal(signed, prometheus.sum(m, "jwkengine_signing_duration_seconds_count", { backend = "hsm" }))
    assert.are.equal(signed, prometheus.sum(m, "jwkengine_signing_duration_seconds_bucket",
      { backend = "hsm", le = "+Inf" }))
    assert.is_true(prometheus.sum(m, "jwkengine_signing_duration_seconds_sum", { backend = "hsm" }) > 0)
    -- cumulative buckets from 50 microseconds to 1 s, never decreasing
    local buckets = {}
    for _, s in ipairs(prometheus.samples(m, "jwkengine_signing_duration_seconds_bucket")) do
      if s.labels.backend == "hsm" then buckets[#buckets + 1] = s end
    end
    assert.are.equal(15, #buckets)
    assert.are.equal("5e-05", buckets[1].labels.le)
    assert.are.equal("1", buckets[14].labels.le)
    for i = 2, #buckets do assert.is_true(buckets[i].value >= buckets[i - 1].value) end
  end)

  it("shows the lifecycle state of each published key, and the HSM's session pool", function()
    local m = prometheus.parse(engine:metrics())
    assert.are.equal("gauge", m.jwkengine_key_state.type)
    assert.are.equal(1, prometheus.sum(m, "jwkengine_key_state", { set = "m.hsm", kid = "h1", state = "current" }))
    local stats = assert(engine:stats())
    assert.are.equal(stats.max_sessions, prometheus.sum(m, "jwkengine_pkcs11_max_sessions"))
    assert.is_true(prometheus.sum(m, "jwkengine_pkcs11_sessions_open") >= 1)
    assert.are.equal(stats.sessions_opened, prometheus.sum(m, "jwkengine_pkcs11_sessions_opened_total"))
  end)

  -- python's parser keeps an escape it does not know (\t stays \t), so
  -- ODD_KID above reads back even unescaped: these two would not
  it("escapes a backslash in a label value: a kid with '\\n' in it, or ending in '\\', reads back byte for byte",
    function()
      local kids = { "a\\nb", "ends\\" }
      for i, kid in ipairs(kids) do -- a set each: the only key of a set signs
        assert(engine:import("m.esc" .. i, ec_pem(), { kid = kid, alg = "ES256" }))
        assert(engine:sign("m.esc" .. i, "payload"))
      end
      local text = engine:metrics()
      assert.truthy(text:find('kid="a\\\\nb"', 1, true), text)
      assert.truthy(text:find('kid="ends\\\\"', 1, true), text)
      local m = prometheus.parse(text)
      for i, kid in ipairs(kids) do
        assert.are.equal(1, prometheus.sum(m, "jwkengine_signatures_total", { set = "m.esc" .. i, kid = kid }), kid)
      end
    end)

  it("writes HELP and TYPE once per family and nothing the parser would reject", function()
    local text = engine:metrics()
    local seen = {}
    for name in text:gmatch("# TYPE (%S+)") do
      assert.is_nil(seen[name], name)
      seen[name] = true
      assert.truthy(text:find("# HELP " .. name .. " ", 1, true), name)
      assert.truthy(name:match("^jwkengine_[a-z0-9_]+$"), name)
    end
    assert.truthy(seen.jwkengine_signatures_total)
  end)
end)

describe("engine:metrics() through the fault module", function()
  local token, engine

  setup(function()
    faults.check_environment()
    faults.set({})
    token = softhsm.new_token("metrics-faults")
    engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false, logger = false,
      hsm = { reinit_interval_ms = 1 } }))
    assert(engine:generate("r", "ES256", { kid = "r1" }))
  end)

  teardown(function()
    faults.set({})
    engine:close()
  end)

  it("counts PKCS#11 recoveries by kind, failed recoveries, and failures by their CKR code", function()
    faults.set({ faults = "C_Sign:CKR_SESSION_HANDLE_INVALID@1" })
    assert.truthy(engine:sign("r", "recovered"))
    faults.set({ faults = "C_SignInit:CKR_USER_NOT_LOGGED_IN@1" })
    assert.truthy(engine:sign("r", "logged in again"))
    faults.set({ faults = "C_Sign:CKR_FUNCTION_FAILED@1" })
    local jws, _, code = engine:sign("r", "fails")
    assert.is_nil(jws)
    assert.are.equal("CKR_FUNCTION_FAILED", code)
    faults.set({})
    local m = prometheus.parse(engine:metrics())
    local stats = assert(engine:stats())
    assert.are.equal(1, prometheus.sum(m, "jwkengine_pkcs11_recoveries_total", { kind = "session" }))
    assert.are.equal(1, prometheus.sum(m, "jwkengine_pkcs11_recoveries_total", { kind = "login" }))
    assert.are.equal(0, prometheus.sum(m, "jwkengine_pkcs11_recoveries_total", { kind = "reinit" }))
    assert.are.equal(stats.failed_recoveries, prometheus.sum(m, "jwkengine_pkcs11_failed_recoveries_total"))
    assert.are.equal(1, prometheus.sum(m, "jwkengine_signing_failures_total", { code = "CKR_FUNCTION_FAILED" }))
    assert.are.equal(2, prometheus.sum(m, "jwkengine_signatures_total", { set = "r", backend = "hsm" }))
  end)

  it("counts a vendor's own CKR values under one label value, whatever their number", function()
    for _, rv in ipairs({ "0x80000001", "0x80000002", "0x8000abcd" }) do
      faults.set({ faults = "C_Sign:" .. rv .. "@1" })
      local jws, err, code = engine:sign("r", "vendor")
      assert.is_nil(jws)
      assert.are.equal("CKR_" .. rv, code, err) -- the call's own code keeps the number
    end
    faults.set({})
    local m = prometheus.parse(engine:metrics())
    assert.are.equal(3, prometheus.sum(m, "jwkengine_signing_failures_total", { code = "CKR_VENDOR_DEFINED" }))
    for _, family in pairs(m) do
      for _, sample in ipairs(family.samples) do
        assert.is_nil((sample.labels.code or ""):find("^CKR_0x"), "a vendor CKR label: " .. tostring(sample.labels.code))
      end
    end
  end)
end)

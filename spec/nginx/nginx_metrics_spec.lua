-- /metrics and /health of the documented nginx configuration
-- (scripts/examples/nginx.conf) on real nginx with 4 workers: requests
-- spread over the workers are summed in the shared dict, read back with
-- Debian's python3-prometheus-client parser; the health check answers 200
-- on a healthy token, 503 naming the part when the token is pulled (the
-- fault module) or the login is refused, and probes at most once per
-- cache period per worker.
local cjson = require("cjson")
local faults = require("helpers.faults")
local nginx = require("helpers.nginx")
local prometheus = require("helpers.prometheus")
local softhsm = require("helpers.softhsm")

local ID_SET, ACCESS_SET = "hydra.openid.id-token", "hydra.jwt.access-token"

-- Scrapes until `done(families)` holds (each worker flushes its counts
-- every second, on its own timer), then returns the last scrape. The
-- deadline is generous: a loaded machine only makes this slower.
local function scrape_until(server, done)
  local deadline, families = os.time() + 60, nil
  repeat
    local response = server:requests({ { path = "/metrics" } })[1]
    assert.are.equal(200, response.status)
    assert.truthy(response.headers["content-type"]:find("text/plain; version=0.0.4", 1, true))
    families = prometheus.parse(response.body)
    if done(families) then return families end
    nginx.sleep(0.5)
  until os.time() > deadline
  return families
end

local function get(server, path, headers)
  return server:requests({ { path = path, headers = headers } })[1]
end

-- The example configuration with a probe budget no loaded machine can
-- exceed: these tests expect a healthy token to answer 200 (a budget
-- overrun is health_spec's "probe too slow"); the cache period stays 5 s.
local function generous_budget(text)
  return nginx.replace_once(text, "-- health = { budget = 1, cache = 5 },",
    "health = { budget = 60, cache = 5 },")
end

describe("nginx /metrics (4 workers, SoftHSM)", function()
  local server, token

  setup(function()
    token = softhsm.new_token("nginx-metrics")
    server = nginx.new({ token = token, workers = 4, refresh = 2, sets = { ID_SET, ACCESS_SET },
      render = function(opts) return generous_budget(nginx.render_config(opts)) end })
    server:start(60)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("sums signatures and JWK Set requests made on several workers, exactly", function()
    local N, M, K = 40, 12, 5
    local result = server:tokens("/token", N, 4)
    assert.are.equal(N, result.valid, cjson.encode(result))
    assert.is_true(#result.workers >= 2, "the tokens came from one worker: " .. cjson.encode(result.workers))
    -- tokens() fetched the JWK Set once to verify; server:start waited for it once
    local etag
    for _ = 1, M do etag = get(server, "/.well-known/jwks.json").headers.etag end
    for _ = 1, K do
      assert.are.equal(304, get(server, "/.well-known/jwks.json", { ["If-None-Match"] = etag }).status)
    end
    -- the session gauges are each worker's last flush, kept for a few flush
    -- intervals: a worker whose timer a loaded machine held back drops out
    -- of one scrape, so they are waited for too
    local families = scrape_until(server, function(f)
      return prometheus.sum(f, "jwkengine_signatures_total") >= N
        and prometheus.sum(f, "jwkengine_jwks_requests_total", { status = "304" }) >= K
        and prometheus.sum(f, "jwkengine_pkcs11_sessions_open") >= 4
    end)
    assert.are.equal(N, prometheus.sum(families, "jwkengine_signatures_total",
      { set = ACCESS_SET, alg = "ES256", backend = "hsm" }))
    assert.are.equal(N, prometheus.sum(families, "jwkengine_signatures_total"))
    assert.are.equal(N, prometheus.sum(families, "jwkengine_signing_duration_seconds_count", { backend = "hsm" }))
    assert.are.equal(K, prometheus.sum(families, "jwkengine_jwks_requests_total", { status = "304" }))
    -- 200s: ours, the one tokens() made, and the start's wait (at least one)
    local ok = prometheus.sum(families, "jwkengine_jwks_requests_total", { status = "200" })
    assert.is_true(ok >= M + 2, "200s: " .. ok)
    assert.are.equal(1, prometheus.sum(families, "jwkengine_key_state", { set = ACCESS_SET, state = "current" }))
    -- a pooled session per worker (its engine read the sets through one;
    -- login sessions are not counted)
    assert.is_true(prometheus.sum(families, "jwkengine_pkcs11_sessions_open") >= 4)
  end)

  -- Prometheus expects every bucket of a histogram on every scrape, zeros
  -- included: the same buckets engine:metrics() prints, bucket for bucket
  it("serves every bucket of the signing histogram that engine:metrics() prints, empty ones included", function()
    local engine = assert(softhsm.open_engine(softhsm.environment(token)))
    assert(engine:sign(ACCESS_SET, "payload"))
    local own = prometheus.parse(engine:metrics())
    engine:close()
    local function le(sample) return tonumber(sample.labels.le) or math.huge end -- "+Inf"
    local function buckets(families)
      local list = {}
      for _, sample in ipairs(prometheus.samples(families, "jwkengine_signing_duration_seconds_bucket")) do
        if sample.labels.backend == "hsm" then list[#list + 1] = sample end
      end
      table.sort(list, function(a, b) return le(a) < le(b) end)
      return list
    end
    local function bounds(list)
      local out = {}
      for i, sample in ipairs(list) do out[i] = sample.labels.le end
      return out
    end
    local expected = buckets(own)
    assert.are.equal(15, #expected)
    -- a scrape with nothing signed since the last one serves them all too
    local families = scrape_until(server, function() return true end)
    local served = buckets(families)
    assert.are.same(bounds(expected), bounds(served))
    for i = 2, #served do assert.is_true(served[i].value >= served[i - 1].value, served[i].labels.le) end
    assert.are.equal(prometheus.sum(families, "jwkengine_signing_duration_seconds_count", { backend = "hsm" }),
      served[#served].value)
    -- and every series engine:metrics() prints at 0 (PKCS#11 recoveries by kind)
    local kinds = {}
    for _, sample in ipairs(prometheus.samples(families, "jwkengine_pkcs11_recoveries_total")) do
      kinds[#kinds + 1] = sample.labels.kind
    end
    table.sort(kinds)
    assert.are.same({ "login", "object", "reinit", "session" }, kinds)
  end)

  it("counts signatures made in the thread pool in the worker's metrics, exactly", function()
    -- /token-threaded (helpers.nginx) signs the ID-token set in nginx's
    -- thread pool (thread_pool = "jwkengine"); nothing else signs with it
    -- before the health checks below
    local N = 24
    local result = server:tokens("/token-threaded", N, 4)
    assert.are.equal(N, result.valid, cjson.encode(result))
    -- workers flush on their own timers: wait until every count is in
    local function hsm_signatures(f) return prometheus.sum(f, "jwkengine_signatures_total", { backend = "hsm" }) end
    local function hsm_observations(f)
      return prometheus.sum(f, "jwkengine_signing_duration_seconds_count", { backend = "hsm" })
    end
    local families = scrape_until(server, function(f)
      return prometheus.sum(f, "jwkengine_signatures_total", { set = ID_SET }) >= N
        and hsm_signatures(f) == hsm_observations(f)
    end)
    assert.are.equal(N, prometheus.sum(families, "jwkengine_signatures_total",
      { set = ID_SET, alg = "RS256", backend = "hsm" }))
    assert.are.equal(N, prometheus.sum(families, "jwkengine_signatures_total", { set = ID_SET }))
    -- one histogram observation per signature, the threads' with the rest
    assert.are.equal(hsm_signatures(families), hsm_observations(families))
    assert.are.equal(0, prometheus.sum(families, "jwkengine_signing_failures_total"))
  end)

  it("answers /health with 200 and a probe per published set, reused within the cache period", function()
    -- the signatures so far, every worker's flush in
    nginx.sleep(1.5)
    local signed = prometheus.sum(scrape_until(server, function() return true end), "jwkengine_signatures_total")
    local response = get(server, "/health")
    assert.are.equal(200, response.status, response.body)
    local body = cjson.decode(response.body)
    assert.are.equal("ok", body.status)
    assert.are.equal("ok", body.checks.engine)
    assert.are.equal("ok", body.checks.token)
    for _, set in ipairs({ ID_SET, ACCESS_SET }) do
      assert.is_true(body.checks.sets[set].ok, set)
      assert.truthy(body.checks.sets[set].kid)
      assert.is_true(body.checks.sets[set].seconds >= 0)
    end
    assert.are.equal("RS256", body.checks.sets[ID_SET].alg)
    -- many checks within one cache period (5 s): at most one probe per worker
    local started = os.time()
    for _ = 1, 30 do assert.are.equal(200, get(server, "/health").status) end
    local elapsed = os.time() - started + 1
    local families = scrape_until(server, function() return true end)
    nginx.sleep(1.5) -- let every worker flush its probe count
    families = scrape_until(server, function() return true end)
    local probes = prometheus.sum(families, "jwkengine_health_probes_total")
    local periods = math.floor(elapsed / 5) + 1
    assert.is_true(probes >= 1 and probes <= 4 * (periods + 1), "probes: " .. probes .. " in " .. elapsed .. " s")
    assert.is_true(probes < 31, "a probe per request: " .. probes)
    -- a probe is not a signature the endpoint made
    assert.are.equal(signed, prometheus.sum(families, "jwkengine_signatures_total"))
  end)
end)

-- One worker on the fault module; its control file reaches the worker
-- through two more env directives.
local function through_faults(token)
  return nginx.new({ token = token, workers = 1,
    render = function(opts)
      return nginx.replace_once(generous_budget(nginx.render_config(opts)), "env SOFTHSM2_CONF;",
        "env SOFTHSM2_CONF;\nenv JWKE_FAULT_CONTROL;\nenv JWKE_FAULT_STATS;")
    end,
    environment = { HSM_LIBRARY = faults.MODULE, JWKE_FAULT_CONTROL = os.getenv("JWKE_FAULT_CONTROL"),
      JWKE_FAULT_STATS = os.getenv("JWKE_FAULT_STATS") } })
end

describe("nginx /health through the fault module", function()
  local server, token

  setup(function()
    faults.check_environment()
    faults.set({})
    token = softhsm.new_token("nginx-health")
  end)

  after_each(function()
    if server then server:dispose() end
    server = nil
    faults.set({})
  end)

  it("answers 503 naming 'token not present' when the token is pulled, and 200 once it is back", function()
    server = through_faults(token)
    server:start(60)
    assert.are.equal(200, get(server, "/health").status)
    faults.set({ removed = 1 })
    local deadline, response = os.time() + 30, nil
    repeat -- the worker reuses its last result for health.cache seconds
      response = get(server, "/health")
      if response.status == 503 then break end
      nginx.sleep(0.5)
    until os.time() > deadline
    assert.are.equal(503, response.status, response.body)
    local body = cjson.decode(response.body)
    assert.are.equal("unavailable", body.status)
    assert.truthy(body.failure:find("token not present", 1, true), body.failure)
    faults.set({})
    deadline = os.time() + 30
    repeat
      response = get(server, "/health")
      if response.status == 200 then break end
      nginx.sleep(0.5)
    until os.time() > deadline
    assert.are.equal(200, response.status, response.body)
  end)

  -- the thread-pool VMs' engines are not the worker's: what their PKCS#11
  -- layer recovered from, and the sessions they hold, reach /metrics too
  it("serves the PKCS#11 recoveries and sessions of the thread pool's engines", function()
    server = through_faults(token)
    server:start(60)
    if not server:signs_in_threads("/token-threaded", pending) then return end
    local sign = { method = "POST", path = "/token-threaded", headers = { ["Content-Type"] = "application/json" },
      body = '{"sub":"threaded"}' }
    assert.are.equal(200, server:requests({ sign })[1].status) -- a thread VM opened its engine
    -- the token forgets the login once: the VM's engine logs in again
    -- (the worker's own engine signs nothing meanwhile)
    faults.set({ faults = "C_SignInit:CKR_USER_NOT_LOGGED_IN@1" })
    local r = server:requests({ sign })[1]
    faults.set({})
    assert.are.equal(200, r.status, r.body)
    local families = scrape_until(server, function(f)
      return prometheus.sum(f, "jwkengine_pkcs11_recoveries_total", { kind = "login" }) >= 1
    end)
    assert.are.equal(1, prometheus.sum(families, "jwkengine_pkcs11_recoveries_total", { kind = "login" }))
    assert.are.equal(0, prometheus.sum(families, "jwkengine_pkcs11_failed_recoveries_total"))
    -- one worker, whose VMs signed twice: one or two engines, a session each
    local thread_sessions = prometheus.sum(families, "jwkengine_pkcs11_thread_sessions")
    assert.is_true(thread_sessions >= 1 and thread_sessions <= 2, "thread sessions: " .. thread_sessions)
    assert.are.equal("gauge", families.jwkengine_pkcs11_thread_sessions.type)
  end)

  it("answers 503 naming 'login refused' when the token refuses to log in", function()
    server = through_faults(token)
    faults.set({ token_flags = "CKF_USER_PIN_LOCKED" })
    server:start(60, true)
    local deadline, body = os.time() + 30, nil
    repeat -- 503 "not open yet" until the worker has tried
      local response = get(server, "/health")
      assert.are.equal(503, response.status)
      body = cjson.decode(response.body)
      if body.failure ~= "not open yet" then break end
      nginx.sleep(0.5)
    until os.time() > deadline
    assert.are.equal("login refused", body.failure, cjson.encode(body))
    assert.falsy(cjson.encode(body):find(softhsm.PIN, 1, true))
  end)
end)

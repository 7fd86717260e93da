-- Several HSMs under real nginx (issue 24): a set's keys on two tokens,
-- the primary a SoftHSM token behind p11-kit's remoting (the stand-in for
-- a network HSM, spec/helpers/p11kit.lua), the second a local SoftHSM
-- token; 4 workers; two strict caching clients (spec/nginx/client.py
-- rotation: each token verified with jwcrypto against the JWK Set cached
-- exactly as Cache-Control says, never refetched on an unknown kid). The
-- primary's server (and every p11-kit-remote it forked) is killed for
-- OUTAGE seconds, then started again, while both clients run:
--   /token           a set that does not rotate, whose retain (the
--                    default, tokens.max_lifetime + clock_tolerance) is
--                    shorter than the outage: the primary's key leaves
--                    the JWK Set while it is down, and must be published
--                    again before the primary signs with it
--   /token-rotating  a set rotating every PERIOD seconds across the
--                    outage, whose retain outlasts it (the primary's keys
--                    stay published while it is down); the outage begins
--                    right after a worker made the next key, which the
--                    other workers may not have read yet: when the
--                    primary returns, that key is overdue, and every
--                    worker must publish it before it signs
local cjson = require("cjson")
local chaos = require("helpers.chaos")
local jose = require("helpers.jose")
local nginx = require("helpers.nginx")
local p11kit = require("helpers.p11kit")
local prometheus = require("helpers.prometheus")
local softhsm = require("helpers.softhsm")
local util = require("jwkengine.util")

local MAX_AGE, REFRESH, CACHE_TTL, LIFETIME = 2, 1, 1, 3
-- the rotating set: the shortest prepublish the safety rules allow
-- (max_age + refresh + cache_ttl), a retain longer than the outage, and a
-- period short enough that each token rotates while the clients run
local PREPUBLISH, RETAIN, PERIOD = 4, 30, 6
-- seconds the primary stays quiet before it signs again: short, the
-- spec has a time budget
local FAILBACK_AFTER = 1
-- seconds the clients run before the kill (about: the kill waits for the
-- next key, due PERIOD after the one before, give or take the schedule's
-- second), and after the restart: enough for the primary to come back and
-- sign a while -- its module's backoff (at most hsm.reinit_interval_max_ms,
-- 2 s), a probe a second, and failback_after or, where the primary's keys
-- may have to be published again first, the publication window
-- (max_age + refresh + cache_ttl = PREPUBLISH)
local LEAD, OUTAGE, AFTER = 1.5, 5, 9
local STEADY, ROTATING = "multi-steady", "multi-rotating"
-- the steady set's keys stay published this long after their token went
-- down: less than the outage
local STEADY_RETAIN = LIFETIME -- tokens.max_lifetime + clock_tolerance (0)
assert(STEADY_RETAIN < OUTAGE and RETAIN > OUTAGE + AFTER)

local retried = nginx.retried

-- The configuration file: both sets, their timings, and the two tokens
-- (the first the primary).
local function config_tail(primary, second)
  local text = nginx.rotation_config({ { set = STEADY },
    { set = ROTATING, period = PERIOD, prepublish = PREPUBLISH, retain = RETAIN } },
    { max_age = MAX_AGE, refresh = REFRESH, lifetime = LIFETIME, cache_ttl = CACHE_TTL })
  -- each token's PIN in a file of its own (HSM_PIN would be one token's)
  local function entry(library, token)
    local pin_file = primary.dir .. "/" .. token.label .. ".pin"
    softhsm.write_file(pin_file, token.pin .. "\n")
    return string.format("    - { library: %q, token_label: %q, pin_file: %q }\n", library, token.label, pin_file)
  end
  return text .. "hsm:\n  enabled: true\n  failback_after: " .. FAILBACK_AFTER .. "\n  tokens:\n"
    .. entry(p11kit.CLIENT, primary.token) .. entry(softhsm.LIBRARY, second)
end

-- The documented configuration with POST /token on STEADY, a second
-- token endpoint on ROTATING, and the client module's server address
-- passed on to the workers.
local function render(opts)
  local text = nginx.render_rotation(opts, { max_age = MAX_AGE, set = STEADY, lifetime = LIFETIME })
  text = nginx.replace_once(text, "env SOFTHSM2_CONF;", "env SOFTHSM2_CONF;\nenv P11_KIT_SERVER_ADDRESS;")
  return nginx.replace_once(text, "        location = /token {", string.format([[
        location = /token-rotating {
            content_by_lua_block {
                require("jwkengine.nginx").serve_token({ set = %q, lifetime = %d })
            }
        }

        location = /token {]], ROTATING, LIFETIME))
end

-- The kids (hex of CKA_ID) of a set's private keys on a SoftHSM token, read
-- with pkcs11-tool straight from the token's files: the primary's too,
-- whether its p11-kit server runs or not.
local function kids_on(token, set)
  return retried(function()
    local out, ok = softhsm.pkcs11_tool(token, "--login --list-objects --type privkey")
    if not ok then return nil, "pkcs11-tool --list-objects: " .. out end
    return softhsm.ids(softhsm.parse_objects(out), set)
  end)
end

local function kid_of(jws)
  return softhsm.hex(jose.header(jws).kid)
end

local function count(map)
  return #util.sorted_keys(map)
end

-- Waits until every worker publishes a key of each set on each token.
local function wait_published(server)
  local list = {}
  for i = 1, 16 do list[i] = { path = "/.well-known/jwks.json" } end
  local deadline = os.time() + 60
  while true do
    local workers, complete = {}, true
    for _, r in ipairs(server:requests(list)) do
      workers[r.headers["x-jwke-worker"]] = true
      complete = complete and r.status == 200 and #cjson.decode(r.body).keys >= 4
    end
    if complete and count(workers) == server.workers then return end
    assert(os.time() < deadline, "not every worker publishes both tokens' keys:\n" .. server:log():sub(-4000))
    nginx.sleep(0.3)
  end
end

describe("nginx over two HSMs: the primary behind p11-kit goes down for " .. OUTAGE .. " s", function()
  local primary, second, server
  local stopping, down_at, up_at, runs

  setup(function()
    primary = p11kit.new({ label = "multi-primary" })
    second = softhsm.new_token("multi-second")
    server = nginx.new({ workers = 4, refresh = REFRESH, sets = { STEADY, ROTATING },
      startup_sets = config_tail(primary, second), render = render,
      environment = { HSM_LIBRARY = false, HSM_TOKEN_LABEL = false, HSM_PIN = false,
        P11_KIT_SERVER_ADDRESS = primary:address() } })
    server:start(60)
    chaos.wait_signing(server, 16)
    wait_published(server)
  end)

  teardown(function()
    if server then server:dispose() end
    if primary then primary:dispose() end
  end)

  -- Which token each token of a run was signed by, and when, against the
  -- outage: before (received before the kill began), during (sent after
  -- the server and its children were gone, received before the restart),
  -- after (sent after the restart).
  local function check_run(run, set, path)
    local on_primary, on_second = kids_on(primary.token, set), kids_on(second, set)
    local phases = { before = {}, during = {}, after = {} }
    local failed = {}
    for _, t in ipairs(run.tokens) do
      if not t.ok then
        failed[#failed + 1] = string.format("%s (worker %s, sent %.2f s after the kill began)", t.error,
          tostring(t.worker), t.sent - stopping)
      end
    end
    assert.are.equal(0, #failed, path .. ": failed requests or verifications ("
      .. #failed .. " of " .. #run.tokens .. "): " .. cjson.encode({ table.unpack(failed, 1, 5) })
      .. "\n" .. server:log():sub(-4000))
    for _, t in ipairs(run.tokens) do
      local kid = softhsm.hex(t.kid)
      local by = on_primary[kid] and "primary" or on_second[kid] and "second"
      assert.is_string(by, path .. ": kid " .. kid .. " is on neither token")
      local phase = t.received < stopping and "before" or (t.sent > down_at and t.received < up_at) and "during"
        or t.sent > up_at and "after"
      if phase then
        local tally = phases[phase]
        tally[by] = (tally[by] or 0) + 1
        tally.kids = tally.kids or {}
        tally.kids[t.kid] = by
      end
    end
    -- Beyond what this client's cache happened to see: no worker signed
    -- with a key that a JWK Set any worker served in the max_age before
    -- lacked (a client caching that answer could not verify the token).
    -- The probes of both clients count.
    local unpublished, worst = 0, nil
    for _, t in ipairs(run.tokens) do
      for _, other in pairs(runs) do
        for _, p in ipairs(other.probes) do
          if p.status == 200 and p.received <= t.sent and t.received < p.sent + MAX_AGE
              and not nginx.contains(p.kids, t.kid) then
            unpublished = unpublished + 1
            if not worst or t.sent - p.received < worst.gap then
              worst = { gap = t.sent - p.received, token = t, probe = p }
            end
          end
        end
      end
    end
    assert.are.equal(0, unpublished, worst and string.format("%s: %d tokens signed with a key a JWK Set served "
      .. "less than max_age (%d s) before lacked; e.g. kid %s, signed %.2f s after the kill began, %.2f s after "
      .. "worker %s served a JWK Set without it (%s); the key is on the %s token", path, unpublished, MAX_AGE,
      worst.token.kid, worst.token.sent - stopping, worst.gap, tostring(worst.probe.worker),
      table.concat(worst.probe.kids, ", "), on_primary[softhsm.hex(worst.token.kid)] and "primary" or "second"))
    print(string.format("%s: %d tokens, every one verified; %s", path, #run.tokens, cjson.encode(phases)))
    assert.is_true((phases.before.primary or 0) > 5, path .. ": too few tokens before the outage")
    assert.is_nil(phases.before.second, path .. ": the second token signed while the primary was up")
    assert.is_true((phases.during.second or 0) > 20, path .. ": too few tokens during the outage")
    assert.is_nil(phases.during.primary, path .. ": the primary signed while its server was down")
    assert.is_true((phases.after.primary or 0) > 0, path .. ": the primary never signed again")
    return phases
  end

  -- Waits until a worker logs that it made a next key of the rotating set
  -- (after byte `from` of the error log).
  local function wait_prepublished(from, timeout)
    local deadline = chaos.now() + timeout
    local pattern = "key set '" .. ROTATING:gsub("%-", "%%-") .. "': key '[^']+' new %-> next"
    while not server:log():find(pattern, from + 1) do
      assert(chaos.now() < deadline, "no next key of " .. ROTATING .. " within " .. timeout .. " s:\n"
        .. server:log():sub(-3000))
      nginx.sleep(0.05)
    end
  end

  -- GET /metrics, parsed; and the sum of one series over the workers
  local function scrape()
    local r = server:requests({ { path = "/metrics" } })[1]
    assert.are.equal(200, r.status, r.body)
    local families = prometheus.parse(r.body)
    return function(sample, labels) return prometheus.sum(families, sample, labels) end
  end

  it("signs every request, with the second token's key during the outage and the primary's after; every worker is back on the primary",
    function()
      -- the kill falls right after the rotating set's next key is made (by
      -- one worker, on both tokens; the others read it within refresh):
      -- a key whose prepublication the outage cuts short
      wait_prepublished(#server:log(), 2 * PERIOD + 2)
      nginx.sleep(PERIOD - LEAD)
      local seconds = LEAD + 1.5 + OUTAGE + AFTER
      local steady = server:client_start({ "rotation", server.port, "/token", seconds })
      local rotating = server:client_start({ "rotation", server.port, "/token-rotating", seconds })
      wait_prepublished(#server:log(), LEAD + 1.5)
      stopping = chaos.now()
      primary:stop()
      down_at = chaos.now()
      -- halfway: every worker has signed on the second token by now
      nginx.sleep(OUTAGE / 2)
      local health_list = {}
      for i = 1, 16 do health_list[i] = { path = "/health" } end
      local during = { health = server:requests(health_list), metric = scrape() }
      nginx.sleep(math.max(0, down_at + OUTAGE - chaos.now()))
      primary:start()
      up_at = chaos.now()
      runs = { steady = steady(), rotating = rotating() }
      check_run(runs.steady, STEADY, "/token")

      -- every worker signs with the primary's key again: each answers
      -- with it (the last answer of each worker counts)
      local on_primary = kids_on(primary.token, STEADY)
      local list = {}
      for i = 1, 16 do
        list[i] = { method = "POST", path = "/token", headers = { ["Content-Type"] = "application/json" },
          body = '{"sub":"back"}' }
      end
      local deadline, back = os.time() + 30, {}
      while count(back) < server.workers do
        for _, r in ipairs(server:requests(list)) do
          assert.are.equal(200, r.status, r.body)
          back[r.headers["x-jwke-worker"]] = on_primary[kid_of(r.body)] or nil
        end
        assert(os.time() < deadline, "not every worker is back on the primary: " .. cjson.encode(back)
          .. "\n" .. server:log():sub(-4000))
        if count(back) < server.workers then nginx.sleep(0.3) end
      end

      -- what the workers said during the outage: /health degraded but
      -- 200 (one token signs), /metrics summed over the workers
      for _, r in ipairs(during.health) do
        assert.are.equal(200, r.status, r.body)
        assert.are.equal("degraded", cjson.decode(r.body).status, r.body)
      end
      local workers = server.workers
      assert.are.equal(0, during.metric("jwkengine_hsm_token_up", { token = "1" }))
      assert.are.equal(workers, during.metric("jwkengine_hsm_token_up", { token = "2" }))
      assert.are.equal(0, during.metric("jwkengine_hsm_token_signing", { token = "1" }))
      assert.are.equal(workers, during.metric("jwkengine_hsm_token_signing", { token = "2" }))
      -- and after: every worker's gauge back on the primary (flushed
      -- every metrics.flush_interval), each worker's failovers counted
      deadline = os.time() + 10
      while true do
        local metric = scrape()
        if metric("jwkengine_hsm_token_signing", { token = "1" }) == workers then
          assert.are.equal(0, metric("jwkengine_hsm_token_signing", { token = "2" }))
          assert.are.equal(workers, metric("jwkengine_hsm_token_up", { token = "1" }))
          assert.is_true(metric("jwkengine_hsm_failovers_total") >= workers)
          break
        end
        assert(os.time() < deadline, "/metrics: not every worker signs on token 1")
        nginx.sleep(0.5)
      end
    end)

  it("keeps the scheduled rotation running across the outage: every token verifies, on both tokens' keys",
    function()
      assert.is_table(runs, "the outage did not run")
      local phases = check_run(runs.rotating, ROTATING, "/token-rotating")
      -- the schedule rotated while the client ran: more keys signed than
      -- one per token
      local kids = {}
      for _, phase in pairs(phases) do
        for kid in pairs(phase.kids or {}) do kids[kid] = true end
      end
      assert.is_true(count(kids) >= 3, "no rotation while the client ran: " .. cjson.encode(phases))
    end)
end)

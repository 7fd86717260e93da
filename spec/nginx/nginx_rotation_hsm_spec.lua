-- Rotation of HSM sets in real nginx over a SoftHSM token, whose key states
-- live on the token (a CKO_DATA object beside the pairs): the operator's
-- pkcs11-tool workflow under a caching client, and two nginx instances
-- running the key schedule on one token at once. The client
-- (spec/nginx/client.py) caches the JWK Set exactly as Cache-Control says
-- and never refetches on an unknown kid. Periods are seconds long.
local cjson = require("cjson")
local faults = require("helpers.faults")
local hsm_states = require("jwkengine.lifecycle.token_backend")
local nginx = require("helpers.nginx")
local softhsm = require("helpers.softhsm")
local jwkengine = require("jwkengine")

local MAX_AGE, REFRESH, CACHE_TTL, LIFETIME = 2, 1, 1, 3
-- the minimums of the safety rules: max_age + refresh + cache_ttl, and
-- max_lifetime + clock_tolerance (0) + max_age
local PREPUBLISH, RETAIN = 4, 5
local PERIOD = 7
local GENERATION_US = 1500000

local SEED, TWIN = "seed-hsm", "twin-hsm"
local OPERATOR_KID = "operator-key"

-- The configuration file of the workers and of this spec: a set with no
-- period (its keys come from the operator), or one rotating every PERIOD.
local function config_tail(set, period)
  return nginx.rotation_config({ { set = set, period = period, prepublish = PREPUBLISH, retain = RETAIN } },
    { max_age = MAX_AGE, refresh = REFRESH, lifetime = LIFETIME, cache_ttl = CACHE_TTL })
end

-- environment: extra variables for nginx (the workers see
-- JWKE_FAULT_LATENCY_US too, for the fault module).
local function new_server(token, set, period, workers, environment)
  return nginx.new({ token = token, workers = workers, refresh = REFRESH, sets = { set },
    startup_sets = config_tail(set, period), environment = environment,
    render = function(opts)
      local text = nginx.render_rotation(opts, { max_age = MAX_AGE, set = set, lifetime = LIFETIME })
      return nginx.replace_once(text, "env SOFTHSM2_CONF;", "env SOFTHSM2_CONF;\nenv JWKE_FAULT_LATENCY_US;")
    end })
end

local retried = nginx.retried

-- The set's keys with their states and times, as a process sharing the
-- token reads them.
local function key_states(server, token, set)
  return retried(function()
    local engine, err = jwkengine.open({ environment = softhsm.environment(token),
      config = server.prefix .. "/jwkengine.yaml", startup = false, logger = false })
    if not engine then return nil, err end
    local states
    states, err = engine:key_states(set)
    engine:close()
    return states, err
  end)
end

-- The CKA_IDs (hex) of the set's private and public halves on the token.
local function pair_ids(token, set)
  local ids = {}
  for _, class in ipairs({ "privkey", "pubkey" }) do
    ids[class] = {}
    for _, object in ipairs(softhsm.objects(token, class)) do
      if object.label == set then table.insert(ids[class], object.id) end
    end
    table.sort(ids[class])
  end
  return ids
end

-- Waits until every worker publishes a key: right after startup a worker
-- may still serve the set without the key another worker generated, and
-- the specs are about rotation, not startup.
local function wait_published(server)
  local list = {}
  for i = 1, 16 do list[i] = { path = "/.well-known/jwks.json" } end
  local deadline = os.time() + 30
  while true do
    local workers, count, empty = {}, 0, false
    for _, r in ipairs(server:requests(list)) do
      if r.status ~= 200 or #cjson.decode(r.body).keys == 0 then empty = true end
      if not workers[r.headers["x-jwke-worker"]] then count = count + 1 end
      workers[r.headers["x-jwke-worker"]] = true
    end
    if not empty and count == server.workers then return end
    assert(os.time() < deadline, "not every worker publishes a key:\n" .. server:log())
    nginx.sleep(0.2)
  end
end

local function failures(tokens)
  local failed = {}
  for _, t in ipairs(tokens) do
    if not t.ok then failed[#failed + 1] = t.error end
  end
  return failed
end

-- The kids that signed, in the order they first did, with the first and
-- last token of each.
local function signers(tokens)
  local kids, first, last = {}, {}, {}
  for _, t in ipairs(tokens) do
    if not first[t.kid] then
      first[t.kid] = t
      kids[#kids + 1] = t.kid
    end
    last[t.kid] = t
  end
  return kids, first, last
end

describe("nginx over an HSM: an operator's pkcs11-tool pair rotates in with no failed verification", function()
  local token, server

  setup(function()
    token = softhsm.new_token("nginx-seed")
    server = new_server(token, SEED, nil, 4)
    server:start(60)
    wait_published(server)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("publishes the new pair on every worker, then signs with it after prepublish", function()
    local finish = server:client_start({ "rotation", server.port, "/token", 3 * PREPUBLISH + 4 })
    nginx.sleep(3)
    retried(function()
      local out, ok = softhsm.pkcs11_tool(token, string.format("--keypairgen --key-type EC:prime256v1 "
        .. "--usage-sign --label %s --id %s", SEED, softhsm.hex(OPERATOR_KID)))
      if ok then return out end
      return nil, "pkcs11-tool --keypairgen: " .. out
    end)
    local run = finish()
    local tokens, probes = run.tokens, run.probes
    assert.is_true(#tokens > 30, "too few tokens: " .. #tokens)
    local failed = failures(tokens)
    assert.are.equal(0, #failed, cjson.encode({ table.unpack(failed, 1, 5) }) .. "\n" .. server:log():sub(-4000))

    -- the startup key signed first, the operator's key last
    local kids, first = signers(tokens)
    assert.are.equal(2, #kids, "kids signed: " .. cjson.encode(kids))
    assert.are.equal(OPERATOR_KID, kids[2])
    assert.are.equal(OPERATOR_KID, tokens[#tokens].kid)

    -- published before it signed, and from the first token it signed on,
    -- in the JWK Set of every worker the probes reached
    local published_before, after, workers = false, 0, {}
    for _, p in ipairs(probes) do
      if p.received < first[OPERATOR_KID].sent and nginx.contains(p.kids, OPERATOR_KID) then
        published_before = true
      end
      if p.sent > first[OPERATOR_KID].received then
        after = after + 1
        workers[p.worker] = true
        assert.is_true(nginx.contains(p.kids, OPERATOR_KID),
          "worker " .. tostring(p.worker) .. " did not publish the key another worker signed with\n"
          .. server:log():sub(-4000))
      end
    end
    assert.is_true(published_before, "no probe saw the new key before it signed")
    assert.is_true(after > 10, "too few probes after the new key signed: " .. after)

    -- it went through next for exactly prepublish, recorded on the token
    local operator
    for _, key in ipairs(key_states(server, token, SEED)) do
      if key.kid == OPERATOR_KID then operator = key end
    end
    assert.is_table(operator, "the engine does not list the operator's key")
    assert.are.equal("current", operator.state)
    assert.are.equal(PREPUBLISH, operator.times.current - operator.times.next, cjson.encode(operator))
  end)
end)

describe("nginx over an HSM: two instances running the key schedule on one token", function()
  local token, servers = nil, {}

  setup(function()
    token = softhsm.new_token("nginx-twin")
    -- One after the other: the startup generation is locked per instance.
    -- Through the fault module, key generation takes longer than the
    -- schedule's interval (as RSA on a network HSM can): the other
    -- instance always runs the schedule while a claimed key is still
    -- being made.
    for i = 1, 2 do
      servers[i] = new_server(token, TWIN, PERIOD, 2,
        { HSM_LIBRARY = faults.MODULE, JWKE_FAULT_LATENCY_US = "C_GenerateKeyPair:" .. GENERATION_US })
      servers[i]:start(60)
      wait_published(servers[i])
    end
  end)

  teardown(function()
    for _, server in ipairs(servers) do server:dispose() end
  end)

  it("makes exactly one key per cycle, never two next keys, and clients of both verify every token", function()
    local seconds = 3 * PERIOD + 3
    local finish = {}
    for i, server in ipairs(servers) do
      finish[i] = server:client_start({ "rotation", server.port, "/token", seconds })
    end
    local runs, kids_signed = {}, {}
    for i, done in ipairs(finish) do runs[i] = done() end
    for i, run in ipairs(runs) do
      assert.is_true(#run.tokens > 20, "server " .. i .. ": too few tokens: " .. #run.tokens)
      local failed = failures(run.tokens)
      assert.are.equal(0, #failed, "server " .. i .. ": " .. cjson.encode({ table.unpack(failed, 1, 5) })
        .. "\n" .. servers[i]:log():sub(-4000))
      kids_signed[i] = signers(run.tokens)
    end

    local states = key_states(servers[1], token, TWIN)
    -- every pair on the token is a key of the set, each CKA_ID once
    local ids, seen = pair_ids(token, TWIN), {}
    assert.are.same(ids.privkey, ids.pubkey)
    for _, id in ipairs(ids.privkey) do
      assert.is_nil(seen[id], "duplicate CKA_ID " .. id)
      seen[id] = true
    end
    local kids = {}
    for _, key in ipairs(states) do kids[#kids + 1] = softhsm.hex(key.kid) end
    table.sort(kids)
    assert.are.same(ids.privkey, kids)

    -- The generated keys in the order they were made: each made no
    -- earlier than its cycle says (period - prepublish after the one
    -- before it became current), so no cycle made two; and no two keys
    -- were ever next at the same time.
    local made = {}
    for _, key in ipairs(states) do
      if key.times.next then made[#made + 1] = key end
    end
    table.sort(made, function(a, b) return a.times.next < b.times.next end)
    assert.is_true(#made >= 3, "cycles run: " .. cjson.encode(states))
    for i = 2, #made do
      local before, key = made[i - 1], made[i]
      assert.is_number(before.times.current, "a key was made while another was next: " .. cjson.encode(made))
      assert.is_true(key.times.next >= before.times.current + PERIOD - PREPUBLISH,
        "a key was made before its cycle: " .. cjson.encode(made))
    end
    -- one state object per set on the token, whatever the races left,
    -- beside its marker (two first writes at once may leave two)
    local data = {}
    for _, object in ipairs(softhsm.objects(token, "data")) do
      if object.label == TWIN then data[object.application] = (data[object.application] or 0) + 1 end
    end
    assert.are.equal(1, data[hsm_states.APPLICATION], cjson.encode(data))
    assert.is_true((data[hsm_states.MARKER_APPLICATION] or 0) >= 1, cjson.encode(data))
    -- both instances signed through the rotations
    for i = 1, 2 do
      assert.is_true(#kids_signed[i] >= 2, "server " .. i .. " signed with " .. cjson.encode(kids_signed[i]))
    end
  end)
end)

-- Publication follows the key schedule, in real nginx (4 workers) over a
-- software-store set in SQLite shared by the workers, with a real client
-- (spec/nginx/client.py) that caches the JWK Set exactly as Cache-Control
-- says and never refetches on an unknown kid. Periods are seconds long.
local cjson = require("cjson")
local cli = require("helpers.cli")
local nginx = require("helpers.nginx")
local jwkengine = require("jwkengine")

local SCHEDULED, EMERGENCY = "rotating", "emergency"
-- a second scheduled set on another schedule: the JWK Set's max-age must
-- stop at the earlier of the two sets' next changes
local SECOND = "rotating-b"
-- a set no worker has read before its records are corrupted
local CORRUPT = "corrupt"
local SECRET = "a-rotation-spec-secret-of-40-characters!"
local MAX_AGE, REFRESH, CACHE_TTL, LIFETIME = 2, 1, 1, 3
local PERIOD, PREPUBLISH, RETAIN = 12, 4, 6
local SECOND_PERIOD = 9
-- Three kids sign within 2 * PERIOD of the first key; the first previous
-- key is gone by PERIOD + RETAIN + REFRESH.
local CLIENT_SECONDS = 2 * PERIOD + 8
-- Slack for nginx's timers on a loaded machine, added to every deadline
-- the engine promises.
local TIMER_SLACK = 1

-- The configuration file the workers, the CLI and this spec read: the
-- publication settings agree with nginx's jwks settings (init() refuses
-- them otherwise), and the rotation policy passes the safety rules.
local CONFIG_TAIL = nginx.rotation_config({
  { set = SCHEDULED, period = PERIOD, prepublish = PREPUBLISH, retain = RETAIN },
  { set = SECOND, period = SECOND_PERIOD, prepublish = PREPUBLISH, retain = RETAIN },
  { set = EMERGENCY },
}, { max_age = MAX_AGE, refresh = REFRESH, lifetime = LIFETIME, cache_ttl = CACHE_TTL })

local function render(opts)
  local text = nginx.render_rotation(opts, { max_age = MAX_AGE, set = SCHEDULED, lifetime = LIFETIME })
  return nginx.replace_once(text, "        location = /token {", [[
        location = /token-emergency {
            content_by_lua_block { require("jwkengine.nginx").serve_token({ set = "]] .. EMERGENCY .. [[" }) }
        }

        location = /token-corrupt {
            content_by_lua_block { require("jwkengine.nginx").serve_token({ set = "]] .. CORRUPT .. [[" }) }
        }

        location = /token {]])
end

-- The kid in a compact JWS's protected header.
local function kid_of(token)
  local header = assert(jwkengine.b64url_decode(token:match("^([^.]+)%.")))
  return cjson.decode(header).kid
end

describe("nginx: publication follows the key schedule", function()
  local server, environment

  setup(function()
    server = nginx.new({ workers = 4, refresh = REFRESH, sets = { SCHEDULED, SECOND, EMERGENCY },
      startup_sets = CONFIG_TAIL, render = render })
    environment = { HSM_ENABLED = "false", HSM_LIBRARY = false, HSM_TOKEN_LABEL = false, HSM_PIN = false,
      DSN = "sqlite://" .. server.prefix .. "/keys.sqlite", SECRETS_SYSTEM = SECRET,
      JWKENGINE_CONFIG = server.prefix .. "/jwkengine.yaml" }
    server.environment = environment
    server:start(60)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  -- The set's keys with their states and times, as every process reads them.
  local function key_states(set)
    local engine = assert(jwkengine.open({ config = environment.JWKENGINE_CONFIG, dsn = environment.DSN,
      secrets = { system = { SECRET } }, startup = false, logger = false }))
    local states = assert(engine:key_states(set))
    engine:close()
    return states
  end

  it("rotates on schedule with no failed verification, and every worker publishes a key before any signs with it",
    function()
      local run = server:client({ "rotation", server.port, "/token", CLIENT_SECONDS })
      local tokens, probes = run.tokens, run.probes
      assert.is_true(#tokens > 50, "too few tokens: " .. #tokens)

      -- every token verified against the JWK Set cached as Cache-Control says
      local failed = {}
      for _, t in ipairs(tokens) do
        if not t.ok then failed[#failed + 1] = t.error end
      end
      assert.are.equal(0, #failed, cjson.encode({ table.unpack(failed, 1, 5) }))

      -- at least three distinct kids signed
      local first, last, kids = {}, {}, {}
      for _, t in ipairs(tokens) do
        if not first[t.kid] then
          first[t.kid] = t.received
          kids[#kids + 1] = t.kid
        end
        last[t.kid] = t.sent
      end
      assert.is_true(#kids >= 3, "kids signed: " .. cjson.encode(kids))

      -- While a key signs (from its first token to its last), every
      -- worker's JWK Set holds it: no worker signs with a key another
      -- worker does not publish.
      local workers, checked = {}, 0
      for _, p in ipairs(probes) do
        workers[p.worker] = true
        for _, kid in ipairs(kids) do
          if p.sent > first[kid] and p.received < last[kid] then
            checked = checked + 1
            assert.is_true(nginx.contains(p.kids, kid), string.format(
              "worker %s did not publish %s while it signed: %s", p.worker, kid, cjson.encode(p)))
          end
        end
      end
      local worker_count = 0
      for _ in pairs(workers) do worker_count = worker_count + 1 end
      assert.are.equal(4, worker_count, "the probes did not reach every worker")
      assert.is_true(checked > 100, "too few probes fell while a key signed: " .. checked)

      local states = key_states(SCHEDULED)
      local by_kid, events = {}, {}
      for _, s in ipairs(states) do
        by_kid[s.kid] = s
        if s.times.previous then events[#events + 1] = s.times.previous + RETAIN end
        if s.times.next and s.times.current then events[#events + 1] = s.times.current end
      end
      -- the second set's changes fall between the first's (another period)
      local second_events = 0
      for _, s in ipairs(key_states(SECOND)) do
        if s.times.previous then events[#events + 1] = s.times.previous + RETAIN end
        if s.times.next and s.times.current then
          events[#events + 1] = s.times.current
          second_events = second_events + 1
        end
      end
      assert.is_true(second_events >= 1, "the second set never rotated")
      table.sort(events)

      -- Cache-Control never lets a client keep the set past its next state
      -- change (a promotion or a retirement), whichever set it falls in.
      for _, p in ipairs(probes) do
        for _, at in ipairs(events) do
          if at > p.sent then
            assert.is_true(p.sent + p.max_age <= at + 0.25, string.format(
              "max-age %d at %.2f reaches past the state change at %d", p.max_age, p.sent, at))
            break
          end
        end
      end

      -- A promotion changes no published key of its set, yet the ETag
      -- changes. (The second set's keys come and go on their own schedule.)
      local function own(kids)
        local mine = {}
        for _, kid in ipairs(kids) do if by_kid[kid] then mine[#mine + 1] = kid end end
        return mine
      end
      local promotions_seen = 0
      for _, s in ipairs(states) do
        local at = s.times.next and s.times.current
        if at then
          local before, after = {}, {}
          for _, p in ipairs(probes) do
            if p.received < at and p.sent > at - 1.5 then before[#before + 1] = p end
            if p.sent > at + 0.1 and p.sent < at + 1.5 then after[#after + 1] = p end
          end
          if #before > 0 and #after > 0 then
            promotions_seen = promotions_seen + 1
            for _, b in ipairs(before) do
              for _, a in ipairs(after) do
                assert.are.same(own(b.kids), own(a.kids), "a promotion changed the published keys")
                assert.are_not.equal(b.etag, a.etag, "the ETag did not change with the promotion at " .. at)
              end
            end
          end
        end
      end
      assert.is_true(promotions_seen >= 1, "no probe fell on both sides of a promotion")

      -- Each previous key is published for retain seconds, then gone from
      -- every worker's JWK Set.
      local retired_checked = 0
      for _, kid in ipairs(kids) do
        local previous = by_kid[kid] and by_kid[kid].times.previous
        if previous then
          local gone_at = previous + RETAIN
          local during, after = 0, 0
          for _, p in ipairs(probes) do
            if p.sent > previous + TIMER_SLACK and p.received < gone_at then
              during = during + 1
              assert.is_true(nginx.contains(p.kids, kid), "previous key " .. kid .. " missing before retain ran out")
            elseif p.sent > gone_at + REFRESH + TIMER_SLACK then
              after = after + 1
              assert.is_false(nginx.contains(p.kids, kid), "previous key " .. kid .. " still published after retain")
            end
          end
          if during > 0 and after > 0 then retired_checked = retired_checked + 1 end
        end
      end
      assert.is_true(retired_checked >= 1, "no previous key was watched through its retirement")
    end)

  it("after an emergency rotation no worker publishes or signs with the retired key after one refresh", function()
    local old = server:requests({ { method = "POST", path = "/token-emergency",
      headers = { ["Content-Type"] = "application/json" }, body = '{"sub":"before"}' } })[1]
    assert.are.equal(200, old.status, old.body)
    local old_kid = kid_of(old.body)
    local before = server:client({ "verify", server.port }, cjson.encode({ old.body }))
    assert.is_true(before.results[1].ok, cjson.encode(before))

    local cli_environment = {}
    for name, value in pairs(environment) do cli_environment[name] = value or nil end
    local out, err, status = cli.keys(cli_environment, "rotate " .. EMERGENCY .. " --now")
    assert.are.equal(0, status, err)
    assert.matches(old_kid, out, 1, true)
    nginx.sleep(REFRESH + TIMER_SLACK + 1) -- +1: os.time's whole seconds

    local list = {}
    for i = 1, 40 do
      list[#list + 1] = { path = "/.well-known/jwks.json" }
      list[#list + 1] = { method = "POST", path = "/token-emergency",
        headers = { ["Content-Type"] = "application/json" }, body = '{"sub":"after-' .. i .. '"}' }
    end
    local workers, worker_count = {}, 0
    for i, r in ipairs(server:requests(list)) do
      assert.are.equal(200, r.status, r.body)
      local worker = r.headers["x-jwke-worker"]
      if not workers[worker] then worker_count = worker_count + 1 end
      workers[worker] = true
      if i % 2 == 1 then
        for _, key in ipairs(cjson.decode(r.body).keys) do
          assert.are_not.equal(old_kid, key.kid, "worker " .. worker .. " still publishes the retired key")
        end
      else
        assert.are_not.equal(old_kid, kid_of(r.body), "worker " .. worker .. " still signs with the retired key")
      end
    end
    assert.are.equal(4, worker_count, "the requests did not reach every worker")

    local after = server:client({ "verify", server.port }, cjson.encode({ old.body }))
    assert.is_false(after.results[1].ok, "a token of the retired key still verifies: " .. cjson.encode(after))
    assert.is_false(nginx.contains(after.kids, old_kid))
  end)

  it("answers 503 with Retry-After for a set whose records no worker could read, until keys repair", function()
    local engine = assert(jwkengine.open({ config = environment.JWKENGINE_CONFIG, dsn = environment.DSN,
      secrets = { system = { SECRET } }, startup = false, logger = false }))
    local jwk = assert(engine:generate(CORRUPT, "ES256"))
    engine:close()
    local store = assert(require("jwkengine.store").open(environment.DSN))
    assert(store.driver:exec("UPDATE jwkengine_key_state SET records = '{\"format\":2,\"records\":[]}' "
      .. "WHERE sid = '" .. CORRUPT .. "'"))
    store:close()
    local list = {}
    for i = 1, 12 do
      list[i] = { method = "POST", path = "/token-corrupt", headers = { ["Content-Type"] = "application/json" },
        body = '{"sub":"x"}' }
    end
    for _, r in ipairs(server:requests(list)) do
      assert.are.equal(503, r.status, r.body)
      assert.is_not_nil(r.headers["retry-after"], cjson.encode(r.headers))
      assert.matches("temporarily_unavailable", r.body, 1, true)
    end
    -- the JWK Set the workers serve is untouched (the set is not published)
    local jwks = server:requests({ { path = "/.well-known/jwks.json" } })[1]
    assert.are.equal(200, jwks.status)

    local cli_environment = {}
    for name, value in pairs(environment) do cli_environment[name] = value or nil end
    local _, err, status = cli.keys(cli_environment, "repair " .. CORRUPT .. " --current " .. jwk.kid)
    assert.are.equal(0, status, err)
    -- a refusing set reads its records again within a few seconds
    local deadline, signed = os.time() + 15, 0
    while os.time() < deadline and signed < #list do
      signed = 0
      for _, r in ipairs(server:requests(list)) do
        if r.status == 200 then
          signed = signed + 1
          assert.are.equal(jwk.kid, kid_of(r.body))
        end
      end
      if signed < #list then nginx.sleep(1) end
    end
    assert.are.equal(#list, signed)
  end)
end)

-- Chaos on an HSM set's key states under real nginx (issue 19, the first
-- test): 4 workers running the key schedule, a strict caching client
-- verifying every token with jwcrypto (spec/nginx/client.py), one
-- emergency rotation (`keys rotate SET --now`), then another process on
-- the token (PyKCS11, spec/helpers/p11_other.py) applies each corruption of
-- the issue's table in turn. For each: the running workers and freshly
-- started ones (nginx reloaded) never publish the retired kid, never sign
-- with it, never answer 500; after the documented repair (`keys repair
-- SET --current KID`) every worker signs again and the client verifies
-- every token.
local cjson = require("cjson")
local cli = require("helpers.cli")
local jose = require("helpers.jose")
local nginx = require("helpers.nginx")
local softhsm = require("helpers.softhsm")
local token_backend = require("jwkengine.lifecycle.token_backend")

local MAX_AGE, REFRESH, CACHE_TTL, LIFETIME = 2, 1, 1, 3
local PREPUBLISH, RETAIN = 4, 5
-- the schedule runs every second; no rotation falls due during the spec
local PERIOD = 3600
local SET = "chaos-hsm"

local CORRUPTIONS = { "version-string", "records-not-object", "truncated", "oversized-beside",
  "version-inf", "record-without-times", "records-list", "rival-all-current", "delete-all" }

local function config_tail()
  return table.concat({
    "  - set: " .. SET,
    "    alg: ES256",
    string.format("    rotation: { period: %d, prepublish: %d, retain: %d }", PERIOD, PREPUBLISH, RETAIN),
    string.format("publication: { max_age: %d, refresh: %d }", MAX_AGE, REFRESH),
    string.format("tokens: { max_lifetime: %d, clock_tolerance: 0 }", LIFETIME),
    string.format("store: { cache_ttl: %d }", CACHE_TTL),
    "",
  }, "\n")
end

local retried = nginx.retried

local function other_process(token, args)
  return retried(function()
    local out, ok = softhsm.run(string.format("%s spec/helpers/p11_other.py %s %s %s %s", jose.PYTHON,
      softhsm.LIBRARY, softhsm.quote(token.label), token.pin, args))
    if ok then return out end
    return nil, "p11_other.py " .. args .. ": " .. out
  end)
end

-- The CLI on the token with the workers' configuration; its output lines.
local function keys(server, token, args)
  local env = softhsm.environment(token, { JWKENGINE_CONFIG = server.prefix .. "/jwkengine.yaml" })
  return retried(function()
    local out, err, status = cli.keys(env, args)
    if status == 0 then return out end
    return nil, "keys " .. args .. ": " .. err
  end)
end

-- Every token request and JWK Set probe of a client run, checked: no 500
-- (only 200, or 503 from a worker that refuses the set), the retired kid
-- in no token and no JWK Set, every 200 token verified. Returns the
-- statuses seen (status -> count) and how many tokens verified.
local function check_run(run, retired, what, server)
  local statuses, verified = {}, 0
  local function seen(status)
    local name = string.format("%d", status)
    statuses[name] = (statuses[name] or 0) + 1
  end
  for _, t in ipairs(run.tokens) do
    seen(t.status)
    assert.is_true(t.status == 200 or t.status == 503, what .. ": token status " .. t.status
      .. "\n" .. server:log():sub(-3000))
    assert.are_not.equal(retired, t.kid, what .. ": the retired key signed")
    if t.status == 200 then
      assert.is_true(t.ok, what .. ": a token failed to verify: " .. tostring(t.error))
      verified = verified + 1
    end
  end
  for _, p in ipairs(run.probes) do
    seen(p.status)
    assert.is_true(p.status == 200 or p.status == 503, what .. ": JWK Set status " .. p.status)
    assert.is_false(nginx.contains(p.kids, retired), what .. ": the retired kid is published")
  end
  return statuses, verified
end

-- The wall clock with its fraction, as the client's time.time() reads it.
local function now()
  local pipe = assert(io.popen("date +%s.%N"))
  local t = tonumber(pipe:read("*l"))
  pipe:close()
  return t
end

-- Waits until `count` requests in a row sign (every worker serving again).
local function wait_signing(server, count)
  local list = {}
  for i = 1, count do list[i] = { method = "POST", path = "/token", headers = { ["Content-Type"] = "application/json" },
    body = '{"sub":"probe"}' } end
  local deadline = os.time() + 30
  while true do
    local all = true
    for _, r in ipairs(server:requests(list)) do all = all and r.status == 200 end
    if all then return end
    assert(os.time() < deadline, "signing did not resume:\n" .. server:log():sub(-3000))
    nginx.sleep(0.3)
  end
end

describe("nginx over an HSM: corrupted key states never bring back a key retired by rotate --now", function()
  local token, server, retired, current

  setup(function()
    token = softhsm.new_token("nginx-chaos")
    server = nginx.new({ token = token, workers = 4, refresh = REFRESH, sets = { SET },
      startup_sets = config_tail(),
      render = function(opts)
        return nginx.render_rotation(opts, { max_age = MAX_AGE, set = SET, lifetime = LIFETIME })
      end })
    server:start(60)
    wait_signing(server, 16)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("rotates at once: the old key never signs again and leaves every JWK Set within refresh", function()
    local finish = server:client_start({ "rotation", server.port, "/token", 6 })
    nginx.sleep(1.5)
    local out = keys(server, token, "rotate " .. SET .. " --now")
    local done = now()
    for line in out:gmatch("[^\n]+") do
      local change = cjson.decode(line)
      if change.to == "current" then current = change.kid end
      if change.to == "retired" then retired = change.kid end
    end
    assert.is_string(current, out)
    assert.is_string(retired, out)
    -- the token itself refuses the retired key now, whatever any record says
    assert.equals("False", (other_process(token, "sign-allowed " .. SET .. " " .. retired):gsub("%s+$", "")))
    assert.equals("CKR_KEY_FUNCTION_NOT_PERMITTED",
      (other_process(token, "sign " .. SET .. " " .. retired):gsub("%s+$", "")))
    local run = finish()
    for _, t in ipairs(run.tokens) do
      assert.is_true(t.status == 200 or t.status == 503, "token status " .. t.status .. "\n" .. server:log():sub(-3000))
      if t.sent > done then assert.are_not.equal(retired, t.kid, "the retired key signed after rotate --now") end
    end
    for _, p in ipairs(run.probes) do
      if p.sent > done + REFRESH + 1 then
        assert.is_false(nginx.contains(p.kids, retired), "the retired kid is still published")
      end
    end
    wait_signing(server, 16)
  end)

  for _, kind in ipairs(CORRUPTIONS) do
    it("survives '" .. kind .. "' from another process, running and freshly started, and signs after keys repair",
      function()
        assert.is_string(retired, "the emergency rotation did not run")
        -- from a good state, whatever a test before left
        keys(server, token, "repair " .. SET .. " --current " .. current)
        wait_signing(server, 16)
        local finish = server:client_start({ "rotation", server.port, "/token", 3 })
        nginx.sleep(0.5)
        other_process(token, string.format("corrupt %s %s %s %s", kind, softhsm.quote(token_backend.APPLICATION),
          softhsm.quote(token_backend.MARKER_APPLICATION), SET))
        check_run(finish(), retired, kind .. " (running workers)", server)
        -- fresh processes: every worker replaced
        server:reload()
        local statuses = check_run(server:client({ "rotation", server.port, "/token", 3 }), retired,
          kind .. " (fresh workers)", server)
        print(string.format("%s: fresh workers answered %s", kind, cjson.encode(statuses)))
        -- the documented repair: the operator names the key that signs
        keys(server, token, "repair " .. SET .. " --current " .. current)
        wait_signing(server, 16)
        local run = server:client({ "rotation", server.port, "/token", 3 })
        local _, verified = check_run(run, retired, kind .. " (repaired)", server)
        local failed = 0
        for _, t in ipairs(run.tokens) do
          if not t.ok then failed = failed + 1 end
        end
        assert.equals(0, failed, kind .. ": failed verifications after the repair")
        assert.is_true(verified > 10, kind .. ": too few tokens after the repair: " .. verified)
      end)
  end
end)

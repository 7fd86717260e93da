-- Sessions as real HSMs hand them out, proven against the fault-injecting
-- module (spec/faultmod) in front of a real SoftHSM token: the pool stays
-- within the session limit the token reports, and a session the token
-- closed for being idle is replaced before use, not recovered after a
-- failure.
local jwkengine = require("jwkengine")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")

describe("session budget", function()
  local token

  setup(function()
    token = faults.fresh_token("budget")
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false }))
    assert(engine:generate("b", "ES256", { kid = "b1" }))
    engine:close()
  end)
  teardown(function() faults.set({}) end)

  -- 8 threads signing 25 times each with hsm.max_sessions = `pool` (default
  -- 8; -1 is C's "no pool: lend the login session"), through a module that
  -- reports `limit` sessions (0: the token's own answer, no limit) and takes
  -- 5 ms per C_Sign, so the threads contend for sessions; the pool's stats
  -- and the module's count of sessions opened.
  local function threads_signing(limit, pool)
    local stats_path = softhsm.tmpname()
    local out, ok = softhsm.run(string.format(
      "env -u JWKE_FAULT_CONTROL JWKE_FAULT_STATS=%s JWKE_FAULT_LATENCY_US=C_Sign:5000 " ..
      "JWKE_FAULT_TOKEN_MAX_SESSIONS=%d %s/pool_threads %s %s %s b 8 25 %d",
      softhsm.quote(stats_path), limit, softhsm.BUILD, faults.MODULE, softhsm.quote(token.label),
      token.pin, pool or 8))
    assert.is_true(ok, out)
    local module_stats = {}
    for line in io.lines(stats_path) do
      local name, value = line:match("^(%S+)%s+(%d+)")
      if name then module_stats[name] = tonumber(value) end
    end
    os.remove(stats_path)
    return out, module_stats
  end

  it("keeps the pool within the ulMaxSessionCount the token reports", function()
    local out, module_stats = threads_signing(3)
    assert.matches("signatures=200 failures=0", out, 1, true)
    -- the login session is one of the 3: two are left for the pool
    assert.matches("max_sessions=2 ", out, 1, true)
    local opened = tonumber(out:match("sessions_opened=(%d+)"))
    assert.is_true(opened >= 1 and opened <= 2, out)
    assert.is_true(tonumber(out:match("session_waits=(%d+)")) > 0, out) -- they did contend
    -- the module saw the login session and the pool's, none refused
    assert.equals(1 + opened, module_stats["calls.C_OpenSession"])
    assert.equals(0, module_stats["errors.C_OpenSession"] or 0)
  end)

  it("opens more when the token reports no limit (the check above can fail)", function()
    local out, module_stats = threads_signing(0)
    assert.matches("signatures=200 failures=0", out, 1, true)
    assert.matches("max_sessions=8 ", out, 1, true)
    assert.equals(1 + tonumber(out:match("sessions_opened=(%d+)")), module_stats["calls.C_OpenSession"])
  end)

  it("with no pool (max_sessions < 0 in C) 8 threads sign on the login session, one at a time", function()
    local out, module_stats = threads_signing(0, -1)
    assert.matches("signatures=200 failures=0", out, 1, true)
    assert.matches("sessions_opened=0 sessions_open=0 max_sessions=0 ", out, 1, true)
    assert.is_true(tonumber(out:match("session_waits=(%d+)")) > 0, out) -- they did contend for it
    -- the login session is the only one the module ever saw
    assert.equals(1, module_stats["calls.C_OpenSession"])
    assert.equals(1, module_stats.sessions_peak)
  end)

  it("hsm.max_sessions = 0 signs on the login session, and logs in again there after a logout", function()
    local engine = assert(jwkengine.open({ environment = faults.environment(token, { HSM_MAX_SESSIONS = "0" }),
      startup = false, logger = false }))
    local first = assert(engine:sign_jwt("b", { sub = "first" }))
    -- the token forgets the login once: recovered on the same session
    faults.set({ faults = "C_SignInit:CKR_USER_NOT_LOGGED_IN@1" })
    local second, err = engine:sign_jwt("b", { sub = "second" })
    local counts = faults.counts()
    local stats = assert(engine:stats())
    local jwks = engine:key_set_json("b")
    engine:close()
    assert.is_truthy(second, err)
    assert.is_true((verifier.jwcrypto(jwks, first)))
    assert.is_true((verifier.jwcrypto(jwks, second)))
    assert.equals(0, stats.max_sessions)
    assert.equals(0, stats.sessions_opened or 0)
    -- the window since the fault was set: the refused C_SignInit, a login
    -- and the retry, and no session beside the login session
    assert.equals(0, counts["window.C_OpenSession"] or 0)
    assert.equals(2, counts["window.C_SignInit"])
    assert.equals(1, counts["window.C_Login"])
  end)

  it("shows the token's limit and the pool size in engine:stats() and logs the cut at open", function()
    faults.set({ token_max_sessions = 3 })
    local lines = {}
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = function(level, message)
        if level ~= "info" then lines[#lines + 1] = level .. " " .. message end
      end }))
    -- said at open (README: Session budgets), before any signature
    local at_open = #lines
    assert(engine:sign("b", "payload"))
    local stats = assert(engine:stats())
    engine:close()
    faults.set({})
    assert.equals(3, stats.token_max_sessions)
    -- sessions this process had open through the module when the pool was
    -- sized (0 unless an engine of another spec is still open), then the
    -- login session: what is left is the pool's
    local left = math.max(1, 3 - stats.token_sessions - 1)
    assert.equals(left, stats.max_sessions)
    assert.is_true(left < 4)
    assert.equals(1, #lines, table.concat(lines, "\n"))
    assert.equals(1, at_open, "the cut was not logged at open")
    assert.equals(string.format("warn the token allows 3 sessions and %d are open: the pool holds " ..
      "at most %d beside the login session (hsm.max_sessions is 4)", stats.token_sessions, left), lines[1])
  end)

  it("gives the pool one session, not hsm.max_sessions, when the token reports none left", function()
    -- a first engine takes both sessions the token reports (its login
    -- session and a pooled one); the second finds the token full: its
    -- ulSessionCount minus the limit is negative, which must not read as
    -- "no limit"
    faults.set({ token_max_sessions = 2 })
    local first = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false }))
    assert(first:sign("b", "payload"))
    local second = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false }))
    local stats = assert(second:stats())
    second:close()
    first:close()
    faults.set({})
    assert.equals(2, stats.token_max_sessions)
    assert.is_true(stats.token_sessions >= 2, "sessions open at the second open: " .. tostring(stats.token_sessions))
    assert.equals(1, stats.max_sessions)
  end)

  it("leaves token_max_sessions out when the token sets no limit", function()
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false }))
    local stats = assert(engine:stats())
    engine:close()
    assert.is_nil(stats.token_max_sessions) -- SoftHSM: CK_EFFECTIVELY_INFINITE
    assert.equals(4, stats.max_sessions)
  end)
end)

describe("idle sessions", function()
  local token

  setup(function()
    token = faults.fresh_token("idle")
  end)
  teardown(function() faults.set({}) end)

  -- Signs, lets the pooled session idle past the token's 500 ms, signs
  -- again: the second signature's counters.
  local function sign_after_quiet_period(session_idle_max)
    faults.set({ session_idle_ms = 500 })
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false, hsm = { session_idle_max = session_idle_max } }))
    if not engine:key_set("i") then assert(engine:generate("i", "ES256", { kid = "i1" })) end
    assert(engine:sign("i", "first"))
    local before = assert(engine:stats())
    faults.counts({ session_idle_ms = 500 }) -- a fresh count window, same setting
    os.execute("sleep 1.5")
    local jws, err = engine:sign("i", "after a quiet period")
    local counts = faults.counts()
    local after = assert(engine:stats())
    assert.truthy(jws, err)
    assert.truthy(engine:verify("i", jws))
    engine:close()
    return before, after, counts
  end

  it("checks a session idle longer than hsm.session_idle_max and replaces it: no recovery", function()
    local before, after, counts = sign_after_quiet_period(1)
    assert.equals(before.recoveries.session, after.recoveries.session)
    assert.equals(before.failed_recoveries, after.failed_recoveries)
    assert.equals(before.idle_checks + 1, after.idle_checks)
    assert.equals(before.sessions_expired + 1, after.sessions_expired)
    -- the pooled session and the login session (the token closed both, and
    -- logged out: spec/pkcs11/idle_login_spec.lua)
    assert.equals(2, counts["window.C_GetSessionInfo"])
    assert.equals(1, counts["window.C_SignInit"]) -- signed once, no retry
    assert.is_true(counts.expired_sessions >= 1)
  end)

  -- Only a session the token says it closed is counted as expired: one the
  -- token cannot answer about (the device gone) is dropped all the same,
  -- and its failure shows under its own code when the next one is opened.
  it("drops an idle session the token cannot answer about without counting it as expired", function()
    faults.set({})
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false, hsm = { session_idle_max = 1 } }))
    if not engine:key_set("i") then assert(engine:generate("i", "ES256", { kid = "i1" })) end
    assert(engine:sign("i", "first"))
    local before = assert(engine:stats())
    faults.set({ faults = "C_GetSessionInfo:CKR_DEVICE_ERROR" })
    os.execute("sleep 1.5")
    local jws, err = engine:sign("i", "after a quiet period")
    local after = assert(engine:stats())
    faults.set({})
    engine:close()
    assert.truthy(jws, err)
    assert.equals(before.idle_checks + 1, after.idle_checks)
    assert.equals(before.sessions_expired, after.sessions_expired)
  end)

  it("without the check (session_idle_max = 0) the same signature needs a recovery", function()
    local before, after, counts = sign_after_quiet_period(0)
    assert.equals(before.recoveries.session + 1, after.recoveries.session)
    assert.equals(before.idle_checks, after.idle_checks)
    -- no idle check; the one question is about the login session, after
    -- the token was found to have closed a session
    assert.equals(1, counts["window.C_GetSessionInfo"] or 0)
    assert.equals(2, counts["window.C_SignInit"]) -- failed, then retried
  end)

  it("uses a session idle for less than hsm.session_idle_max without asking", function()
    faults.set({})
    local engine = assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      logger = false }))
    if not engine:key_set("i") then assert(engine:generate("i", "ES256", { kid = "i1" })) end
    assert(engine:sign("i", "first"))
    faults.counts()
    assert(engine:sign("i", "second"))
    local counts = faults.counts()
    local stats = assert(engine:stats())
    engine:close()
    assert.equals(0, counts["window.C_GetSessionInfo"] or 0) -- the default, 20 s, is far off
    assert.equals(0, stats.idle_checks)
  end)
end)

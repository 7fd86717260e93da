-- The login session on a token that closes idle sessions (YubiHSM 2: every
-- session idle 30 s, the one the engine logged in with too). In PKCS#11
-- the login belongs to the application's sessions with the token: when the
-- last one closes, the user is logged out. The fault-injecting module
-- (spec/faultmod, session_idle_ms) closes every idle session in front of a
-- real SoftHSM token, which then logs out. After a quiet period the engine
-- must log in again before it signs, generates or reads a set, without an
-- error or a retry the caller can see.
local faults = require("helpers.faults")
local verifier = require("helpers.verifier")

-- The token closes sessions idle 2 s; the engine asks about sessions quiet
-- for 1 s (hsm.session_idle_max); the quiet periods last 3 s.
local TOKEN_IDLE_MS = 2000
local QUIET = "sleep 3"

describe("the login session on a token that closes idle sessions", function()
  local token, engine

  setup(function()
    token = faults.fresh_token("idlelogin")
    faults.set({ session_idle_ms = TOKEN_IDLE_MS })
    engine = faults.open_engine(token, { session_idle_max = 1 })
    assert(engine:generate("quiet", "ES256", { kid = "quiet-1" }))
  end)

  teardown(function()
    faults.set({}) -- no more expiry: closing talks to the token
    if engine then engine:close() end
  end)

  -- Runs `call` after a quiet period: its results, the module's counts
  -- during it and the engine's stats before and after.
  local function after_quiet_period(call)
    local before = assert(engine:stats())
    faults.counts({ session_idle_ms = TOKEN_IDLE_MS }) -- a fresh count window
    os.execute(QUIET)
    local results = table.pack(call())
    local counts = faults.counts({ session_idle_ms = TOKEN_IDLE_MS })
    return results, counts, before, assert(engine:stats())
  end

  -- What every quiet period must show: the token closed the engine's
  -- sessions, the engine logged in again (one login recovery), nothing
  -- failed.
  local function logged_in_again(counts, before, after)
    assert.is_true(counts.expired_sessions >= 1, "the token closed no session")
    assert.is_true((counts["window.C_Login"] or 0) >= 1, "no login after the quiet period")
    assert.equals(before.recoveries.login + 1, after.recoveries.login)
    assert.equals(before.recoveries.session, after.recoveries.session)
    assert.equals(before.recoveries.object, after.recoveries.object)
    assert.equals(before.failed_recoveries, after.failed_recoveries)
  end

  it("signs after a quiet period: logged in again first, C_SignInit called once", function()
    assert(engine:sign_jwt("quiet", { sub = "before" }))
    local results, counts, before, after = after_quiet_period(function()
      return engine:sign_jwt("quiet", { sub = "after a quiet period" })
    end)
    local jws, err, code = results[1], results[2], results[3]
    assert.truthy(jws, tostring(code) .. ": " .. tostring(err))
    logged_in_again(counts, before, after)
    assert.is_true(counts.expired_sessions >= 2, "the pooled session and the login session")
    assert.equals(1, counts["window.C_SignInit"]) -- no failure, no retry
    local ok, out = verifier.jwcrypto(assert(engine:key_set_json("quiet")), jws)
    assert.is_true(ok, out)
  end)

  it("generates a key after a quiet period (a private object: only logged in)", function()
    local results, counts, before, after = after_quiet_period(function()
      return engine:generate("quiet-gen", "ES256", { kid = "quiet-gen-1" })
    end)
    assert.truthy(results[1], tostring(results[3]) .. ": " .. tostring(results[2]))
    logged_in_again(counts, before, after)
    local jws = assert(engine:sign_jwt("quiet-gen", { sub = "new key" }))
    local ok, out = verifier.jwcrypto(assert(engine:key_set_json("quiet-gen")), jws)
    assert.is_true(ok, out)
  end)

  it("reads a set from the token after a quiet period, its private key with it", function()
    -- a second engine on the same token: its own sessions and login, and
    -- a set it has not read yet
    local reader = faults.open_engine(token, { session_idle_max = 1 })
    engine:close()
    engine = reader
    local results, counts, before, after = after_quiet_period(function()
      return engine:key_set("quiet")
    end)
    assert.truthy(results[1], tostring(results[3]) .. ": " .. tostring(results[2]))
    logged_in_again(counts, before, after)
    local jws, err, code = engine:sign_jwt("quiet", { sub = "read after a quiet period" })
    assert.truthy(jws, tostring(code) .. ": " .. tostring(err))
    local ok, out = verifier.jwcrypto(assert(engine:key_set_json("quiet")), jws)
    assert.is_true(ok, out)
  end)
end)

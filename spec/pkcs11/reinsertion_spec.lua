-- A token pulled and put back under an open engine (spec/faultmod,
-- `removed`): the token comes back logged out, and every session handle
-- from before answers CKR_SESSION_HANDLE_INVALID. Reported before: an
-- engine that made no call while the token was out never signed with its
-- key again (C_SignInit: CKR_OBJECT_HANDLE_INVALID, then "key ... is no
-- longer on the token", ERR_JWS_SIGN), because a new session was opened
-- but nobody logged in again. Each test signs within a bounded number of
-- tries after the token is back, and keeps signing.
local faults = require("helpers.faults")
local verifier = require("helpers.verifier")

describe("a token pulled and put back under an open engine", function()
  local token, engine
  -- Tries after the token is back: the first should do; the bound leaves
  -- room for an outage's next attempt (reinit_interval_max_ms is 1 ms).
  local TRIES = 50

  setup(function()
    token = faults.fresh_token("reinsert")
    engine = faults.open_engine(token, { reinit_interval_ms = 1, reinit_interval_max_ms = 1 })
    assert(engine:generate("back", "ES256", { kid = "back-1" }))
  end)

  teardown(function()
    if engine then engine:close() end
    faults.set({})
  end)

  -- Signs until it works (at most TRIES times); returns the token and how
  -- many tries failed, with every failure's code.
  local function sign_until_back()
    local failed = {}
    for _ = 1, TRIES do
      local jws, err, code = engine:sign_jwt("back", { sub = "after re-insertion" })
      if jws then return jws, failed end
      failed[#failed + 1] = tostring(code) .. ": " .. tostring(err)
      os.execute("sleep 0.01")
    end
    return nil, failed
  end

  local function keeps_signing(jws)
    local ok, out = verifier.jwcrypto(assert(engine:key_set_json("back")), jws)
    assert.is_true(ok, out)
    for i = 1, 5 do
      local again, err, code = engine:sign_jwt("back", { sub = "again", n = i })
      assert.truthy(again, tostring(code) .. ": " .. tostring(err))
    end
  end

  it("signs again when no call was made while the token was out", function()
    assert(engine:sign_jwt("back", { sub = "before" }))
    local before = assert(engine:stats())
    -- each a call through the module with the new setting, so that it
    -- sees the removal, then the re-insertion
    local removals_before = faults.counts({ removed = 1 }).removals
    faults.counts({})
    local removals = faults.counts().removals - removals_before
    local jws, failed = sign_until_back()
    assert.equals(1, removals)
    assert.truthy(jws, table.concat(failed, "\n"))
    -- nothing the caller could see: the old session was replaced and the
    -- engine logged in again before retrying
    assert.same({}, failed)
    local after = assert(engine:stats())
    assert.equals(before.recoveries.login + 1, after.recoveries.login)
    keeps_signing(jws)
  end)

  it("signs again after calls failed while the token was out", function()
    assert(engine:sign_jwt("back", { sub = "before" }))
    faults.set({ removed = 1 })
    local jws, err, code = engine:sign_jwt("back", { sub = "while out" })
    assert.is_nil(jws)
    assert.equals("ERR_HSM_UNAVAILABLE", code, err)
    faults.set({})
    local failed
    jws, failed = sign_until_back()
    assert.truthy(jws, table.concat(failed, "\n"))
    for _, line in ipairs(failed) do assert.matches("^ERR_HSM_UNAVAILABLE: ", line) end
    keeps_signing(jws)
  end)
end)

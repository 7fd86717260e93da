-- Recovery in the PKCS#11 layer, proven against the fault-injecting module
-- (spec/faultmod) in front of a real SoftHSM token: every recoverable class
-- recovers with at most one retry, and the rest fail clearly.
local jwkengine = require("jwkengine")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")

describe("PKCS#11 recovery", function()
  local token, engine, lines

  -- A short re-initialization interval, so each test may re-initialize.
  local function open(interval_ms)
    lines = {}
    return assert(jwkengine.open({ environment = faults.environment(token), startup = false,
      hsm = { reinit_interval_ms = interval_ms or 1, reinit_interval_max_ms = interval_ms or 1 },
      logger = function(level, message) lines[#lines + 1] = level .. " " .. message end }))
  end

  setup(function()
    faults.check_environment()
    faults.set({})
    token = softhsm.new_token("recovery")
    engine = open()
    assert(engine:generate("r", "ES256", { kid = "r1" }))
    assert(engine:sign("r", "warm-up"))
  end)

  teardown(function()
    faults.set({})
    engine:close()
  end)

  before_each(function()
    faults.counts() -- starts a fresh count window with no faults
    lines = {}
  end)

  local function sign_and_verify()
    local jws, err, code = engine:sign("r", "payload")
    if jws then assert.truthy(engine:verify("r", jws)) end
    return jws, err, code
  end

  local cases = {
    { rule = "C_Sign:CKR_SESSION_HANDLE_INVALID@1", class = "session", by = "opening a new session",
      calls = { ["window.C_Sign"] = 2, ["window.C_OpenSession"] = 1 } },
    { rule = "C_SignInit:CKR_SESSION_CLOSED@1", class = "session", by = "opening a new session",
      calls = { ["window.C_SignInit"] = 2 } },
    { rule = "C_SignInit:CKR_USER_NOT_LOGGED_IN@1", class = "login", by = "logging in again",
      calls = { ["window.C_SignInit"] = 2, ["window.C_Login"] = 1 } },
    { rule = "C_SignInit:CKR_OBJECT_HANDLE_INVALID@1~", class = "object", by = "finding the object again",
      calls = { ["window.C_SignInit"] = 2, ["window.C_FindObjectsInit"] = 1 } },
    { rule = "C_Sign:CKR_DEVICE_ERROR@1", class = "reinit", by = "re-initializing the module",
      calls = { ["window.C_Sign"] = 2, ["window.C_Initialize"] = 1, ["window.C_Finalize"] = 1 } },
    { rule = "C_SignInit:CKR_CRYPTOKI_NOT_INITIALIZED@1~", class = "reinit", by = "re-initializing the module",
      calls = {} },
  }
  for _, case in ipairs(cases) do
    it("recovers from " .. case.rule .. " with one retry, logged once and counted", function()
      local before = assert(engine:stats()).recoveries[case.class]
      faults.set({ faults = case.rule })
      local jws, err = sign_and_verify()
      assert.truthy(jws, err)
      assert.equals(before + 1, assert(engine:stats()).recoveries[case.class])
      assert.equals(1, #lines)
      assert.matches("retrying once after " .. case.by, lines[1], 1, true)
      assert.not_matches(softhsm.PIN, lines[1], 1, true)
      local counts = faults.counts()
      for name, expected in pairs(case.calls) do
        assert.equals(expected, counts[name] or 0, name)
      end
      -- and the next signature needs no recovery
      assert.truthy(sign_and_verify())
      assert.equals(1, #lines)
    end)
  end

  it("rate-limits full re-initialization: failing again within the interval is an outage", function()
    engine:close()
    engine = open(60000)
    faults.set({ faults = "C_Sign:CKR_DEVICE_ERROR@1;C_SignInit:CKR_DEVICE_ERROR@3" })
    assert.truthy(engine:sign("r", "first")) -- recovers: the first re-initialization
    local jws, err, code = engine:sign("r", "second") -- fails again within the interval
    assert.is_nil(jws)
    assert.equals("ERR_HSM_UNAVAILABLE", code)
    assert.matches("HSM unavailable: C_SignInit: CKR_DEVICE_ERROR", err, 1, true)
    local wait = tonumber(err:match("next attempt in (%d+) ms"))
    assert.is_true(wait >= 30000 and wait <= 60000, err)
    -- the device is fine again, but the next attempt is not due: the call
    -- fails at once, without touching the module
    faults.counts()
    jws, err, code = engine:sign("r", "third")
    assert.is_nil(jws)
    assert.equals("ERR_HSM_UNAVAILABLE", code)
    local counts = faults.counts()
    assert.equals(0, counts["window.C_Initialize"] or 0)
    assert.equals(0, counts["window.C_SignInit"] or 0)
    engine:close()
    engine = open()
  end)

  it("fails at once, with no retry, on an error that is not recoverable", function()
    faults.set({ faults = "C_Sign:CKR_FUNCTION_FAILED@1" })
    local jws, err, code = sign_and_verify()
    assert.is_nil(jws)
    assert.equals("C_Sign: CKR_FUNCTION_FAILED", err)
    assert.equals("CKR_FUNCTION_FAILED", code)
    assert.equals(1, faults.counts()["window.C_Sign"])
    assert.truthy(sign_and_verify())
  end)

  it("retries only once: a second fault in a row fails clearly", function()
    local failed_before = assert(engine:stats()).failed_recoveries
    faults.set({ faults = "C_Sign:CKR_SESSION_HANDLE_INVALID@1*2" })
    local jws, err = sign_and_verify()
    assert.is_nil(jws)
    assert.equals("C_Sign: CKR_SESSION_HANDLE_INVALID", err)
    assert.equals(2, faults.counts()["window.C_Sign"])
    assert.equals(failed_before + 1, assert(engine:stats()).failed_recoveries)
    -- the log tells the retry failed, and never claims a recovery
    assert.equals(2, #lines)
    assert.matches("retrying once after opening a new session", lines[1], 1, true)
    assert.matches("recovery failed: the retry after opening a new session failed with C_Sign: CKR_SESSION_HANDLE_INVALID",
      lines[2], 1, true)
    for _, line in ipairs(lines) do assert.not_matches("recovered", line, 1, true) end
    assert.truthy(sign_and_verify())
  end)

  it("fails clearly while the token is removed and recovers once it is back", function()
    faults.set({ removed = 1 })
    local jws, err, code = sign_and_verify()
    assert.is_nil(jws)
    assert.equals("ERR_HSM_UNAVAILABLE", code)
    assert.matches("CKR_DEVICE_REMOVED", err, 1, true)
    assert.matches("is not present", err, 1, true)
    faults.set({ removed = 0 })
    -- back at the next attempt (due after at most reinit_interval_max_ms,
    -- here 1 ms); every call before it fails fast with the same code
    for _ = 1, 500 do
      jws, err, code = sign_and_verify()
      if jws then break end
      assert.equals("ERR_HSM_UNAVAILABLE", code, err)
      os.execute("sleep 0.01")
    end
    assert.truthy(jws, err)
    assert.truthy(engine:key_set("r"))
  end)

  it("learns a lower session limit from CKR_SESSION_COUNT", function()
    local out, ok = softhsm.run(string.format(
      "JWKE_FAULT_MAX_SESSIONS=3 %s/pool_threads %s %s %s r 6 200 8",
      softhsm.BUILD, faults.MODULE, softhsm.quote(token.label), token.pin))
    assert.is_true(ok, out)
    assert.matches("signatures=1200 failures=0", out)
    -- one session holds the login; two are left for the pool
    assert.matches("max_sessions=2 ", out)
  end)
end)

-- spec/c/held_call.c: one thread's call (an attempt to end an outage, a
-- login) is held up in the fault module (latency) while another thread
-- calls, or the process forks; the driver sets the module's faults through
-- its environment (read at each C_Initialize), so no control file.
describe("while one thread's call is held up in the token", function()
  local token
  setup(function()
    faults.check_environment()
    token = softhsm.new_token("attempt")
    local out, ok = softhsm.pkcs11_tool(token,
      "--keypairgen --key-type EC:prime256v1 --usage-sign --label attempted --id 01")
    assert.is_true(ok, out)
  end)

  local function driver(mode)
    local out, ok = softhsm.run(string.format("env -u JWKE_FAULT_CONTROL JWKE_FAULT_MODULE=%s %s/held_call %s %s %s %s attempted",
      softhsm.quote(softhsm.LIBRARY), softhsm.BUILD, mode, faults.MODULE, softhsm.quote(token.label), token.pin))
    assert.is_true(ok, out)
    assert.matches("other=ok held=ok", out, 1, true)
  end

  it("a forked child is free to make its own attempt (no thread of the child is making the parent's)", function()
    driver("fork")
  end)

  it("another thread's call fails fast with ERR_HSM_UNAVAILABLE while the attempt waits in C_Login", function()
    driver("fail-fast")
  end)

  it("a login with a wrong PIN does not replace the kept PIN under another thread's C_Login", function()
    driver("login")
  end)
end)

describe("PIN hygiene against the token's PIN flags", function()
  local token
  setup(function()
    faults.check_environment()
    faults.set({})
    token = softhsm.new_token("pinflags")
  end)
  teardown(function() faults.set({}) end)

  for _, flag in ipairs({ "CKF_USER_PIN_LOCKED", "CKF_USER_PIN_FINAL_TRY", "CKF_USER_PIN_TO_BE_CHANGED" }) do
    it("refuses to log in while the token reports " .. flag, function()
      faults.set({ token_flags = flag })
      local engine, err, code = jwkengine.open({ environment = faults.environment(token), logger = false,
        startup = false })
      assert.is_nil(engine)
      assert.matches("C_Login refused: the token reports " .. flag, err, 1, true)
      assert.equals("ERR_LOGIN_REFUSED", code)
      faults.set({})
    end)
  end

  it("opens no new sessions while a re-login after a reset keeps failing", function()
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, hsm = { reinit_interval_ms = 1 } }))
    assert(engine:generate("leak", "ES256"))
    faults.counts()
    -- the device fails once; the re-login after the re-initialization is refused
    faults.set({ faults = "C_Sign:CKR_DEVICE_ERROR@1;C_Login:CKR_PIN_INCORRECT@1+" })
    for _ = 1, 10 do
      local jws, err, code = engine:sign("leak", "x")
      assert.is_nil(jws)
      assert.matches("PIN", err, 1, true)
      -- a refused PIN, from the first call on: not an outage to wait out
      assert.equals("ERR_LOGIN_REFUSED", code, err)
    end
    local counts = faults.counts()
    assert.is_true((counts["window.C_OpenSession"] or 0) <= 1, "sessions opened: " .. tostring(counts["window.C_OpenSession"]))
    assert.equals(1, counts["window.C_Login"])
    assert.is_true(assert(engine:stats()).failed_recoveries >= 1)
    engine:close()
  end)

  it("never retries a PIN the token refused", function()
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false }))
    assert(engine:generate("p", "ES256"))
    -- the session is logged out, and the re-login is refused
    faults.set({ faults = "C_SignInit:CKR_USER_NOT_LOGGED_IN@1+~;C_Login:CKR_PIN_INCORRECT@1" })
    local jws, err = engine:sign("p", "x")
    assert.is_nil(jws)
    assert.matches("CKR_PIN_INCORRECT", err, 1, true)
    local code
    jws, err, code = engine:sign("p", "x")
    assert.is_nil(jws)
    assert.matches("never tries a refused PIN again", err, 1, true)
    assert.equals("ERR_LOGIN_REFUSED", code)
    assert.equals(1, faults.counts()["window.C_Login"])
    engine:close()
  end)
end)

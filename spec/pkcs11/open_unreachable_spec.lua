-- About the binding (jwkengine.core): an unreachable module at the PKCS#11 layer, beside jwkengine.open.
-- jwkengine.open against an HSM it cannot reach fails with
-- ERR_HSM_UNAVAILABLE and the seconds until the next attempt is due (not
-- the raw CKR code), so a host retries with the backoff and nginx answers
-- 503 with Retry-After at startup too. Each case runs in a process of its
-- own: the fault module and p11-kit's client read their settings from the
-- environment when they are first initialized.
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")

local P11KIT_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"

describe("jwkengine.open against an unreachable HSM", function()
  local token, script

  setup(function()
    token = faults.fresh_token("unreachable")
    script = softhsm.tmpname() .. ".lua"
    -- opens `count` times in a row and prints code and retry_in of each;
    -- the reinit interval is 100 ms, its maximum 400 ms. The module stays
    -- loaded between the opens (`kept`), so the fault module counts on.
    softhsm.write_file(script, [[
      local library, label, pin, count = ...
      local jwkengine = require("jwkengine")
      local kept = require("jwkengine.core").load_module(library)
      for _ = 1, tonumber(count) do
        local engine, err, code, retry_in = jwkengine.open({ startup = false, logger = false,
          environment = { HSM_ENABLED = "true", HSM_LIBRARY = library, HSM_TOKEN_LABEL = label,
                          HSM_PIN = pin },
          hsm = { reinit_interval_ms = 100, reinit_interval_max_ms = 400 } })
        if engine then
          print("open")
          engine:close()
        else
          print(string.format("%s %s %s", code, tostring(retry_in), err))
        end
      end
      if kept then kept:close() end
    ]])
  end)

  teardown(function()
    os.remove(script)
  end)

  -- The lines the script printed, each { code, retry_in (ms), message }.
  local function opens(env, library, count, label)
    local out, ok = softhsm.run(string.format("env -u JWKE_FAULT_CONTROL %s %s/jwkengine %s %s %s %s %d",
      env, softhsm.BUILD, script, library, softhsm.quote(label or token.label), token.pin, count or 1))
    assert.is_true(ok, out)
    local lines = {}
    for line in out:gmatch("[^\n]+") do
      local code, retry_in, message = line:match("^(%S+) (%S+) (.*)$")
      lines[#lines + 1] = { code = code or line, retry_in = tonumber(retry_in) and tonumber(retry_in) * 1000,
        message = message }
    end
    return lines
  end

  local function assert_unavailable(line, backoff, cause)
    assert.equals("ERR_HSM_UNAVAILABLE", line.code, line.message)
    assert.is_true(line.retry_in >= backoff / 2 and line.retry_in <= backoff,
      string.format("retry_in %s ms for the backoff of %d ms", line.retry_in, backoff))
    assert.matches(cause, line.message, 1, true)
    assert.matches("next attempt in %d+ ms", line.message)
  end

  it("p11-kit's client with no server: ERR_HSM_UNAVAILABLE, not a missing token", function()
    local lines = opens("P11_KIT_SERVER_ADDRESS=unix:path=/nonexistent/p11kit.sock", P11KIT_CLIENT)
    assert_unavailable(lines[1], 100, "the module reports no slot")
  end)

  for _, case in ipairs({
    { env = "JWKE_FAULTS=C_Initialize:CKR_DEVICE_ERROR", cause = "C_Initialize: CKR_DEVICE_ERROR" },
    { env = "JWKE_FAULTS=C_GetSlotList:CKR_DEVICE_REMOVED", cause = "C_GetSlotList: CKR_DEVICE_REMOVED" },
    { env = "JWKE_FAULT_REMOVED=1", cause = "no slot holds a token" },
  }) do
    it("the fault module with " .. case.env .. ": ERR_HSM_UNAVAILABLE with the retry time", function()
      local lines = opens(case.env, faults.MODULE)
      assert_unavailable(lines[1], 100, case.cause)
    end)
  end

  it("backs off across failed opens (100, 200, 400, 400 ms) and starts over after one that works", function()
    local lines = opens("JWKE_FAULTS=C_GetSlotList:CKR_DEVICE_ERROR@1*4", faults.MODULE, 5)
    for i, backoff in ipairs({ 100, 200, 400, 400 }) do
      assert_unavailable(lines[i], backoff, "CKR_DEVICE_ERROR")
    end
    assert.equals("open", lines[5].code)
  end)

  it("a token missing beside others is the configuration's fault: ERR_TOKEN_NOT_FOUND", function()
    local lines = opens("", faults.MODULE, 1, "no-such-token")
    assert.equals("ERR_TOKEN_NOT_FOUND", lines[1].code, lines[1].message)
    assert.is_nil(lines[1].retry_in)
  end)
end)

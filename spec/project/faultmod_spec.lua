-- The fault-injecting PKCS#11 module (spec/faultmod): pkcs11-tool through it
-- against SoftHSM, and the C driver for what pkcs11-tool cannot show (counts
-- in one process, operation state, removal and re-insertion, threads, fork).
--
-- The module and driver are found in $JWKE_FAULTMOD_DIR, else in
-- <build>/spec/faultmod (<build> = $JWKE_BUILD_DIR or build).
local softhsm = require("helpers.softhsm")

local q = softhsm.quote

local DIR = os.getenv("JWKE_FAULTMOD_DIR") or (softhsm.BUILD or "build") .. "/spec/faultmod"
local MODULE = DIR .. "/libjwke_faultmod.so"
local DRIVER = DIR .. "/jwke_faultmod_driver"

-- Every variable the module reads: each command states its own, so nothing
-- from the caller's environment (a JWKE_FAULT_CONTROL exported for other
-- suites, an LD_PRELOAD of a sanitizer runtime) leaks in.
local FAULT_VARS = {
  "JWKE_FAULT_MODULE", "JWKE_FAULTS", "JWKE_FAULT_SEED", "JWKE_FAULT_LATENCY_US",
  "JWKE_FAULT_REMOVED", "JWKE_FAULT_MAX_SESSIONS", "JWKE_FAULT_CONTROL",
  "JWKE_FAULT_CONTROL_INTERVAL_MS", "JWKE_FAULT_STATS", "JWKE_FAULT_STATS_SYNC",
  "JWKE_FAULT_VERBOSE", "JWKE_FAULT_LENGTHS", "LD_PRELOAD",
}

local function env_prefix(env)
  local parts = { "env" }
  for _, name in ipairs(FAULT_VARS) do
    parts[#parts + 1] = "-u " .. name
  end
  local names = {}
  for k in pairs(env or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    parts[#parts + 1] = k .. "=" .. q(env[k])
  end
  return table.concat(parts, " ")
end

-- pkcs11-tool through a module (the fault module unless told otherwise).
local function tool(env, args, module)
  return softhsm.run(string.format("%s pkcs11-tool --module %s %s", env_prefix(env),
    q(module or MODULE), args))
end

local read_file = require("jwkengine.util").read_file

-- The stats file: { name = number or string }.
local function read_stats(path)
  local text = assert(read_file(path), "no stats file " .. path)
  local stats = {}
  for name, value in text:gmatch("([%w_.]+) ([^\n]+)") do
    stats[name] = tonumber(value) or value
  end
  return stats
end

local function now()
  local out = softhsm.run("date +%s%N")
  return tonumber(out:match("%d+")) / 1e9
end

-- The "token flags" line of one token in pkcs11-tool -T output.
local function token_flags(out, label)
  for block in (out .. "\nSlot "):gmatch("(token label%s*:.-)\nSlot ") do
    if block:match("token label%s*:%s*([^\n]-)%s*\n") == label then
      return block:match("token flags%s*:%s*([^\n]*)")
    end
  end
end

describe("jwke_faultmod, the fault-injecting PKCS#11 module", function()
  local token, tmp, digest

  local function key_args(extra)
    return string.format("--token-label %s %s", q(token.label), extra or "")
  end

  local function sign_args(out)
    return key_args(string.format(
      "--login --pin %s --sign --mechanism ECDSA --id 01 --signature-format openssl -i %s -o %s",
      token.pin, q(digest), q(out)))
  end

  setup(function()
    softhsm.check_environment()
    assert(read_file(MODULE), "no " .. MODULE .. ": build it (cmake --build build) or set JWKE_FAULTMOD_DIR")
    tmp = (softhsm.run("mktemp -d /tmp/jwke-faultmod.XXXXXX")):match("[^\n]+")
    token = softhsm.new_token("faultmod")
    softhsm.pkcs11_tool_ok(token,
      "--login --keypairgen --key-type EC:prime256v1 --label faultmod-key --id 01")
    digest = tmp .. "/digest"
    softhsm.write_file(tmp .. "/data", "payload to sign")
    local out, ok = softhsm.run(string.format("openssl dgst -sha256 -binary -out %s %s", q(digest), q(tmp .. "/data")))
    assert(ok, out)
    softhsm.pkcs11_tool_ok(token, "--read-object --type pubkey --id 01 -o " .. q(tmp .. "/pub.der"))
  end)

  teardown(function()
    if tmp then softhsm.run("rm -rf " .. q(tmp)) end
  end)

  it("lists the same slots, tokens and library info as SoftHSM itself", function()
    for _, args in ipairs({ "-L", "-T", "-I" }) do
      local through, ok1 = tool({}, args)
      local direct, ok2 = tool({}, args, softhsm.LIBRARY)
      assert.is_true(ok1, through)
      assert.is_true(ok2, direct)
      assert.are.equal(direct, through)
    end
    local out = tool({}, "-L")
    assert.matches(token.label, out, 1, true)
  end)

  it("signs with no faults, and openssl verifies the signature", function()
    local sig = tmp .. "/plain.sig"
    local out, ok = tool({}, sign_args(sig))
    assert.is_true(ok, out)
    out, ok = softhsm.run(string.format(
      "openssl pkeyutl -verify -pubin -keyform DER -inkey %s -sigfile %s -in %s",
      q(tmp .. "/pub.der"), q(sig), q(digest)))
    assert.is_true(ok, out)
    assert.matches("Signature Verified Successfully", out, 1, true)
  end)

  it("C_Sign:CKR_DEVICE_ERROR@1 fails the first C_Sign of a run; the token stays usable", function()
    local stats = tmp .. "/sign.stats"
    -- pkcs11-tool falls back to C_SignUpdate when C_Sign fails; as the failed
    -- C_Sign ended the operation (PKCS#11 says it must), its own message is
    -- about C_SignUpdate. The module's verbose line and stats show the fault.
    local out, ok = tool({ JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR@1", JWKE_FAULT_VERBOSE = "1",
      JWKE_FAULT_STATS = stats }, sign_args(tmp .. "/f1.sig"))
    assert.is_false(ok, out)
    assert.matches("C_Sign call 1: injecting CKR_DEVICE_ERROR", out, 1, true)
    local s = read_stats(stats)
    assert.are.equal(1, s["injected.C_Sign"])
    assert.are.equal(1, s["calls.C_Sign"])
    assert.are.equal("finalize", s.reason)

    -- counts restart in every process: @2 is never reached by one pkcs11-tool run
    out, ok = tool({ JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR@2" }, sign_args(tmp .. "/f2.sig"))
    assert.is_true(ok, out)
    out, ok = tool({}, sign_args(tmp .. "/f3.sig"))
    assert.is_true(ok, out)
  end)

  it("names the injected code in pkcs11-tool's own error (C_SignInit, by name or number)", function()
    for _, spec in ipairs({ "C_SignInit:CKR_DEVICE_ERROR@1", "C_SignInit:0x30", "C_SignInit:48%100" }) do
      local out, ok = tool({ JWKE_FAULTS = spec }, sign_args(tmp .. "/i.sig"))
      assert.is_false(ok, out)
      assert.matches("C_SignInit failed: rv = CKR_DEVICE_ERROR", out, 1, true)
    end
  end)

  it("an injected CKR_PIN_INCORRECT never reaches the token's PIN counter", function()
    local fresh = softhsm.new_token("faultmod-pin")
    local out, ok = tool({ JWKE_FAULTS = "C_Login:CKR_PIN_INCORRECT@1" },
      string.format("--token-label %s --login --pin %s -O", q(fresh.label), fresh.pin))
    assert.is_false(ok, out)
    assert.matches("C_Login failed: rv = CKR_PIN_INCORRECT", out, 1, true)
    local flags = token_flags(tool({}, "-T", softhsm.LIBRARY), fresh.label)
    assert.is_string(flags)
    assert.is_nil(flags:find("count low", 1, true), flags)
    -- a real wrong PIN does count (so the check above means something)
    tool({}, string.format("--token-label %s --login --pin 9999 -O", q(fresh.label)), softhsm.LIBRARY)
    flags = token_flags(tool({}, "-T", softhsm.LIBRARY), fresh.label)
    assert.matches("user PIN count low", flags, 1, true)
  end)

  it("JWKE_FAULT_REMOVED=1 shows every slot without a token", function()
    local out, ok = tool({ JWKE_FAULT_REMOVED = "1" }, "-L")
    assert.is_true(ok, out)
    assert.matches("Available slots:", out, 1, true)
    assert.is_nil(out:find(token.label, 1, true), out)
    assert.is_nil(out:find("token label", 1, true), out)
    assert.matches("(empty)", out, 1, true)
    out, ok = tool({ JWKE_FAULT_REMOVED = "1" }, "-T")
    assert.is_nil(out:find(token.label, 1, true), out)
    out, ok = tool({ JWKE_FAULT_REMOVED = "1" }, key_args("-O"))
    assert.is_false(ok, out)
    out, ok = tool({ JWKE_FAULT_REMOVED = "0" }, key_args("-O"))
    assert.is_true(ok, out)
  end)

  it("adds the configured latency per call", function()
    -- a lower bound from the calls the module itself counted: a loaded
    -- machine can only make the run longer
    local stats = tmp .. "/latency.stats"
    local t0 = now()
    local out, ok = tool({ JWKE_FAULT_LATENCY_US = "C_GetSlotList:250000", JWKE_FAULT_STATS = stats }, "-L")
    assert.is_true(ok, out)
    local slow = now() - t0
    local calls = read_stats(stats)["calls.C_GetSlotList"]
    assert.is_true(calls >= 2, "pkcs11-tool -L called C_GetSlotList " .. tostring(calls) .. " times")
    assert.is_true(slow >= calls * 0.25,
      string.format("%d calls with 250 ms each took %.3f s", calls, slow))
  end)

  it("writes call counts to JWKE_FAULT_STATS on C_Finalize (%p is the pid)", function()
    local out, ok = tool({ JWKE_FAULT_STATS = tmp .. "/count-%p.stats" }, sign_args(tmp .. "/c.sig"))
    assert.is_true(ok, out)
    local listing = softhsm.run("ls " .. q(tmp))
    local name = assert(listing:match("(count%-%d+%.stats)"), listing)
    local s = read_stats(tmp .. "/" .. name)
    assert.are.equal("finalize", s.reason)
    assert.are.equal(tonumber(name:match("%d+")), s.pid)
    assert.are.equal(1, s["calls.C_Initialize"])
    assert.are.equal(1, s["calls.C_Finalize"])
    assert.are.equal(1, s["calls.C_Login"])
    assert.are.equal(1, s["calls.C_SignInit"])
    assert.are.equal(1, s["calls.C_Sign"])
    assert.is_true(s["calls.C_GetSlotList"] >= 1)
    assert.are.equal(0, s.injected_total)
    assert.are.equal(0, s.errors_total)
    assert.is_nil(read_file(tmp .. "/" .. name):find(token.pin, 1, true))
  end)

  it("refuses malformed settings: C_Initialize fails and stderr says why", function()
    local unknown_key = tmp .. "/unknown-key.ctl"
    softhsm.write_file(unknown_key, "nonsense=1\n")
    local cases = {
      { { JWKE_FAULTS = "C_Sgn:CKR_DEVICE_ERROR" }, "unknown PKCS#11 function 'C_Sgn'" },
      { { JWKE_FAULTS = "C_Sign:CKR_NO_SUCH_CODE" }, "expected a CKR_ name" },
      { { JWKE_FAULTS = "C_Sign:CKR_OK" }, "CKR_OK is not a fault" },
      { { JWKE_FAULTS = "C_Sign CKR_DEVICE_ERROR" }, "expected FUNCTION:CODE" },
      { { JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR@0" }, "'@' needs a call number >= 1" },
      { { JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR%101" }, "percentage from 0 to 100" },
      { { JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR*0" }, "'*' needs a count >= 1" },
      { { JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR/0" }, "'/' needs a period >= 1" },
      { { JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR/2+" }, "'/N+' needs a first call >= 1" },
      { { JWKE_FAULTS = "C_Sign:CKR_DEVICE_ERROR@2x" }, "unexpected 'x'" },
      { { JWKE_FAULTS = "C_GetFunctionList:CKR_DEVICE_ERROR" }, "cannot be made to fail" },
      { { JWKE_FAULT_LATENCY_US = "C_Sign:soon" }, "number of microseconds" },
      { { JWKE_FAULT_LATENCY_US = "*:5;C_Sign" }, "'C_Sign': expected FUNCTION:MICROSECONDS" },
      { { JWKE_FAULT_REMOVED = "maybe" }, "JWKE_FAULT_REMOVED: expected 0 or 1" },
      { { JWKE_FAULT_CORRUPT_SIGNATURE = "maybe" }, "JWKE_FAULT_CORRUPT_SIGNATURE: expected 0 or 1" },
      { { JWKE_FAULT_SEED = "-1" }, "JWKE_FAULT_SEED" },
      { { JWKE_FAULT_MODULE = tmp .. "/missing.so" }, "cannot load" },
      { { JWKE_FAULT_MODULE = MODULE }, "is the fault module itself" },
      { { JWKE_FAULT_CONTROL = unknown_key }, "unknown key 'nonsense' (faults, latency, removed, seed, "
        .. "max_sessions, token_flags, lengths, token_max_sessions, session_idle_ms, corrupt_signature)" },
    }
    for _, case in ipairs(cases) do
      local out, ok = tool(case[1], "-L")
      assert.is_false(ok, out)
      assert.matches("jwke_faultmod: ", out, 1, true)
      assert.matches(case[2], out, 1, true)
      assert.matches("C_Initialize failed: rv = CKR_GENERAL_ERROR", out, 1, true)
    end
  end)

  it("takes several rules, spaces and newlines in JWKE_FAULTS", function()
    local out, ok = tool({ JWKE_FAULTS = " C_Login : CKR_DEVICE_ERROR @2 ;\nC_SignInit:CKR_FUNCTION_FAILED@2+~ ; " },
      sign_args(tmp .. "/r.sig"))
    assert.is_true(ok, out)
  end)

  describe("driver", function()
    local scenarios = {
      list = "a full v2.40 function list; C_Initialize faults and settings errors",
      counts = "counts within one process (jwke_faultmod_stats, the stats file)",
      ["sign-faults"] = "an injected C_Sign/Update/Final failure ends the real operation",
      triggers = "@N, @N+, *K, %P and the seed",
      removal = "removal and re-insertion: old handles invalid, token logged out",
      effects = "CKR_SESSION_HANDLE_INVALID closes the session, CKR_USER_NOT_LOGGED_IN logs out, ~ does not",
      ["max-sessions"] = "JWKE_FAULT_MAX_SESSIONS gives CKR_SESSION_COUNT",
      latency = "latency from the environment and the control file",
      control = "control-file reloads, bad files, the check interval",
      threads = "8 threads signing through random faults",
      fork = "fork: the child has the settings and its own counts; no deadlock",
      shared = "SoftHSM also loaded directly: the wrapper's C_Finalize leaves it alone",
      paths = "final-call faults keep or end the operation, removal before or after a fault, a failed C_Finalize",
    }
    local order = { "list", "counts", "sign-faults", "triggers", "removal", "effects",
      "max-sessions", "latency", "control", "threads", "fork", "shared", "paths" }
    for _, name in ipairs(order) do
      it(name .. ": " .. scenarios[name], function()
        local out, ok = softhsm.run(string.format("%s %s %s %s %s %s %s", env_prefix({}), q(DRIVER),
          q(MODULE), q(token.label), q(token.pin), q(tmp), q(name)))
        assert.is_true(ok, out)
        assert.matches("PASS " .. name, out, 1, true)
        assert.is_nil(out:find("FAIL", 1, true), out)
      end)
    end
  end)
end)

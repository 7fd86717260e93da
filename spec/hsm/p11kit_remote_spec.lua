-- SoftHSM behind p11-kit's remoting (spec/helpers/p11kit.lua), the stand-in
-- for a network HSM: the whole HSM suite (spec/helpers/hsm_suite.lua) in
-- the steady state, and outages of 0.5 s, 3 s and 30 s
-- (the server and its p11-kit-remote killed, then started again on the
-- same socket) while this process signs in a loop, ending without a
-- restart; and an outage that starts while a slow C_Sign is in flight.
local jwkengine = require("jwkengine")
local p11kit = require("helpers.p11kit")
local hsm_suite = require("helpers.hsm_suite")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")

-- Seconds on the monotonic clock (the wall clock in whole seconds is too
-- coarse to time a recovery).
local clock = require("jwkengine").metrics.clock

local function nap() os.execute("sleep 0.02") end

-- How long to wait for recovery once the HSM is back, a deadline only: the
-- README's promise (the next attempt at most hsm.reinit_interval_max_ms,
-- 2 s, away) is checked on every failure's "next attempt in N ms", not by
-- timing on a shared machine; the figure itself is printed.
local RECOVERY_DEADLINE_S = 60

-- One server for the file: the suite's token, then the outages'.
local server
local function served()
  server = server or p11kit.new({ label = "remote" })
  -- the client module in this process reads the exported address only
  assert(server.in_process, "P11_KIT_SERVER_ADDRESS is not exported: run the spec through scripts/test.sh")
  return server
end

hsm_suite.define({
  name = "the HSM suite on SoftHSM through p11-kit's remoting",
  rsa_bits = 2048,
  -- p11-kit 0.24's RPC does not carry the EdDSA mechanisms: its client
  -- leaves them out of the mechanism list (the suite checks the list, and
  -- that generating EdDSA fails with the mechanism named)
  lacks = { "EdDSA" },
  new_token = function()
    local token = served().token
    return { library = p11kit.CLIENT, label = token.label, pin = token.pin,
      environment = { HSM_MIN_RSA_BITS = "2048", P11_KIT_SERVER_ADDRESS = server:address() },
      tool = function(args)
        return softhsm.run(string.format("%s pkcs11-tool --module %s --token-label %s --pin %s %s",
          server:shell_environment(), softhsm.quote(p11kit.CLIENT), softhsm.quote(token.label),
          softhsm.quote(token.pin), args))
      end }
  end,
}, _ENV)

describe("SoftHSM through p11-kit's remoting", function()
  local engine, env

  setup(function()
    env = served():environment({ HSM_MIN_RSA_BITS = "2048" })
    engine = assert(jwkengine.open({ environment = env, startup = false, logger = false }))
    assert(engine:generate("remote-es256", "ES256", { kid = "remote-es256-1" }))
  end)

  teardown(function()
    if engine then engine:close() end
    server:dispose()
  end)

  -- Signs in a loop; `down_for` seconds after the first signature the
  -- server is killed, then started again. Returns the seconds from the
  -- server's return to the first good signature, and the failures seen.
  local function outage(down_for)
    local killed_at, back_at, failures, codes = nil, nil, 0, {}
    local deadline = clock() + down_for + RECOVERY_DEADLINE_S
    while clock() < deadline do
      local jws, err, code = engine:sign_jwt("remote-es256", { sub = "loop" })
      if jws and back_at then
        local recovered = clock() - back_at
        local ok, out = verifier.jwcrypto(assert(engine:key_set_json("remote-es256")), jws)
        assert.is_true(ok, out)
        return recovered, failures, codes
      end
      if not jws then
        assert.is_not_nil(killed_at, "a signature failed before the outage: " .. tostring(err))
        failures = failures + 1
        codes[code] = (codes[code] or 0) + 1
        assert.equals("ERR_HSM_UNAVAILABLE", code, err)
        local wait = tonumber(err:match("next attempt in (%d+) ms"))
        assert.is_true(wait ~= nil and wait <= 2000, err)
        nap()
      end
      if not killed_at then
        server:stop()
        killed_at = clock()
      elseif not back_at and clock() - killed_at >= down_for then
        server:start()
        back_at = clock()
      end
    end
    error(string.format("no good signature within %d s of the HSM's return", RECOVERY_DEADLINE_S))
  end

  -- The 30 s outage only waits longer than the 3 s one: the sanitizer pass
  -- (scripts/test.sh) runs the same code without it.
  local lengths = os.getenv("JWKE_SANITIZER_PASS") and { 0.5, 3 } or { 0.5, 3, 30 }
  for _, down_for in ipairs(lengths) do
    it(string.format("recovers from a %.1f s outage without a restart; every call meanwhile is ERR_HSM_UNAVAILABLE", down_for), function()
      assert(engine:sign_jwt("remote-es256", { sub = "before" }))
      local recovered, failures = outage(down_for)
      print(string.format("p11-kit outage of %.1f s: %d calls failed with ERR_HSM_UNAVAILABLE; first good signature %.2f s after the server's return",
        down_for, failures, recovered))
      assert.is_true(failures > 0, "the outage was not seen")
    end)
  end

  it("recovers from an outage that starts while a slow C_Sign is in flight", function()
    if engine then engine:close() engine = nil end
    local dir = server.dir
    local faultmod = require("helpers.faults").MODULE
    -- a child process: the fault module (3 s before each C_Sign) in front
    -- of p11-kit's client, writing its call counts after every call; one
    -- line per signature
    local script = dir .. "/inflight.lua"
    softhsm.write_file(script, string.format([[
      package.path = %q
      package.cpath = %q
      local jwkengine = require("jwkengine")
      local env = { HSM_ENABLED = "true", HSM_LIBRARY = %q, HSM_TOKEN_LABEL = %q, HSM_PIN = %q }
      local engine = assert(jwkengine.open({ environment = env, startup = false, logger = false }))
      assert(engine:key_set("remote-es256"))
      local failed = false
      for _ = 1, 200 do
        local jws, err, code = engine:sign_jwt("remote-es256", { sub = "inflight" })
        io.write(jws and "OK\n" or (code .. " " .. err .. "\n"))
        io.flush()
        if jws and failed then break end
        failed = failed or not jws
        os.execute("sleep 0.1")
      end
      engine:close()
    ]], package.path, package.cpath, faultmod, server.token.label, server.token.pin))
    local out_path, stats_path = dir .. "/inflight.out", dir .. "/inflight.stats"
    os.remove(stats_path)
    os.execute(string.format("%s JWKE_FAULT_MODULE=%s JWKE_FAULT_LATENCY_US=C_Sign:3000000 JWKE_FAULT_CONTROL=%s "
      .. "JWKE_FAULT_STATS=%s JWKE_FAULT_STATS_SYNC=1 %s %s >%s 2>&1 &", server:shell_environment(),
      softhsm.quote(p11kit.CLIENT), softhsm.quote(dir .. "/none.ctl"), softhsm.quote(stats_path), softhsm.LUA,
      softhsm.quote(script), softhsm.quote(out_path)))
    -- The fault module's count of `name` calls, as its last finished call
    -- wrote them (0 before any).
    local function count(name)
      local f = io.open(stats_path)
      local stats = f and f:read("a") or ""
      if f then f:close() end
      return tonumber(stats:match("calls%." .. name .. " (%d+)") or "0")
    end
    local function wait_for(name, what)
      for _ = 1, 3000 do
        if count(name) >= 1 then return end
        nap()
      end
      error(what .. ": " .. (io.open(out_path) and softhsm.read_file(out_path) or ""))
    end
    -- The first C_SignInit has returned: the first C_Sign is (or is about
    -- to be) held 3 s in the fault module, and the server goes meanwhile;
    -- it comes back only once that C_Sign has returned (the counts are
    -- written when a call ends). Ordered by the calls, not by sleeps that
    -- a loaded machine outlasts.
    wait_for("C_SignInit", "the signing process did not start")
    server:stop()
    wait_for("C_Sign", "the C_Sign in flight did not return")
    server:start()
    local lines
    for _ = 1, 3000 do
      local out = softhsm.read_file(out_path)
      lines = {}
      for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
      if #lines >= 2 and lines[#lines] == "OK" then break end
      nap()
    end
    assert.is_true(#lines >= 2, table.concat(lines, "\n"))
    assert.equals("OK", lines[#lines], table.concat(lines, "\n"))
    for i = 1, #lines - 1 do
      assert.matches("^ERR_HSM_UNAVAILABLE ", lines[i])
    end
    assert.matches("C_Sign: ", lines[1], 1, true) -- the call in flight is the cause
    print(string.format("outage during C_Sign: %d calls failed, then a good signature", #lines - 1))
  end)
end)

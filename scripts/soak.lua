-- Proof under load for the PKCS#11 layer, printing its figures:
--
--   build/jwkengine scripts/soak.lua soak [SIGNATURES]   (default 100000)
--     signs (and verifies) through the fault-injecting module with 1% of
--     C_SignInit calls failing recoverably: closed sessions, stale object
--     handles, logouts. Faults are spread evenly (every 300 calls, 100 calls
--     apart), so a retry never meets a second fault and the promise is
--     exact: zero failed signatures. Resident memory is sampled as it goes.
--
--   build/jwkengine scripts/soak.lua fork [CHILDREN] [EACH]   (default 8 x 1000)
--     opens the engine, forks children that each sign while the parent keeps
--     signing, and verifies every signature in the parent. The fault module
--     runs in strict fork mode: a child must call C_Initialize and cannot use
--     the parent's sessions, as with a networked HSM's client library.
--
-- Exits non-zero when a signature failed or did not verify.
package.path = arg[0]:gsub("[^/]*$", "") .. "lib/?.lua;" .. package.path
local sandbox = require("sandbox")

local exe_dir = arg[-1]:match("^(.*)/[^/]*$") or "."
sandbox.enter({
  JWKE_FAULT_CONTROL = "$DIR/faults.ctl",
  JWKE_FAULT_FORK_STRICT = "1",
})

local jwkengine = require("jwkengine")
local bench = require("jwkengine_bench")

local MODULE = exe_dir .. "/spec/faultmod/libjwke_faultmod.so"
local mode = arg[1] or "soak"

local function set_faults(faults)
  local path = os.getenv("JWKE_FAULT_CONTROL")
  local f = assert(io.open(path .. ".tmp", "w"))
  f:write("faults=", faults, "\n")
  f:close()
  assert(os.rename(path .. ".tmp", path))
end

sandbox.new_token("soak")
set_faults("")
local function open()
  return assert(jwkengine.open({ logger = false, startup = false, environment = {
    HSM_ENABLED = "true", HSM_LIBRARY = MODULE, HSM_TOKEN_LABEL = "soak", HSM_PIN = "1234" } }))
end

if mode == "soak" then
  local total = tonumber(arg[2]) or 100000
  local engine = open()
  assert(engine:generate("soak", "ES256", { kid = "soak-1" }))
  set_faults(table.concat({
    "C_SignInit:CKR_SESSION_HANDLE_INVALID/300+1",
    "C_SignInit:CKR_OBJECT_HANDLE_INVALID/300+101~",
    "C_SignInit:CKR_USER_NOT_LOGGED_IN/300+201",
  }, ";"))
  local started = bench.now()
  local failed, bad, samples = 0, 0, {}
  local claims = { sub = "soak", iss = "https://issuer.example" }
  for i = 1, total do
    local jwt, err = engine:sign_jwt("soak", claims)
    if not jwt then
      failed = failed + 1
      if failed <= 5 then print("signature " .. i .. " failed: " .. tostring(err)) end
    elseif not engine:verify("soak", jwt) then
      bad = bad + 1
    end
    if i == 1 or i % math.floor(total / 10) == 0 then
      collectgarbage()
      samples[#samples + 1] = string.format("%d:%d", i, bench.rss_kb())
    end
  end
  local seconds = bench.now() - started
  local stats = assert(engine:stats())
  local r = stats.recoveries
  local first_kb = tonumber(samples[2]:match(":(%d+)"))
  local last_kb = tonumber(samples[#samples]:match(":(%d+)"))
  print(string.format("soak: %d signatures in %.1f s (%.0f/s), %d failed, %d did not verify",
    total, seconds, total / seconds, failed, bad))
  print(string.format("recoveries: session %d, login %d, object %d, reinit %d; failed recoveries %d",
    r.session, r.login, r.object, r.reinit, stats.failed_recoveries))
  print("resident memory (signatures:kB): " .. table.concat(samples, " "))
  print(string.format("resident memory growth after the first tenth: %d kB", last_kb - first_kb))
  engine:close()
  os.exit((failed == 0 and bad == 0 and r.session + r.login + r.object > 0) and 0 or 1)
end

if mode == "fork" then
  local testproc = require("testproc")
  local children, each = tonumber(arg[2]) or 8, tonumber(arg[3]) or 1000
  local engine = open()
  assert(engine:generate("forked", "ES256", { kid = "f1" }))
  assert(engine:sign("forked", "before the fork")) -- sessions and handles exist
  local dir = os.getenv("JWKE_SANDBOX_DIR")
  local started = bench.now()
  local pids = {}
  for child = 1, children do
    local pid = testproc.fork()
    if pid == 0 then
      local f = assert(io.open(dir .. "/child-" .. child, "w"))
      local status = 0
      for i = 1, each do
        local jws, err = engine:sign("forked", "child " .. child .. " #" .. i)
        if not jws then
          f:write("ERROR ", tostring(err), "\n")
          status = 1
          break
        end
        f:write(jws, "\n")
      end
      local r = assert(engine:stats()).recoveries
      f:write(string.format("RECOVERIES %d\n", r.session + r.login + r.object + r.reinit))
      f:close()
      engine:close() -- must leave the parent's sessions alone
      testproc._exit(status)
    end
    pids[#pids + 1] = pid
  end
  -- the parent keeps signing while the children run
  local parent_tokens = {}
  for i = 1, 2 * each do parent_tokens[i] = assert(engine:sign("forked", "parent #" .. i)) end
  local statuses = {}
  for i, pid in ipairs(pids) do statuses[i] = testproc.wait(pid) end
  local signing_seconds = bench.now() - started
  parent_tokens[#parent_tokens + 1] = assert(engine:sign("forked", "after the children"))

  local verified, failures, child_recoveries = 0, 0, 0
  for _, jws in ipairs(parent_tokens) do
    if engine:verify("forked", jws) then verified = verified + 1 else failures = failures + 1 end
  end
  for child = 1, children do
    local count = 0
    for line in io.lines(dir .. "/child-" .. child) do
      local recoveries = line:match("^RECOVERIES (%d+)")
      if recoveries then
        child_recoveries = child_recoveries + tonumber(recoveries)
      elseif line:match("^ERROR") then
        print("child " .. child .. ": " .. line)
        failures = failures + 1
      elseif engine:verify("forked", line) then
        verified = verified + 1
        count = count + 1
      else
        failures = failures + 1
      end
    end
    if count ~= each then failures = failures + 1 end
  end
  for i, status in ipairs(statuses) do
    if status ~= 0 then
      print("child " .. i .. " exited with " .. status)
      failures = failures + 1
    end
  end
  print(string.format("fork: %d children x %d signatures and %d by the parent in %.1f s; %d verified, %d failed",
    children, each, #parent_tokens, signing_seconds, verified, failures))
  print(string.format("recoveries the children needed: %d (each re-initialized on its first call instead)",
    child_recoveries))
  engine:close()
  os.exit((failures == 0 and child_recoveries == 0) and 0 or 1)
end

print("usage: jwkengine scripts/soak.lua soak [SIGNATURES] | fork [CHILDREN] [EACH]")
os.exit(2)

-- What a failover costs (issue 24; BENCHMARKS.md, "Failover"):
--
--   build/jwkengine scripts/bench/failover.lua [--trials N] [--outage SECONDS] [--signatures N]
--
-- Two tokens in one engine (hsm.tokens): the primary a SoftHSM token
-- behind p11-kit's remoting (`p11-kit server`, the stand-in for a network
-- HSM; spec/helpers/p11kit.lua starts and kills it), the second a local
-- SoftHSM token. Every sign_jwt (ES256) is timed alone, on the monotonic
-- clock, and interleaved with a call of a reference engine on the second
-- token alone (what signing there costs without any failover), so both
-- see the same machine; the figures are percentiles over those times:
--   normal     both tokens up: the primary signs
--   first      the first call after the primary's server (and its
--              p11-kit-remote) is killed: it meets the broken connection
--              and signs on the second token; one per trial, in one
--              engine that is back on the primary before each
--   outage     every call during an outage of --outage seconds, the
--              server down throughout (the primary probed once a second)
-- Every signature is checked: signed by the token the phase expects,
-- verified by the engine against the set's JWK Set. Runs in a throwaway
-- SoftHSM token folder (scripts/lib/sandbox.lua); the server it starts is
-- killed by its process group, which it leads.
local TRIALS, OUTAGE, SIGNATURES = 40, 5, 2000
for i = 1, #arg do
  if arg[i] == "--trials" then TRIALS = tonumber(arg[i + 1]) end
  if arg[i] == "--outage" then OUTAGE = tonumber(arg[i + 1]) end
  if arg[i] == "--signatures" then SIGNATURES = tonumber(arg[i + 1]) end
end

package.path = arg[0]:gsub("[^/]*$", "") .. "../lib/?.lua;spec/?.lua;" .. package.path
local sandbox = require("sandbox")
-- the client module reads its server's address from the environment
sandbox.enter({ P11_KIT_SERVER_ADDRESS = "unix:path=$DIR/p11kit.sock" })

local jwkengine = require("jwkengine")
local bench = require("jwkengine_bench")
local p11kit = require("helpers.p11kit")
local softhsm = require("helpers.softhsm")

local SET = "failover"
local CLAIMS = { iss = "https://issuer.example", sub = "user-1234567890", aud = "client-app",
  exp = 1900000000, iat = 1800000000 }

local server = p11kit.new({ label = "primary" })
assert(server.in_process, "P11_KIT_SERVER_ADDRESS is not the sandbox's")
local second = softhsm.new_token("second")

local function entry(library, token)
  return { library = library, token_label = token.label, pin = token.pin }
end

local function open(tokens)
  -- short publication settings: a failback may wait until the primary's
  -- keys have been published long enough (max_age + refresh + cache_ttl)
  return assert(jwkengine.open({ environment = {}, logger = false,
    startup_sets = { { set = SET, alg = "ES256" } },
    publication = { max_age = 1, refresh = 1 }, store = { cache_ttl = 1 },
    hsm = { enabled = true, failback_after = 0, tokens = tokens } }))
end

local function two_tokens()
  return open({ entry(p11kit.CLIENT, server.token), entry(softhsm.LIBRARY, second) })
end

-- The kid that signed a compact JWS, after the engine verified it.
local function signer(engine, jws)
  local _, header = assert(engine:verify(SET, jws, { algorithms = { "ES256" } }))
  return header.kid
end

-- One timed sign_jwt, in milliseconds, and its kid.
local function timed(engine)
  local started = bench.now()
  local jws, err, code = engine:sign_jwt(SET, CLAIMS)
  local ms = (bench.now() - started) * 1000
  assert(jws, tostring(err) .. " (" .. tostring(code) .. ")")
  return ms, signer(engine, jws)
end

local function percentile(sorted, p)
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

local function summary(times)
  table.sort(times)
  return { n = #times, p50 = percentile(times, 0.5), p99 = percentile(times, 0.99),
    p999 = percentile(times, 0.999), max = times[#times] }
end

-- Each phase interleaves its calls with calls of a reference engine on
-- the second token alone (one each, in turn), so both see the same
-- machine: a row is the phase and the reference beside it.
local rows = {}
local function record(name, times, reference)
  rows[#rows + 1] = { name = name, phase = summary(times), reference = summary(reference) }
end

local engine, alone = two_tokens(), open({ entry(softhsm.LIBRARY, second) })
local primary_kid = select(2, timed(engine))
local second_kid = select(2, timed(alone))
assert(second_kid ~= primary_kid)

-- n calls of the engine, each followed by one of the reference; every
-- engine call signed by `want`
local function interleaved(times, reference, want, what)
  local ms, kid = timed(engine)
  assert(kid == want, what)
  times[#times + 1] = ms
  reference[#reference + 1] = (timed(alone))
end

-- normal: the primary signs
local times, reference = {}, {}
for _ = 1, SIGNATURES do interleaved(times, reference, primary_kid, "the second token signed while the primary was up") end
record("normal: the primary signs (through p11-kit)", times, reference)

-- first: the first call after the primary dies, one per trial: the
-- server is started again after each, and the trial waits until the
-- primary signs again (probed once a second)
local function back_on_primary()
  local deadline = bench.now() + 60
  repeat
    if select(2, timed(engine)) == primary_kid then return end
    os.execute("sleep 0.05")
  until bench.now() > deadline
  error("the primary did not sign again within 60 s")
end
times, reference = {}, {}
for _ = 1, TRIALS do
  back_on_primary()
  server:stop()
  interleaved(times, reference, second_kid, "the first call after the kill was not signed by the second token")
  server:start()
end
record(string.format("first call after the primary dies (%d trials)", TRIALS), times, reference)

-- outage: every call while the primary stays down
back_on_primary()
server:stop()
times, reference = {}, {}
local deadline = bench.now() + OUTAGE
while bench.now() < deadline do
  interleaved(times, reference, second_kid, "the primary signed while its server was down")
end
record(string.format("every call during a %g s outage", OUTAGE), times, reference)
local stats = engine:stats()
engine:close()
alone:close()
server:dispose()

print(string.format("jwkengine %s, failover cost: ES256 sign_jwt, each call timed alone (ms), "
  .. "interleaved with a reference engine on the second token alone; hsm.failback_after = 0; "
  .. "load average %s", jwkengine._VERSION, (softhsm.read_file("/proc/loadavg"):match("^(%S+ %S+ %S+)"))))
print("")
print("| phase | calls | p50 | p99 | p99.9 | max | reference p50 | reference p99 | added p50 | added p99 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for _, row in ipairs(rows) do
  local p, r = row.phase, row.reference
  print(string.format("| %s | %d | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %+.3f | %+.3f |", row.name, p.n, p.p50,
    p.p99, p.p999, p.max, r.p50, r.p99, p.p50 - r.p50, p.p99 - r.p99))
end
print("")
print(string.format("failovers the engine counted: %d (one per trial and one for the outage)", stats.hsm_failovers))

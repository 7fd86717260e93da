-- What a failover costs (issue 24; BENCHMARKS.md, "Failover"):
--
--   build/jwkengine scripts/bench/failover.lua [--trials N] [--outage SECONDS] [--signatures N]
--
-- Two tokens in one engine (hsm.tokens): the primary a SoftHSM token
-- behind p11-kit's remoting (`p11-kit server`, the stand-in for a network
-- HSM; spec/helpers/p11kit.lua starts and kills it), the second a local
-- SoftHSM token. Every sign_jwt (ES256) is timed alone, on the monotonic
-- clock, and the figures are percentiles over those times:
--   normal     both tokens up: the primary signs
--   second     an engine on the second token alone: what signing there
--              costs without any failover
--   first      the first call after the primary's server (and its
--              p11-kit-remote) is killed: it meets the broken connection
--              and signs on the second token; one per trial, each trial
--              a fresh engine on a running server
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
  return assert(jwkengine.open({ environment = {}, logger = false,
    startup_sets = { { set = SET, alg = "ES256" } },
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

local rows = {}
local function record(name, times, note)
  table.sort(times)
  rows[#rows + 1] = { name = name, n = #times, p50 = percentile(times, 0.5), p99 = percentile(times, 0.99),
    max = times[#times], note = note }
end

-- The kids of each token, from an engine that has both: the primary's
-- is what signs while both are up.
local engine = two_tokens()
local primary_kid = select(2, timed(engine))

-- normal: the primary signs
local times = {}
for i = 1, SIGNATURES do
  local ms, kid = timed(engine)
  assert(kid == primary_kid, "the second token signed while the primary was up")
  times[i] = ms
end
record("normal (primary, through p11-kit)", times)
engine:close()

-- second: the second token alone
engine = open({ entry(softhsm.LIBRARY, second) })
local second_kid = select(2, timed(engine))
assert(second_kid ~= primary_kid)
times = {}
for i = 1, SIGNATURES do times[i] = (timed(engine)) end
record("second token alone (no failover)", times)
engine:close()

-- first: the first call after the primary dies, one per trial
times = {}
for i = 1, TRIALS do
  engine = two_tokens()
  assert(select(2, timed(engine)) == primary_kid)
  server:stop()
  local ms, kid = timed(engine)
  assert(kid == second_kid, "the first call after the kill was not signed by the second token")
  times[i] = ms
  engine:close()
  server:start()
end
record("first call after the primary dies", times, TRIALS .. " trials")

-- outage: every call while the primary stays down
engine = two_tokens()
assert(select(2, timed(engine)) == primary_kid)
server:stop()
times = {}
local deadline = bench.now() + OUTAGE
while bench.now() < deadline do
  local ms, kid = timed(engine)
  assert(kid == second_kid, "the primary signed while its server was down")
  times[#times + 1] = ms
end
record(string.format("every call during a %g s outage", OUTAGE), times)
local stats = engine:stats()
engine:close()
server:dispose()

print(string.format("jwkengine %s, failover cost: ES256 sign_jwt, one call timed at a time (ms); "
  .. "hsm.failback_after = 0; load average %s", jwkengine._VERSION,
  (softhsm.read_file("/proc/loadavg"):match("^(%S+ %S+ %S+)"))))
print("")
print("| phase | calls | p50 | p99 | max | p99 over the second token alone |")
print("|---|---:|---:|---:|---:|---:|")
local reference = rows[2].p99
for _, row in ipairs(rows) do
  print(string.format("| %s%s | %d | %.3f | %.3f | %.3f | %+.3f |", row.name, row.note and (" (" .. row.note .. ")") or "",
    row.n, row.p50, row.p99, row.max, row.p99 - reference))
end
print("")
print(string.format("failovers counted by the last engine: %d", stats.hsm_failovers or -1))

-- jwkengine's benchmark: build/jwkengine scripts/bench.lua [--round SECONDS]
--
-- Measures the engine against the floor, the raw PKCS#11 and OpenSSL calls
-- on the same keys in the same process (scripts/bench/baseline.c), rounds
-- interleaved so both sides see the same machine state. Everything runs on
-- a throwaway SoftHSM token folder and an in-memory software store; nothing
-- outside a temporary folder is touched. See BENCHMARKS.md.
local ROUND = 0.25 -- seconds per measurement round
local ROUNDS = 6   -- interleaved rounds per figure (raw, engine, raw, engine, ...)

for i = 1, #arg do
  if arg[i] == "--round" then ROUND = tonumber(arg[i + 1]) end
end

package.path = arg[0]:gsub("[^/]*$", "") .. "lib/?.lua;" .. package.path
local sandbox = require("sandbox")
local shell = sandbox.shell
sandbox.enter()

local jwkengine = require("jwkengine")
-- the binding itself: the bench times it beside the engine
local core = require("jwkengine.core")
local bench = require("jwkengine_bench")

local LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
local PIN = "1234"
local SECRET = "bench-secret-0123456789abcdef"
local CLAIMS = { iss = "https://issuer.example", sub = "user-1234567890", aud = "client-app",
  scope = "openid profile", exp = 1900000000, iat = 1800000000 }

local new_token = sandbox.new_token

local function environment(label, extra)
  local env = { HSM_ENABLED = "true", HSM_LIBRARY = LIBRARY, HSM_TOKEN_LABEL = label, HSM_PIN = PIN,
    SECRETS_SYSTEM = SECRET, DSN = "memory" }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local function open(label, extra)
  return assert(jwkengine.open({ environment = environment(label, extra), logger = false,
    startup = false }))
end

-- Calls fn repeatedly for `seconds`; returns calls per second.
local function rate(seconds, fn)
  local n, start = 0, bench.now()
  local elapsed = 0
  while elapsed < seconds do
    for _ = 1, 16 do fn() end
    n = n + 16
    elapsed = bench.now() - start
  end
  return n / elapsed
end

local function median(list)
  local sorted = {}
  for i, v in ipairs(list) do sorted[i] = v end
  table.sort(sorted)
  local n = #sorted
  return n % 2 == 1 and sorted[(n + 1) / 2] or (sorted[n / 2] + sorted[n / 2 + 1]) / 2
end

-- Interleaves raw() and engine() rounds. Each engine round is compared with
-- the raw round just before it (the machine's drift hits both alike), and
-- the median of those ratios is reported with the median rates.
local function compare(raw, engine)
  local raws, engines, ratios = {}, {}, {}
  for i = 1, ROUNDS do
    raws[i] = raw()
    engines[i] = engine()
    ratios[i] = engines[i] / raws[i]
  end
  return median(raws), median(engines), median(ratios)
end

local out = {}
local function say(fmt, ...)
  local line = string.format(fmt, ...)
  out[#out + 1] = line
  print(line)
  io.stdout:flush()
end

-- A worker of the multi-process figure: signs on the shared token for the
-- given seconds with an engine (and so a session) of its own.
-- Resident memory with 1,000 software keys, measured in a fresh process so
-- nothing from the other figures is counted.
if arg[1] == "--rss" then
  local sw = open("bench", { HSM_ENABLED = "false" })
  assert(sw:generate("warm", "ES256"))
  assert(sw:sign_jwt("warm", CLAIMS))
  collectgarbage()
  local before = bench.rss_kb()
  for i = 1, 1000 do assert(sw:generate("many", "ES256", { kid = "m" .. i })) end
  assert(#assert(sw:key_set("many")).keys == 1000)
  assert(sw:sign_jwt("many", CLAIMS))
  collectgarbage()
  print(before, bench.rss_kb())
  sw:close()
  os.exit(0)
end

if arg[1] == "--worker" or arg[1] == "--worker-raw" then
  local e = open("bench")
  if arg[1] == "--worker" then
    print(rate(tonumber(arg[2]), function() e:sign_jwt("hsm-ES256", CLAIMS) end))
  else
    local key = assert(e:signing_key("hsm-ES256"))
    local jwt = assert(e:sign_jwt("hsm-ES256", CLAIMS))
    print(bench.p11_sign(key, "ES256", jwt:match("^(.*)%."), tonumber(arg[2])))
  end
  e:close()
  os.exit(0)
end

local started = bench.now()
say("jwkengine %s benchmark, %s, %d rounds of %.2f s interleaved (medians; ratio = median of", jwkengine._VERSION,
  core.versions().openssl, ROUNDS, ROUND)
say("each engine round over the raw round run just before it)")

-- Keys: one set per algorithm on the token and in the software store.
new_token("bench")
local engine = open("bench")
local ALGS = { "RS256", "ES256", "ES512", "EdDSA" }
for _, alg in ipairs(ALGS) do
  assert(engine:generate("hsm-" .. alg, alg, { kid = "hsm-" .. alg }))
  -- with the HSM enabled, generate goes to the token: the software sets are
  -- imported keys
  local software_key = assert(core.generate_software_key(alg))
  assert(engine:import("sw-" .. alg, software_key:private_jwk(), { kid = "sw-" .. alg, alg = alg }))
end

-- The JWS signing input both sides sign: what sign_jwt produces.
local function signing_input(set)
  local jwt = assert(engine:sign_jwt(set, CLAIMS))
  return jwt:match("^(.*)%."), jwt
end

say("")
say("JWT signing (operations per second; engine = sign_jwt from Lua: claims encoded, signed, serialized)")
say("")
say("| alg | keys | raw floor | jwkengine | ratio | target |")
say("|---|---|---:|---:|---:|---:|")
local SIGN_TARGETS = {
  hsm = { RS256 = 0.98, ES256 = 0.95, ES512 = 0.98, EdDSA = 0.98 },
  software = { RS256 = 0.97, ES256 = 0.90, ES512 = 0.97, EdDSA = 0.90 },
}
local results = { misses = {} }
for _, alg in ipairs(ALGS) do
  for _, side in ipairs({ "hsm", "software" }) do
    local set = (side == "hsm" and "hsm-" or "sw-") .. alg
    local input = signing_input(set)
    local raw_key = assert(engine:signing_key(set))
    local raw
    if side == "hsm" then
      raw = function() return bench.p11_sign(raw_key, alg, input, ROUND) end
    else
      raw = function() return bench.evp_sign(raw_key, alg, input, ROUND) end
    end
    local seconds = alg == "RS256" and side == "hsm" and ROUND * 4 or ROUND
    if alg == "RS256" and side == "hsm" then
      raw = function() return bench.p11_sign(raw_key, alg, input, seconds) end
    end
    local raw_rate, engine_rate, ratio = compare(raw, function()
      return rate(seconds, function() engine:sign_jwt(set, CLAIMS) end)
    end)
    local target = SIGN_TARGETS[side][alg]
    say("| %s | %s | %.0f | %.0f | %.3f | %.2f%s |", alg, side, raw_rate, engine_rate, ratio, target,
      ratio >= target and "" or " (missed)")
    if ratio < target then results.misses[#results.misses + 1] = alg .. " " .. side .. " signing" end
  end
end

say("")
say("JWS verification (software keys; engine = engine:verify: parse, header, key choice, signature)")
say("")
say("| alg | raw EVP verify | jwkengine | ratio | target |")
say("|---|---:|---:|---:|---:|")
for _, alg in ipairs(ALGS) do
  local set = "sw-" .. alg
  local input, jwt = signing_input(set)
  local signature = assert(core.b64url_decode(jwt:match("[^.]+$")))
  local key = assert(engine:signing_key(set))
  local raw_rate, engine_rate, ratio = compare(function()
    return bench.evp_verify(key, alg, input, signature, ROUND)
  end, function()
    return rate(ROUND, function() assert(engine:verify(set, jwt)) end)
  end)
  say("| %s | %.0f | %.0f | %.3f | 0.90%s |", alg, raw_rate, engine_rate, ratio,
    ratio >= 0.90 and "" or " (missed)")
  if ratio < 0.90 then results.misses[#results.misses + 1] = alg .. " verification" end
end

say("")
local jwks_rate = rate(ROUND * 2, function() engine:key_set_json("hsm-ES256") end)
say("JWK Set serialization (cached key_set_json): %.0f per second", jwks_rate)
engine:close()

-- Loading a set and opening the engine as the token grows.
say("")
say("| key pairs on the token | generate them | load a set of them | raw floor: 1 search + 1 read per object | open the engine |")
say("|---:|---:|---:|---:|---:|")
for _, pairs_count in ipairs({ 100, 1000 }) do
  local label = "bench-" .. pairs_count
  new_token(label)
  local e = open(label)
  local t0 = bench.now()
  for i = 1, pairs_count do
    assert(e:generate(i <= 2 and ({ "hydra.openid.id-token", "hydra.jwt.access-token" })[i] or "big",
      "ES256", { kid = "k" .. i }))
  end
  local generate_s = bench.now() - t0
  e:close()
  t0 = bench.now()
  e = assert(jwkengine.open({ environment = environment(label), logger = false,
    startup_sets = { { set = "hydra.openid.id-token", alg = "ES256" },
      { set = "hydra.jwt.access-token", alg = "ES256" } } }))
  local open_ms = (bench.now() - t0) * 1000
  local loads, load_start = 0, bench.now()
  local jwks
  repeat
    jwks = assert(e:reload("big"))
    loads = loads + 1
  until bench.now() - load_start > 1 and loads >= 3
  local load_ms = (bench.now() - load_start) * 1000 / loads
  assert(#jwks.keys == pairs_count - 2)
  local raw_total = 0
  local any_key = assert(e:signing_key("hydra.openid.id-token"))
  for _ = 1, loads do
    local ms, objects = bench.p11_load(any_key, "big")
    -- the pairs and two CKO_DATA objects under the set's label: its key
    -- states and their marker (hsm_states.lua, "jwkengine key states written")
    assert(objects == 2 * (pairs_count - 2) + 2, objects)
    raw_total = raw_total + ms
  end
  local raw_ms = raw_total / loads
  say("| %d | %.1f s | %.1f ms (%d pairs) | %.1f ms | %.1f ms |", pairs_count, generate_s, load_ms,
    pairs_count - 2, raw_ms, open_ms)
  e:close()
end

-- Resident memory with 1,000 software keys decrypted and held (a fresh process).
local rss = shell(string.format("%s %s --rss", arg[-1], arg[0]))
local before, after = rss:match("(%d+)%s+(%d+)")
before, after = tonumber(before), tonumber(after)
say("")
say("Resident memory: %d kB with the engine open, %d kB with 1,000 software ES256 keys decrypted and held (%.1f kB per key)",
  before, after, (after - before) / 1000)

-- Aggregate ES256 signing with 1 and 2 processes, each with its own session.
local worker_seconds = ROUND * 6
local function workers(n, raw)
  local pipes = {}
  for i = 1, n do
    pipes[i] = assert(io.popen(string.format("%s %s %s %s", arg[-1], arg[0],
      raw and "--worker-raw" or "--worker", worker_seconds)))
  end
  local total = 0
  for _, pipe in ipairs(pipes) do
    total = total + tonumber(pipe:read("*a"):match("([%d.]+)"))
    pipe:close()
  end
  return total
end
local one, raw_one = workers(1), workers(1, true)
local two, raw_two = workers(2), workers(2, true)
say("")
say("Aggregate HSM ES256 JWT signing: 1 process %.0f/s, 2 processes %.0f/s (x%.2f, target x1.80%s)",
  one, two, two / one, two / one >= 1.8 and "" or ", missed")
say("The raw C_Sign floor on the same token: 1 process %.0f/s, 2 processes %.0f/s (x%.2f)",
  raw_one, raw_two, raw_two / raw_one)
if two / one < 1.8 then results.misses[#results.misses + 1] = "2-process scaling" end

say("")
say("Total benchmark time: %.0f s. Targets missed: %s", bench.now() - started,
  #results.misses == 0 and "none" or table.concat(results.misses, ", "))

-- The cost of counting metrics in callgrind instructions (BENCHMARKS.md,
-- "Counting metrics"): lua5.4 scripts/bench_counting.lua software|hsm N
-- makes N ES256 sign_jwt calls, software (store "memory") or on the SoftHSM
-- token labelled cg (PIN 1234; the set is generated on the first run).
-- Run it under valgrind --tool=callgrind with N and with 0: the difference
-- over N is the cost of one token.
local jwkengine = require("jwkengine")
local backend, n = arg[1], tonumber(arg[2])
assert((backend == "software" or backend == "hsm") and n, "usage: bench_counting.lua software|hsm N")
local environment = backend == "software" and { SECRETS_SYSTEM = "a-secret-of-24-characters", DSN = "memory" }
  or { HSM_ENABLED = "true", HSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so", HSM_TOKEN_LABEL = "cg", HSM_PIN = "1234" }
local engine = assert(jwkengine.open({ environment = environment, startup_sets = { { set = "b", alg = "ES256" } },
  logger = false }))
local claims = { sub = "alice", aud = "app" }
assert(engine:sign_jwt("b", claims, { lifetime = 300 }))
-- the collector is stopped while signing: its work depends on where its
-- cycle stands when the loop ends, not on the code measured; what it would
-- have to collect is the bytes allocated, printed per token
collectgarbage("collect")
collectgarbage("stop")
local before_kb = collectgarbage("count")
for _ = 1, n do engine:sign_jwt("b", claims, { lifetime = 300 }) end
if n > 0 then
  io.stderr:write(string.format("%.1f bytes allocated by Lua per token\n", (collectgarbage("count") - before_kb) * 1024 / n))
end
engine:close()

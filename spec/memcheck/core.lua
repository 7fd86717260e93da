-- The core's paths in one plain-Lua run, for valgrind memcheck
-- (scripts/memcheck.sh): HSM keys through the fault module (so recovery
-- code runs too), software keys, AES-GCM, JWS parsing with bad input.
-- Every check is an assert: the run fails loudly if behaviour breaks.
local jwkengine = require("jwkengine")
local core = require("jwkengine.core")

local build, label = arg[1], arg[2]
local env = { HSM_ENABLED = "true", HSM_LIBRARY = build .. "/spec/faultmod/libjwke_faultmod.so",
  HSM_TOKEN_LABEL = label, HSM_PIN = "1234", SECRETS_SYSTEM = "memcheck-secret-0123456789", DSN = "memory" }
local engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))

for _, alg in ipairs({ "ES256", "EdDSA" }) do
  assert(engine:generate("hsm-" .. alg, alg, { kid = alg }))
  for i = 1, 20 do
    local jwt = assert(engine:sign_jwt("hsm-" .. alg, { sub = "memcheck", n = i }, { lifetime = 60 }))
    assert(engine:verify_jwt("hsm-" .. alg, jwt))
  end
end
-- the fault module's control file is set by scripts/memcheck.sh to inject
-- a fault of every recoverable class on the first signatures above
assert(assert(engine:stats()).recoveries.session > 0)
assert(engine:delete("hsm-ES256", "ES256"))

for _, alg in ipairs({ "RS256", "PS256", "ES384", "EdDSA" }) do
  local key = assert(core.generate_software_key(alg, { bits = 2048 }))
  assert(engine:import("sw-" .. alg, key:private_jwk(), { alg = alg }))
  local jwt = assert(engine:sign_jwt("sw-" .. alg, { sub = "memcheck" }))
  assert(engine:verify("sw-" .. alg, jwt))
end
local pem = assert(io.popen("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null")):read("*a")
assert(engine:import("imported", pem, { kid = "pem" }))
assert(engine:rotate_secrets())

local sealed = assert(core.aes_gcm_seal("memcheck-secret-0123456789", "plaintext"))
assert(core.aes_gcm_open({ "memcheck-secret-0123456789" }, sealed) == "plaintext")
assert(not core.aes_gcm_open({ "wrong-secret-0123456789" }, sealed))

local candidates = assert(engine:key_set("sw-EdDSA"))
for _, bad in ipairs({ "", "a.b", "a.b.c.d", "eyJhbGciOiJub25lIn0.e30.", "!!!.e30.sig",
    "eyJhbGciOiJFZERTQSJ9.e30." .. string.rep("A", 86) }) do
  assert(not jwkengine.jws.verify(bad, candidates, { algorithms = { "EdDSA" } }))
end
assert(not core.public_key({ kty = "EC", crv = "P-256", x = string.rep("A", 43), y = string.rep("A", 43) }))

engine:close()
collectgarbage()
print("memcheck core run: ok")

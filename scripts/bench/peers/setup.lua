-- peers.sh's key set-up: one key pair made by jwkengine on the token
-- labelled TOKEN (one token per algorithm: libp11 0.4.12 cannot list a
-- token that holds an Ed25519 key), so every peer signs with the very same
-- key. Writes the public JWK Set to DIR/jwks-ALG.json for the verifier.
--   lua5.4 setup.lua DIR TOKEN ALG KID
local jwkengine = require("jwkengine")
local dir, label, alg, kid = arg[1], arg[2], arg[3], arg[4]
local engine = assert(jwkengine.open({ logger = false, startup = false, environment = {
  HSM_ENABLED = "true", HSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so", HSM_TOKEN_LABEL = label,
  HSM_PIN = "1234", HSM_MIN_RSA_BITS = "2048", SECRETS_SYSTEM = "peers-bench-secret-0123456789", DSN = "memory" } }))
assert(engine:generate("peers", alg, { kid = kid, rsa_bits = alg == "RS256" and 2048 or nil }))
local f = assert(io.open(dir .. "/jwks-" .. alg .. ".json", "w"))
f:write(assert(engine:key_set_json("peers")))
f:close()
engine:close()

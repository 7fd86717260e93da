-- peers.sh's jwkengine peer, under Lua 5.4 or LuaJIT: engine:sign_jwt on
-- the set "peers" of the token labelled TOKEN, the same claims as every
-- peer (iat and exp from the clock per token). Prints "rate N" (wall
-- clock), "cpu_rate N" (the process's CPU time), "token JWT".
--   lua5.4|luajit jwkengine.lua TOKEN SECONDS   (-N: exactly N tokens)
local jwkengine = require("jwkengine")
local label, seconds = arg[1], tonumber(arg[2])
-- PEERS_VERIFY_AFTER_SIGN=true|false overrides hsm.verify_after_sign (unset:
-- the default, RSA signatures verified)
local engine = assert(jwkengine.open({ logger = false, startup = false, environment = {
  HSM_ENABLED = "true", HSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so", HSM_TOKEN_LABEL = label,
  HSM_PIN = "1234", HSM_MIN_RSA_BITS = "2048", SECRETS_SYSTEM = "peers-bench-secret-0123456789", DSN = "memory",
  HSM_VERIFY_AFTER_SIGN = os.getenv("PEERS_VERIFY_AFTER_SIGN") } }))
local now = jwkengine.metrics.clock -- monotonic
local claims = { iss = "https://issuer.example", sub = "user-1234567890", aud = "client-app",
  scope = "openid profile" }
local options = { lifetime = 300 }
local token
for _ = 1, 20 do token = assert(engine:sign_jwt("peers", claims, options)) end
local ops, start, elapsed, cpu_start = 0, now(), 0, os.clock()
if seconds < 0 then -- -N: exactly N tokens, for counting instructions
  for _ = 1, -seconds do token = engine:sign_jwt("peers", claims, options) end
  ops, elapsed = -seconds, now() - start
end
while elapsed < seconds do
  for _ = 1, 8 do token = engine:sign_jwt("peers", claims, options) end
  ops = ops + 8
  elapsed = now() - start
end
assert(token, "signing failed")
print(string.format("rate %.1f\ncpu_rate %.1f\ntoken %s", ops / elapsed, ops / (os.clock() - cpu_start), token))
engine:close()

-- The main job on whatever the configuration names: open the engine (which
-- generates the startup sets when missing), publish the ID-token JWK Set,
-- sign a JWT and verify it.
local jwkengine = require("jwkengine")
local E = require("jwkengine.errors").E

local engine, err = jwkengine.open()
if not engine then
  io.stderr:write("demo: ", err, "\n")
  os.exit(1)
end

local set = "hydra.openid.id-token"
print("JWK Set of " .. set .. ":")
print(assert(engine:key_set_json(set)))

local token = assert(engine:sign_jwt(set, {
  iss = "https://issuer.example",
  sub = "alice",
  aud = "demo-client",
}, { lifetime = 300 }))
print("\nSigned ID token:")
print(token)

local payload, header = engine:verify(set, token)
if not payload then
  io.stderr:write("demo: verification failed: ", header, "\n")
  os.exit(1)
end
print(string.format("\nVerified: alg=%s kid=%s claims=%s", header.alg, header.kid, payload))

-- Keys added from outside always go to the software store; with the HSM
-- enabled they are found there because the HSM says "not found".
-- (Without a software store, import says ERR_CONFIG and this part is skipped.)
-- a PEM private key made outside, as an operator would bring one
local pipe = assert(io.popen("openssl genpkey -algorithm ed25519 2>/dev/null"))
local imported = pipe:read("a")
pipe:close()
local jwk, err, code = engine:import("demo.imported", imported, { kid = "imported-1" })
if not jwk and code ~= E.ERR_CONFIG then error(err) end
if jwk then
  local jws = assert(engine:sign("demo.imported", "signed by an imported software key"))
  local text = assert(engine:verify("demo.imported", jws))
  print(string.format("\nImported %s key '%s' into the software store; signed and verified: %s",
    jwk.alg, jwk.kid, text))
end
engine:close()

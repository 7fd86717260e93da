-- Shared by the jose_* specs: RFC vectors, bit flips, and the independent
-- implementations (python3-jwcrypto from Debian, the npm `jose` package).
local cjson = require("cjson")
local jwkengine = require("jwkengine")
local softhsm = require("helpers.softhsm")

local M = {}

-- Debian's python3 has jwcrypto; a python3 earlier on PATH may not.
M.PYTHON = io.open("/usr/bin/python3") and "/usr/bin/python3" or "python3"
M.ALGORITHMS = { "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA" }

M.quote = softhsm.quote

function M.read_file(path)
  return assert(require("jwkengine.util").read_file(path))
end

M.write_file = softhsm.write_file
M.run = softhsm.run

-- An RFC example file from spec/vectors.
function M.vector(name)
  return cjson.decode(M.read_file("spec/vectors/" .. name .. ".json"))
end

function M.b64(bytes) return jwkengine.b64url_encode(bytes) end
function M.unb64(text) return assert(jwkengine.b64url_decode(text)) end

-- The protected header of a compact JWS, decoded, not verified.
function M.header(jws) return cjson.decode((M.unb64(jws:match("^[^.]+")))) end

-- Copies a JWK without its private members.
function M.public_jwk(jwk)
  local public = {}
  for k, v in pairs(jwk) do
    if not ({ d = 1, p = 1, q = 1, dp = 1, dq = 1, qi = 1 })[k] then public[k] = v end
  end
  return public
end

-- Every token that differs from `token` by one bit: one per byte of each
-- decoded segment (the bit rotates with the position), re-encoded.
function M.one_bit_variants(token)
  local segments = {}
  for s in token:gmatch("[^.]+") do segments[#segments + 1] = M.unb64(s) end
  local variants = {}
  for i, bytes in ipairs(segments) do
    for pos = 1, #bytes do
      local b, bit = bytes:byte(pos), 2 ^ ((pos - 1) % 8)
      local flipped = string.char(math.floor(b / bit) % 2 == 1 and b - bit or b + bit)
      local copy = { segments[1], segments[2], segments[3] }
      copy[i] = bytes:sub(1, pos - 1) .. flipped .. bytes:sub(pos + 1)
      variants[#variants + 1] = M.b64(copy[1]) .. "." .. M.b64(copy[2]) .. "." .. M.b64(copy[3])
    end
  end
  return variants
end

-- Runs a Python script (text) with a JSON document as its argument (a
-- file) and returns what it prints.
function M.python_text(script, document)
  local script_path, data_path = os.tmpname(), os.tmpname()
  M.write_file(script_path, script)
  M.write_file(data_path, cjson.encode(document))
  local out, ok = M.run(M.PYTHON .. " " .. script_path .. " " .. data_path)
  os.remove(script_path)
  os.remove(data_path)
  assert(ok, "python failed: " .. out)
  return out
end

-- The same for a script that prints JSON: the decoded value.
function M.python(script, document)
  return cjson.decode(M.python_text(script, document))
end

-- A function of one JSON document that runs `script` on it (M.python).
local function python_script(script)
  return function(document) return M.python(script, document) end
end

-- jwcrypto verifies each { jwks, token, alg }: a list of { ok, payload | error }.
M.jwcrypto_verify = python_script([=[
import json, sys
from jwcrypto import jwk, jws
out = []
for case in json.load(open(sys.argv[1])):
    try:
        keys = jwk.JWKSet.from_json(json.dumps(case["jwks"]))
        obj = jws.JWS()
        obj.allowed_algs = [case["alg"]]
        obj.deserialize(case["token"])
        kid = obj.jose_header.get("kid")
        key = keys.get_key(kid) if kid else list(keys)[0]
        obj.verify(key, alg=case["alg"])
        out.append({"ok": True, "payload": obj.payload.decode()})
    except Exception as e:
        out.append({"ok": False, "error": repr(e)})
print(json.dumps(out))
]=])

-- jwcrypto signs a JWT for each { alg, kid, claims }: a list of
-- { jwks (public), token }. RSA keys are 2048 bits.
M.jwcrypto_sign = python_script([=[
import json, sys
from jwcrypto import jwk, jwt
out = []
for case in json.load(open(sys.argv[1])):
    alg = case["alg"]
    if alg.startswith(("RS", "PS")):
        key = jwk.JWK.generate(kty="RSA", size=2048, kid=case["kid"])
    elif alg == "EdDSA":
        key = jwk.JWK.generate(kty="OKP", crv="Ed25519", kid=case["kid"])
    else:
        crv = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]
        key = jwk.JWK.generate(kty="EC", crv=crv, kid=case["kid"])
    token = jwt.JWT(header={"alg": alg, "kid": case["kid"], "typ": "JWT"}, claims=case["claims"])
    token.make_signed_token(key)
    public = json.loads(key.export_public())
    out.append({"jwks": {"keys": [public]}, "token": token.serialize()})
print(json.dumps(out))
]=])

-- jwcrypto's RFC 7638 thumbprint of a JWK (a table), under "SHA-256"
-- (default), "SHA-384" or "SHA-512": an answer jwkengine did not compute.
local jwcrypto_thumbprint = python_script([=[
import json, sys
from cryptography.hazmat.primitives import hashes
from jwcrypto import jwk
case = json.load(open(sys.argv[1]))
hashalg = {"SHA-256": hashes.SHA256(), "SHA-384": hashes.SHA384(), "SHA-512": hashes.SHA512()}[case["hash"]]
print(json.dumps(jwk.JWK(**case["jwk"]).thumbprint(hashalg)))
]=])

function M.jwcrypto_thumbprint(jwk, hash)
  return jwcrypto_thumbprint({ jwk = jwk, hash = hash or "SHA-256" })
end

-- The npm `jose` package, installed once per run into a temp folder from
-- scripts/npm-jose/package.json (JWKE_NPM_JOSE_DIR reuses an installed one).
local npm_dir, npm_dir_is_ours
function M.npm_jose_dir()
  if npm_dir then return npm_dir end
  local dir = os.getenv("JWKE_NPM_JOSE_DIR")
  if not dir or dir == "" then
    dir = M.run("mktemp -d /tmp/jwkengine-npm.XXXXXX"):gsub("%s+$", "")
    npm_dir_is_ours = true
  end
  if not io.open(dir .. "/node_modules/jose/package.json") then
    local out, ok = M.run(string.format(
      "cp scripts/npm-jose/package.json scripts/npm-jose/*.mjs %s/ && cd %s && npm install --no-audit --no-fund --loglevel=error",
      M.quote(dir), M.quote(dir)))
    assert(ok, "npm install failed: " .. out)
  else
    M.run(string.format("cp scripts/npm-jose/*.mjs %s/", M.quote(dir)))
  end
  npm_dir = dir
  return dir
end

-- Removes the folder npm_jose_dir made (not one given by JWKE_NPM_JOSE_DIR).
function M.npm_cleanup()
  if npm_dir and npm_dir_is_ours then M.run("rm -rf " .. M.quote(npm_dir)) end
  npm_dir, npm_dir_is_ours = nil, nil
end

-- Runs one of the scripts/npm-jose scripts on a JSON document.
function M.node(script, document)
  local dir = M.npm_jose_dir()
  local data_path = os.tmpname()
  M.write_file(data_path, cjson.encode(document))
  local out, ok = M.run(string.format("node %s/%s %s", M.quote(dir), script, data_path))
  os.remove(data_path)
  assert(ok, "node " .. script .. " failed: " .. out)
  return cjson.decode(out)
end

return M

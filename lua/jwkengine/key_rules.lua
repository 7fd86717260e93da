-- The rules every key path shares (HSM and software; generate, import,
-- sign, sign_jwt, jws.sign), each decided here once, so a key is never made,
-- stored or used in a way another path would then refuse.
local core = require("jwkengine.core")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

-- The algorithm table (core/alg.c), read once: every fact about an
-- algorithm comes from there, never from a list written here.
local ALGORITHMS = core.algorithms()

-- The algorithm a key implies when it names none, by its kty (RSA) or crv.
local DEFAULT_ALG = {}
for name, info in pairs(ALGORITHMS) do
  if info.default then DEFAULT_ALG[info.crv or info.kty] = name end
end

-- The alg a public JWK (kty, crv) signs with when none is given: RS256 for
-- RSA, ES256 for P-256, EdDSA for Ed25519, ...
function M.implied_alg(public_jwk)
  return DEFAULT_ALG[public_jwk.kty == "RSA" and "RSA" or public_jwk.crv]
end

-- Whether `maker` ("hsm" or "software") generates keys for alg.
function M.generates(maker, alg)
  local info = type(alg) == "string" and ALGORITHMS[alg]
  return info and info[maker .. "_generates"] or false
end

-- The algorithms `maker` generates keys for, as text for a message.
function M.generated_list(maker)
  local list = {}
  for name, info in pairs(ALGORITHMS) do
    if info[maker .. "_generates"] then list[#list + 1] = name end
  end
  table.sort(list)
  return table.concat(list, ", ")
end

-- A value from outside, for a message: a string as written (control
-- characters masked), anything else by its type.
local function shown(value)
  if type(value) == "string" then return "'" .. require("jwkengine.jwk").shown(value) .. "'" end
  return value == require("cjson.safe").null and "null" or type(value)
end
M.shown = shown

-- A key signs only with its own alg: a token signed with another one (PS256
-- by an RS256 key) would be refused by the engine's own verify, which
-- allows a key only its alg. `requested` nil means the key's own.
function M.signing_alg(own_alg, requested, kid)
  if requested == nil or requested == own_alg then return own_alg end
  if type(requested) ~= "string" then error("options.alg must be a string", 3) end
  if not core.alg_info(requested) then
    return util.fail(E.ERR_UNSUPPORTED_ALG,
      "cannot sign with algorithm '%s' (jwkengine signs with RS*, PS*, ES* and EdDSA)", requested)
  end
  return util.fail(E.ERR_KEY_USE, "key '%s' is for alg %s and does not sign with %s",
    tostring(kid), tostring(own_alg), requested)
end

-- `use` is sig or enc, and only RSA keys can encrypt: an EC or Ed25519 key
-- marked enc would be stored, published and never usable.
function M.check_use(alg, use)
  if use ~= "sig" and use ~= "enc" then
    return util.fail(E.ERR_INVALID_ARGUMENT, "use must be 'sig' or 'enc', got %s", shown(use))
  end
  local info = core.alg_info(alg)
  if use == "enc" and not (info and info.kty == "RSA") then
    return util.fail(E.ERR_INVALID_ARGUMENT, "%s keys can only sign: use must be 'sig'", tostring(alg))
  end
  return true
end

-- The algorithm a key is kept with must be one the engine signs with and
-- fit the key (kty, curve, size). Imports and stored rows both pass here: a
-- row is input too, whoever wrote it. Returns true or nil, why (the caller
-- says which code: an import and a stored row fail differently).
function M.check_alg(key, alg)
  if type(alg) ~= "string" or not core.alg_info(alg) then
    return nil, string.format("alg must be one of the algorithms jwkengine signs with, got %s", shown(alg))
  end
  return key:fits(alg)
end

-- Rows hold private JWKs (Hydra's format): a public key alone could never
-- sign and would fail only later, as ERR_NO_SIGNING_KEY.
function M.check_private(key)
  if not key:is_private() then
    return util.fail(E.ERR_KEY_NOT_PRIVATE,
      "the key is public only: the store holds private keys (a PEM private key, or a JWK with 'd')")
  end
  return true
end

return M

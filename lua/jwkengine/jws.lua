-- Compact JWS: building protected headers and checking tokens.
--
-- Verification is strict: an explicit list of allowed algorithms, never
-- `none`, exactly three non-empty-header segments, a JSON object header, and
-- exactly one key that fits.
local core = require "jwkengine.core"
local cjson = require "cjson.safe"
local util = require "jwkengine.util"

local M = {}

local b64url_encode, b64url_decode = core.b64url_encode, core.b64url_decode

-- The protected header for a key, encoded once and cached by the caller.
-- Members are written in a fixed order so equal inputs give equal tokens.
function M.encode_header(alg, kid, typ)
  local parts = { '{"alg":', cjson.encode(alg) }
  if kid then parts[#parts + 1] = ',"kid":' .. cjson.encode(kid) end
  if typ then parts[#parts + 1] = ',"typ":' .. cjson.encode(typ) end
  parts[#parts + 1] = "}"
  return b64url_encode(table.concat(parts))
end

-- Splits a compact JWS into its decoded parts, or fails saying why.
function M.parse(token)
  if type(token) ~= "string" then
    return util.fail("ERR_JWS_INVALID", "JWS must be a string, got %s", type(token))
  end
  local first = token:find(".", 1, true)
  local second = first and token:find(".", first + 1, true)
  if not second or token:find(".", second + 1, true) then
    return util.fail("ERR_JWS_INVALID", "JWS must have exactly three dot-separated segments")
  end
  local header_b64 = token:sub(1, first - 1)
  local payload_b64 = token:sub(first + 1, second - 1)
  local signature_b64 = token:sub(second + 1)
  if header_b64 == "" then return util.fail("ERR_JWS_INVALID", "JWS header is empty") end
  if signature_b64 == "" then return util.fail("ERR_JWS_INVALID", "JWS signature is empty") end

  local header_json, err = b64url_decode(header_b64)
  if not header_json then return util.fail("ERR_JWS_INVALID", "JWS header: %s", err) end
  local header = cjson.decode(header_json)
  if type(header) ~= "table" or header_json:match("^%s*%[") then
    return util.fail("ERR_JWS_INVALID", "JWS header is not a JSON object")
  end
  local payload
  payload, err = b64url_decode(payload_b64)
  if not payload then return util.fail("ERR_JWS_INVALID", "JWS payload: %s", err) end
  local signature
  signature, err = b64url_decode(signature_b64)
  if not signature then return util.fail("ERR_JWS_INVALID", "JWS signature: %s", err) end

  return {
    header = header,
    payload = payload,
    signature = signature,
    signing_input = token:sub(1, second - 1),
  }
end

local function allowed_set(algorithms)
  if type(algorithms) ~= "table" or #algorithms == 0 then
    error("JWS verification needs an explicit, non-empty list of allowed algorithms", 3)
  end
  local set = {}
  for _, alg in ipairs(algorithms) do
    if alg ~= "none" then set[alg] = true end
  end
  return set
end

-- Verifies a compact JWS against candidates: a list of
-- { kid = ..., alg = ..., use = ..., public_key = <core public key> }.
-- options.algorithms is required. Returns payload, header.
function M.verify(token, candidates, options)
  local allowed = allowed_set(options and options.algorithms)
  local jws, err, code = M.parse(token)
  if not jws then return nil, err, code end
  local header = jws.header

  local alg = header.alg
  if type(alg) ~= "string" then
    return util.fail("ERR_JWS_INVALID", "JWS header has no string 'alg'")
  end
  if alg == "none" or not allowed[alg] then
    return util.fail("ERR_JOSE_ALG_NOT_ALLOWED", "algorithm '%s' is not allowed", alg)
  end
  if header.crit ~= nil then
    return util.fail("ERR_JWS_CRIT_UNSUPPORTED", "JWS header lists critical extensions jwkengine does not understand")
  end
  if header.kid ~= nil and type(header.kid) ~= "string" then
    return util.fail("ERR_JWS_INVALID", "JWS header 'kid' must be a string")
  end

  local matches = {}
  for _, candidate in ipairs(candidates) do
    if (header.kid == nil or candidate.kid == header.kid)
        and (candidate.use == nil or candidate.use == "sig")
        and (candidate.alg == nil or candidate.alg == alg)
        and candidate.public_key:fits(alg, options.min_rsa_bits) then
      matches[#matches + 1] = candidate
    end
  end
  if #matches == 0 then
    return util.fail("ERR_JWKS_NO_MATCHING_KEY", "no key matches the JWS (kid %s, alg %s)",
      header.kid and string.format("'%s'", header.kid) or "absent", alg)
  end
  if #matches > 1 then
    return util.fail("ERR_JWKS_MULTIPLE_MATCHING_KEYS",
      "%d keys match the JWS (alg %s); a kid is needed to pick one", #matches, alg)
  end

  local ok, verr = matches[1].public_key:verify(alg, jws.signing_input, jws.signature,
    options.min_rsa_bits)
  if not ok then
    return util.fail("ERR_JWS_SIGNATURE_INVALID", "JWS signature is invalid: %s", verr)
  end
  return jws.payload, header
end

return M

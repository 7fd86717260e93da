-- Compact JWS: building protected headers, signing, and strict checking.
--
-- Verification is strict:
--   * an explicit, non-empty list of allowed algorithms; `none` and HMAC
--     are never accepted (jwkengine has no symmetric keys, so no public key
--     can be mistaken for an HMAC secret)
--   * size limits first, then exactly three non-empty base64url segments
--     (no padding, no whitespace, no trailing garbage), and a header that is
--     a strict JSON object: duplicate member names are an error, since
--     cjson would silently keep the last one
--   * registered header members of the right type; `crit` per RFC 7515
--     section 4.1.11; `b64: false` (RFC 7797) refused
--   * exactly one key that fits by kid, use, key_ops, alg, key type, curve
--     and RSA size (at least 2048 bits); keys named by the token itself
--     (jwk, jku, x5u, x5c) are never used
--   * a signature of exactly the size the key makes (ECDSA: raw R || S)
local core = require("jwkengine.core")
local cjson = require("cjson.safe").new()
local jwk = require("jwkengine.jwk")
local key_rules = require("jwkengine.key_rules")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

local b64url_encode = core.b64url_encode

-- Defaults of the size limits (options.max_token_size, max_header_size).
M.DEFAULT_MAX_TOKEN_SIZE = 256 * 1024
M.DEFAULT_MAX_HEADER_SIZE = 16 * 1024
-- The floor of options.min_rsa_bits: smaller RSA keys never verify
-- (core/engine_limits.h).
M.MIN_RSA_BITS = core.limits().rsa_min_bits

-- Header parameters registered by RFC 7515/7518 (and b64, RFC 7797): they
-- may not be listed in crit, and their types are checked.
local REGISTERED = {
  alg = "string", jku = "string", jwk = "object", kid = "string", x5u = "string",
  x5c = "array", x5t = "string", ["x5t#S256"] = "string", typ = "string", cty = "string",
  crit = "array", b64 = "boolean",
}

-- The protected header for a key, encoded once and cached by the caller.
-- Members are written in a fixed order (alg, kid, typ, then any extra
-- members sorted by name) so equal inputs give equal tokens.
function M.encode_header(alg, kid, typ, extra)
  local parts = { '{"alg":', cjson.encode(alg) }
  if kid then parts[#parts + 1] = ',"kid":' .. cjson.encode(kid) end
  if typ then parts[#parts + 1] = ',"typ":' .. cjson.encode(typ) end
  if extra then
    for _, name in ipairs(util.sorted_keys(extra)) do
      if type(name) ~= "string" or name == "alg" or name == "kid" or name == "typ" or name == "b64" then
        error("extra header member '" .. tostring(name) .. "' is not allowed", 2)
      end
      local value, err = cjson.encode(extra[name])
      if not value then error("extra header member '" .. name .. "': " .. tostring(err), 2) end
      parts[#parts + 1] = "," .. cjson.encode(name) .. ":" .. value
    end
  end
  parts[#parts + 1] = "}"
  return b64url_encode(table.concat(parts))
end

local function limit(options, name, default)
  local v = options and options[name]
  if v == nil then return default end
  if type(v) ~= "number" or v < 1 then error(name .. " must be a positive number", 3) end
  return math.floor(v)
end

-- Splits and decodes a compact JWS (size limits, segments, strict base64url
-- and a strict JSON object header), or fails saying why. Nothing here says
-- the token is authentic.
--   options: max_token_size, max_header_size
function M.parse(token, options)
  if type(token) ~= "string" then
    return util.fail(E.ERR_JWS_INVALID, "JWS must be a string, got %s", type(token))
  end
  local header_json, payload, signature, input_len = core.jws_decode(token,
    limit(options, "max_token_size", M.DEFAULT_MAX_TOKEN_SIZE),
    limit(options, "max_header_size", M.DEFAULT_MAX_HEADER_SIZE))
  -- on failure: nil, message, ERR_JWS_TOO_LARGE | ERR_JWS_INVALID
  if not header_json then return nil, payload, signature end
  -- core.jws_decode has already put the header through the strict check
  local header, err = cjson.decode(header_json)
  if type(header) ~= "table" then return util.fail(E.ERR_JWS_INVALID, "JWS header: %s", tostring(err)) end
  return {
    header = header,
    header_json = header_json,
    payload = payload,
    signature = signature,
    signing_input = token:sub(1, input_len),
  }
end

local function kind_of(value)
  if value == cjson.null then return "null" end
  if type(value) == "table" then return jwk.is_array(value) and "array" or "object" end
  return type(value)
end

-- Member types, crit and b64. `understood` is the caller's set of
-- extension names it handles itself (options.critical).
local function check_header(header, understood)
  for name, expected in pairs(REGISTERED) do
    local value = header[name]
    if value ~= nil then
      local got = kind_of(value)
      -- [] and {} decode alike: an empty table passes as an array (an
      -- empty crit is refused below)
      if got ~= expected and not (expected == "array" and got == "object" and next(value) == nil) then
        return util.fail(E.ERR_JWS_INVALID, "JWS header member '%s' must be %s %s, got %s", name,
          (expected == "array" or expected == "object") and "an" or "a", expected, got)
      end
    end
  end

  local crit = header.crit
  if crit ~= nil then
    if #crit == 0 then
      return util.fail(E.ERR_JWS_INVALID, "JWS header member 'crit' must not be empty (RFC 7515 section 4.1.11)")
    end
    local seen = {}
    for _, name in ipairs(crit) do
      if type(name) ~= "string" then
        return util.fail(E.ERR_JWS_INVALID, "JWS header member 'crit' must list strings")
      end
      if seen[name] then
        return util.fail(E.ERR_JWS_INVALID, "JWS header member 'crit' lists '%s' twice", jwk.shown(name))
      end
      seen[name] = true
      -- b64 is the one registered name crit may carry (RFC 7797 section 6)
      if REGISTERED[name] and name ~= "b64" then
        return util.fail(E.ERR_JWS_INVALID,
          "JWS header member 'crit' lists '%s', which is defined by RFC 7515/7518 and must not be listed",
          name)
      end
      if header[name] == nil then
        return util.fail(E.ERR_JWS_INVALID,
          "critical header parameter '%s' is not in the protected header", jwk.shown(name))
      end
      if name ~= "b64" and not understood[name] then
        return util.fail(E.ERR_JWS_CRIT_UNSUPPORTED,
          "JWS header lists critical extension '%s', which is not understood", jwk.shown(name))
      end
    end
  end

  if header.b64 ~= nil and header.b64 ~= true then
    return util.fail(E.ERR_JWS_B64_UNSUPPORTED,
      "JWS header has b64: false (unencoded payload, RFC 7797), which is not supported")
  end
  return true
end

-- The algorithms jwkengine verifies and what it knows of each (core/alg.c),
-- read once: no C call per verification.
local KNOWN = core.algorithms()

-- Validated allow-lists and candidate lists, by the caller's table: a
-- verifier passes the same ones token after token, and building the set
-- again each time is a measurable share of a verification. Weak keys: the
-- memo never keeps a caller's table alive. (A caller that changes a list
-- in place after using it must pass a new table.)
local allowed_memo = setmetatable({}, { __mode = "k" })
local candidates_memo = setmetatable({}, { __mode = "k" })
local selections = setmetatable({}, { __mode = "k" })
local valid_headers, valid_header_count = {}, 0
local NO_KID = {} -- the selection slot of a token without a kid: equal to no string

local function build_allowed_set(algorithms)
  if type(algorithms) ~= "table" or #algorithms == 0 then
    error("JWS verification needs an explicit, non-empty list of allowed algorithms", 3)
  end
  local set = {}
  for _, alg in ipairs(algorithms) do
    if type(alg) ~= "string" then error("allowed algorithms must be strings", 3) end
    if alg == "none" or alg:upper() == "NONE" then
      error("algorithm 'none' can never be allowed", 3)
    end
    if alg:sub(1, 2) == "HS" then
      error("HMAC algorithm '" .. alg .. "' cannot be allowed: jwkengine has no symmetric keys", 3)
    end
    if not KNOWN[alg] then error("unknown algorithm '" .. alg .. "' in the allow-list", 3) end
    set[alg] = true
  end
  return set
end

local function allowed_set(algorithms)
  local memo = type(algorithms) == "table" and allowed_memo[algorithms]
  if memo then
    -- the list may have been changed in place since: compare its entries
    local n = #algorithms
    local same = n == memo.n
    for i = 1, n do
      if not same then break end
      same = memo.list[i] == algorithms[i]
    end
    if same then return memo.set end
  end
  local set = build_allowed_set(algorithms)
  local list = {}
  for i, alg in ipairs(algorithms) do list[i] = alg end
  allowed_memo[algorithms] = { set = set, list = list, n = #list }
  return set
end

local NOTHING = {}

local function understood_set(critical)
  if critical == nil then return NOTHING end
  local set = {}
  if type(critical) ~= "table" then error("options.critical must be a list of header names", 3) end
  for _, name in ipairs(critical) do set[name] = true end
  return set
end

-- Turns the `keys` argument of verify into candidates: a list of
-- candidates ({ kid, alg, use, key_ops, public_key }), a JWK Set (table or
-- JSON text), a single JWK table, or the result of jwk.parse_set.
function M.candidates(keys, options)
  if type(keys) == "string" then return jwk.parse_set(keys, options) end
  if type(keys) ~= "table" then
    error("keys must be a list of candidates, a JWK Set or a JWK, got " .. type(keys), 3)
  end
  if keys.keys ~= nil then return jwk.parse_set(keys, options) end
  if keys.kty ~= nil then
    local candidate, reason = jwk.parse_key(keys, options)
    if not candidate then return util.fail(E.ERR_JWK_INVALID, "JWK %s", reason) end
    return { candidate }
  end
  if candidates_memo[keys] then return keys end
  for i, c in ipairs(keys) do
    if type(c) ~= "table" or c.public_key == nil then
      error("candidate #" .. i .. " has no public_key", 3)
    end
  end
  candidates_memo[keys] = true
  return keys
end

-- The size a signature by alg with this key has (fixed by the algorithm,
-- else the RSA modulus size); a wrong size gets a precise message (and a
-- hint when an ECDSA signature is DER).
local function check_signature_size(alg, public_key, signature)
  local info = KNOWN[alg]
  local expected = info.signature_size or math.floor((public_key:bits() + 7) / 8)
  if #signature == expected then return true end
  local hint = ""
  if info.scheme == "ECDSA" and signature:byte(1) == 0x30 then
    hint = " (it looks DER-encoded; a JWS carries raw R || S)"
  end
  return util.fail(E.ERR_JWS_SIGNATURE_INVALID, "%s signature must be %d bytes, got %d%s", alg,
    expected, #signature, hint)
end

-- Verifies a compact JWS. Returns payload, header, key (the candidate that
-- verified it) or nil, message, code.
--   keys: see M.candidates
--   options.algorithms     required list of allowed algorithms
--   options.min_rsa_bits   smallest RSA key (default and floor 2048)
--   options.critical       extension names the caller understands and checks itself
--   options.max_token_size, options.max_header_size   size limits
function M.verify(token, keys, options)
  local allowed = allowed_set(options and options.algorithms)
  local understood = understood_set(options.critical)
  local min_rsa_bits = math.max(M.MIN_RSA_BITS, options.min_rsa_bits or 0)

  local jws, err, code = M.parse(token, options)
  if not jws then return nil, err, code end
  local header = jws.header

  local alg = header.alg
  if alg == nil then return util.fail(E.ERR_JWS_INVALID, "JWS header has no 'alg'") end
  if type(alg) ~= "string" then
    return util.fail(E.ERR_JWS_INVALID, "JWS header member 'alg' must be a string")
  end
  if alg:upper() == "NONE" then
    return util.fail(E.ERR_JOSE_ALG_NOT_ALLOWED, "algorithm 'none' is never accepted")
  end
  if alg:sub(1, 2) == "HS" then
    return util.fail(E.ERR_JOSE_ALG_NOT_ALLOWED,
      "HMAC algorithm '%s' is never accepted (jwkengine has no symmetric keys)", jwk.shown(alg))
  end
  if not allowed[alg] then
    return util.fail(E.ERR_JOSE_ALG_NOT_ALLOWED, "algorithm '%s' is not allowed", jwk.shown(alg))
  end
  local ok
  -- A verifier sees the same few headers token after token: one that passed
  -- the member checks (with no caller-specific crit list) is not checked
  -- again. Bounded, and emptied when full.
  local memo_header = understood == NOTHING and jws.header_json
  if not (memo_header and valid_headers[memo_header]) then
    ok, err, code = check_header(header, understood)
    if not ok then return nil, err, code end
    if memo_header then
      if valid_header_count >= 256 then valid_headers, valid_header_count = {}, 0 end
      valid_headers[memo_header] = true
      valid_header_count = valid_header_count + 1
    end
  end

  local candidates
  candidates, err, code = M.candidates(keys, options)
  if not candidates then return nil, err, code end
  -- the key a (kid, alg, minimum) picks from a candidate list is the same
  -- every time: chosen once per list. Nested by each part rather than one
  -- joined string, so no two different inputs share a slot (an absent kid
  -- and kid "" select differently).
  local by_alg = selections[candidates]
  if not by_alg then
    by_alg = {}
    selections[candidates] = by_alg
  end
  local by_minimum = by_alg[alg]
  if not by_minimum then
    by_minimum = {}
    by_alg[alg] = by_minimum
  end
  local by_kid = by_minimum[min_rsa_bits]
  if not by_kid then
    by_kid = {}
    by_minimum[min_rsa_bits] = by_kid
  end
  local kid_slot = header.kid
  if kid_slot == nil then kid_slot = NO_KID end
  local key = by_kid[kid_slot]
  if not key then
    key, err, code = jwk.select(candidates, header.kid, alg, { min_rsa_bits = min_rsa_bits })
    if not key then return nil, err, code end
    by_kid[kid_slot] = key
  end

  ok, err, code = check_signature_size(alg, key.public_key, jws.signature)
  if not ok then return nil, err, code end
  local verr
  ok, verr = key.public_key:verify(alg, jws.signing_input, jws.signature, min_rsa_bits)
  if not ok then
    return util.fail(E.ERR_JWS_SIGNATURE_INVALID, "JWS signature is invalid: %s", verr)
  end
  return jws.payload, header, key
end

-- The algorithm a key object signs with when none is given: the key's own
-- (an HSM key's), else the one its type and curve imply.
function M.implied_alg(key)
  local own = key:alg()
  if own then return own end
  return key_rules.implied_alg(key:public_jwk())
end

-- Signs payload bytes with a key object (a software key from
-- core.generate_software_key / import_jwk / import_pem, or an HSM key).
--   options: alg (default: implied by the key), kid, typ, cty, header (a
--   table of extra protected members)
function M.sign(key, payload, options)
  if type(payload) ~= "string" then error("payload must be a string", 2) end
  if type(key) ~= "userdata" or not key.sign_compact then error("key must be a key object", 2) end
  options = options or {}
  -- a key bound to an alg (an HSM key) signs with nothing else; an unbound
  -- one (a software key) with the alg asked for, else the implied one
  local own, alg = key:alg(), options.alg
  if own then
    local err, code
    alg, err, code = key_rules.signing_alg(own, alg, key:kid())
    if not alg then return nil, err, code end
  elseif not alg then
    alg = M.implied_alg(key)
  end
  if not alg or not core.alg_info(alg) then
    return util.fail(E.ERR_UNSUPPORTED_ALG, "cannot sign with algorithm '%s'", tostring(alg))
  end
  local extra = options.header
  if options.cty then
    extra = {}
    for k, v in pairs(options.header or {}) do extra[k] = v end
    extra.cty = options.cty
  end
  local header = M.encode_header(alg, options.kid, options.typ, extra)
  local token, err, code = key:sign_compact(header, payload, alg)
  if not token then return nil, err, code end
  return token
end

return M

-- JSON Web Keys from elsewhere: strict JWK Set parsing, picking the one key
-- a token was signed with, and RFC 7638 thumbprints.
--
-- A JWK Set usually comes from another issuer (its jwks_uri), so nothing in
-- it is trusted: member types are checked, keys that cannot be used are set
-- aside with the reason (RFC 7517 section 5 says to ignore them, and the
-- reason shows up when a token needed that key), and a key is picked only
-- when exactly one fits.
local core = require("jwkengine.core")
local cjson = require("cjson.safe").new()
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

-- The smallest RSA key that verifies (core/engine_limits.h).
local RSA_MIN_BITS = core.limits().rsa_min_bits

-- A JWK Set document larger than this is refused before it is parsed.
M.DEFAULT_MAX_SET_SIZE = 1024 * 1024

-- Members that only a private key has (RFC 7518 section 6).
local PRIVATE_MEMBERS = { "d", "p", "q", "dp", "dq", "qi", "oth", "k" }

-- key_ops values that contradict use = "sig" (RFC 7517 section 4.3).
local ENC_OPS = { encrypt = true, decrypt = true, wrapKey = true, unwrapKey = true,
  deriveKey = true, deriveBits = true }

-- Text from untrusted input, made safe to put in a message (and a log):
-- printable ASCII only, and short.
function M.shown(value)
  local s = tostring(value)
  if #s > 64 then s = s:sub(1, 61) .. "..." end
  return (s:gsub("[^%w%p ]", "?"))
end

-- JSON text of a JWK, a JWK Set or a line about keys, as JWK tools write
-- it: "/" unescaped (an x5c or an x5u holds many). Debian's lua-cjson has no
-- encode_escape_forward_slash switch, and writes "/" only as the escape
-- "\/", whose backslash is never the second half of a "\\" pair (that
-- would leave the "/" bare), so every "\/" in its text is that escape.
-- nil, message when cjson cannot encode the value.
function M.encode(value)
  local text, err = cjson.encode(value)
  if not text then return nil, err end
  return (text:gsub("\\/", "/"))
end

-- true for a table that cjson would have made from a JSON array (keys
-- 1..n); an empty table counts as both an array and an object.
function M.is_array(t)
  if type(t) ~= "table" then return false end
  local n = #t
  local count = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
    count = count + 1
  end
  return count == n
end

function M.is_object(t)
  return type(t) == "table" and (next(t) == nil or not M.is_array(t))
end

-- Decodes JSON text that must be a strict JSON object: no duplicate member
-- names, no NaN/Infinity, valid UTF-8 (core.json_check), then cjson.
-- Returns the table or nil, message (the caller adds its own code).
function M.decode_json(text, max_depth)
  local ok, err = core.json_check(text, true, max_depth)
  if not ok then return nil, err end
  local value
  value, err = cjson.decode(text)
  if type(value) ~= "table" then return nil, err or "JSON text is not an object" end
  return value
end

local function string_member(jwk, name)
  local v = jwk[name]
  if v ~= nil and type(v) ~= "string" then
    return nil, string.format("member '%s' must be a string", name)
  end
  return true
end

-- Checks key_ops: an array of distinct strings.
local function check_key_ops(ops)
  if ops == nil then return true end
  if not M.is_array(ops) then return nil, "member 'key_ops' must be an array of strings" end
  local seen = {}
  for _, op in ipairs(ops) do
    if type(op) ~= "string" then return nil, "member 'key_ops' must be an array of strings" end
    if seen[op] then return nil, string.format("member 'key_ops' lists '%s' twice", M.shown(op)) end
    seen[op] = true
  end
  return true
end

-- One JWK (a table) as a verification candidate:
--   { kid, alg, use, key_ops, kty, crv, public_key, jwk }
-- or nil, reason. options.allow_private_members: accept keys that carry
-- private members (only the public ones are ever read).
function M.parse_key(jwk, options)
  options = options or {}
  if not M.is_object(jwk) then return nil, "is not a JSON object" end
  if type(jwk.kty) ~= "string" then return nil, "member 'kty' is missing or not a string" end
  for _, name in ipairs({ "kid", "alg", "use", "crv" }) do
    local ok, err = string_member(jwk, name)
    if not ok then return nil, err end
  end
  local ok, err = check_key_ops(jwk.key_ops)
  if not ok then return nil, err end
  if jwk.kty == "oct" then return nil, "symmetric keys (kty 'oct') are not supported" end
  if jwk.use ~= nil and jwk.key_ops ~= nil then
    for _, op in ipairs(jwk.key_ops) do
      if (jwk.use == "sig" and ENC_OPS[op]) or (jwk.use == "enc" and (op == "sign" or op == "verify")) then
        return nil, string.format("members 'use' (%s) and 'key_ops' (%s) contradict each other",
          M.shown(jwk.use), M.shown(op))
      end
    end
  end
  if not options.allow_private_members then
    for _, name in ipairs(PRIVATE_MEMBERS) do
      if jwk[name] ~= nil then
        return nil, string.format("holds the private member '%s': a published key must be public only", name)
      end
    end
  end
  if jwk.alg ~= nil and not core.alg_info(jwk.alg) then
    return nil, string.format("alg '%s' is not a JWS algorithm jwkengine verifies", M.shown(jwk.alg))
  end
  local public_key
  public_key, err = core.public_key(jwk)
  if not public_key then return nil, err end
  if jwk.alg ~= nil then
    local fits, why = public_key:fits(jwk.alg, 0)
    if not fits then return nil, why end
  end
  return { kid = jwk.kid, alg = jwk.alg, use = jwk.use, key_ops = jwk.key_ops, kty = jwk.kty,
    crv = jwk.crv, public_key = public_key, jwk = jwk }
end

-- A JWK Set (JSON text or a table { keys = { ... } }) as a list of
-- verification candidates. Keys that cannot be used are left out and
-- listed in result.unusable = { { index, kid, reason }, ... }.
--   options.strict: fail on the first unusable key instead
--   options.max_size: refuse longer JSON text (default 1 MiB)
--   options.allow_private_members: see parse_key
function M.parse_set(jwks, options)
  options = options or {}
  if type(jwks) == "string" then
    local max = options.max_size or M.DEFAULT_MAX_SET_SIZE
    if #jwks > max then
      return util.fail(E.ERR_JWKS_INVALID, "JWK Set of %d bytes is larger than the limit of %d bytes",
        #jwks, max)
    end
    local decoded, err = M.decode_json(jwks)
    if not decoded then return util.fail(E.ERR_JWKS_INVALID, "JWK Set is not valid JSON: %s", err) end
    jwks = decoded
  elseif type(jwks) ~= "table" then
    error("a JWK Set must be JSON text or a table, got " .. type(jwks), 2)
  end
  if not M.is_object(jwks) or jwks.keys == nil then
    return util.fail(E.ERR_JWKS_INVALID, "JWK Set has no 'keys' member")
  end
  if not M.is_array(jwks.keys) then
    return util.fail(E.ERR_JWKS_INVALID, "JWK Set member 'keys' is not an array")
  end
  local candidates, unusable = {}, {}
  for i, jwk in ipairs(jwks.keys) do
    local candidate, reason = M.parse_key(jwk, options)
    if candidate then
      candidate.index = i
      candidates[#candidates + 1] = candidate
    else
      local kid = type(jwk) == "table" and type(jwk.kid) == "string" and jwk.kid or nil
      if options.strict then
        return util.fail(E.ERR_JWKS_INVALID, "JWK Set key %s %s", M.label(kid, i), reason)
      end
      unusable[#unusable + 1] = { index = i, kid = kid, reason = reason }
    end
  end
  candidates.unusable = unusable
  return candidates
end

-- How a key is named in messages: its kid, else its position.
function M.label(kid, index)
  if kid then return "'" .. M.shown(kid) .. "'" end
  return "#" .. tostring(index)
end

-- Why a candidate cannot verify `alg`, or nil when it can.
local function mismatch(candidate, alg, min_rsa_bits)
  if candidate.use ~= nil and candidate.use ~= "sig" then
    return string.format("its use is '%s'", M.shown(candidate.use))
  end
  if candidate.key_ops ~= nil and not util.contains(candidate.key_ops, "verify") then
    return "its key_ops do not include 'verify'"
  end
  if candidate.alg ~= nil and candidate.alg ~= alg then
    return string.format("it is for alg %s", M.shown(candidate.alg))
  end
  local fits, why = candidate.public_key:fits(alg, min_rsa_bits)
  if not fits then return why end
  return nil
end

-- Picks the one candidate that can verify a token with header kid (or nil)
-- and alg. With a kid only keys with that kid count; without one, every
-- key does, and more than one fitting key is an error rather than a guess.
--   options.min_rsa_bits: smallest RSA key accepted (default 2048)
function M.select(candidates, kid, alg, options)
  local min_rsa_bits = options and options.min_rsa_bits or RSA_MIN_BITS
  local match, count, reasons = nil, 0, nil
  for i, candidate in ipairs(candidates) do
    if kid == nil or candidate.kid == kid then
      local why = mismatch(candidate, alg, min_rsa_bits)
      if why then
        reasons = reasons or {}
        reasons[#reasons + 1] = string.format("key %s: %s", M.label(candidate.kid, candidate.index or i), why)
      else
        count = count + 1
        match = match or candidate
      end
    end
  end
  if count == 1 then return match end
  return M.selection_failure(candidates, kid, alg, count, reasons, min_rsa_bits)
end

-- The error of a selection that found no key or several (kept out of the
-- path of a successful verification).
function M.selection_failure(candidates, kid, alg, count, reasons, min_rsa_bits)
  reasons = reasons or {}
  local token = string.format("kid %s, alg %s", kid and ("'" .. M.shown(kid) .. "'") or "absent",
    M.shown(alg))
  for _, u in ipairs(candidates.unusable or {}) do
    if kid == nil or u.kid == kid then
      reasons[#reasons + 1] = string.format("key %s was ignored: %s", M.label(u.kid, u.index), u.reason)
    end
  end
  if count == 0 then
    local detail
    if #reasons > 0 then
      if #reasons > 4 then
        local n = #reasons
        reasons = { reasons[1], reasons[2], reasons[3], string.format("and %d more", n - 3) }
      end
      detail = table.concat(reasons, "; ")
    elseif #candidates == 0 then
      detail = "the key set is empty"
    else
      detail = "the key set has no key with this kid"
    end
    return util.fail(E.ERR_JWKS_NO_MATCHING_KEY, "no key matches the JWS (%s): %s", token, detail)
  end
  if kid then
    return util.fail(E.ERR_JWKS_MULTIPLE_MATCHING_KEYS,
      "%d keys match the JWS (%s): the key set has several keys with this kid", count, token)
  end
  local names = {}
  for i, c in ipairs(candidates) do
    if #names == 5 then names[#names + 1] = "..." break end
    if (c.use == nil or c.use == "sig") and not mismatch(c, alg, min_rsa_bits) then
      names[#names + 1] = M.label(c.kid, c.index or i)
    end
  end
  return util.fail(E.ERR_JWKS_MULTIPLE_MATCHING_KEYS,
    "%d keys match the JWS (%s): %s; a kid is needed to pick one", count, token,
    table.concat(names, ", "))
end

-- ---- RFC 7638 thumbprints ----------------------------------------------

-- The digests of the algorithm table (core/alg.c), by their JOSE names.
local HASHES = {}
for _, info in pairs(core.algorithms()) do
  if info.digest then HASHES[info.digest] = true end
end

local function hash_name(hash)
  if hash == nil then return "SHA-256" end
  if type(hash) == "string" then
    local name = hash:upper():gsub("^SHA%-?", "SHA-")
    if HASHES[name] then return name end
  end
  error("thumbprint hash must be SHA-256, SHA-384 or SHA-512, got " .. tostring(hash), 3)
end

-- The public members of a JWK table, a JSON text, or a key object (public
-- key, software key, HSM key).
local function public_members(key)
  if type(key) == "userdata" then
    local ok, jwk = pcall(function()
      if key.public_jwk then return key:public_jwk() end
      return key:jwk()
    end)
    if not ok then error("thumbprint needs a JWK table, JSON text or a key object", 3) end
    return jwk
  end
  if type(key) == "string" then
    local jwk, err = M.decode_json(key)
    if not jwk then return util.fail(E.ERR_JWK_INVALID, "JWK is not valid JSON: %s", err) end
    return jwk
  end
  if type(key) ~= "table" then
    error("thumbprint needs a JWK table, JSON text or a key object, got " .. type(key), 3)
  end
  return key
end

-- The RFC 7638 input: the required public members in lexicographic order,
-- without whitespace. The key is rebuilt first, so the members are checked
-- and canonical (an RSA modulus with a leading zero byte and a padded one
-- give the same thumbprint, as section 3.3 requires).
function M.thumbprint_input(key)
  local jwk, err, code = public_members(key)
  if not jwk then return nil, err, code end
  if jwk.kty == "oct" then
    return util.fail(E.ERR_JWK_INVALID, "symmetric keys (kty 'oct') are not supported")
  end
  local public
  public, err, code = core.public_key(jwk)
  if not public then return util.fail(code, "JWK is invalid: %s", err) end
  local m = public:jwk()
  if m.kty == "RSA" then
    return string.format('{"e":"%s","kty":"RSA","n":"%s"}', m.e, m.n)
  elseif m.kty == "EC" then
    return string.format('{"crv":"%s","kty":"EC","x":"%s","y":"%s"}', m.crv, m.x, m.y)
  end
  return string.format('{"crv":"%s","kty":"OKP","x":"%s"}', m.crv, m.x)
end

-- The thumbprint, base64url: M.thumbprint(jwk [, "SHA-256" | "SHA-384" | "SHA-512"]).
function M.thumbprint(key, hash)
  hash = hash_name(hash)
  local input, err, code = M.thumbprint_input(key)
  if not input then return nil, err, code end
  return core.b64url_encode(core.digest(hash, input))
end

-- The thumbprint as a URI (RFC 9278):
-- urn:ietf:params:oauth:jwk-thumbprint:sha-256:<thumbprint>
function M.thumbprint_uri(key, hash)
  hash = hash_name(hash)
  local thumbprint, err, code = M.thumbprint(key, hash)
  if not thumbprint then return nil, err, code end
  return "urn:ietf:params:oauth:jwk-thumbprint:" .. hash:lower() .. ":" .. thumbprint
end

return M

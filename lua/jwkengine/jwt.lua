-- JSON Web Tokens (RFC 7519) over jwkengine.jws: encoding claims for
-- signing, and verification with claim checks.
--
-- Verification checks the signature first (jws.verify: allow-list, key
-- selection, strict parsing) and only then looks at the claims: a strict
-- JSON object (duplicate claim names are an error), registered claims of
-- the right type, and exp / nbf / iat / max age against an injectable
-- clock with a tolerance, iss / aud / sub / typ against expected values,
-- and required claims. `exp` is required unless require_exp = false.
local core = require("jwkengine.core")
local cjson = require("cjson.safe").new()
local jwk = require("jwkengine.jwk")
local jws = require("jwkengine.jws")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

local function now_of(options)
  local now = options.now
  if now == nil then return os.time() end
  if type(now) == "function" then now = now() end
  if type(now) ~= "number" then error("options.now must be a number or a function returning one", 3) end
  return now
end

local function string_list(v)
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" or not jwk.is_array(v) or #v == 0 then return nil end
  for _, s in ipairs(v) do
    if type(s) ~= "string" then return nil end
  end
  return v
end

-- Registered claims must have their types (RFC 7519 section 4.1): exp,
-- nbf, iat finite numbers; iss, sub, jti strings; aud a string or a
-- non-empty list of strings. In C (core.check_claim_types): it runs for
-- every token signed and verified, and in Lua it cost more than encoding.
local check_types = core.check_claim_types
M.check_types = check_types

-- A token's lifetime when the caller names none: verify requires exp by
-- default, so what sign makes with its defaults must carry one.
M.DEFAULT_LIFETIME = 300

-- options.lifetime checked: seconds, or false for no exp; nil is `default`.
function M.lifetime(lifetime, default, level)
  if lifetime == nil then return default end
  if lifetime ~= false and (type(lifetime) ~= "number" or lifetime <= 0) then
    error("options.lifetime must be a positive number of seconds (false: no exp)", level + 1)
  end
  return lifetime
end

-- The claims as JSON for signing: a copy of claims with iat = now (unless
-- present), exp = now + options.lifetime (unless present; lifetime defaults
-- to default_lifetime or DEFAULT_LIFETIME, false leaves exp out), and iss,
-- sub, aud, jti filled from options when absent (jti = true: a random UUID).
--   options.now: number or function (default os.time)
function M.encode_claims(claims, options, default_lifetime)
  if type(claims) ~= "table" then error("claims must be a table", 2) end
  if next(claims) ~= nil and jwk.is_array(claims) then error("claims must be a table of names, not a list", 2) end
  options = options or {}
  local now = math.floor(now_of(options))
  local body = {}
  for k, v in pairs(claims) do body[k] = v end
  if body.iat == nil then body.iat = now end
  local lifetime = M.lifetime(options.lifetime, default_lifetime or M.DEFAULT_LIFETIME, 1)
  if lifetime and body.exp == nil then body.exp = now + math.floor(lifetime) end
  if body.iss == nil then body.iss = options.issuer end
  if body.sub == nil then body.sub = options.subject end
  if body.aud == nil then body.aud = options.audience end
  if body.jti == nil and options.jti ~= nil then
    body.jti = options.jti
    if options.jti == true then
      local err, code
      body.jti, err, code = core.uuid()
      if not body.jti then return nil, err, code end
    end
  end
  local ok, err, code = check_types(body)
  if not ok then return nil, err, code end
  -- core.json_claims, not cjson: numbers come out exactly (Debian's cjson
  -- keeps 14 significant digits) and "/" unescaped
  local payload
  payload, err, code = core.json_claims(body)
  if not payload then return util.fail(code, "claims cannot be encoded: %s", err) end
  return payload
end

-- Signs claims with a key object (software or HSM key): encode_claims,
-- then jws.sign with typ "JWT" unless options.typ says otherwise.
--   options: those of encode_claims, plus alg, kid, typ, header
function M.sign(key, claims, options)
  options = options or {}
  local payload, err, code = M.encode_claims(claims, options)
  if not payload then return nil, err, code end
  return jws.sign(key, payload, { alg = options.alg, kid = options.kid,
    typ = options.typ or "JWT", header = options.header })
end

-- typ values compare case-insensitively, and "application/" may be left
-- out (RFC 7515 section 4.1.9).
local function media_type(typ)
  local t = typ:lower()
  local rest = t:match("^application/(.*)$")
  if rest and not rest:find("/", 1, true) then return rest end
  return t
end

-- A NumericDate for messages: "1700000060 (2023-11-14T22:14:20Z)".
local function iso(t)
  local shown = t == math.floor(t) and string.format("%.0f", t) or tostring(t)
  local ok, text = pcall(os.date, "!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
  if ok and text then return string.format("%s (%s)", shown, text) end
  return shown
end

local function check_options(options)
  if type(options) ~= "table" then
    error("JWT verification needs options with an explicit list of allowed algorithms", 3)
  end
  local tolerance = options.clock_tolerance or 0
  if type(tolerance) ~= "number" or tolerance < 0 then
    error("options.clock_tolerance must be a number of seconds >= 0", 3)
  end
  if options.max_age ~= nil and (type(options.max_age) ~= "number" or options.max_age < 0) then
    error("options.max_age must be a number of seconds >= 0", 3)
  end
  for _, name in ipairs({ "issuer", "audience" }) do
    if options[name] ~= nil and not string_list(options[name]) then
      error("options." .. name .. " must be a string or a non-empty list of strings", 3)
    end
  end
  for _, name in ipairs({ "subject", "typ" }) do
    if options[name] ~= nil and type(options[name]) ~= "string" then
      error("options." .. name .. " must be a string", 3)
    end
  end
  if options.required_claims ~= nil and type(options.required_claims) ~= "table" then
    error("options.required_claims must be a list of claim names", 3)
  end
  return tolerance
end

-- Checks decoded claims against options (see M.verify); true or a failure.
function M.check_claims(claims, header, options)
  local tolerance = check_options(options)
  local ok, err, code = check_types(claims)
  if not ok then return nil, err, code end

  if options.typ ~= nil then
    if type(header.typ) ~= "string" or media_type(header.typ) ~= media_type(options.typ) then
      return util.fail(E.ERR_JWT_TYPE_MISMATCH, "JWT typ is %s, expected '%s'",
        header.typ and ("'" .. jwk.shown(header.typ) .. "'") or "absent", options.typ)
    end
  end

  local required = {}
  if options.require_exp ~= false then required[#required + 1] = "exp" end
  if options.max_age ~= nil then required[#required + 1] = "iat" end
  if options.issuer ~= nil then required[#required + 1] = "iss" end
  if options.audience ~= nil then required[#required + 1] = "aud" end
  if options.subject ~= nil then required[#required + 1] = "sub" end
  for _, name in ipairs(options.required_claims or {}) do required[#required + 1] = name end
  for _, name in ipairs(required) do
    if claims[name] == nil or claims[name] == cjson.null then
      return util.fail(E.ERR_JWT_CLAIM_MISSING, "JWT has no '%s' claim", jwk.shown(name))
    end
  end

  local now = now_of(options)
  if claims.exp ~= nil and now >= claims.exp + tolerance then
    return util.fail(E.ERR_JWT_EXPIRED, "JWT expired at %s; now is %s (tolerance %ds)",
      iso(claims.exp), iso(now), tolerance)
  end
  if claims.nbf ~= nil and now + tolerance < claims.nbf then
    return util.fail(E.ERR_JWT_NOT_YET_VALID, "JWT is not valid before %s; now is %s (tolerance %ds)",
      iso(claims.nbf), iso(now), tolerance)
  end
  if claims.iat ~= nil and claims.iat > now + tolerance then
    return util.fail(E.ERR_JWT_ISSUED_IN_FUTURE, "JWT was issued in the future, at %s; now is %s (tolerance %ds)",
      iso(claims.iat), iso(now), tolerance)
  end
  if options.max_age ~= nil and now - claims.iat > options.max_age + tolerance then
    return util.fail(E.ERR_JWT_TOO_OLD, "JWT was issued at %s, more than %ds ago (tolerance %ds)",
      iso(claims.iat), options.max_age, tolerance)
  end

  if options.issuer ~= nil and not util.contains(string_list(options.issuer), claims.iss) then
    return util.fail(E.ERR_JWT_ISSUER_MISMATCH, "JWT issuer '%s' is not accepted", jwk.shown(claims.iss))
  end
  if options.audience ~= nil then
    local accepted, found = string_list(options.audience), false
    for _, aud in ipairs(string_list(claims.aud)) do
      if util.contains(accepted, aud) then found = true break end
    end
    if not found then
      return util.fail(E.ERR_JWT_AUDIENCE_MISMATCH, "JWT audience does not include an accepted audience")
    end
  end
  if options.subject ~= nil and claims.sub ~= options.subject then
    return util.fail(E.ERR_JWT_SUBJECT_MISMATCH, "JWT subject '%s' is not the expected one",
      jwk.shown(claims.sub))
  end
  return true
end

local function decode_claims(payload, header)
  if type(header.cty) == "string" and media_type(header.cty) == "jwt" then
    return util.fail(E.ERR_JWT_INVALID, "nested JWTs (cty JWT) are not supported")
  end
  local claims, err = jwk.decode_json(payload)
  if not claims then return util.fail(E.ERR_JWT_INVALID, "JWT claims set is not a JSON object: %s", err) end
  return claims
end

-- Verifies a JWT. Returns claims, header, key or nil, message, code.
--   keys: candidates, a JWK Set (table or JSON) or a JWK (see jws.candidates)
--   options: everything jws.verify takes (algorithms is required), plus
--     now              number or function returning one (default os.time)
--     clock_tolerance  seconds of clock skew allowed (default 0)
--     max_age          seconds since iat a token stays acceptable (needs iat)
--     issuer           accepted iss: a string or a list
--     audience         accepted aud values: a string or a list; the token's
--                      aud (string or list) must hold at least one
--     subject          expected sub
--     typ              expected header typ ("JWT", "at+jwt", ...)
--     required_claims  list of claim names that must be present
--     require_exp      false to accept tokens without exp (default true)
function M.verify(token, keys, options)
  check_options(options)
  local payload, header, key = jws.verify(token, keys, options)
  if not payload then return nil, header, key end
  local claims, err, code = decode_claims(payload, header)
  if not claims then return nil, err, code end
  local ok
  ok, err, code = M.check_claims(claims, header, options)
  if not ok then return nil, err, code end
  return claims, header, key
end

-- Decodes a JWT without verifying anything: for routing only (picking the
-- issuer whose keys will verify it), never for trusting its content.
function M.decode_unverified(token, options)
  local parsed, err, code = jws.parse(token, options)
  if not parsed then return nil, err, code end
  local claims
  claims, err, code = decode_claims(parsed.payload, parsed.header)
  if not claims then return nil, err, code end
  return claims, parsed.header
end

return M

-- The stable error codes of the JOSE layer (jws, jwt, jwk), each with what
-- it means. Failures return `nil, message, code`: programs branch on the
-- code, people read the message. Codes never change meaning; new ones may
-- be added.
local M = {}

M.codes = {
  -- JWS structure and policy
  ERR_JWS_INVALID = "the token is not a well-formed compact JWS (segments, base64url, header JSON, member types)",
  ERR_JWS_TOO_LARGE = "the token or its header is over the size limit; rejected before decoding",
  ERR_JOSE_ALG_NOT_ALLOWED = "the header's alg is not in the caller's allow-list, or is none or an HMAC algorithm",
  ERR_JWS_CRIT_UNSUPPORTED = "the header lists a critical extension (crit) the caller does not understand",
  ERR_JWS_B64_UNSUPPORTED = "the header asks for an unencoded payload (b64: false, RFC 7797)",
  ERR_JWS_SIGNATURE_INVALID = "the signature does not verify, or has the wrong length for the key",
  ERR_JWS_SIGN = "signing failed",
  ERR_NO_SIGNING_KEY = "the key set exists but holds no private signing key",
  ERR_UNSUPPORTED_ALG = "the algorithm is not one jwkengine signs with (RS*, PS*, ES*, EdDSA)",
  -- keys and key sets
  ERR_JWKS_NO_MATCHING_KEY = "no key of the set fits the token (kid, alg, use, key_ops, key type and size)",
  ERR_JWKS_MULTIPLE_MATCHING_KEYS = "several keys fit the token and it names none of them by kid",
  ERR_JWKS_INVALID = "the JWK Set is not a JSON object with a 'keys' array (or, when strict, holds a bad key)",
  ERR_JWK_INVALID = "a JWK cannot be used: wrong member types, unsupported kty or curve, invalid key material",
  -- JWT claims
  ERR_JWT_INVALID = "the JWS payload is not a JSON object of claims (or is a nested JWT)",
  ERR_JWT_CLAIMS = "the claims cannot be encoded as JSON (no JSON form, a non-finite number, a string or name that is not valid UTF-8)",
  ERR_JWT_CLAIM_INVALID = "a registered claim has the wrong type (exp/nbf/iat numbers, iss/sub/jti strings, aud string or list)",
  ERR_JWT_CLAIM_MISSING = "a required claim is absent",
  ERR_JWT_EXPIRED = "now is at or after exp (plus the clock tolerance)",
  ERR_JWT_NOT_YET_VALID = "now is before nbf (minus the clock tolerance)",
  ERR_JWT_ISSUED_IN_FUTURE = "iat is after now (plus the clock tolerance)",
  ERR_JWT_TOO_OLD = "iat is older than the maximum age",
  ERR_JWT_ISSUER_MISMATCH = "iss is not one of the accepted issuers",
  ERR_JWT_AUDIENCE_MISMATCH = "aud holds none of the accepted audiences",
  ERR_JWT_SUBJECT_MISMATCH = "sub is not the expected subject",
  ERR_JWT_TYPE_MISMATCH = "the header's typ is not the expected type",
}

-- The meaning of a code, or nil for codes this module does not define
-- (CKR_* names and the engine's own codes pass through unchanged).
function M.describe(code)
  return M.codes[code]
end

return M

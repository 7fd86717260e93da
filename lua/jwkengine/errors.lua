-- Every stable error code jwkengine returns, each with what it means (the
-- one registry: spec/core/errors_spec.lua checks it against the code and the
-- README). Failures return `nil, message, code`: programs branch on the
-- code, people read the message. Codes never change meaning; new ones may
-- be added. CKR_* names of PKCS#11 failures come on top of these.
local M = {}

M.codes = {
  -- opening and configuration
  ERR_CONFIG = "a setting is missing, unknown, mistyped or contradicts another; or the PKCS#11 module or PIN file it names cannot be used",
  ERR_TOKEN_NOT_FOUND = "no slot holds the token the configuration names (or select_slot chose none)",
  ERR_LOGIN_REFUSED = "jwkengine will not log in: the token's PIN flags (locked, final try, to be changed) or a PIN it refused before",
  ERR_PKCS11_URI = "an RFC 7512 PKCS#11 URI is malformed or names what jwkengine cannot use",
  ERR_TOKEN_LENGTH = "the token reported a length its buffer cannot hold, or a signature of the wrong size",
  ERR_INVALID_ARGUMENT = "an argument has an unusable value (use not sig/enc, an RSA size below the minimum, select_slot's answer)",
  ERR_CLOSED = "the engine was closed",
  ERR_HSM_UNAVAILABLE = "the HSM is down (device gone, module disconnected, token not present): the call failed at once; the message names the cause and when the next attempt to come back is due (from jwkengine.open: the HSM could not be reached; a 4th value gives the seconds until the next attempt)",
  ERR_HSM_BUSY = "no PKCS#11 session became free within hsm.session_wait_ms (all hsm.max_sessions are busy)",
  ERR_SIGNATURE_FAULT = "the token's signature did not verify against the key's public half (hsm.verify_after_sign): no token was made; the HSM may be faulty",
  ERR_OUT_OF_MEMORY = "memory ran out during the call",
  ERR_INTERNAL = "a failure the C core gave no code (a bug: no path the specs reach returns it)",
  -- key sets and keys
  ERR_KEY_SET_NOT_FOUND = "no key set of that name (in the HSM or the software store)",
  ERR_KEY_NOT_FOUND = "the set has no key with that kid",
  ERR_KEY_EXISTS = "the set already has a key with that kid",
  ERR_KEY_GENERATE = "the software key could not be generated",
  ERR_KEY_IMPORT = "the input is not one usable key (PEM or JWK), or does not fit the alg given",
  ERR_KEY_NOT_PRIVATE = "the key is public only: it cannot sign, and the store holds private keys",
  ERR_KEY_USE = "the key cannot be used that way: an encryption key asked to sign, or an alg other than its own",
  ERR_CERTIFICATE_MISMATCH = "the X.509 certificate of a key (beside the pair on the token, or x5c in its row) holds another key's public key (the key signs on, published without x5c)",
  ERR_CERTIFICATE_INVALID = "an X.509 certificate cannot be used or made: not DER X.509 or over the size limit, several for one pair, an x5c that is not a list of base64 certificates",
  ERR_HSM_IMPORT_UNSUPPORTED = "the HSM does not accept keys from outside: import and update go to the software store",
  -- the software store
  ERR_STORE = "the store's database failed (connection, migration, query), or a set's key states kept changing under a read or a write",
  ERR_KEY_DECRYPT = "a stored key cannot be opened with any of the secrets, or is not a key once opened",
  ERR_KEY_INVALID = "a stored key is not one jwkengine can use as stored: a row that decrypts but is not a usable key, or a key pair on the token (halves that disagree, RSA below the minimum, CKA_SIGN unreadable and no CKA_DECRYPT)",
  ERR_KEY_ENCRYPT = "a key cannot be sealed for the store",
  -- nginx integration
  ERR_OPEN = "opening the engine in an nginx worker raised",
  ERR_STARTUP = "startup generation in an nginx worker raised",
  ERR_STARTUP_LOCK = "the startup lock (nginx's lua_shared_dict, or the host's lock file) could not be taken",
  ERR_THREAD = "an nginx worker thread failed to run the signing call",
  ERR_OVERLOADED = "nginx: every thread-pool signing slot of the worker was busy and the wait queue full, or the wait passed thread_queue.timeout (503 with Retry-After)",
  ERR_HTTP_METHOD = "nginx: the request used a method the endpoint does not take (405)",
  ERR_HTTP_MEDIA_TYPE = "nginx: the request body is not application/json (415)",
  ERR_HTTP_BODY_TOO_LARGE = "nginx: the request body is larger than token.max_body (413)",
  ERR_HTTP_BODY_INVALID = "nginx: the request body is empty or not a strict JSON object of claims (400)",
  -- JWS structure and policy
  ERR_JWS_INVALID = "the token is not a well-formed compact JWS (segments, base64url, header JSON, member types)",
  ERR_JWS_TOO_LARGE = "the token or its header is over the size limit; rejected before decoding",
  ERR_JOSE_ALG_NOT_ALLOWED = "the header's alg is not in the caller's allow-list, or is none or an HMAC algorithm",
  ERR_JWS_CRIT_UNSUPPORTED = "the header lists a critical extension (crit) the caller does not understand",
  ERR_JWS_B64_UNSUPPORTED = "the header asks for an unencoded payload (b64: false, RFC 7797)",
  ERR_JWS_SIGNATURE_INVALID = "the signature does not verify, or has the wrong length for the key",
  ERR_JWS_SIGN = "signing failed",
  ERR_NO_SIGNING_KEY = "the key set exists but holds no private signing key",
  ERR_KEY_MARK_REFUSED = "the token would not change CKA_SIGN on a key (C_SetAttributeValue refused): retirement is not written on the key there, only in the set's records",
  ERR_KEY_STATE = "the key's lifecycle state forbids it: a next or retired key named to sign, the current key retired, a key retired on the key itself (CKA_SIGN false on the token, key_ops without sign in its row), a key still needed deleted without force, a token set of several keys with no record of which signs",
  ERR_KEY_STATES_CORRUPT = "the set's key states cannot be read (corrupt, or a newer format) and none were read before: it neither signs nor publishes until `keys repair SET --current KID`",
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

return M

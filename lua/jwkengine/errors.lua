-- Every stable error code jwkengine returns, each with its one meaning: the
-- one registry. core/error_codes.h (the C core's JWKE_ERR_* names) and the
-- README's table of codes are made from it by scripts/gen-error-codes.lua;
-- a ctest (error_codes_current) and spec/core/errors_spec.lua fail when either
-- differs, or when a code is used that is not here or is here but unused.
--
-- Failures return `nil, message, code`: programs branch on the code, people
-- read the message. Codes never change meaning; new ones may be added.
-- CKR_* names of PKCS#11 failures come on top of these.
--
-- Code names a failure with `E.ERR_STORE` (E = require("jwkengine.errors").E):
-- a name that is not registered raises where it is read, so a typo fails
-- the first time its line runs instead of returning an unknown code.
local M = {}

-- In order: a string starts a section, a pair is a code and its meaning.
local registry = {
  "opening and configuration",
  { "ERR_CONFIG", "a setting missing, unknown, mistyped or contradicting another; a PKCS#11 module that is missing or not a PKCS#11 module; a PIN file missing, empty or over 255 bytes; an empty `HSM_PIN`" },
  { "ERR_TOKEN_NOT_FOUND", "no slot holds the configured token (or `select_slot` chose none); when a slot shows an empty, uninitialized token (how SoftHSM shows a token whose files the process may not read) the message names the process's user and says to give it access to the token's files" },
  { "ERR_LOGIN_REFUSED", "jwkengine will not log in: the token's PIN flags (locked, final try, to be changed) or a PIN it refused before" },
  { "ERR_PKCS11_URI", "an RFC 7512 PKCS#11 URI is malformed or names what jwkengine cannot use" },
  { "ERR_TOKEN_LENGTH", "the token reported a length its buffer cannot hold, or a signature of the wrong size" },
  { "ERR_INVALID_ARGUMENT", "an unusable argument value (a set name or kid holding a NUL or another control character, `use` not `sig`/`enc`, `enc` for a key that can only sign, an RSA size below the minimum, a `select_slot` answer that is not one of its slots)" },
  { "ERR_CLOSED", "the engine was closed" },
  { "ERR_HSM_UNAVAILABLE", "the HSM is down (device gone, module disconnected, token not present): failed at once; the message names the cause and when the next attempt to come back is due (`engine:hsm_outage()`); from `jwkengine.open`, the HSM could not be reached (its module answers `CKR_DEVICE_ERROR` and the like, reports no slot, or no slot holds a token), and a 4th value gives the seconds until the next attempt (a backoff across opens)" },
  { "ERR_HSM_BUSY", "no PKCS#11 session became free within `hsm.session_wait_ms` (all `hsm.max_sessions` are busy)" },
  { "ERR_SIGNATURE_FAULT", "the token's signature did not verify against the key's public half (`hsm.verify_after_sign`): no token was made; the HSM may be faulty" },
  { "ERR_OUT_OF_MEMORY", "memory ran out during the call" },
  { "ERR_RANDOM", "OpenSSL's random generator failed (the message gives OpenSSL's reason: check the `random` section of `OPENSSL_CONF`, or the system's entropy source): no kid, writer id or jitter is made from anything else" },
  { "ERR_INTERNAL", "a failure the C core gave no code: a bug, never returned on any path the specs reach (please report it)" },
  "key sets and keys",
  { "ERR_KEY_SET_NOT_FOUND", "no key set of that name (in the HSM or the software store)" },
  { "ERR_KEY_NOT_FOUND", "the set has no key with that kid" },
  { "ERR_KEY_EXISTS", "the set already has a key with that kid" },
  { "ERR_KEY_GENERATE", "the software key could not be generated" },
  { "ERR_KEY_IMPORT", "the input is not one usable key (PEM or JWK), or does not fit the alg given" },
  { "ERR_KEY_NOT_PRIVATE", "the key is public only: it cannot sign, and the store holds private keys" },
  { "ERR_KEY_USE", "the key cannot be used that way: an encryption key asked to sign, or an alg other than its own" },
  { "ERR_CERTIFICATE_MISMATCH", "a key's X.509 certificate (beside the pair on the token, or `x5c` in its row) holds another key's public key: logged, and the key signs on, published without `x5c`" },
  { "ERR_CERTIFICATE_INVALID", "an X.509 certificate cannot be used or made: not DER X.509 or over the size limit, several for one pair, an x5c that is not a list of base64 certificates" },
  { "ERR_HSM_IMPORT_UNSUPPORTED", "the HSM does not accept keys from outside: import and update go to the software store" },
  "the software store",
  { "ERR_STORE", "the store's database failed (connection, migration, query), or a set's key states kept changing under a read or a write" },
  { "ERR_KEY_DECRYPT", "a stored key cannot be opened with any of the secrets, or is not a key once opened" },
  { "ERR_KEY_INVALID", "a stored key jwkengine cannot use as stored: a row that decrypts but is not one (an `alg` it does not sign with or that does not fit the key, a bad `use`), or a pair on the token (halves that disagree, RSA below `hsm.min_rsa_bits`, `CKA_SIGN` unreadable and no `CKA_DECRYPT`): never published, never used" },
  { "ERR_KEY_ENCRYPT", "a key cannot be sealed for the store" },
  "nginx integration",
  { "ERR_OPEN", "opening the engine in an nginx worker raised" },
  { "ERR_STARTUP", "startup generation in an nginx worker raised" },
  { "ERR_STARTUP_LOCK", "the startup lock (nginx's lua_shared_dict, or the host's lock file) could not be taken" },
  { "ERR_THREAD", "an nginx worker thread failed to run the signing call" },
  { "ERR_OVERLOADED", "nginx: every thread-pool signing slot of the worker was busy and the wait queue full, or the wait passed thread_queue.timeout (503 with Retry-After)" },
  { "ERR_HTTP_METHOD", "nginx: the request used a method the endpoint does not take (405)" },
  { "ERR_HTTP_MEDIA_TYPE", "nginx: the request body is not application/json (415)" },
  { "ERR_HTTP_BODY_TOO_LARGE", "nginx: the request body is larger than token.max_body (413)" },
  { "ERR_HTTP_BODY_INVALID", "nginx: the request body is empty or not a strict JSON object of claims (400)" },
  "JWS structure and policy",
  { "ERR_JWS_INVALID", "the token is not a well-formed compact JWS (segments, base64url, header JSON, member types)" },
  { "ERR_JWS_TOO_LARGE", "the token or its header is over the size limit; rejected before decoding" },
  { "ERR_JOSE_ALG_NOT_ALLOWED", "the header's alg is not in the caller's allow-list, or is none or an HMAC algorithm" },
  { "ERR_JWS_CRIT_UNSUPPORTED", "the header lists a critical extension (crit) the caller does not understand" },
  { "ERR_JWS_B64_UNSUPPORTED", "the header asks for an unencoded payload (b64: false, RFC 7797)" },
  { "ERR_JWS_SIGNATURE_INVALID", "the signature does not verify, or has the wrong length for the key" },
  { "ERR_JWS_SIGN", "signing failed (e.g. an algorithm that does not fit the key)" },
  { "ERR_NO_SIGNING_KEY", "the set exists but holds no private signing key (the fallback does not look elsewhere for it)" },
  { "ERR_KEY_MARK_REFUSED", "the token would not change `CKA_SIGN` on a key (`C_SetAttributeValue` refused, e.g. `CKR_ATTRIBUTE_READ_ONLY`): the retirement is not written on the key there, only in the set's records" },
  { "ERR_KEY_STATE", "the key's lifecycle state forbids it: a `next` or `retired` key named to sign, the current key retired, a key retired on the key itself (`CKA_SIGN` false on the token, `key_ops` without `sign` in its row; also the token's `CKR_KEY_FUNCTION_NOT_PERMITTED` at `C_SignInit`), a key the lifecycle still needs deleted without `--force`, a token set of several keys with no record of which signs (until `keys activate`)" },
  { "ERR_KEY_STATES_UNSUPPORTED", "the token keeps no data objects (NSS softokn refuses every `CKO_DATA`), so key states cannot be recorded on it: a set with one signing key signs; a set of several keys, rotation, `keys activate` and `keys repair` refuse" },
  { "ERR_KEY_STATES_CORRUPT", "the set's key states cannot be read (corrupt, or a newer format) and this process read no good version before: the set neither signs, publishes nor verifies (nginx: 503 with `Retry-After`) until `keys repair SET --current KID` (see [Rotating keys](#rotating-keys))" },
  { "ERR_UNSUPPORTED_ALG", "an algorithm jwkengine does not sign with (HMAC, `none`) or cannot generate (on the HSM: also one whose mechanism the token lacks; the message names it)" },
  "keys and key sets",
  { "ERR_JWKS_NO_MATCHING_KEY", "no key of the set fits the token (kid, alg, use, key_ops, key type and size)" },
  { "ERR_JWKS_MULTIPLE_MATCHING_KEYS", "several keys fit the token and it names none of them by kid" },
  { "ERR_JWKS_INVALID", "the JWK Set is not a JSON object with a 'keys' array (or, when strict, holds a bad key)" },
  { "ERR_JWK_INVALID", "a JWK cannot be used: wrong member types, unsupported kty or curve, invalid key material" },
  "JWT claims",
  { "ERR_JWT_INVALID", "the JWS payload is not a JSON object of claims (or is a nested JWT)" },
  { "ERR_JWT_CLAIMS", "the claims cannot be encoded as JSON (no JSON form, a non-finite number, a string or name that is not valid UTF-8)" },
  { "ERR_JWT_CLAIM_INVALID", "a registered claim has the wrong type (exp/nbf/iat numbers, iss/sub/jti strings, aud string or list)" },
  { "ERR_JWT_CLAIM_MISSING", "a required claim is absent" },
  { "ERR_JWT_EXPIRED", "now is at or after exp (plus the clock tolerance)" },
  { "ERR_JWT_NOT_YET_VALID", "now is before nbf (minus the clock tolerance)" },
  { "ERR_JWT_ISSUED_IN_FUTURE", "iat is after now (plus the clock tolerance)" },
  { "ERR_JWT_TOO_OLD", "iat is older than the maximum age" },
  { "ERR_JWT_ISSUER_MISMATCH", "iss is not one of the accepted issuers" },
  { "ERR_JWT_AUDIENCE_MISMATCH", "aud holds none of the accepted audiences" },
  { "ERR_JWT_SUBJECT_MISMATCH", "sub is not the expected subject" },
  { "ERR_JWT_TYPE_MISMATCH", "the header's typ is not the expected type" },
}

M.codes = {}    -- code -> meaning (the public map the README documents)
M.sections = {} -- { { title = ..., codes = { { code, meaning }, ... } }, ... }
for _, entry in ipairs(registry) do
  if type(entry) == "string" then
    M.sections[#M.sections + 1] = { title = entry, codes = {} }
  else
    local code, meaning = entry[1], entry[2]
    assert(M.codes[code] == nil, code .. " is registered twice")
    M.codes[code] = meaning
    local codes = M.sections[#M.sections].codes
    codes[#codes + 1] = { code, meaning }
  end
end

-- The names as constants: E.ERR_STORE == "ERR_STORE".
M.E = setmetatable({}, {
  __index = function(_, name)
    error("jwkengine.errors: no error code " .. tostring(name) .. " is registered", 2)
  end,
  __newindex = function(_, name)
    error("jwkengine.errors: the codes are fixed (tried to set " .. tostring(name) .. ")", 2)
  end,
})
for code in pairs(M.codes) do rawset(M.E, code, code) end

return M

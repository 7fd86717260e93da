-- The hostile-input corpus, through the Lua API and the admin CLI: the
-- inputs of every defect the security review found (issue 10) and their
-- variations, each one a row of a table, so adding a case is one line.
-- Every Lua case must end in a clean `nil, message, code` (a string
-- message, a code registered in jwkengine.errors, the one the row expects:
-- no raise, no value); every CLI case in exit 1 (2 for usage) with one line
-- on stderr and nothing on stdout. scripts/test.sh also runs this file
-- against the ASan+UBSan build, where a stray read or write fails it.
--
-- The focused proofs of each defect stay in their own specs
-- (hostile_keys, store_input, http, log, cli, config...): this is the broad
-- sweep over one engine with an HSM (SoftHSM) and a software store (SQLite).
local cjson = require("cjson")
local jwkengine = require("jwkengine")
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local errors = require("jwkengine.errors")
local store_module = require("jwkengine.store")
local cli = require("helpers.cli")
local hydra_aead = require("helpers.hydra_aead").run
local rsa_of_size = require("helpers.rsa_of_size")
local softhsm = require("helpers.softhsm")

local SECRET = "hostile-input-secret-0123456789"
local RSA_MAX_BITS = 16384

local function b64(bytes) return (core.b64url_encode(bytes)) end

-- A compact JWS from raw header and payload text and a signature that
-- need not verify: what a forger sends.
local function forged(header, payload, signature)
  return b64(header) .. "." .. b64(payload or '{"sub":"x"}') .. "." .. (signature or b64(string.rep("\1", 64)))
end

local function nested(depth) return string.rep("[", depth) .. string.rep("]", depth) end

-- A JWK table whose members come only through __index, running the GC
-- (the use-after-free of defect 6): read raw, it has no members at all.
local function proxy_jwk(real)
  return setmetatable({}, { __index = function(_, name)
    collectgarbage()
    local value = real[name]
    return value and (value .. string.rep(" ", 0)) or nil
  end })
end

local function cyclic()
  local t = { sub = "x" }
  t.self = t
  return t
end

local function deep_table(depth)
  local t = {}
  local inner = t
  for _ = 1, depth do inner.a = {}; inner = inner.a end
  return t
end

-- Values computed once the engine exists (a real token, a real key), named
-- in the corpus by `late.NAME`.
local late_values = {}
local late = setmetatable({}, { __index = function(_, name)
  return { late = name }
end })
local function resolve(arg)
  if type(arg) == "table" and arg.late then
    local value = late_values[arg.late]
    assert(value ~= nil, "no late value " .. arg.late)
    return value
  end
  return arg
end

-- { what, expected code, target, arguments }: target is an engine method,
-- or "jws.verify" / "jwt.verify" / "jwk.NAME" of the JOSE modules, or
-- "open" (jwkengine.open).
local API_CASES = {
  -- set names and kids (defect 4): control characters never reach a store
  { "NUL in a set name", "ERR_INVALID_ARGUMENT", "sign", { "hsm\0x", "x" } },
  { "NUL at the start of a set name", "ERR_INVALID_ARGUMENT", "key_set", { "\0" } },
  { "newline in a set name", "ERR_INVALID_ARGUMENT", "generate", { "line\nbreak", "ES256" } },
  { "escape sequence in a set name", "ERR_INVALID_ARGUMENT", "key_set_json", { "\27[31mred" } },
  { "DEL in a set name", "ERR_INVALID_ARGUMENT", "delete", { "del\127" } },
  { "NUL in a set name to delete", "ERR_INVALID_ARGUMENT", "delete", { "hsm\0x", "k" } },
  { "NUL in a kid", "ERR_INVALID_ARGUMENT", "key", { "hsm", "hsm-1\0x" } },
  { "carriage return in a kid", "ERR_INVALID_ARGUMENT", "delete", { "hsm", "hsm-1\r" } },
  { "NUL in options.kid of sign", "ERR_INVALID_ARGUMENT", "sign", { "hsm", "x", { kid = "hsm-1\0" } } },
  { "tab in options.kid of generate", "ERR_INVALID_ARGUMENT", "generate", { "g", "ES256", { kid = "a\tb" } } },
  { "NUL in a thumbprint's kid", "ERR_INVALID_ARGUMENT", "thumbprint", { "hsm", "hsm-1\0" } },
  { "a set name of 100,000 bytes", "ERR_KEY_SET_NOT_FOUND", "key_set", { string.rep("s", 100000) } },
  { "a kid that is not UTF-8", "ERR_KEY_NOT_FOUND", "key", { "hsm", "\255\254" } },
  { "a set that does not exist", "ERR_KEY_SET_NOT_FOUND", "sign", { "nosuch", "x" } },
  { "a kid that does not exist", "ERR_KEY_NOT_FOUND", "sign", { "hsm", "x", { kid = "nosuch" } } },

  -- algorithms and uses nobody signs with (defect 5)
  { "generate HS256", "ERR_UNSUPPORTED_ALG", "generate", { "g", "HS256" } },
  { "generate none", "ERR_UNSUPPORTED_ALG", "generate", { "g", "none" } },
  { "generate an empty alg", "ERR_UNSUPPORTED_ALG", "generate", { "g", "" } },
  { "generate with use wrap", "ERR_INVALID_ARGUMENT", "generate", { "g", "ES256", { use = "wrap" } } },
  { "generate an EC key for enc", "ERR_INVALID_ARGUMENT", "generate", { "g", "ES256", { use = "enc" } } },
  { "sign with alg none", "ERR_UNSUPPORTED_ALG", "sign", { "hsm", "x", { alg = "none" } } },
  { "sign with HS256", "ERR_UNSUPPORTED_ALG", "sign_jwt", { "hsm", { sub = "x" }, { alg = "HS256" } } },
  { "sign with another key's alg", "ERR_KEY_USE", "sign", { "hsm", "x", { alg = "RS256" } } },

  -- keys to import: PEM (defect 1), JWK text and tables (defects 5, 6)
  { "an empty key", "ERR_KEY_IMPORT", "import", { "i", "" } },
  { "text that is no key", "ERR_KEY_IMPORT", "import", { "i", "not a key at all" } },
  { "a PEM of garbage", "ERR_KEY_IMPORT", "import",
    { "i", "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n" } },
  { "a PEM without its end", "ERR_KEY_IMPORT", "import", { "i", late.pem_truncated } },
  { "a PEM cut inside its base64", "ERR_KEY_IMPORT", "import", { "i", late.pem_cut } },
  { "a PEM with a NUL inside", "ERR_KEY_IMPORT", "import", { "i", late.pem_nul } },
  { "a public-only PEM", "ERR_KEY_NOT_PRIVATE", "import", { "i", late.pem_public } },
  { "an encrypted PEM", "ERR_KEY_IMPORT", "import", { "i", late.pem_encrypted } },
  { "an RSA PEM past the maximum size", "ERR_KEY_IMPORT", "import", { "i", late.rsa_too_big_pem } },
  { "an RSA JWK past the maximum size", "ERR_KEY_IMPORT", "import", { "i", late.rsa_too_big_jwk } },
  { "an RSA key under the minimum", "ERR_KEY_IMPORT", "import", { "i", late.rsa_small_pem } },
  { "a JWK proxy table (__index, GC)", "ERR_KEY_IMPORT", "import", { "i", late.proxy } },
  { "an empty JWK table", "ERR_KEY_IMPORT", "import", { "i", {} } },
  { "a JWK with kty a table", "ERR_KEY_IMPORT", "import", { "i", { kty = { "EC" }, crv = "P-256" } } },
  { "a JWK with kty oct", "ERR_KEY_IMPORT", "import", { "i", '{"kty":"oct","k":"c2VjcmV0"}' } },
  { "a JWK with kty none", "ERR_KEY_IMPORT", "import", { "i", '{"kty":"none"}' } },
  { "a JWK with a NUL in crv", "ERR_KEY_IMPORT", "import", { "i", late.jwk_crv_nul } },
  { "a JWK with a NUL in kty", "ERR_KEY_IMPORT", "import", { "i", late.jwk_kty_nul } },
  { "a JWK with d one byte short", "ERR_KEY_IMPORT", "import", { "i", late.jwk_d_short } },
  { "a JWK with a truncated base64url x", "ERR_KEY_IMPORT", "import", { "i", late.jwk_x_truncated } },
  { "a JWK with an overlong base64url x", "ERR_KEY_IMPORT", "import", { "i", late.jwk_x_overlong } },
  { "a JWK with padded base64url", "ERR_KEY_IMPORT", "import", { "i", late.jwk_x_padded } },
  { "a JWK in the standard base64 alphabet", "ERR_KEY_IMPORT", "import", { "i", late.jwk_x_standard } },
  { "a JWK point not on the curve", "ERR_KEY_IMPORT", "import", { "i", late.jwk_off_curve } },
  { "a JWK with duplicate members", "ERR_KEY_IMPORT", "import", { "i", late.jwk_duplicate } },
  { "a JWK with alg none", "ERR_KEY_IMPORT", "import", { "i", late.jwk_alg_none } },
  { "a JWK with alg HS256", "ERR_KEY_IMPORT", "import", { "i", late.jwk_alg_hs256 } },
  { "a JWK with alg a number", "ERR_KEY_IMPORT", "import", { "i", late.jwk_alg_number } },
  { "a JWK with alg null", "ERR_KEY_IMPORT", "import", { "i", late.jwk_alg_null } },
  { "a JWK with kid a table", "ERR_KEY_IMPORT", "import", { "i", late.jwk_kid_table } },
  { "a JWK with use a table", "ERR_INVALID_ARGUMENT", "import", { "i", late.jwk_use_table } },
  { "a JWK with multi-prime oth", "ERR_KEY_IMPORT", "import", { "i", '{"kty":"RSA","oth":[]}' } },
  { "an import with option alg HS256", "ERR_KEY_IMPORT", "import", { "i", late.jwk_text, { alg = "HS256" } } },
  { "an import with option alg none", "ERR_KEY_IMPORT", "import", { "i", late.jwk_text, { alg = "none" } } },
  { "an import with option use wrap", "ERR_INVALID_ARGUMENT", "import", { "i", late.jwk_text, { use = "wrap" } } },
  { "a public-only JWK", "ERR_KEY_NOT_PRIVATE", "import", { "i", late.jwk_public } },
  { "JSON nested 100,000 deep", "ERR_KEY_IMPORT", "import", { "i", nested(100000) } },
  { "a JWK after 1 MB of whitespace", "ERR_KEY_IMPORT", "import", { "i", string.rep(" ", 1000000) .. "{}" } },
  { "JSON null", "ERR_KEY_IMPORT", "import", { "i", "null" } },
  { "JSON 1e999", "ERR_KEY_IMPORT", "import", { "i", "1e999" } },
  { "an update with a key of garbage", "ERR_KEY_IMPORT", "update", { "sw", "garbage", { kid = "sw-1" } } },
  { "an import into an existing kid", "ERR_KEY_EXISTS", "import", { "sw", late.jwk_text, { kid = "sw-1" } } },

  -- claims to sign (defects 10, 11)
  { "a claim that is not UTF-8", "ERR_JWT_CLAIMS", "sign_jwt", { "hsm", { sub = "a\255" } } },
  { "a claim name that is not UTF-8", "ERR_JWT_CLAIMS", "sign_jwt", { "hsm", { ["\255"] = 1 } } },
  { "a lone surrogate in a claim", "ERR_JWT_CLAIMS", "sign_jwt", { "hsm", { a = "\237\160\128" } } },
  { "a claim name with a newline and 1e999", "ERR_JWT_CLAIMS", "sign_jwt",
    { "hsm", { ["x\ninjected [emerg] fake"] = math.huge } } },
  { "a NaN claim", "ERR_JWT_CLAIMS", "sign_jwt", { "hsm", { n = 0 / 0 } } },
  { "a function claim", "ERR_JWT_CLAIMS", "sign_jwt", { "hsm", { f = print } } },
  { "a cyclic claims table", "ERR_JWT_CLAIMS", "sign_jwt", { "hsm", cyclic() } },
  { "claims nested 10,000 deep", "ERR_JWT_CLAIMS", "sign_jwt", { "hsm", deep_table(10000) } },
  { "exp 1e999", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { exp = math.huge } } },
  { "exp null", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { exp = cjson.null } } },
  { "exp a string", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { exp = "x" } } },
  { "iat a table", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { iat = {} } } },
  { "nbf a boolean", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { nbf = true } } },
  { "sub a number", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { sub = 5 } } },
  { "iss null", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { iss = cjson.null } } },
  { "aud a list of numbers", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { aud = { 1 } } } },
  -- the claims are type-checked in the encoder's pass: a wrong type is still
  -- named before an encoding fault met first (the array part is iterated
  -- first), and one an __index answers for is still seen
  { "exp a string beside a claim named 1", "ERR_JWT_CLAIM_INVALID", "sign_jwt", { "hsm", { [1] = true, exp = "x" } } },
  { "exp a string from the claims' metatable", "ERR_JWT_CLAIM_INVALID", "sign_jwt",
    { "hsm", setmetatable({ sub = "a" }, { __index = { exp = "x" } }) } },

  -- tokens to verify: malformed JWS, hostile headers (defect 5, 7)
  { "an empty token", "ERR_JWS_INVALID", "verify", { "hsm", "" } },
  { "two segments", "ERR_JWS_INVALID", "verify", { "hsm", "a.b" } },
  { "four segments", "ERR_JWS_INVALID", "verify", { "hsm", "a.b.c.d" } },
  { "only dots", "ERR_JWS_INVALID", "verify", { "hsm", "...." } },
  { "a token in whitespace", "ERR_JWS_INVALID", "verify", { "hsm", late.token_in_spaces } },
  { "a NUL inside a token", "ERR_JWS_INVALID", "verify", { "hsm", late.token_nul } },
  { "a truncated signature", "ERR_JWS_INVALID", "verify", { "hsm", late.token_sig_truncated } },
  { "a signature one byte short", "ERR_JWS_SIGNATURE_INVALID", "verify", { "hsm", late.token_sig_short } },
  { "a padded signature", "ERR_JWS_INVALID", "verify", { "hsm", late.token_sig_padded } },
  { "another payload under the signature", "ERR_JWS_SIGNATURE_INVALID", "verify", { "hsm", late.token_swapped } },
  { "a token of 1 MB", "ERR_JWS_TOO_LARGE", "verify", { "hsm", string.rep("A", 1000000) .. ".e30.AA" } },
  { "a header that is not JSON", "ERR_JWS_INVALID", "verify", { "hsm", forged("not json") } },
  { "a header that is not UTF-8", "ERR_JWS_INVALID", "verify", { "hsm", forged('{"alg":"ES256","x":"\255"}') } },
  { "a header nested 4,000 deep", "ERR_JWS_INVALID", "verify",
    { "hsm", forged('{"alg":"ES256","x":' .. nested(4000) .. "}") } },
  { "a header with duplicate alg", "ERR_JWS_INVALID", "verify", { "hsm", forged('{"alg":"ES256","alg":"none"}') } },
  { "alg none, unsigned", "ERR_JWS_INVALID", "verify", { "hsm", forged('{"alg":"none"}', nil, "") } },
  { "alg none, with a signature", "ERR_JOSE_ALG_NOT_ALLOWED", "verify", { "hsm", forged('{"alg":"none"}') } },
  { "alg HS256", "ERR_JOSE_ALG_NOT_ALLOWED", "verify", { "hsm", forged('{"alg":"HS256"}') } },
  { "alg a table", "ERR_JWS_INVALID", "verify", { "hsm", forged('{"alg":["ES256"]}') } },
  { "alg null", "ERR_JWS_INVALID", "verify", { "hsm", forged('{"alg":null}') } },
  { "kid a number", "ERR_JWS_INVALID", "verify", { "hsm", forged('{"alg":"ES256","kid":5}') } },
  { "a kid with a NUL", "ERR_JWKS_NO_MATCHING_KEY", "verify", { "hsm", forged('{"alg":"ES256","kid":"hsm-1\\u0000"}') } },
  { "an empty kid", "ERR_JWKS_NO_MATCHING_KEY", "verify", { "hsm", forged('{"alg":"ES256","kid":""}') } },
  { "crit it does not know", "ERR_JWS_CRIT_UNSUPPORTED", "verify",
    { "hsm", forged('{"alg":"ES256","crit":["x"],"x":1}') } },
  { "an unencoded payload (b64 false)", "ERR_JWS_B64_UNSUPPORTED", "verify",
    { "hsm", forged('{"alg":"ES256","b64":false,"crit":["b64"]}') } },
  { "a header of 100 KB", "ERR_JWS_TOO_LARGE", "verify",
    { "hsm", forged('{"alg":"ES256","x":"' .. string.rep("x", 100000) .. '"}') } },
  { "a token for a set that does not exist", "ERR_KEY_SET_NOT_FOUND", "verify", { "nosuch", late.token } },

  -- claims to verify: signed, but hostile (defects 10, 11)
  { "a payload that is not JSON", "ERR_JWT_INVALID", "verify_jwt", { "hsm", late.jwt_not_json } },
  { "a payload that is a JSON list", "ERR_JWT_INVALID", "verify_jwt", { "hsm", late.jwt_list } },
  { "a payload with duplicate claims", "ERR_JWT_INVALID", "verify_jwt", { "hsm", late.jwt_duplicate } },
  { "a payload that is not UTF-8", "ERR_JWT_INVALID", "verify_jwt", { "hsm", late.jwt_not_utf8 } },
  { "a signed exp of 1e999", "ERR_JWT_CLAIM_INVALID", "verify_jwt", { "hsm", late.jwt_exp_huge } },
  { "a signed exp null", "ERR_JWT_CLAIM_INVALID", "verify_jwt", { "hsm", late.jwt_exp_null } },
  { "a signed exp string", "ERR_JWT_CLAIM_INVALID", "verify_jwt", { "hsm", late.jwt_exp_string } },
  { "a signed aud of numbers", "ERR_JWT_CLAIM_INVALID", "verify_jwt", { "hsm", late.jwt_aud_numbers } },
  { "a signed token long expired", "ERR_JWT_EXPIRED", "verify_jwt", { "hsm", late.jwt_expired } },

  -- rows in the store are input too (defect 5)
  { "a stored row with alg none", "ERR_KEY_INVALID", "key_set", { "row-alg-none" } },
  { "a stored row with alg HS256", "ERR_KEY_INVALID", "sign", { "row-alg-hs256", "x" } },
  { "a stored row with alg a table", "ERR_KEY_INVALID", "verify", { "row-alg-table", late.token } },
  { "a stored row with alg null", "ERR_KEY_INVALID", "sign_jwt", { "row-alg-null", { sub = "x" } } },
  { "a stored row with use a number", "ERR_KEY_INVALID", "key", { "row-use-number", "k" } },
  { "a stored row of garbage", "ERR_KEY_DECRYPT", "key_set_json", { "row-garbage" } },
  { "a stored row sealed with another secret", "ERR_KEY_DECRYPT", "sign", { "row-other-secret", "x" } },
  { "a stored row that is not JSON", "ERR_KEY_INVALID", "key_set", { "row-not-json" } },
  { "a stored row nested 10,000 deep", "ERR_KEY_INVALID", "key_set", { "row-deep" } },
  { "a stored row with duplicate members", "ERR_KEY_INVALID", "key_set", { "row-duplicate" } },
  { "a stored row with d of garbage", "ERR_KEY_INVALID", "thumbprint", { "row-bad-d", "k" } },

  -- the JOSE modules with keys from elsewhere
  { "jws.verify with no keys", "ERR_JWKS_NO_MATCHING_KEY", "jws.verify", { late.token, {}, { algorithms = { "ES256" } } } },
  { "jws.verify of a forged header", "ERR_JWS_INVALID", "jws.verify",
    { forged('{"alg":"ES256","alg":"ES256"}'), {}, { algorithms = { "ES256" } } } },
  { "jwt.verify of alg none", "ERR_JOSE_ALG_NOT_ALLOWED", "jwt.verify",
    { forged('{"alg":"none"}'), {}, { algorithms = { "ES256" } } } },
  { "a JWK Set that is not JSON", "ERR_JWKS_INVALID", "jwk.parse_set", { "{" } },
  { "a JWK Set whose keys is an object", "ERR_JWKS_INVALID", "jwk.parse_set", { '{"keys":{"a":{}}}' } },
  { "a JWK Set nested 100,000 deep", "ERR_JWKS_INVALID", "jwk.parse_set", { '{"keys":' .. nested(100000) .. "}" } },
  { "a JWK Set with duplicate keys", "ERR_JWKS_INVALID", "jwk.parse_set", { '{"keys":[],"keys":[]}' } },
  { "a thumbprint of a JWK without members", "ERR_JWK_INVALID", "jwk.thumbprint", { { kty = "EC" } } },
  { "a thumbprint of a proxy JWK", "ERR_JWK_INVALID", "jwk.thumbprint", { late.proxy } },

  -- configuration (defect 8: PINs and strings as written; what is no string is refused)
  { "a PIN that is a YAML list", "ERR_CONFIG", "open", { late.config_pin_list } },
  { "a PIN that is a YAML map", "ERR_CONFIG", "open", { late.config_pin_map } },
  { "an hsm section that is a string", "ERR_CONFIG", "open", { late.config_hsm_string } },
  { "a config file that is not YAML", "ERR_CONFIG", "open", { late.config_not_yaml } },
  { "a config file that does not exist", "ERR_CONFIG", "open", { { config = "/nonexistent/jwkengine.yaml" } } },
  { "a slot that is not a number", "ERR_CONFIG", "open", { late.env_slot_word } },
  { "a slot of 1e999", "ERR_CONFIG", "open", { late.env_slot_huge } },
  { "a slot past 2^53", "ERR_CONFIG", "open", { late.env_slot_past_integers } },
  { "max_sessions of 1e300", "ERR_CONFIG", "open", { late.env_sessions_huge } },
  { "a PIN file of 1 MB", "ERR_CONFIG", "open", { late.env_pin_file_huge } },
  { "a PKCS#11 module that is no module", "ERR_CONFIG", "open", { late.env_library_text } },
}

-- { what, arguments, stdin, expected exit status }: the CLI on the same
-- token and store (a usage error is 2, a failed operation 1).
local CLI_CASES = {
  { "no command", "", nil, 2 },
  { "an unknown command", "frobnicate", nil, 2 },
  { "create without an alg", "create only-set", nil, 2 },
  { "an unknown option", "get hsm --bogus", nil, 2 },
  { "an option without its value", "create g ES256 --kid", nil, 2 },
  { "create HS256", "create g HS256", nil, 1 },
  { "create none", "create g none", nil, 1 },
  { "a newline in a set name", "get " .. softhsm.quote("line\nbreak"), nil, 1 },
  { "an escape sequence in a set name", "get " .. softhsm.quote("\27[2Jred"), nil, 1 },
  { "a bell in a kid", "create g ES256 --kid " .. softhsm.quote("k\7"), nil, 1 },
  { "a set that does not exist", "get nosuch", nil, 1 },
  { "use wrap", "create g ES256 --use wrap", nil, 2 },
  { "sign into a set that does not exist", "sign nosuch", '{"sub":"x"}', 1 },
  { "verify an empty input", "verify hsm", "", 1 },
  { "verify 40 KB of spaces", "verify hsm", string.rep(" ", 40000), 1 },
  { "verify a malformed token", "verify hsm", "a.b.c", 1 },
  { "verify alg none", "verify hsm", forged('{"alg":"none"}', nil, ""), 1 },
  { "verify a header nested 4,000 deep", "verify hsm", forged('{"alg":"ES256","x":' .. nested(4000) .. "}"), 1 },
  { "verify duplicate header members", "verify hsm", forged('{"alg":"ES256","alg":"none"}'), 1 },
  { "verify a token of 1 MB", "verify hsm", string.rep("A", 1000000) .. ".e30.AA", 1 },
  { "import nothing", "import i", "", 1 },
  { "import text that is no key", "import i", "not a key", 1 },
  { "import a PEM of garbage", "import i", "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", 1 },
  { "import a JWK with duplicate members", "import i", '{"kty":"EC","kty":"RSA"}', 1 },
  { "import JSON nested 100,000 deep", "import i", nested(100000), 1 },
  { "import a JWK with alg none", "import i", '{"kty":"EC","crv":"P-256","alg":"none"}', 1 },
  { "import with --alg HS256", "import i --alg HS256", late.pem, 1 },
  { "import an RSA PEM past the maximum size", "import i", late.rsa_too_big_pem, 1 },
  { "delete a kid that does not exist", "delete hsm nosuch", nil, 1 },
}

-- A clean failure: nil, a string message, a registered code, the one expected.
local function assert_refused(what, expected, ok, value, message, code)
  assert.is_true(ok, what .. ": raised " .. tostring(value))
  assert.is_nil(value, what .. ": expected a refusal, got a " .. type(value))
  assert.is_string(message, what .. ": no message")
  assert.is_string(code, what .. ": no code (" .. tostring(message) .. ")")
  assert.is_string(errors.codes[code], what .. ": code " .. code .. " is not in jwkengine.errors")
  assert.equals(expected, code, what .. ": " .. message)
end

local function write(path, text)
  softhsm.write_file(path, text)
  return path
end

describe("the hostile-input corpus", function()
  local token, engine, dsn_path, files = nil, nil, nil, {}

  -- the engine's environment; extra: variables to set, or false to leave out
  local function environment(extra)
    local env = softhsm.environment(token, { SECRETS_SYSTEM = SECRET, DSN = "sqlite://" .. dsn_path })
    for name, value in pairs(extra or {}) do env[name] = value or nil end
    return env
  end

  local function temp(suffix, text)
    local path = os.tmpname() .. suffix
    files[#files + 1] = path
    return write(path, text)
  end

  -- rows sealed by an independent implementation (hydra_aead.py), each in
  -- a set of its own
  local function store_rows(good)
    local s = assert(store_module.open("sqlite://" .. dsn_path))
    local function row(set, plaintext, secret)
      assert(s:insert(set, "k", hydra_aead("seal", secret or SECRET, plaintext)))
    end
    local function jwk_row(set, members)
      local jwk = good:private_jwk()
      jwk.kid, jwk.use, jwk.alg = "k", "sig", "ES256"
      for name, value in pairs(members) do jwk[name] = value end
      row(set, cjson.encode(jwk))
    end
    jwk_row("row-alg-none", { alg = "none" })
    jwk_row("row-alg-hs256", { alg = "HS256" })
    jwk_row("row-alg-table", { alg = { "ES256" } })
    jwk_row("row-alg-null", { alg = cjson.null })
    jwk_row("row-use-number", { use = 1 })
    jwk_row("row-bad-d", { d = "!!!" })
    assert(s:insert("row-garbage", "k", b64(string.rep("\7", 80)) .. "=="))
    row("row-other-secret", cjson.encode(good:private_jwk()), "some-other-secret-0123456789")
    row("row-not-json", "not json")
    row("row-deep", nested(10000))
    local text = cjson.encode(good:private_jwk())
    row("row-duplicate", text:sub(1, -2) .. ',"kty":"RSA"}')
    s:close()
  end

  setup(function()
    token = softhsm.new_token("hostile")
    dsn_path = os.tmpname() .. ".sqlite"
    local good = assert(core.generate_software_key("ES256"))
    store_rows(good)
    engine = assert(jwkengine.open({ environment = environment(), logger = false, startup = false }))
    assert(engine:generate("hsm", "ES256", { kid = "hsm-1" }))
    assert(engine:import("sw", good:private_jwk(), { kid = "sw-1", alg = "ES256" }))

    local L = late_values
    L.token = assert(engine:sign("hsm", '{"sub":"x"}'))
    local h, p, sig = L.token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    L.token_in_spaces = "  " .. L.token .. "\n"
    L.token_nul = h .. "." .. p .. "\0." .. sig
    L.token_sig_truncated = h .. "." .. p .. "." .. sig:sub(1, -2)
    L.token_sig_short = h .. "." .. p .. "." .. b64(core.b64url_decode(sig):sub(1, -2))
    L.token_sig_padded = L.token .. "=="
    L.token_swapped = h .. "." .. b64('{"sub":"y"}') .. "." .. sig
    local function signed(payload) return assert(engine:sign("hsm", payload)) end
    L.jwt_not_json = signed("not json")
    L.jwt_list = signed("[1,2]")
    L.jwt_duplicate = signed('{"sub":"a","sub":"b"}')
    L.jwt_not_utf8 = signed('{"sub":"\255"}')
    L.jwt_exp_huge = signed('{"exp":1e999}')
    L.jwt_exp_null = signed('{"exp":null}')
    L.jwt_exp_string = signed('{"exp":"x"}')
    L.jwt_aud_numbers = signed('{"aud":[1,2]}')
    L.jwt_expired = signed('{"exp":1}')

    local jwk = good:private_jwk()
    L.jwk_text = cjson.encode(jwk)
    L.proxy = proxy_jwk(jwk)
    local function with(members)
      local copy = {}
      for k, v in pairs(jwk) do copy[k] = v end
      for k, v in pairs(members) do copy[k] = v end
      return copy
    end
    L.jwk_crv_nul = with({ crv = "P-256\0x" })
    L.jwk_kty_nul = with({ kty = "EC\0RSA" })
    L.jwk_d_short = with({ d = b64(core.b64url_decode(jwk.d):sub(2)) })
    L.jwk_x_truncated = with({ x = jwk.x:sub(1, -2) })
    L.jwk_x_overlong = with({ x = jwk.x .. "AAAA" })
    L.jwk_x_padded = with({ x = jwk.x .. "=" })
    L.jwk_x_standard = with({ x = (jwk.x:gsub("[-_]", "+")):sub(1, -2) .. "/" })
    L.jwk_off_curve = with({ y = jwk.x })
    L.jwk_duplicate = L.jwk_text:sub(1, -2) .. ',"d":"AAAA"}'
    L.jwk_alg_none = with({ alg = "none" })
    L.jwk_alg_hs256 = with({ alg = "HS256" })
    L.jwk_alg_number = L.jwk_text:sub(1, -2) .. ',"alg":5}'
    L.jwk_alg_null = L.jwk_text:sub(1, -2) .. ',"alg":null}'
    L.jwk_kid_table = with({ kid = { "k" } })
    L.jwk_use_table = with({ use = { "sig" } })
    L.jwk_public = { kty = "EC", crv = "P-256", x = jwk.x, y = jwk.y }

    local pem_out, ok = softhsm.run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256")
    assert(ok, pem_out)
    L.pem = pem_out
    L.pem_truncated = pem_out:gsub("%-%-%-%-%-END.*$", "")
    L.pem_cut = pem_out:sub(1, #pem_out // 2) .. "\n-----END PRIVATE KEY-----\n"
    L.pem_nul = pem_out:sub(1, 40) .. "\0" .. pem_out:sub(42)
    local pem_path = temp(".pem", pem_out)
    L.pem_public = softhsm.run("openssl pkey -pubout -in " .. pem_path)
    L.pem_encrypted = softhsm.run("openssl pkey -aes256 -passout pass:secret-pass -in " .. pem_path)
    L.rsa_small_pem = softhsm.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:512")
    local too_big = rsa_of_size(RSA_MAX_BITS + 7)
    L.rsa_too_big_pem, L.rsa_too_big_jwk = too_big.pem, too_big.jwk

    local function config(text)
      return { config = temp(".yaml", text), environment = { DSN = "memory" }, logger = false, startup = false }
    end
    L.config_pin_list = config("hsm:\n  enabled: true\n  pin: [1, 2]\n")
    L.config_pin_map = config("hsm:\n  enabled: true\n  pin: {a: 1}\n")
    L.config_hsm_string = config("hsm: just a string\n")
    L.config_not_yaml = config("hsm: [unclosed\n  : {\n")
    local function env_open(extra)
      return { environment = environment(extra), logger = false, startup = false }
    end
    -- a slot is read only without a token label
    L.env_slot_word = env_open({ HSM_SLOT = "zero", HSM_TOKEN_LABEL = false })
    L.env_slot_huge = env_open({ HSM_SLOT = "1e999", HSM_TOKEN_LABEL = false })
    L.env_slot_past_integers = env_open({ HSM_SLOT = "1e300", HSM_TOKEN_LABEL = false })
    L.env_sessions_huge = env_open({ HSM_MAX_SESSIONS = "1e300" })
    L.env_pin_file_huge = env_open({ HSM_PIN = false, HSM_PIN_FILE = temp(".pin", string.rep("1", 1000000)) })
    L.env_library_text = env_open({ HSM_LIBRARY = temp(".so", "not a shared object") })
  end)

  teardown(function()
    if engine then engine:close() end
    if dsn_path then os.remove(dsn_path) end
    for _, path in ipairs(files) do os.remove(path) end
  end)

  local function target(name)
    if name == "open" then return jwkengine.open end
    local module, fn = name:match("^(%w+)%.([%w_]+)$")
    if module then return jwkengine[module][fn] end
    return function(...) return engine[name](engine, ...) end
  end

  for _, case in ipairs(API_CASES) do
    local what, expected, name, args = case[1], case[2], case[3], case[4]
    it("Lua API refuses " .. what .. " with " .. expected, function()
      local resolved = {}
      for i = 1, #args do resolved[i] = resolve(args[i]) end
      local ok, value, message, code = pcall(target(name), table.unpack(resolved, 1, #args))
      if name == "open" and ok and value then value:close() end
      assert_refused(what, expected, ok, value, message, code)
    end)
  end

  it("left the sets it was fed hostile input about as they were", function()
    local hsm = assert(engine:key_set("hsm"))
    assert.equals(1, #hsm.keys)
    assert.equals("hsm-1", hsm.keys[1].kid)
    local sw = assert(engine:key_set("sw"))
    assert.equals(1, #sw.keys)
    for _, set in ipairs({ "i", "g", "hsm\0x" }) do
      local _, _, code = engine:key_set(set)
      assert.is_truthy(code == "ERR_KEY_SET_NOT_FOUND" or code == "ERR_INVALID_ARGUMENT", set)
    end
  end)

  for _, case in ipairs(CLI_CASES) do
    local what, args, stdin, expected = case[1], case[2], case[3], case[4]
    it("CLI exits " .. expected .. " on " .. what .. ", with one line on stderr", function()
      local out, err, status = cli.keys(environment(), args, resolve(stdin), 60)
      assert.equals(expected, status, what .. ": " .. err)
      assert.equals("", out, what)
      assert.matches("^[^\n]+\n$", err, what .. ": " .. err)
      assert.is_falsy(err:find("traceback", 1, true), what)
    end)
  end
end)

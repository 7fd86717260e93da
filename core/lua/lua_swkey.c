/* Software keys and the store's AES-GCM sealing in Lua.
 *
 * A software key object owns its EVP_PKEYs until it is collected. Its
 * public_key() is a separate public-only object, so verifiers never keep
 * private material alive. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "aesgcm.h"
#include "b64url.h"
#include "evp_sig.h"
#include "lua_common.h"
#include "lua_jwk.h"
#include "pkey.h"
#include "sealed_key.h"
#include "swkey.h"
#include "x509_cert.h"

typedef struct swkey_object {
    jwke_swkey key; /* pkey NULL until filled in */
    /* The last algorithm this key was checked to fit, and its signature
     * size: a key never changes, so the check runs once, not per signature. */
    const jwke_alg *fits_alg;
    size_t fits_sig_size;
} swkey_object;

struct jwke_swkey *jwke_lua_software_key(lua_State *L, int idx)
{
    swkey_object *k = luaL_testudata(L, idx, JWKE_SOFTWARE_KEY_CLASS);
    return k && k->key.pkey ? &k->key : NULL;
}

/* A new, empty key object on the stack: __gc is safe from the start. */
static swkey_object *new_key(lua_State *L)
{
    swkey_object *k = lua_newuserdatauv(L, sizeof *k, 0);
    memset(k, 0, sizeof *k);
    luaL_setmetatable(L, JWKE_SOFTWARE_KEY_CLASS);
    return k;
}

/* Pushes the key object filled by `rc == 0`, or nil, err. */
static int push_result(lua_State *L, int rc, const jwke_error *err)
{
    if (rc != 0)
        return jwke_push_error(L, err);
    return 1;
}

/* generate_software_key(alg [, {bits = N}]) -> key | nil, err */
static int l_generate(lua_State *L)
{
    const jwke_alg *alg = jwke_check_alg(L, 1);
    lua_Integer bits = 0;
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TTABLE)
            return jwke_arg_refused(L, "the options", "must be a table");
        lua_getfield(L, 2, "bits");
        if (jwke_arg_integer(L, -1, "bits", 0, 1, JWKE_RSA_MAX_BITS, &bits))
            return JWKE_ARG_REFUSED;
        lua_pop(L, 1);
    }
    swkey_object *k = new_key(L);
    jwke_error err;
    return push_result(L, jwke_swkey_generate(alg, (int)bits, &k->key, &err), &err);
}

/* import_jwk(jwk_table) -> key | nil, err */
static int l_import_jwk(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TTABLE)
        return jwke_arg_refused(L, "the JWK", "must be a table");
    jwke_jwk_members m;
    jwke_error err;
    swkey_object *k = new_key(L);
    int rc = jwke_read_jwk(L, 1, 1, &m, &err);
    if (rc == 0)
        rc = jwke_swkey_from_jwk(&m, &k->key, &err);
    jwke_jwk_members_clear(&m);
    if (rc != 0)
        jwke_fail_in(&err, JWKE_ERR_KEY_IMPORT);
    return push_result(L, rc, &err);
}

/* import_pem(pem_text) -> key | nil, err */
static int l_import_pem(lua_State *L)
{
    size_t len;
    const char *pem;
    if (jwke_arg_string(L, 1, "the PEM text", 0, &pem, &len))
        return JWKE_ARG_REFUSED;
    swkey_object *k = new_key(L);
    jwke_error err;
    return push_result(L, jwke_swkey_from_pem(pem, len, &k->key, &err), &err);
}

/* ---- AES-GCM --------------------------------------------------------- */

/* aes_gcm_seal(secret, plaintext) -> text | nil, err */
static int l_aes_gcm_seal(lua_State *L)
{
    size_t secret_len, plaintext_len;
    const char *secret, *plaintext;
    if (jwke_arg_string(L, 1, "the secret", 0, &secret, &secret_len) ||
        jwke_arg_string(L, 2, "the plaintext", 0, &plaintext, &plaintext_len))
        return JWKE_ARG_REFUSED;
    char *text;
    size_t text_len;
    jwke_error err;
    if (jwke_aesgcm_seal((const unsigned char *)secret, secret_len,
                         (const unsigned char *)plaintext, plaintext_len, &text, &text_len,
                         &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, text, text_len);
    free(text);
    return 1;
}

#define MAX_SECRETS 64

/* The list of secrets at arg (strings the table keeps alive) into secrets
 * and *count: 0, or JWKE_ARG_REFUSED with the failure pushed. */
static int check_secrets(lua_State *L, int arg, jwke_secret secrets[MAX_SECRETS], size_t *count)
{
    if (lua_type(L, arg) != LUA_TTABLE)
        return jwke_arg_refused(L, "the secrets", "must be a list of strings");
    *count = (size_t)lua_rawlen(L, arg);
    if (*count > MAX_SECRETS)
        return jwke_arg_refused(L, "the secrets", "at most 64");
    for (size_t i = 0; i < *count; i++) {
        lua_rawgeti(L, arg, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return jwke_arg_refused(L, "the secrets", "must be a list of strings");
        secrets[i].data = (const unsigned char *)lua_tolstring(L, -1, &secrets[i].len);
        lua_pop(L, 1);
    }
    return 0;
}

/* What the functions on a store row take: ({secret, ...}, text). */
typedef struct {
    jwke_secret secrets[MAX_SECRETS];
    size_t count;
    const char *text;
    size_t text_len;
} sealed_args;

/* 0, or JWKE_ARG_REFUSED with the failure pushed (a row's keydata that is
 * not text answers, it does not raise). */
static int check_sealed_args(lua_State *L, sealed_args *a)
{
    if (check_secrets(L, 1, a->secrets, &a->count))
        return JWKE_ARG_REFUSED;
    return jwke_arg_string(L, 2, "the sealed text", 0, &a->text, &a->text_len);
}

/* open_sealed_key({secret, ...}, text) -> key, public_json | nil, err:
 * decrypts a store row and imports its key in C (sealed_key.h), so the
 * private members never become Lua strings. */
static int l_open_sealed_key(lua_State *L)
{
    sealed_args a;
    if (check_sealed_args(L, &a))
        return JWKE_ARG_REFUSED;
    swkey_object *k = new_key(L);
    char *public_json;
    size_t public_len;
    jwke_error err;
    if (jwke_sealed_key_open(a.secrets, a.count, a.text, a.text_len, &k->key, &public_json, &public_len,
                             &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, public_json, public_len);
    free(public_json);
    return 2;
}

/* aes_gcm_open({secret, ...}, text) -> plaintext, index | nil, err */
static int l_aes_gcm_open(lua_State *L)
{
    sealed_args a;
    if (check_sealed_args(L, &a))
        return JWKE_ARG_REFUSED;
    unsigned char *plaintext;
    size_t plaintext_len, used;
    jwke_error err;
    if (jwke_aesgcm_open(a.secrets, a.count, a.text, a.text_len, &plaintext, &plaintext_len, &used,
                         &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, (const char *)plaintext, plaintext_len);
    jwke_aesgcm_free(plaintext, plaintext_len);
    lua_pushinteger(L, (lua_Integer)used + 1);
    return 2;
}

/* aes_gcm_reseal({secret, ...}, text) -> text | nil, err, code: opened
 * with any secret, sealed with the first, the plaintext never in Lua. */
static int l_aes_gcm_reseal(lua_State *L)
{
    sealed_args a;
    if (check_sealed_args(L, &a))
        return JWKE_ARG_REFUSED;
    char *out;
    size_t out_len;
    jwke_error err;
    if (jwke_aesgcm_reseal(a.secrets, a.count, a.text, a.text_len, &out, &out_len, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, out, out_len);
    free(out);
    return 1;
}

/* sealed_key_mark({secret, ...}, text, retired) -> text | nil, err, code:
 * the row's JWK with key_ops ["verify"] (retired) or without key_ops,
 * sealed with the first secret, the plaintext never in Lua (sealed_key.h). */
static int l_sealed_key_mark(lua_State *L)
{
    sealed_args a;
    if (check_sealed_args(L, &a))
        return JWKE_ARG_REFUSED;
    jwke_error err;
    if (lua_type(L, 3) != LUA_TBOOLEAN) {
        jwke_fail_code(&err, JWKE_ERR_INVALID_ARGUMENT, "sealed_key_mark takes a boolean, got %s",
                       luaL_typename(L, 3));
        return jwke_push_error(L, &err);
    }
    char *out;
    size_t out_len;
    if (jwke_sealed_key_mark(a.secrets, a.count, a.text, a.text_len, lua_toboolean(L, 3), &out,
                             &out_len, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, out, out_len);
    free(out);
    return 1;
}

/* ---- methods --------------------------------------------------------- */

static swkey_object *check_key(lua_State *L)
{
    swkey_object *k = luaL_checkudata(L, 1, JWKE_SOFTWARE_KEY_CLASS);
    if (!k->key.pkey)
        luaL_error(L, "the software key is empty or released");
    return k;
}

static int l_is_private(lua_State *L)
{
    lua_pushboolean(L, check_key(L)->key.is_private);
    return 1;
}

static int l_kty(lua_State *L)
{
    return jwke_push_kty(L, check_key(L)->key.pkey);
}

/* key:kid(), key:alg(), key:use() -> nil: a software key is bound to none
 * (its store row holds them) and signs with any alg that fits it; an HSM
 * key answers its own. */
static int l_unbound(lua_State *L)
{
    check_key(L);
    lua_pushnil(L);
    return 1;
}

static int l_bits(lua_State *L)
{
    lua_pushinteger(L, EVP_PKEY_get_bits(check_key(L)->key.pkey));
    return 1;
}

static int l_public_key(lua_State *L)
{
    jwke_push_public_key(L, check_key(L)->key.public_pkey);
    return 1;
}

/* key:public_jwk() -> {kty, n, e} | {kty, crv, x[, y]} */
static int l_public_jwk(lua_State *L)
{
    jwke_error err;
    if (jwke_push_public_members(L, check_key(L)->key.public_pkey, &err) != 0)
        return jwke_push_error(L, &err);
    return 1;
}

/* key:private_jwk() -> all members, base64url. For the encrypted store
 * only: the result holds the private key in plain Lua strings. */
static int l_private_jwk(lua_State *L)
{
    swkey_object *k = check_key(L);
    jwke_jwk_members m;
    jwke_error err;
    if (jwke_swkey_private_members(&k->key, &m, &err) != 0)
        return jwke_push_error(L, &err);
    lua_createtable(L, 0, 10);
    lua_pushstring(L, m.kty);
    lua_setfield(L, -2, "kty");
    if (m.crv) {
        lua_pushstring(L, m.crv);
        lua_setfield(L, -2, "crv");
    }
    for (size_t i = 0; i < JWKE_JWK_BINARY_MEMBERS; i++) {
        const jwke_bytes *b = jwke_jwk_member_at(&m, i);
        if (!b->data)
            continue;
        jwke_push_b64url(L, b->data, b->len);
        lua_setfield(L, -2, jwke_jwk_binary_members[i]);
    }
    jwke_jwk_members_clear(&m);
    return 1;
}

/* key:fits(alg [, min_rsa_bits]) -> true | false, err */
static int l_fits(lua_State *L)
{
    return jwke_push_fits(L, check_key(L)->key.pkey, JWKE_RSA_MIN_BITS);
}

typedef struct sw_signer {
    EVP_PKEY *pkey;
    const jwke_alg *alg;
} sw_signer;

static int sw_sign(void *signer, const unsigned char *input, size_t input_len,
                   unsigned char *sig, size_t *sig_len, jwke_error *err)
{
    sw_signer *s = signer;
    return jwke_evp_sign(s->pkey, s->alg, input, input_len, sig, sig_len, err);
}

/* Checks that the key can sign with the algorithm at alg_arg. */
static int signing_setup(lua_State *L, int alg_arg, void *signer, size_t *sig_max,
                         jwke_error *err)
{
    sw_signer *s = signer;
    swkey_object *k = check_key(L);
    s->alg = jwke_check_alg(L, alg_arg);
    s->pkey = k->key.pkey;
    if (!k->key.is_private)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "the key is public only and cannot sign");
    if (k->fits_alg != s->alg) {
        if (jwke_pkey_fits_alg(s->pkey, s->alg, JWKE_RSA_MIN_BITS, err) != 0)
            return jwke_fail_in(err, JWKE_ERR_JWS_SIGN);
        k->fits_alg = s->alg;
        k->fits_sig_size = jwke_alg_signature_size(s->alg, EVP_PKEY_get_bits(s->pkey));
    }
    *sig_max = k->fits_sig_size;
    return 0;
}

/* key:self_signed_certificate(subject, days) -> DER | nil, err, code */
static int l_self_signed_certificate(lua_State *L)
{
    swkey_object *k = check_key(L);
    sw_signer s = {k->key.pkey, jwke_x509_signature_alg(k->key.public_pkey, NULL)};
    if (!k->key.is_private) {
        jwke_error err;
        jwke_fail_code(&err, JWKE_ERR_KEY_NOT_PRIVATE, "a public-only key cannot sign a certificate");
        return jwke_push_error(L, &err);
    }
    return jwke_push_self_signed(L, k->key.public_pkey, s.alg, sw_sign, &s);
}

/* key:sign(input, alg) -> signature bytes | nil, err */
static int l_sign(lua_State *L)
{
    sw_signer s;
    return jwke_push_signature(L, signing_setup, sw_sign, &s);
}

/* key:sign_compact(header_b64, payload, alg) -> compact JWS | nil, err */
static int l_sign_compact(lua_State *L)
{
    sw_signer s;
    return jwke_push_compact(L, signing_setup, sw_sign, &s);
}

static int l_gc(lua_State *L)
{
    swkey_object *k = luaL_checkudata(L, 1, JWKE_SOFTWARE_KEY_CLASS);
    jwke_swkey_free(&k->key);
    return 0;
}

static const luaL_Reg methods[] = {
    {"kid", l_unbound},
    {"alg", l_unbound},
    {"use", l_unbound},
    {"is_private", l_is_private},
    {"kty", l_kty},
    {"bits", l_bits},
    {"public_key", l_public_key},
    {"public_jwk", l_public_jwk},
    {"private_jwk", l_private_jwk},
    {"fits", l_fits},
    {"sign", l_sign},
    {"self_signed_certificate", l_self_signed_certificate},
    {"sign_compact", l_sign_compact},
    {NULL, NULL},
};

static const luaL_Reg functions[] = {
    {"generate_software_key", l_generate},
    {"import_jwk", l_import_jwk},
    {"import_pem", l_import_pem},
    {"aes_gcm_seal", l_aes_gcm_seal},
    {"aes_gcm_open", l_aes_gcm_open},
    {"aes_gcm_reseal", l_aes_gcm_reseal},
    {"open_sealed_key", l_open_sealed_key},
    {"sealed_key_mark", l_sealed_key_mark},
    {NULL, NULL},
};

void jwke_open_software_key(lua_State *L)
{
    jwke_new_class(L, JWKE_SOFTWARE_KEY_CLASS, methods, l_gc);
    luaL_setfuncs(L, functions, 0);
}

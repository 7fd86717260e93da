/* Software keys and the store's AES-GCM sealing in Lua.
 *
 * OpenSSL in this process as the holder of keys (lua_key.c): a software
 * key object owns its EVP_PKEYs until it is collected. */
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

/* A key's state when this process holds it. */
typedef struct swkey_object {
    jwke_swkey key; /* pkey NULL until filled in */
    /* The last algorithm this key was checked to fit, and its signature
     * size: a key never changes, so the check runs once, not per signature. */
    const jwke_alg *fits_alg;
    size_t fits_sig_size;
} swkey_object;

static const jwke_key_holder software_holder;

struct jwke_swkey *jwke_lua_software_key(lua_State *L, int idx)
{
    swkey_object *k = jwke_key_state(L, idx, &software_holder);
    return k && k->key.pkey ? &k->key : NULL;
}

/* A new, empty key object on the stack: __gc is safe from the start. */
static swkey_object *new_key(lua_State *L)
{
    return jwke_new_key_object(L, &software_holder);
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

/* ---- this process as a key's holder (lua_common.h) -------------------- */

/* kid, alg and use stay NULL: a software key is bound to none (its store
 * row holds them) and signs with any alg that fits it. */
static int sw_facts(const void *state, jwke_key_facts *out)
{
    const swkey_object *k = state;
    if (!k->key.pkey)
        return -1;
    memset(out, 0, sizeof *out);
    out->is_private = k->key.is_private;
    out->public_key = k->key.public_pkey;
    return 0;
}

/* The alg must be named; the fit is checked once per alg, not per
 * signature (a key never changes). */
static int sw_signing(void *state, const jwke_alg **alg, size_t *sig_max, jwke_error *err)
{
    swkey_object *k = state;
    if (!k->key.pkey)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "the software key is empty or released");
    if (!*alg)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "a software key signs with the alg it is given: name one");
    if (!k->key.is_private)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "the key is public only and cannot sign");
    if (k->fits_alg != *alg) {
        if (jwke_pkey_fits_alg(k->key.pkey, *alg, JWKE_RSA_MIN_BITS, err) != 0)
            return jwke_fail_in(err, JWKE_ERR_JWS_SIGN);
        k->fits_alg = *alg;
        k->fits_sig_size = jwke_alg_signature_size(*alg, EVP_PKEY_get_bits(k->key.pkey));
    }
    *sig_max = k->fits_sig_size;
    return 0;
}

static int sw_sign(void *signer, const unsigned char *input, size_t input_len,
                   unsigned char *sig, size_t *sig_len, jwke_error *err)
{
    jwke_key_signer *s = signer;
    swkey_object *k = s->state;
    return jwke_evp_sign(k->key.pkey, s->alg, input, input_len, sig, sig_len, err);
}

static void sw_clear(void *state)
{
    swkey_object *k = state;
    jwke_swkey_free(&k->key);
}

/* key:private_jwk() -> all members, base64url. For the encrypted store
 * only: the result holds the private key in plain Lua strings. */
static int sw_push_private_jwk(lua_State *L, void *state)
{
    swkey_object *k = state;
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

/* certificate, retired and set_sign: none here; a stored key's x5c and
 * retirement mark are in its store row (sealed_key_mark) */
static const jwke_key_holder software_holder = {
    .name = "software",
    .state_size = sizeof(swkey_object),
    .default_min_bits = JWKE_RSA_MIN_BITS,
    .facts = sw_facts,
    .signing = sw_signing,
    .sign = sw_sign,
    .clear = sw_clear,
    .push_private_jwk = sw_push_private_jwk,
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
    luaL_setfuncs(L, functions, 0);
}

/* The one key class of the binding, whatever holds the key (lua_common.h,
 * "the one key class"): every method is written here once and asks the
 * key's holder (a token, lua_token.c; OpenSSL in this process,
 * lua_swkey.c) only for what differs. */
#include <string.h>

#include "lua_common.h"
#include "x509_cert.h"

/* The holder, then its state: the key object is one allocation. */
typedef struct key_object {
    const jwke_key_holder *holder;
} key_object;

/* The holder's state follows the header; the header's one pointer keeps
 * the pointers and sizes in any state aligned. */
#define STATE(k) ((void *)((k) + 1))

void *jwke_new_key_object(lua_State *L, const jwke_key_holder *holder)
{
    key_object *k = lua_newuserdatauv(L, sizeof *k + holder->state_size, 1);
    k->holder = holder;
    memset(STATE(k), 0, holder->state_size);
    luaL_setmetatable(L, JWKE_KEY_CLASS);
    return STATE(k);
}

void *jwke_key_state(lua_State *L, int idx, const jwke_key_holder *holder)
{
    key_object *k = luaL_testudata(L, idx, JWKE_KEY_CLASS);
    return k && k->holder == holder ? STATE(k) : NULL;
}

static const char key_class_id; /* its address: jwke_check_self's key */

/* Self of another class is a programming error, raised. */
static key_object *check_key(lua_State *L)
{
    return jwke_check_self(L, &key_class_id, JWKE_KEY_CLASS);
}

/* The key at 1 and what its holder knows of it; raises for a key that
 * was never filled in (a programming error). */
static key_object *check_facts(lua_State *L, jwke_key_facts *facts)
{
    key_object *k = check_key(L);
    if (k->holder->facts(STATE(k), facts) != 0)
        luaL_error(L, "the %s key is empty or released", k->holder->name);
    return k;
}

/* nil, err, ERR_KEY_USE: what a method answers when the key's holder
 * cannot do it. */
static int cannot(lua_State *L, const key_object *k, const char *what)
{
    jwke_error err;
    jwke_fail_code(&err, JWKE_ERR_KEY_USE, "this %s key cannot %s", k->holder->name, what);
    return jwke_push_error(L, &err);
}

/* key:kid(), key:alg(), key:use(): the holder's own, or nil for a key
 * bound to none (a software key: its store row holds them, and it signs
 * with any alg that fits it). */
static int l_kid(lua_State *L)
{
    jwke_key_facts f;
    check_facts(L, &f);
    if (!f.kid)
        return 0;
    lua_pushlstring(L, (const char *)f.kid, f.kid_len);
    return 1;
}

static int l_alg(lua_State *L)
{
    jwke_key_facts f;
    check_facts(L, &f);
    if (!f.alg)
        return 0;
    lua_pushstring(L, f.alg->name);
    return 1;
}

static int l_use(lua_State *L)
{
    jwke_key_facts f;
    check_facts(L, &f);
    if (!f.use)
        return 0;
    lua_pushstring(L, f.use);
    return 1;
}

static int l_kty(lua_State *L)
{
    jwke_key_facts f;
    check_facts(L, &f);
    return jwke_push_kty(L, f.public_key);
}

static int l_bits(lua_State *L)
{
    jwke_key_facts f;
    check_facts(L, &f);
    lua_pushinteger(L, EVP_PKEY_get_bits(f.public_key));
    return 1;
}

/* An HSM key is always the private half of a pair (load_set finds pairs),
 * though its private members never leave the token. */
static int l_is_private(lua_State *L)
{
    jwke_key_facts f;
    check_facts(L, &f);
    lua_pushboolean(L, f.is_private);
    return 1;
}

/* key:fits(alg [, min_rsa_bits]); the holder says which minimum applies
 * when none is given (a token's load already held its keys to one). */
static int l_fits(lua_State *L)
{
    jwke_key_facts f;
    key_object *k = check_facts(L, &f);
    return jwke_push_fits(L, f.public_key, k->holder->default_min_bits);
}

/* key:public_key() -> a public-only object: verifiers never keep private
 * material alive */
static int l_public_key(lua_State *L)
{
    jwke_key_facts f;
    check_facts(L, &f);
    jwke_push_public_key(L, f.public_key);
    return 1;
}

/* key:public_jwk() -> the key members, and kid, use, alg and the
 * certificate when the holder has them */
static int l_public_jwk(lua_State *L)
{
    jwke_key_facts f;
    key_object *k = check_facts(L, &f);
    jwke_error err;
    if (jwke_push_public_members(L, f.public_key, &err) != 0)
        return jwke_push_error(L, &err);
    if (f.kid) {
        lua_pushlstring(L, (const char *)f.kid, f.kid_len);
        lua_setfield(L, -2, "kid");
    }
    if (f.use) {
        lua_pushstring(L, f.use);
        lua_setfield(L, -2, "use");
    }
    if (f.alg) {
        lua_pushstring(L, f.alg->name);
        lua_setfield(L, -2, "alg");
    }
    if (k->holder->certificate) {
        size_t len;
        const jwke_error *problem;
        const unsigned char *der = k->holder->certificate(STATE(k), &len, &problem);
        if (der)
            jwke_push_certificate_members(L, der, len);
    }
    return 1;
}

/* key:private_jwk() -> all members, base64url, for the encrypted store
 * only | nil, err, code where the private members never leave the holder */
static int l_private_jwk(lua_State *L)
{
    jwke_key_facts f;
    key_object *k = check_facts(L, &f);
    if (!k->holder->push_private_jwk)
        return cannot(L, k, "give its private members (they never leave it)");
    return k->holder->push_private_jwk(L, STATE(k));
}

/* key:certificate() -> DER | nil (none beside the key) | nil, err, code
 * (one is there but is not published: ERR_CERTIFICATE_MISMATCH, ...) */
static int l_certificate(lua_State *L)
{
    jwke_key_facts f;
    key_object *k = check_facts(L, &f);
    if (!k->holder->certificate)
        return cannot(L, k, "hold a certificate (a stored key's is x5c in its row)");
    size_t len;
    const jwke_error *problem;
    const unsigned char *der = k->holder->certificate(STATE(k), &len, &problem);
    if (problem)
        return jwke_push_error(L, problem);
    if (!der)
        return 0;
    lua_pushlstring(L, (const char *)der, len);
    return 1;
}

/* key:retired() -> true when retired on the key itself as it was loaded */
static int l_retired(lua_State *L)
{
    jwke_key_facts f;
    key_object *k = check_facts(L, &f);
    if (!k->holder->retired)
        return cannot(L, k, "be retired on the key itself (a stored key's mark is in its row)");
    lua_pushboolean(L, k->holder->retired(STATE(k)));
    return 1;
}

/* key:set_sign(allowed) -> objects changed | nil, err, code: the mark on
 * the key itself (the object keeps what it loaded) */
static int l_set_sign(lua_State *L)
{
    jwke_key_facts f;
    key_object *k = check_facts(L, &f);
    if (!k->holder->set_sign)
        return cannot(L, k, "be marked on the key itself (a stored key's mark is in its row)");
    jwke_error err;
    if (lua_type(L, 2) != LUA_TBOOLEAN) {
        jwke_fail_code(&err, JWKE_ERR_INVALID_ARGUMENT, "set_sign takes a boolean, got %s",
                       luaL_typename(L, 2));
        return jwke_push_error(L, &err);
    }
    size_t changed;
    int rc = k->holder->set_sign(STATE(k), lua_toboolean(L, 2), &changed, &err);
    return jwke_push_count(L, rc, changed, &err);
}

/* The signing set-up of sign and sign_compact: the alg at alg_arg (nil:
 * the key's own), checked by the holder. The key was checked by the
 * method, which filled signer->state. */
static int signing_setup(lua_State *L, int alg_arg, void *signer, size_t *sig_max,
                         jwke_error *err)
{
    jwke_key_signer *s = signer;
    const key_object *k = (const key_object *)s->state - 1;
    s->alg = lua_isnoneornil(L, alg_arg) ? NULL : jwke_check_alg(L, alg_arg);
    return k->holder->signing(s->state, &s->alg, sig_max, err);
}

/* key:sign(input [, alg]) -> signature bytes | nil, err, code */
static int l_sign(lua_State *L)
{
    key_object *k = check_key(L);
    jwke_key_signer s = {STATE(k), NULL};
    return jwke_push_signature(L, signing_setup, k->holder->sign, &s);
}

/* key:sign_compact(header_b64, payload [, alg]) -> compact JWS | nil, err,
 * code */
static int l_sign_compact(lua_State *L)
{
    key_object *k = check_key(L);
    jwke_key_signer s = {STATE(k), NULL};
    return jwke_push_compact(L, signing_setup, k->holder->sign, &s, 0);
}

/* key:sign_timed(header_b64, payload [, alg]) -> compact JWS, seconds | nil,
 * err, code: sign_compact timed in C, keyset.lua's call per token (the
 * signing histogram) */
static int l_sign_timed(lua_State *L)
{
    key_object *k = check_key(L);
    jwke_key_signer s = {STATE(k), NULL};
    return jwke_push_compact(L, signing_setup, k->holder->sign, &s, 1);
}

/* key:self_signed_certificate(subject, days) -> DER | nil, err, code: a
 * certificate for the key, signed by whatever holds it; nothing is
 * stored. */
static int l_self_signed_certificate(lua_State *L)
{
    jwke_key_facts f;
    key_object *k = check_facts(L, &f);
    jwke_error err;
    if (!f.is_private) {
        jwke_fail_code(&err, JWKE_ERR_KEY_NOT_PRIVATE, "a public-only key cannot sign a certificate");
        return jwke_push_error(L, &err);
    }
    /* fits: same kind and curve; a PSS key (maybe PSS-only) signs with PSS */
    jwke_key_signer s = {STATE(k), jwke_x509_signature_alg(f.public_key, f.alg)};
    size_t sig_max;
    if (k->holder->signing(s.state, &s.alg, &sig_max, &err) != 0)
        return jwke_push_error(L, &err);
    return jwke_push_self_signed(L, f.public_key, s.alg, k->holder->sign, &s);
}

static int l_gc(lua_State *L)
{
    key_object *k = check_key(L);
    k->holder->clear(STATE(k));
    return 0;
}

static const luaL_Reg methods[] = {
    {"kid", l_kid},
    {"alg", l_alg},
    {"use", l_use},
    {"kty", l_kty},
    {"bits", l_bits},
    {"is_private", l_is_private},
    {"public_jwk", l_public_jwk},
    {"public_key", l_public_key},
    {"private_jwk", l_private_jwk},
    {"fits", l_fits},
    {"sign", l_sign},
    {"sign_compact", l_sign_compact},
    {"sign_timed", l_sign_timed},
    {"certificate", l_certificate},
    {"retired", l_retired},
    {"set_sign", l_set_sign},
    {"self_signed_certificate", l_self_signed_certificate},
    {NULL, NULL},
};

void jwke_open_key(lua_State *L)
{
    jwke_new_class(L, JWKE_KEY_CLASS, methods, l_gc);
    jwke_class_id(L, JWKE_KEY_CLASS, &key_class_id);
}

/* Public keys in Lua: built from a JWK table, used to verify JWS signatures
 * and to export public JWK members. HSM keys hand out the same object for
 * their public half. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "evp_sig.h"
#include "lua_common.h"
#include "lua_jwk.h"
#include "pkey.h"
#include "x509_cert.h"

typedef struct public_key {
    EVP_PKEY *pkey;
    /* The last (algorithm, minimum RSA size) this key was found to fit: a
     * verifier checks the same pair token after token. */
    const jwke_alg *fits_alg;
    int fits_min_rsa_bits;
} public_key;

/* 0 when the key fits alg, else -1 with err; remembers a success. */
static int check_fits(public_key *pk, const jwke_alg *alg, int min_rsa_bits, jwke_error *err)
{
    if (pk->fits_alg == alg && pk->fits_min_rsa_bits == min_rsa_bits)
        return 0;
    if (jwke_pkey_fits_alg(pk->pkey, alg, min_rsa_bits, err) != 0)
        return -1;
    pk->fits_alg = alg;
    pk->fits_min_rsa_bits = min_rsa_bits;
    return 0;
}

void jwke_push_public_key(lua_State *L, EVP_PKEY *pkey)
{
    public_key *pk = lua_newuserdatauv(L, sizeof *pk, 0);
    pk->pkey = NULL;
    pk->fits_alg = NULL;
    pk->fits_min_rsa_bits = 0;
    luaL_setmetatable(L, JWKE_PUBLIC_KEY_CLASS);
    EVP_PKEY_up_ref(pkey);
    pk->pkey = pkey;
}

int jwke_push_kty(lua_State *L, const EVP_PKEY *pkey)
{
    switch (jwke_pkey_kind(pkey)) {
    case JWKE_KIND_RSA: lua_pushliteral(L, "RSA"); break;
    case JWKE_KIND_EC: lua_pushliteral(L, "EC"); break;
    case JWKE_KIND_OKP: lua_pushliteral(L, "OKP"); break;
    default: lua_pushnil(L); break;
    }
    return 1;
}

/* The answer of a check or a verification that failed, through the one
 * error exit: nil, why, and the code (`code` unless the failure named one). */
static int push_refused(lua_State *L, jwke_error *err, const char *code)
{
    jwke_fail_in(err, code);
    return jwke_push_error(L, err);
}

int jwke_push_fits(lua_State *L, const EVP_PKEY *pkey, int default_min_bits)
{
    const jwke_alg *alg = jwke_check_alg(L, 2);
    int min_bits = (int)luaL_optinteger(L, 3, default_min_bits);
    jwke_error err;
    if (jwke_pkey_fits_alg(pkey, alg, min_bits, &err) != 0) {
        return push_refused(L, &err, JWKE_ERR_KEY_USE);
    }
    lua_pushboolean(L, 1);
    return 1;
}

int jwke_push_public_members(lua_State *L, const EVP_PKEY *pkey, jwke_error *err)
{
    jwke_public_members m;
    if (jwke_pkey_public_members(pkey, &m, err) != 0)
        return -1;
    lua_createtable(L, 0, 4);
    switch (m.kind) {
    case JWKE_KIND_RSA:
        lua_pushliteral(L, "RSA");
        lua_setfield(L, -2, "kty");
        jwke_push_b64url(L, m.n, m.n_len);
        lua_setfield(L, -2, "n");
        jwke_push_b64url(L, m.e, m.e_len);
        lua_setfield(L, -2, "e");
        break;
    case JWKE_KIND_EC:
    case JWKE_KIND_OKP:
        lua_pushstring(L, m.kind == JWKE_KIND_EC ? "EC" : "OKP");
        lua_setfield(L, -2, "kty");
        lua_pushstring(L, m.crv);
        lua_setfield(L, -2, "crv");
        jwke_push_b64url(L, m.x, m.coordinate_len);
        lua_setfield(L, -2, "x");
        if (m.kind == JWKE_KIND_EC) {
            jwke_push_b64url(L, m.y, m.coordinate_len);
            lua_setfield(L, -2, "y");
        }
        break;
    }
    jwke_public_members_clear(&m);
    return 0;
}

void jwke_push_certificate_members(lua_State *L, const unsigned char *der, size_t len)
{
    /* RFC 7517 4.7: x5c holds standard base64 (with padding), not
     * base64url; 4.9: x5t#S256 is the base64url SHA-256 of the DER. */
    luaL_Buffer b;
    char *text = jwke_buffer_init(L, &b, 4 * ((len + 2) / 3) + 1);
    int text_len = EVP_EncodeBlock((unsigned char *)text, der, (int)len);
    jwke_buffer_push(L, &b, (size_t)text_len);
    lua_createtable(L, 1, 0);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    lua_setfield(L, -2, "x5c");
    unsigned char digest[32];
    SHA256(der, len, digest);
    jwke_push_b64url(L, digest, sizeof digest);
    lua_setfield(L, -2, "x5t#S256");
}

/* public_key(jwk_table) -> key | nil, err. The public members are checked
 * as an imported key's are (swkey.c); private members are never read. */
static int l_public_key(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    jwke_jwk_members m;
    jwke_swkey key;
    jwke_error err;
    int rc = jwke_read_jwk(L, 1, 0, &m, &err);
    if (rc == 0)
        rc = jwke_swkey_from_jwk(&m, &key, &err);
    jwke_jwk_members_clear(&m);
    if (rc != 0) {
        jwke_fail_in(&err, JWKE_ERR_JWK_INVALID);
        return jwke_push_error(L, &err);
    }
    jwke_push_public_key(L, key.public_pkey);
    jwke_swkey_free(&key); /* the Lua object holds its own reference */
    return 1;
}

static public_key *check_public_key(lua_State *L)
{
    public_key *pk = luaL_checkudata(L, 1, JWKE_PUBLIC_KEY_CLASS);
    if (!pk->pkey)
        luaL_error(L, "public key is released");
    return pk;
}

/* key:verify(alg, signing_input, signature [, min_rsa_bits]) -> true | nil, err, code */
static int l_verify(lua_State *L)
{
    public_key *pk = check_public_key(L);
    const jwke_alg *alg = jwke_check_alg(L, 2);
    size_t input_len, sig_len;
    const char *input = luaL_checklstring(L, 3, &input_len);
    const char *sig = luaL_checklstring(L, 4, &sig_len);
    int min_rsa_bits = (int)luaL_optinteger(L, 5, JWKE_RSA_MIN_BITS);
    jwke_error err;
    if (check_fits(pk, alg, min_rsa_bits, &err) != 0) {
        return push_refused(L, &err, JWKE_ERR_KEY_USE);
    }
    int ok = jwke_evp_verify(pk->pkey, alg, (const unsigned char *)input, input_len,
                             (const unsigned char *)sig, sig_len, &err);
    if (ok == 1) {
        lua_pushboolean(L, 1);
        return 1;
    }
    return push_refused(L, &err, JWKE_ERR_JWS_SIGNATURE_INVALID);
}

/* key:fits(alg [, min_rsa_bits]) -> true | nil, err, code */
static int l_fits(lua_State *L)
{
    public_key *pk = check_public_key(L);
    const jwke_alg *alg = jwke_check_alg(L, 2);
    jwke_error err;
    if (check_fits(pk, alg, (int)luaL_optinteger(L, 3, JWKE_RSA_MIN_BITS), &err) != 0) {
        return push_refused(L, &err, JWKE_ERR_KEY_USE);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* key:jwk() -> table of public members (kty, n, e / crv, x, y) */
static int l_jwk(lua_State *L)
{
    public_key *pk = check_public_key(L);
    jwke_error err;
    if (jwke_push_public_members(L, pk->pkey, &err) != 0)
        return jwke_push_error(L, &err);
    return 1;
}

/* key:certificate_members(der, kid) -> { x5c, x5t#S256 } | nil, err, code:
 * the JWK members of an X.509 certificate, once its public key is checked
 * to be this one (ERR_CERTIFICATE_MISMATCH naming kid otherwise) */
static int l_certificate_members(lua_State *L)
{
    public_key *pk = check_public_key(L);
    size_t der_len;
    const unsigned char *der = (const unsigned char *)luaL_checklstring(L, 2, &der_len);
    const char *kid = luaL_checkstring(L, 3);
    jwke_error err;
    if (jwke_x509_check(der, der_len, pk->pkey, kid, &err) != 0)
        return jwke_push_error(L, &err);
    lua_createtable(L, 0, 2);
    jwke_push_certificate_members(L, der, der_len);
    return 1;
}

int jwke_push_self_signed(lua_State *L, const EVP_PKEY *pub, const jwke_alg *alg, jwke_sign_fn sign,
                          void *signer)
{
    size_t subject_len;
    const char *subject;
    if (jwke_arg_string(L, 2, "the subject", 0, &subject, &subject_len))
        return JWKE_ARG_REFUSED;
    int whole;
    lua_Integer asked = lua_tointegerx(L, 3, &whole);
    if (!whole) { /* a whole number beyond lua_Integer (1e20) is a count C refuses, not a raise */
        lua_Number number = lua_type(L, 3) == LUA_TNUMBER ? lua_tonumber(L, 3) : 0.5;
        if (!(number >= 0x1p63 || number <= -0x1p63))
            return jwke_arg_refused(L, "days", "must be a whole number");
        asked = number > 0 ? INT_MAX : -1;
    }
    int days = asked < 0 ? -1 : asked > INT_MAX ? INT_MAX : (int)asked; /* checked in C */
    unsigned char *der;
    size_t der_len;
    jwke_error err;
    if (strlen(subject) != subject_len) { /* C would read only the part before the NUL */
        jwke_fail_code(&err, JWKE_ERR_INVALID_ARGUMENT, "the subject holds a NUL byte");
        return jwke_push_error(L, &err);
    }
    if (jwke_x509_self_signed(pub, alg, subject, days, sign, signer, &der, &der_len, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, (const char *)der, der_len);
    free(der);
    return 1;
}

static int l_bits(lua_State *L)
{
    lua_pushinteger(L, EVP_PKEY_get_bits(check_public_key(L)->pkey));
    return 1;
}

static int l_gc(lua_State *L)
{
    public_key *pk = luaL_checkudata(L, 1, JWKE_PUBLIC_KEY_CLASS);
    EVP_PKEY_free(pk->pkey);
    pk->pkey = NULL;
    return 0;
}

static const luaL_Reg methods[] = {
    {"verify", l_verify},
    {"certificate_members", l_certificate_members},
    {"fits", l_fits},
    {"jwk", l_jwk},
    {"bits", l_bits},
    {NULL, NULL},
};

void jwke_open_public_key(lua_State *L)
{
    jwke_new_class(L, JWKE_PUBLIC_KEY_CLASS, methods, l_gc);
    lua_pushcfunction(L, l_public_key);
    lua_setfield(L, -2, "public_key");
}

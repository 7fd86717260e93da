/* JWK tables read from Lua: the one reader behind core.public_key and
 * core.import_jwk.
 *
 * Members are read with raw access, so no metamethod runs in between (an
 * __index that allocates can run the garbage collector), and nothing is
 * kept that points into a Lua string: kty and crv become the static names
 * they equal, binary members are decoded into buffers of their own before
 * the string leaves the stack. */
#include <stddef.h>
#include <string.h>

#include <openssl/crypto.h>

#include "lua_jwk.h"

/* The key types kty may name, in the order of the JWKE_KTY_* bits; "oct"
 * is known (and refused later, by name) but has no bit. */
static const char *const known_ktys[] = {"RSA", "EC", "OKP", "oct"};

/* Pushes the table's own value for `name` (never through __index) and
 * returns its type. */
static int raw_member(lua_State *L, int jwk, const char *name)
{
    lua_pushstring(L, name);
    lua_rawget(L, jwk); /* returns void under LuaJIT */
    return lua_type(L, -1);
}

/* A string member on top of the stack, or a message naming it. */
static const char *member_text(lua_State *L, const char *name, int type, size_t *len,
                               jwke_error *err)
{
    if (type != LUA_TSTRING) {
        jwke_fail(err, "JWK member '%s' must be a string, got %s", name, lua_typename(L, type));
        return NULL;
    }
    return lua_tolstring(L, -1, len);
}

/* A name member (kty, crv): a string without NUL bytes, which C would
 * otherwise read as a shorter name. */
static const char *member_name(lua_State *L, const char *name, int type, size_t *len,
                               jwke_error *err)
{
    const char *text = member_text(L, name, type, len, err);
    if (text && strlen(text) != *len) {
        jwke_fail(err, "JWK member '%s' holds a NUL byte", name);
        return NULL;
    }
    return text;
}

/* kty as one of the static names (and its bit), NULL when absent; unknown
 * values fail. */
static int read_kty(lua_State *L, int jwk, const char **out, int *bit, jwke_error *err)
{
    *out = NULL;
    *bit = 0;
    int type = raw_member(L, jwk, "kty");
    size_t len;
    const char *text = type == LUA_TNIL ? NULL : member_name(L, "kty", type, &len, err);
    int rc = type == LUA_TNIL || text ? 0 : -1;
    for (size_t i = 0; text && i < sizeof known_ktys / sizeof known_ktys[0]; i++)
        if (len == strlen(known_ktys[i]) && memcmp(text, known_ktys[i], len) == 0) {
            *out = known_ktys[i];
            *bit = 1 << i;
        }
    if (text && !*out)
        rc = jwke_fail(err, "unsupported JWK kty '%.32s'", text);
    lua_pop(L, 1);
    return rc;
}

/* crv of an EC or OKP key as the curve name of the algorithm table, NULL
 * when absent; curves no algorithm uses fail. */
static int read_crv(lua_State *L, int jwk, const char *kty, const char **out, jwke_error *err)
{
    *out = NULL;
    int type = raw_member(L, jwk, "crv");
    size_t len;
    const char *text = type == LUA_TNIL ? NULL : member_name(L, "crv", type, &len, err);
    int rc = type == LUA_TNIL || text ? 0 : -1;
    const jwke_alg *curve = text ? jwke_alg_for_curve(text) : NULL;
    if (curve)
        *out = curve->curve;
    else if (text)
        rc = jwke_fail(err, "unsupported %s curve '%.32s'", kty, text);
    lua_pop(L, 1);
    return rc;
}

/* Decodes binary member i (swkey.h's table) when present. */
static int read_binary(lua_State *L, int jwk, size_t i, jwke_jwk_members *m, jwke_error *err)
{
    const char *name = jwke_jwk_binary_members[i];
    int type = raw_member(L, jwk, name);
    int rc = 0;
    if (type != LUA_TNIL) {
        size_t len;
        const char *text = member_text(L, name, type, &len, err);
        rc = text ? jwke_jwk_member_decode(name, text, len, jwke_jwk_member_at(m, i), err) : -1;
    }
    lua_pop(L, 1);
    return rc;
}

int jwke_read_jwk(lua_State *L, int jwk, int with_private, jwke_jwk_members *m,
                  jwke_error *err)
{
    memset(m, 0, sizeof *m);
    if (jwk < 0) /* the pushes below move relative indices */
        jwk = lua_gettop(L) + jwk + 1;
    int kty;
    if (read_kty(L, jwk, &m->kty, &kty, err) != 0)
        return -1;
    if ((kty & (JWKE_KTY_EC | JWKE_KTY_OKP)) && read_crv(L, jwk, m->kty, &m->crv, err) != 0)
        return -1;
    if (with_private && (kty & JWKE_KTY_RSA)) {
        int has_oth = raw_member(L, jwk, "oth") != LUA_TNIL;
        lua_pop(L, 1);
        if (has_oth)
            return jwke_fail(err, "multi-prime RSA keys (JWK member 'oth') are not supported");
    }
    for (size_t i = 0; i < JWKE_JWK_BINARY_MEMBERS; i++) {
        const char *name = jwke_jwk_binary_members[i];
        if ((jwke_jwk_member_ktys(i) & kty) &&
            (with_private || !jwke_jwk_member_is_private(name, strlen(name))) &&
            read_binary(L, jwk, i, m, err) != 0)
            return -1;
    }
    return 0;
}

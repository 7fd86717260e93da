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

#include "b64url.h"
#include "lua_jwk.h"

/* Largest decoded member: the largest modulus, plus the leading zero byte
 * some encoders put in front of it. */
#define MAX_MEMBER_LEN (JWKE_MAX_SIGNATURE + 1)

/* The key types, and as bits the ones each member belongs to: members of
 * other types are ignored (RFC 7517 §4), never decoded. */
static const char *const known_ktys[] = {"RSA", "EC", "OKP", "oct"};
enum { KTY_RSA = 1 << 0, KTY_EC = 1 << 1, KTY_OKP = 1 << 2 }; /* known_ktys order */

static const struct {
    const char *name;
    size_t offset;
    int is_private;
    int ktys;
} binary_members[] = {
    {"n", offsetof(jwke_jwk_members, n), 0, KTY_RSA},
    {"e", offsetof(jwke_jwk_members, e), 0, KTY_RSA},
    {"d", offsetof(jwke_jwk_members, d), 1, KTY_RSA | KTY_EC | KTY_OKP},
    {"p", offsetof(jwke_jwk_members, p), 1, KTY_RSA},
    {"q", offsetof(jwke_jwk_members, q), 1, KTY_RSA},
    {"dp", offsetof(jwke_jwk_members, dp), 1, KTY_RSA},
    {"dq", offsetof(jwke_jwk_members, dq), 1, KTY_RSA},
    {"qi", offsetof(jwke_jwk_members, qi), 1, KTY_RSA},
    {"x", offsetof(jwke_jwk_members, x), 0, KTY_EC | KTY_OKP},
    {"y", offsetof(jwke_jwk_members, y), 0, KTY_EC},
};
#define N_BINARY_MEMBERS (sizeof binary_members / sizeof binary_members[0])

size_t jwke_jwk_member_count(void)
{
    return N_BINARY_MEMBERS;
}

const char *jwke_jwk_member_name(size_t i)
{
    return binary_members[i].name;
}

jwke_bytes *jwke_jwk_member(jwke_jwk_members *m, size_t i)
{
    return (jwke_bytes *)((char *)m + binary_members[i].offset);
}

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

/* Decodes binary member i when present. */
static int read_binary(lua_State *L, int jwk, size_t i, jwke_jwk_members *m, jwke_error *err)
{
    const char *name = binary_members[i].name;
    int type = raw_member(L, jwk, name);
    int rc = 0;
    size_t len;
    const char *text = type == LUA_TNIL ? NULL : member_text(L, name, type, &len, err);
    if (type == LUA_TNIL)
        goto done;
    if (!text || jwke_b64url_decoded_max(len) > MAX_MEMBER_LEN + 3) {
        rc = text ? jwke_fail(err, "JWK member '%s' is too long", name) : -1;
        goto done;
    }
    size_t room = jwke_b64url_decoded_max(len);
    jwke_bytes *b = jwke_jwk_member(m, i);
    b->data = OPENSSL_malloc(room); /* wiped by jwke_jwk_members_clear */
    if (!b->data) {
        rc = jwke_fail(err, "out of memory reading JWK member '%s'", name);
        goto done;
    }
    b->len = room; /* so a failure below still wipes the whole buffer */
    const char *why;
    long n = jwke_b64url_decode(text, len, b->data, room, JWKE_B64_NOPAD, &why);
    if (n < 0)
        rc = jwke_fail(err, "JWK member '%s' is not valid base64url: %s", name, why);
    else if (n == 0)
        rc = jwke_fail(err, "JWK member '%s' is empty", name);
    else if ((size_t)n > MAX_MEMBER_LEN)
        rc = jwke_fail(err, "JWK member '%s' is too long", name);
    else {
        OPENSSL_cleanse(b->data + n, room - (size_t)n);
        b->len = (size_t)n;
    }
done:
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
    if ((kty & (KTY_EC | KTY_OKP)) && read_crv(L, jwk, m->kty, &m->crv, err) != 0)
        return -1;
    if (with_private && (kty & KTY_RSA)) {
        int has_oth = raw_member(L, jwk, "oth") != LUA_TNIL;
        lua_pop(L, 1);
        if (has_oth)
            return jwke_fail(err, "multi-prime RSA keys (JWK member 'oth') are not supported");
    }
    for (size_t i = 0; i < N_BINARY_MEMBERS; i++)
        if ((binary_members[i].ktys & kty) && (with_private || !binary_members[i].is_private) &&
            read_binary(L, jwk, i, m, err) != 0)
            return -1;
    return 0;
}

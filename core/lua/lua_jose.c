/* JOSE parsing helpers and digests in Lua: the strict JSON check, compact
 * JWS decoding (jose_parse.c) and the hashes RFC 7638 thumbprints need.
 * Registered into jwkengine.core by jwke_open_jose. */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "jose_parse.h"
#include "lua_common.h"

/* Nesting a caller may ask for; more would only risk the C stack. */
#define MAX_DEPTH_LIMIT 256

static int opt_depth(lua_State *L, int arg)
{
    lua_Integer depth = luaL_optinteger(L, arg, JWKE_JSON_DEFAULT_DEPTH);
    luaL_argcheck(L, depth >= 1 && depth <= MAX_DEPTH_LIMIT, arg, "depth must be 1..256");
    return (int)depth;
}

static size_t opt_size(lua_State *L, int arg)
{
    lua_Integer n = luaL_optinteger(L, arg, 0);
    luaL_argcheck(L, n >= 0, arg, "a size limit cannot be negative");
    return (size_t)n;
}

/* json_check(text [, require_object [, max_depth]]) -> true | nil, err */
static int l_json_check(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    int require_object = lua_toboolean(L, 2);
    int depth = opt_depth(L, 3);
    jwke_error err;
    if (jwke_json_check(text, len, require_object, depth, &err) != 0) {
        /* the text is the argument: its callers say what it was meant to be */
        jwke_fail_in(&err, JWKE_ERR_INVALID_ARGUMENT);
        return jwke_push_error(L, &err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* jws_decode(token [, max_token [, max_header [, max_depth]]])
 *   -> header_json, payload, signature, signing_input_len
 *    | nil, err, ERR_JWS_TOO_LARGE | ERR_JWS_INVALID */
static int l_jws_decode(lua_State *L)
{
    size_t len;
    const char *token = luaL_checklstring(L, 1, &len);
    jwke_jws_limits limits = {opt_size(L, 2), opt_size(L, 3), opt_depth(L, 4)};
    jwke_jws_decoded d;
    jwke_error err;
    if (jwke_jws_decode(token, len, &limits, &d, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, (const char *)d.header, d.header_len);
    lua_pushlstring(L, (const char *)d.payload, d.payload_len);
    lua_pushlstring(L, (const char *)d.signature, d.signature_len);
    lua_pushinteger(L, (lua_Integer)d.signing_input_len);
    jwke_jws_decoded_free(&d);
    return 4;
}

/* digest(name, data) -> raw digest bytes; an unknown name is a
 * programming error. */
static int l_digest(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    /* The digests of the algorithm table (alg.c), by their JOSE names. */
    const jwke_digest *digest = jwke_digest_by_name(name);
    const EVP_MD *md = digest ? EVP_get_digestbyname(digest->openssl_name) : NULL;
    if (!md)
        return luaL_argerror(L, 1, lua_pushfstring(L, "unsupported digest '%s' (SHA-256, "
                                                      "SHA-384 or SHA-512)", name));
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int out_len = 0;
    if (!EVP_Digest(data, len, out, &out_len, md, NULL)) {
        jwke_error err;
        jwke_fail_openssl(&err, "the digest failed");
        return jwke_push_error(L, &err);
    }
    lua_pushlstring(L, (const char *)out, out_len);
    return 1;
}

static const luaL_Reg functions[] = {
    {"json_check", l_json_check},
    {"jws_decode", l_jws_decode},
    {"digest", l_digest},
    {NULL, NULL},
};

void jwke_open_jose(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}

/* The Lua module `jwkengine.core`: the thin layer between the C core and
 * the Lua policy. It turns C results into Lua values and nothing more. */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "b64url.h"
#include "ckr_names.h"
#include "lua_common.h"
#include "version.h"

int jwke_push_error(lua_State *L, const jwke_error *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err->message);
    if (err->code) {
        lua_pushstring(L, err->code);
        return 3;
    }
    if (err->ckr != CKR_OK) {
        const char *name = jwke_ckr_name(err->ckr);
        if (name)
            lua_pushstring(L, name);
        else
            lua_pushfstring(L, "CKR_0x%08x", (unsigned)err->ckr);
        return 3;
    }
    return 2;
}

void jwke_new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                    const luaL_Reg *metamethods)
{
    luaL_newmetatable(L, name);
    if (metamethods)
        luaL_setfuncs(L, metamethods, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

const jwke_alg *jwke_check_alg(lua_State *L, int arg)
{
    const char *name = luaL_checkstring(L, arg);
    const jwke_alg *alg = jwke_alg_by_name(name);
    if (!alg)
        luaL_argerror(L, arg, lua_pushfstring(L, "unsupported algorithm '%s'", name));
    return alg;
}

void jwke_push_b64url(lua_State *L, const unsigned char *bytes, size_t len)
{
    luaL_Buffer b;
    size_t out_len = jwke_b64url_encoded_len(len, JWKE_B64_NOPAD);
    char *out = jwke_buffer_init(L, &b, out_len);
    jwke_b64url_encode(bytes, len, out, JWKE_B64_NOPAD);
    jwke_buffer_push(L, &b, out_len);
}

int jwke_push_compact(lua_State *L, int header_arg, size_t sig_max, jwke_sign_fn sign,
                      void *signer)
{
    size_t header_len, payload_len;
    const char *header = luaL_checklstring(L, header_arg, &header_len);
    const char *payload = luaL_checklstring(L, header_arg + 1, &payload_len);
    char *out;
    size_t out_len;
    jwke_error err;
    if (jwke_jws_compact(header, header_len, (const unsigned char *)payload, payload_len, sig_max,
                         sign, signer, &out, &out_len, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, out, out_len);
    free(out);
    return 1;
}

static int b64_mode(lua_State *L, int arg)
{
    return lua_toboolean(L, arg) ? JWKE_B64_PAD : JWKE_B64_NOPAD;
}

/* b64url_encode(bytes [, padded]) */
static int l_b64url_encode(lua_State *L)
{
    size_t len;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 1, &len);
    enum jwke_b64_padding pad = b64_mode(L, 2);
    luaL_Buffer b;
    size_t out_len = jwke_b64url_encoded_len(len, pad);
    char *out = jwke_buffer_init(L, &b, out_len);
    jwke_b64url_encode(in, len, out, pad);
    jwke_buffer_push(L, &b, out_len);
    return 1;
}

/* b64url_decode(text [, padded]) -> bytes | nil, err */
static int l_b64url_decode(lua_State *L)
{
    size_t len;
    const char *in = luaL_checklstring(L, 1, &len);
    enum jwke_b64_padding pad = b64_mode(L, 2); /* read before the buffer takes a stack slot */
    luaL_Buffer b;
    size_t room = jwke_b64url_decoded_max(len);
    unsigned char *out = (unsigned char *)jwke_buffer_init(L, &b, room);
    const char *why = NULL;
    long n = jwke_b64url_decode(in, len, out, room, pad, &why);
    if (n < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid base64url: %s", why);
        return 2;
    }
    jwke_buffer_push(L, &b, (size_t)n);
    return 1;
}

static int l_random_bytes(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= 4096, 1, "between 0 and 4096 bytes");
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)jwke_buffer_init(L, &b, (size_t)n);
    if (RAND_bytes(out, (int)n) != 1)
        return luaL_error(L, "the random generator failed");
    jwke_buffer_push(L, &b, (size_t)n);
    return 1;
}

/* A random (version 4) UUID, the kid of keys generated without one. */
static int l_uuid(lua_State *L)
{
    unsigned char u[16];
    if (RAND_bytes(u, sizeof u) != 1)
        return luaL_error(L, "the random generator failed");
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    char text[37];
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            text[o++] = '-';
        text[o++] = hex[u[i] >> 4];
        text[o++] = hex[u[i] & 15];
    }
    lua_pushlstring(L, text, o);
    return 1;
}

static int l_versions(lua_State *L)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, JWKENGINE_VERSION);
    lua_setfield(L, -2, "jwkengine");
    lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
    lua_setfield(L, -2, "openssl");
    lua_pushstring(L, LUA_RELEASE);
    lua_setfield(L, -2, "lua");
    return 1;
}

/* alg_info("ES256") -> {name, kty, curve, digest} | nil */
static int l_alg_info(lua_State *L)
{
    const jwke_alg *alg = jwke_alg_by_name(luaL_checkstring(L, 1));
    if (!alg)
        return 0;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, alg->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, alg->kind == JWKE_KIND_RSA ? "RSA" : alg->kind == JWKE_KIND_EC ? "EC" : "OKP");
    lua_setfield(L, -2, "kty");
    if (alg->curve) {
        lua_pushstring(L, alg->curve);
        lua_setfield(L, -2, "crv");
    }
    return 1;
}

static const luaL_Reg functions[] = {
    {"b64url_encode", l_b64url_encode},
    {"b64url_decode", l_b64url_decode},
    {"random_bytes", l_random_bytes},
    {"uuid", l_uuid},
    {"versions", l_versions},
    {"alg_info", l_alg_info},
    {NULL, NULL},
};

int luaopen_jwkengine_core(lua_State *L)
{
    luaL_newlib(L, functions);
    jwke_open_module(L);
    jwke_open_token(L);
    jwke_open_public_key(L);
    jwke_open_software_key(L);
    jwke_open_jose(L);
    jwke_open_json(L);
    lua_pushstring(L, JWKENGINE_VERSION);
    lua_setfield(L, -2, "_VERSION");
    return 1;
}

/* Kept secrets (kept_secret.h) in Lua, for a pre-forking host: its master
 * hands a PIN or the store's secrets to C, and its workers find them there
 * instead of in a Lua table.
 *
 * A PIN is kept under its own name and never read back into Lua: a token
 * logs in from it (token:login_env, which finds a kept value under the
 * variable's name first). Store secrets are read back, since the store
 * seals with Lua strings; they live under a name of their own ("secret:"
 * NAME), so kept_secret cannot read a PIN. */
#include <stdlib.h>

#include <openssl/crypto.h>

#include "kept_secret.h"
#include "lua_common.h"

#define KEPT_SECRET_PREFIX "secret:"


/* A kept PIN stands for the variable `name`: the variable is erased, so
 * the kept value wins over it (as an option wins over the environment). */
static int keep_pin(lua_State *L, jwke_pin_fill fill, const void *ctx)
{
    const char *name = luaL_checkstring(L, 1);
    jwke_error err;
    int rc = jwke_kept_fill(name, JWKE_PIN_KEPT_CAP, fill, ctx, &err);
    if (rc == 0)
        jwke_env_erase(name);
    return jwke_push_done(L, rc, &err);
}

/* keep_pin(name, pin) -> true | nil, err, code */
static int l_keep_pin(lua_State *L)
{
    jwke_pin_bytes pin = {NULL, 0, "a secret"};
    pin.data = (const unsigned char *)luaL_checklstring(L, 2, &pin.len);
    return keep_pin(L, jwke_pin_from_bytes, &pin);
}

/* keep_uri_pin(name, uri) -> true | nil, err, code: the URI's pin-value,
 * percent-decoded straight into the kept buffer. */
static int l_keep_uri_pin(lua_State *L)
{
    return keep_pin(L, jwke_pin_from_uri, luaL_checkstring(L, 2));
}

/* forget_pin(name): wipes a kept PIN. */
static int l_forget_pin(lua_State *L)
{
    jwke_kept_forget(luaL_checkstring(L, 1));
    return 0;
}

static void secret_name(lua_State *L, int arg)
{
    lua_pushfstring(L, KEPT_SECRET_PREFIX "%s", luaL_checkstring(L, arg));
}

/* keep_secret(name, value) -> true | nil, err, code */
static int l_keep_secret(lua_State *L)
{
    jwke_pin_bytes value = {NULL, 0, "a secret"};
    value.data = (const unsigned char *)luaL_checklstring(L, 2, &value.len);
    secret_name(L, 1);
    jwke_error err;
    return jwke_push_done(L, jwke_kept_fill(lua_tostring(L, -1), value.len + 1, jwke_pin_from_bytes,
                                       &value, &err), &err);
}

/* kept_secret(name) -> value | nil */
static int l_kept_secret(lua_State *L)
{
    secret_name(L, 1);
    const char *name = lua_tostring(L, -1);
    size_t cap = jwke_kept_len(name) + 1, len;
    unsigned char *buf = cap > 1 ? malloc(cap) : NULL;
    jwke_error err;
    if (!buf || jwke_kept_copy(name, buf, cap, &len, &err) != 0) {
        free(buf);
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, (const char *)buf, len);
    OPENSSL_clear_free(buf, cap);
    return 1;
}

/* forget_secret(name) -> true when a value was kept under it */
static int l_forget_secret(lua_State *L)
{
    secret_name(L, 1);
    lua_pushboolean(L, jwke_kept_forget(lua_tostring(L, -1)));
    return 1;
}

static const luaL_Reg functions[] = {
    {"keep_pin", l_keep_pin},
    {"keep_uri_pin", l_keep_uri_pin},
    {"forget_pin", l_forget_pin},
    {"keep_secret", l_keep_secret},
    {"kept_secret", l_kept_secret},
    {"forget_secret", l_forget_secret},
    {NULL, NULL},
};

void jwke_open_kept_secret(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}

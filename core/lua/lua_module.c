/* PKCS#11 modules in Lua: core.load_module(path [, init_args]) -> module,
 * module:slots(), module:open_token(slot_id [, options]) (libp11's
 * context -> slots -> session). The module is loaded and initialized once
 * for all of them; core.slots(library) is the one-call form. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lua_common.h"
#include "p11_module.h"
#include "p11_token.h"

typedef struct module_object {
    jwke_p11_module *module; /* NULL once closed */
} module_object;

/* load_module(path [, init_args]) -> module | nil, err */
static int l_load_module(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *init_args = luaL_optstring(L, 2, NULL);
    module_object *m = lua_newuserdatauv(L, sizeof *m, 0);
    m->module = NULL;
    luaL_setmetatable(L, JWKE_MODULE_CLASS);
    jwke_error err;
    m->module = jwke_p11_module_acquire(path, init_args, &err);
    if (!m->module)
        return jwke_push_error(L, &err);
    return 1;
}

static module_object *check_open_module(lua_State *L)
{
    module_object *m = luaL_checkudata(L, 1, JWKE_MODULE_CLASS);
    if (!m->module)
        luaL_error(L, "the PKCS#11 module is closed");
    return m;
}

static void push_slot(lua_State *L, const jwke_p11_slot *slot)
{
    lua_createtable(L, 0, 10);
    lua_pushinteger(L, (lua_Integer)slot->id);
    lua_setfield(L, -2, "id");
    lua_pushboolean(L, slot->token_present);
    lua_setfield(L, -2, "token_present");
    if (!slot->token_present)
        return;
    lua_pushstring(L, slot->label);
    lua_setfield(L, -2, "label");
    lua_pushstring(L, slot->serial);
    lua_setfield(L, -2, "serial");
    lua_pushstring(L, slot->manufacturer);
    lua_setfield(L, -2, "manufacturer");
    lua_pushstring(L, slot->model);
    lua_setfield(L, -2, "model");
    lua_pushinteger(L, (lua_Integer)slot->token_flags);
    lua_setfield(L, -2, "flags");
    lua_pushboolean(L, (slot->token_flags & CKF_TOKEN_INITIALIZED) != 0);
    lua_setfield(L, -2, "initialized");
    lua_pushboolean(L, (slot->token_flags & CKF_USER_PIN_INITIALIZED) != 0);
    lua_setfield(L, -2, "user_pin_initialized");
}

static int push_slots(lua_State *L, jwke_p11_module *module)
{
    jwke_p11_slot *slots;
    size_t count;
    jwke_error err;
    if (jwke_p11_list_slots(module, &slots, &count, &err) != 0)
        return jwke_push_error(L, &err);
    lua_createtable(L, (int)count, 0);
    for (size_t i = 0; i < count; i++) {
        push_slot(L, &slots[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(slots);
    return 1;
}

/* module:slots() -> { {id=, token_present=, label=, serial=, ...}, ... } | nil, err */
static int l_module_slots(lua_State *L)
{
    return push_slots(L, check_open_module(L)->module);
}

/* slots(library) -> the same, loading the module for this one call */
static int l_slots(lua_State *L)
{
    const char *library = luaL_checkstring(L, 1);
    jwke_error err;
    jwke_p11_module *module = jwke_p11_module_acquire(library, NULL, &err);
    if (!module)
        return jwke_push_error(L, &err);
    int pushed = push_slots(L, module);
    jwke_p11_module_release(module);
    return pushed;
}

/* An integer option that must fit C's int: the only bound checked here,
 * for memory safety (a wider value would wrap); the configuration's schema
 * (lua/jwkengine/config_settings.lua) owns the ranges. */
static int int_option(lua_State *L, const char *name)
{
    if (lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "open_token: option '%s' must be an integer", name);
    lua_Number value = lua_tonumber(L, -1); /* LuaJIT has no integer subtype */
    if (!(value >= INT_MIN && value <= INT_MAX) || value != (lua_Number)(int)value)
        luaL_error(L, "open_token: option '%s' must be an integer that fits an int", name);
    return (int)value;
}

/* A string option (only a string: its text stays alive in the table; a
 * number would be converted into a temporary). */
static const char *string_option(lua_State *L, const char *name)
{
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "open_token: option '%s' must be a string", name);
    return lua_tostring(L, -1);
}

/* module:open_token(slot_id [, options]) -> token | nil, err. options are
 * named as the configuration's hsm settings, in their units: label, serial,
 * max_sessions (0: no pool, the login session signs), session_wait_ms,
 * reinit_interval_ms, reinit_interval_max_ms, session_idle_max (seconds, 0:
 * never checked), verify_after_sign (nil: RSA only, true: all, false:
 * none); an absent one takes its default (engine_limits.h). An unknown or
 * mistyped option is a programming error and raises. The token holds its
 * own reference to the module. */
static int l_module_open_token(lua_State *L)
{
    module_object *m = check_open_module(L);
    lua_Integer slot = luaL_checkinteger(L, 2);
    luaL_argcheck(L, slot >= 0, 2, "slot id must not be negative");
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    jwke_p11_options options = {.verify_after_sign = JWKE_VERIFY_RSA}; /* 0: C's defaults */
    const char *label = NULL, *serial = NULL;
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "open_token: option names must be strings");
            const char *name = lua_tostring(L, -2);
            if (strcmp(name, "label") == 0) {
                label = string_option(L, name);
            } else if (strcmp(name, "serial") == 0) {
                serial = string_option(L, name);
            } else if (strcmp(name, "max_sessions") == 0) {
                int n = int_option(L, name);
                options.max_sessions = n == 0 ? -1 : n; /* C's "no pool" is < 0 */
            } else if (strcmp(name, "session_wait_ms") == 0) {
                options.session_wait_ms = int_option(L, name);
            } else if (strcmp(name, "reinit_interval_ms") == 0) {
                options.reinit_interval_ms = int_option(L, name);
            } else if (strcmp(name, "reinit_interval_max_ms") == 0) {
                options.reinit_interval_max_ms = int_option(L, name);
            } else if (strcmp(name, "session_idle_max") == 0) {
                int seconds = int_option(L, name);
                if (seconds < 0 || seconds > INT_MAX / 1000)
                    return luaL_error(L, "open_token: option 'session_idle_max' does not fit an int in ms");
                options.session_idle_max_ms = seconds == 0 ? -1 : seconds * 1000; /* C's "never" is < 0 */
            } else if (strcmp(name, "verify_after_sign") == 0) {
                if (!lua_isboolean(L, -1))
                    return luaL_error(L, "open_token: option 'verify_after_sign' must be a boolean");
                options.verify_after_sign = lua_toboolean(L, -1) ? JWKE_VERIFY_ALL : JWKE_VERIFY_NONE;
            } else {
                return luaL_error(L, "open_token: unknown option '%s'", name);
            }
            lua_pop(L, 1);
        }
    }

    struct jwke_p11_token **token = jwke_new_token_object(L);
    jwke_error err;
    *token = jwke_p11_token_open(m->module, (CK_SLOT_ID)slot, label, serial, &options, &err);
    if (!*token)
        return jwke_push_error(L, &err);
    return 1;
}

/* module:close(): lets go of the module (tokens keep their own reference) */
static int l_module_close(lua_State *L)
{
    module_object *m = luaL_checkudata(L, 1, JWKE_MODULE_CLASS);
    jwke_p11_module_release(m->module);
    m->module = NULL;
    return 0;
}

static const luaL_Reg module_methods[] = {
    {"slots", l_module_slots},
    {"open_token", l_module_open_token},
    {"close", l_module_close},
    {NULL, NULL},
};

void jwke_open_module(lua_State *L)
{
    jwke_new_class(L, JWKE_MODULE_CLASS, module_methods, l_module_close);
    lua_pushcfunction(L, l_load_module);
    lua_setfield(L, -2, "load_module");
    lua_pushcfunction(L, l_slots);
    lua_setfield(L, -2, "slots");
}

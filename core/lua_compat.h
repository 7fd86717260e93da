/* The few Lua C API differences between Lua 5.1 (LuaJIT, OpenResty) and
 * 5.4, so the binding is written once against the 5.4 names. */
#ifndef JWKE_LUA_COMPAT_H
#define JWKE_LUA_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#if LUA_VERSION_NUM < 502

#define lua_rawlen(L, i) lua_objlen((L), (i))
#define luaL_newlibtable(L, l) lua_createtable((L), 0, sizeof(l) / sizeof((l)[0]) - 1)
#define luaL_newlib(L, l) (luaL_newlibtable((L), (l)), luaL_setfuncs((L), (l), 0))

static inline void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    for (; l->name; l++) {
        for (int i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

static inline void *luaL_testudata(lua_State *L, int i, const char *tname)
{
    void *p = lua_touserdata(L, i);
    if (!p || !lua_getmetatable(L, i))
        return NULL;
    luaL_getmetatable(L, tname);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? p : NULL;
}

/* 5.1 keeps one table per userdata (its environment) where 5.4 has user
 * values; we only ever need one slot, holding a table. */
static inline void lua_setuservalue(lua_State *L, int i) { lua_setfenv(L, i); }
static inline void lua_getuservalue(lua_State *L, int i) { lua_getfenv(L, i); }

#define lua_newuserdatauv(L, size, nuv) lua_newuserdata((L), (size))

#endif /* LUA_VERSION_NUM < 502 */

#endif

/* The few Lua C API differences between Lua 5.4 and LuaJIT 2.1 (the Lua 5.1
 * ABI of OpenResty), so the binding is written once against the 5.4 names.
 *
 * LuaJIT 2.1 already has luaL_setfuncs, luaL_testudata, luaL_setmetatable,
 * luaL_newlib and luaL_traceback from 5.2; what it lacks is filled in
 * below. Plain Lua 5.1 is not a target. */
#ifndef JWKE_LUA_COMPAT_H
#define JWKE_LUA_COMPAT_H

#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#if LUA_VERSION_NUM < 502

#define lua_rawlen(L, i) lua_objlen((L), (i))
#define lua_newuserdatauv(L, size, nuv) lua_newuserdata((L), (size))

/* 5.1 keeps one table per userdata (its environment) where 5.4 has user
 * values; the binding only ever stores one table there. */
#define lua_setuservalue(L, i) lua_setfenv((L), (i))
#define lua_getuservalue(L, i) lua_getfenv((L), (i))

/* A scratch area that becomes a Lua string, sized up front (5.4's
 * luaL_buffinitsize / luaL_pushresultsize). Here: a userdata on the stack,
 * copied into a string and dropped. */
static inline char *jwke_buffer_init(lua_State *L, luaL_Buffer *b, size_t size)
{
    (void)b;
    return (char *)lua_newuserdata(L, size ? size : 1);
}

static inline void jwke_buffer_push(lua_State *L, luaL_Buffer *b, size_t len)
{
    (void)b;
    lua_pushlstring(L, (const char *)lua_touserdata(L, -1), len);
    lua_remove(L, -2);
}

#else

static inline char *jwke_buffer_init(lua_State *L, luaL_Buffer *b, size_t size)
{
    return luaL_buffinitsize(L, b, size);
}

static inline void jwke_buffer_push(lua_State *L, luaL_Buffer *b, size_t len)
{
    (void)L;
    luaL_pushresultsize(b, len);
}

#endif /* LUA_VERSION_NUM < 502 */

#endif

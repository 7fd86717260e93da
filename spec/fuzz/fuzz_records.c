/* libFuzzer target for the key-state record parser, the one gate every
 * record set read from a token or a store passes (issue 19: the records
 * are written by other processes, other versions and faults). It embeds
 * Lua 5.4 with the binding linked in and, for each input,
 * calls require("jwkengine.lifecycle.records").parse(input) under pcall.
 * It aborts when parse
 *   - raises (nothing a token holds may raise out of the reader),
 *   - answers neither a value nor nil, message, ERR_KEY_STATES_CORRUPT,
 *   - accepts a value that records.validate refuses, or whose raw is not
 *     the input,
 *   - accepts a value that records.encode cannot write back, or whose
 *     encoding parse refuses or reads as another version (a writer must be
 *     able to put down whatever a reader accepted, unchanged).
 * The Lua files come from JWKE_LUA_DIR (the source tree's lua/, set at
 * build time; the environment variable of that name overrides it); cjson
 * from Lua's own cpath (Debian's lua-cjson). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_jwkengine_core(lua_State *L);

static lua_State *L;

/* The checks, written once in Lua: (records, input) -> true | false, why. */
static const char CHECK[] =
    "local records, input = ...\n"
    "local ok, value, err, code = pcall(records.parse, input)\n"
    "if not ok then return false, 'parse raised: ' .. tostring(value) end\n"
    "if value == nil then\n"
    "  if type(err) ~= 'string' or code ~= 'ERR_KEY_STATES_CORRUPT' then\n"
    "    return false, 'a refusal without message or ERR_KEY_STATES_CORRUPT: ' .. tostring(code)\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "if type(value) ~= 'table' then return false, 'parse answered a ' .. type(value) end\n"
    "if value.raw ~= input then return false, 'raw is not the input' end\n"
    "local valid, why = records.validate(value)\n"
    "if not valid then return false, 'parse accepted what validate refuses: ' .. tostring(why) end\n"
    "local text, eerr = records.encode(value)\n"
    "if not text then return false, 'encode refused what parse accepted: ' .. tostring(eerr) end\n"
    "local again, aerr = records.parse(text)\n"
    "if not again then return false, 'parse refused its own encoding: ' .. tostring(aerr) end\n"
    "if again.version ~= value.version then\n"
    "  return false, string.format('the version changed in a round trip: %.17g -> %.17g',\n"
    "    value.version, again.version)\n"
    "end\n"
    "return true\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = getenv("JWKE_LUA_DIR");
    if (!dir)
        dir = JWKE_LUA_DIR;
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_jwkengine_core);
    lua_setfield(L, -2, "jwkengine.core");
    lua_pop(L, 2);
    if (luaL_loadstring(L, CHECK) != LUA_OK) {
        fprintf(stderr, "fuzz_records: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_records.check");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "jwkengine.lifecycle.records");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_records: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_records.records");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    lua_settop(L, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_records.check");
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_records.records");
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 2, 2, 0) != LUA_OK || !lua_toboolean(L, 1)) {
        fprintf(stderr, "fuzz_records: %s\n", lua_tostring(L, lua_gettop(L)));
        abort();
    }
    lua_settop(L, 0);
    if (++runs % 4096 == 0)
        lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}

/* `jwkengine`: a Lua 5.4 interpreter with the engine built in.
 *
 *   jwkengine SCRIPT [ARGS...]   run a script; `arg` is set as `lua` sets it
 *   jwkengine -e CODE            run a chunk
 *   jwkengine -v                 print jwkengine, Lua and OpenSSL versions
 *
 * `require "jwkengine"` works without LUA_PATH/LUA_CPATH: the C core is
 * linked in, and the Lua files (and optional C modules such as the
 * benchmark's baselines) are found next to the executable, both in the build
 * tree (build/lua, build/lib) and after `cmake --install` (../share/lua/5.4,
 * ../lib/lua/5.4). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "lua_compat.h"
#include "version.h"

int luaopen_jwkengine_core(lua_State *L);

static int file_exists(const char *path)
{
    return access(path, R_OK) == 0;
}

/* Prepends `dir`-relative patterns to package.path so our Lua files win over
 * any other copy on the system. */
static void prepend_path(lua_State *L, const char *field, const char *patterns)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, field);
    lua_pushfstring(L, "%s;%s", patterns, lua_tostring(L, -1));
    lua_setfield(L, -3, field);
    lua_pop(L, 2);
}

static void set_search_paths(lua_State *L)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = '\0';

    char probe[PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s/lua/jwkengine/init.lua", exe);
    if (file_exists(probe)) { /* build tree */
        lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", exe, exe);
        lua_pushfstring(L, "%s/lib/?.so", exe);
    } else { /* installed: PREFIX/bin/jwkengine, PREFIX/share/lua/5.4 */
        lua_pushfstring(L, "%s/../share/lua/5.4/?.lua;%s/../share/lua/5.4/?/init.lua", exe, exe);
        lua_pushfstring(L, "%s/../lib/lua/5.4/?.so", exe);
    }
    prepend_path(L, "cpath", lua_tostring(L, -1));
    prepend_path(L, "path", lua_tostring(L, -2));
    lua_pop(L, 2);
}

static void preload_core(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_jwkengine_core);
    lua_setfield(L, -2, "jwkengine.core");
    lua_pop(L, 2);
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int run_chunk(lua_State *L, int status, int nargs)
{
    if (status == LUA_OK) {
        int base = lua_gettop(L) - nargs;
        lua_pushcfunction(L, traceback);
        lua_insert(L, base);
        status = lua_pcall(L, nargs, 0, base);
        lua_remove(L, base);
    }
    if (status != LUA_OK) {
        fprintf(stderr, "jwkengine: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return 1;
    }
    return 0;
}

static void usage(FILE *to)
{
    fprintf(to, "usage: jwkengine SCRIPT [ARGS...]\n"
                "       jwkengine -e CODE\n"
                "       jwkengine -v\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-v") == 0) {
        printf("jwkengine %s\n%s\n%s\n", JWKENGINE_VERSION, LUA_RELEASE,
               OpenSSL_version(OPENSSL_VERSION));
        return 0;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }

    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "jwkengine: cannot create a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);
    preload_core(L);
    set_search_paths(L);

    int failed;
    if (strcmp(argv[1], "-e") == 0) {
        if (argc < 3) {
            usage(stderr);
            lua_close(L);
            return 2;
        }
        failed = run_chunk(L, luaL_loadbuffer(L, argv[2], strlen(argv[2]), "=(command line)"), 0);
    } else {
        /* arg[0] is the script, arg[-1] the interpreter, arg[1..] the rest. */
        lua_createtable(L, argc - 2, 2);
        for (int i = 0; i < argc; i++) {
            lua_pushstring(L, argv[i]);
            lua_rawseti(L, -2, i - 1);
        }
        lua_setglobal(L, "arg");
        int status = luaL_loadfile(L, argv[1]);
        for (int i = 2; i < argc; i++)
            lua_pushstring(L, argv[i]);
        failed = run_chunk(L, status, status == LUA_OK ? argc - 2 : 0);
    }
    lua_close(L);
    return failed ? 1 : 0;
}

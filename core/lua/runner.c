/* `jwkengine`: a Lua 5.4 interpreter with the engine built in.
 *
 *   jwkengine SCRIPT [ARGS...]   run a script; `arg` is set as `lua` sets it
 *   jwkengine - [ARGS...]        run the script read from standard input
 *   jwkengine keys [ARGS...]     the admin CLI (scripts/keys.lua)
 *   jwkengine -e CODE            run a chunk
 *   jwkengine -v, --version      print jwkengine, Lua and OpenSSL versions
 *
 * `require("jwkengine")` works without LUA_PATH/LUA_CPATH: the C core is
 * linked in, and the Lua files (and optional C modules such as the
 * benchmark's baselines) are found next to the executable, both in the build
 * tree (build/lua, build/lib) and after `cmake --install` (../share/lua/5.4,
 * ../lib/lua/5.4). The admin CLI is found the same way: build/scripts/keys.lua
 * in the build tree, ../share/jwkengine/keys.lua once installed. */
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

/* The folder holding this executable, or 0 when it cannot be told. */
static int executable_dir(char *dir, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", dir, size - 1);
    if (n <= 0 || (size_t)n >= size - 1)
        return 0;
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    return 1;
}

/* Whether this executable runs from the build tree (build/lua is the
 * source tree's lua/) rather than from an installed prefix. */
static int in_build_tree(const char *exe)
{
    char probe[PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s/lua/jwkengine/init.lua", exe);
    return file_exists(probe);
}

static void set_search_paths(lua_State *L)
{
    char exe[PATH_MAX];
    if (!executable_dir(exe, sizeof exe))
        return;
    if (in_build_tree(exe)) {
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
    fprintf(to, "usage: jwkengine SCRIPT [ARGS...]   run a Lua script (- reads it from stdin)\n"
                "       jwkengine keys COMMAND ...   the admin CLI (jwkengine keys --help)\n"
                "       jwkengine -e CODE            run a chunk\n"
                "       jwkengine -v | --version     print versions\n");
}

/* The admin CLI's path for `jwkengine keys`, next to this executable. */
static int keys_script(char *path, size_t size)
{
    char exe[PATH_MAX];
    if (!executable_dir(exe, sizeof exe))
        return 0;
    int n = in_build_tree(exe) ? snprintf(path, size, "%s/scripts/keys.lua", exe)
                               : snprintf(path, size, "%s/../share/jwkengine/keys.lua", exe);
    return n > 0 && (size_t)n < size && file_exists(path);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0) {
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
        char keys[PATH_MAX + 64];
        const char *script = argv[1];
        if (strcmp(script, "keys") == 0) {
            if (!keys_script(keys, sizeof keys)) {
                fprintf(stderr, "jwkengine: the admin CLI (keys.lua) is not installed next to this runner\n");
                lua_close(L);
                return 1;
            }
            script = keys;
        }
        /* arg[0] is the script, arg[-1] the interpreter, arg[1..] the rest. */
        lua_createtable(L, argc - 2, 2);
        for (int i = 0; i < argc; i++) {
            lua_pushstring(L, i == 1 ? script : argv[i]);
            lua_rawseti(L, -2, i - 1);
        }
        lua_setglobal(L, "arg");
        /* "-" is standard input, as for lua(1): luaL_loadfile reads it for NULL. */
        int status = luaL_loadfile(L, strcmp(script, "-") == 0 ? NULL : script);
        /* the script's arguments go on the stack only once it loaded: on a
         * syntax error the message must stay on top */
        if (status == LUA_OK)
            for (int i = 2; i < argc; i++)
                lua_pushstring(L, argv[i]);
        failed = run_chunk(L, status, status == LUA_OK ? argc - 2 : 0);
    }
    lua_close(L);
    return failed ? 1 : 0;
}

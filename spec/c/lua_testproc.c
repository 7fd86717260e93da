/* Test-only Lua module `testproc`: fork, waitpid, _exit and getpid, which
 * plain Lua lacks (Debian's lua-posix does not ship for Lua 5.4). The fork
 * specs use it to drive the engine the way a pre-forking host does. */
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

static int l_fork(lua_State *L)
{
    lua_pushinteger(L, fork());
    return 1;
}

/* wait(pid) -> exit status (or -1 when the child did not exit normally) */
static int l_wait(lua_State *L)
{
    int status = 0;
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    if (waitpid(pid, &status, 0) != pid)
        return luaL_error(L, "waitpid failed");
    lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 1;
}

/* _exit(status): leaves without running the parent's atexit handlers or
 * Lua's finalizers, as a forked worker that is killed would. */
static int l_exit(lua_State *L)
{
    _exit((int)luaL_optinteger(L, 1, 0));
    return 0;
}

static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

int luaopen_testproc(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"fork", l_fork}, {"wait", l_wait}, {"_exit", l_exit}, {"getpid", l_getpid}, {NULL, NULL}};
    luaL_newlib(L, functions);
    return 1;
}

/* The two-thread scenario of issue 20 through the public Lua API, as
 * nginx's thread pool runs it: one process, two threads, each with a Lua
 * state of its own.
 *   lua_threads SOURCE_DIR FAULT_MODULE TOKEN_LABEL PIN CONTROL_FILE SECONDS
 * Thread A opens an engine on the fault module, makes a key, then makes
 * every C_Sign answer CKR_DEVICE_ERROR (the control file) and signs in a
 * loop, so its recovery re-initializes the module (C_Finalize +
 * C_Initialize) over and over; thread B calls jwkengine.slots(library) in a
 * loop, as engine:health() does, on the same module. Before issue 20 this
 * crashed in C_GetSlotList/C_GetSlotInfo/C_GetTokenInfo under ASan, hung,
 * or drew ThreadSanitizer reports. Prints "lua-threads: ok ..." and exits
 * 0 when both threads ran their loops and every listing succeeded. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_jwkengine_core(lua_State *L);

static const char *source_dir;
static int a_done; /* atomic: thread A's loop is over */

static const char *const signer_chunk =
    "local library, label, pin, control, seconds = ...\n"
    "local jwkengine = require('jwkengine')\n"
    "local engine = assert(jwkengine.open({ startup = false, logger = false,\n"
    "  environment = { HSM_ENABLED = 'true', HSM_LIBRARY = library, HSM_TOKEN_LABEL = label,\n"
    "                  HSM_PIN = pin },\n"
    "  hsm = { reinit_interval_ms = 1, reinit_interval_max_ms = 2 } }))\n"
    "assert(engine:generate('lt', 'ES256', { kid = 'lt1' }))\n"
    "assert(engine:sign('lt', 'before the faults'))\n"
    "local f = assert(io.open(control .. '.tmp', 'w'))\n"
    "f:write('faults=C_Sign:CKR_DEVICE_ERROR\\n')\n"
    "f:close()\n"
    "assert(os.rename(control .. '.tmp', control))\n"
    "local attempts, codes = 0, {}\n"
    "local deadline = os.time() + seconds\n"
    "while os.time() < deadline do\n"
    "  local jws, err, code = engine:sign('lt', 'payload')\n"
    "  assert(not jws, 'a signature with every C_Sign failing')\n"
    "  codes[tostring(code)] = true\n"
    "  attempts = attempts + 1\n"
    "end\n"
    "engine:close()\n"
    "local seen = {}\n"
    "for code in pairs(codes) do seen[#seen + 1] = code end\n"
    "table.sort(seen)\n"
    "return attempts, table.concat(seen, ',')\n";

static const char *const lister_chunk =
    "local library, a_done = ...\n"
    "local jwkengine = require('jwkengine')\n"
    "local listings = 0\n"
    "while not a_done() do\n"
    "  local slots, err = jwkengine.slots(library)\n"
    "  assert(slots, err)\n"
    "  listings = listings + 1\n"
    "end\n"
    "return listings\n";

static int l_a_done(lua_State *L)
{
    lua_pushboolean(L, __atomic_load_n(&a_done, __ATOMIC_SEQ_CST));
    return 1;
}

typedef struct job {
    const char *chunk;
    const char *args[5];
    int nargs;
    int pass_a_done;
    char result[256];
    int ok;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", source_dir, source_dir);
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_jwkengine_core);
    lua_setfield(L, -2, "jwkengine.core");
    lua_pop(L, 2);
    int status = luaL_loadstring(L, j->chunk);
    if (status == LUA_OK) {
        for (int i = 0; i < j->nargs; i++)
            lua_pushstring(L, j->args[i]);
        if (j->pass_a_done)
            lua_pushcfunction(L, l_a_done);
        status = lua_pcall(L, j->nargs + j->pass_a_done, 2, 0);
    }
    if (status == LUA_OK) {
        snprintf(j->result, sizeof j->result, "%s %s", lua_tostring(L, -2),
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
        j->ok = 1;
    } else {
        snprintf(j->result, sizeof j->result, "%s", lua_tostring(L, -1));
    }
    lua_close(L);
    if (!j->pass_a_done)
        __atomic_store_n(&a_done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: lua_threads SOURCE_DIR FAULT_MODULE TOKEN_LABEL PIN CONTROL_FILE "
                        "SECONDS\n");
        return 2;
    }
    source_dir = argv[1];
    job a = {signer_chunk, {argv[2], argv[3], argv[4], argv[5], argv[6]}, 5, 0, "", 0};
    job b = {lister_chunk, {argv[2]}, 1, 1, "", 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, run_job, &a);
    pthread_create(&tb, NULL, run_job, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    int ok = a.ok && b.ok;
    printf("lua-threads: %s signer: %s; lister: %s\n", ok ? "ok" : "FAILED", a.result, b.result);
    return ok ? 0 : 1;
}

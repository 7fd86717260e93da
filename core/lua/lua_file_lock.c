/* A lock across the processes of one host: flock(2) on a file. What the
 * startup generation holds (jwkengine.startup) so that two processes
 * finding a startup set missing (a cron job's `keys maintain`, an engine
 * opening) do not both generate its first key: PKCS#11 has no atomic
 * "create if missing".
 *
 * The file is opened read-only (flock needs no write access), so a lock
 * file another user made stays usable; the lock goes with the process
 * (released by the kernel when it dies), so a holder that crashed never
 * leaves it held. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "lua_common.h"

#define FILE_LOCK_CLASS "jwkengine.file_lock"

typedef struct file_lock {
    int fd; /* -1 once released */
} file_lock;

/* try_lock_file(path) -> lock | false (another process holds it) | nil, err, code */
static int l_try_lock_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    jwke_error err;
    int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        jwke_fail_code(&err, JWKE_ERR_STARTUP_LOCK, "cannot open the lock file %s: %s", path, strerror(errno));
        return jwke_push_error(L, &err);
    }
    int rc;
    while ((rc = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
        ;
    if (rc != 0) {
        int why = errno;
        close(fd);
        if (why == EWOULDBLOCK) {
            lua_pushboolean(L, 0);
            return 1;
        }
        jwke_fail_code(&err, JWKE_ERR_STARTUP_LOCK, "cannot lock %s: %s", path, strerror(why));
        return jwke_push_error(L, &err);
    }
    file_lock *lock = lua_newuserdata(L, sizeof *lock);
    lock->fd = fd;
    luaL_setmetatable(L, FILE_LOCK_CLASS);
    return 1;
}

/* lock:release(): idempotent; the collector releases a lock dropped unreleased. */
static int l_release(lua_State *L)
{
    file_lock *lock = luaL_checkudata(L, 1, FILE_LOCK_CLASS);
    if (lock->fd >= 0) {
        close(lock->fd); /* closing the only descriptor releases the flock */
        lock->fd = -1;
    }
    return 0;
}

static const luaL_Reg methods[] = {
    {"release", l_release},
    {NULL, NULL},
};

void jwke_open_file_lock(lua_State *L)
{
    jwke_new_class(L, FILE_LOCK_CLASS, methods, l_release);
    lua_pushcfunction(L, l_try_lock_file);
    lua_setfield(L, -2, "try_lock_file");
}

/* The run-time check of the lock order (core/lock_order.h): a thread that
 * takes a lock against the order, takes a module's use lock twice, or
 * calls into a module outside it aborts, naming the locks; one that keeps
 * the order does not. Each inversion runs in a forked child. In a build
 * without the check (release, NDEBUG) there is nothing to test. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "lock_order.h"

#if JWKE_LOCK_CHECKED
static int module_use, token, outage, logins;

/* Whether fn, run in a child with stderr silenced, aborts. */
static int aborts(void (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        fn();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void in_order(void)
{
    jwke_lock_taking(&module_use, JWKE_LOCK_MODULE_USE);
    jwke_lock_taking(&token, JWKE_LOCK_TOKEN);
    jwke_lock_taking(&outage, JWKE_LOCK_OUTAGE);
    jwke_lock_released(&outage);
    jwke_lock_taking(&logins, JWKE_LOCK_LOGINS); /* a rank may be skipped */
    jwke_lock_require(&module_use, "inside the module");
    jwke_lock_released(&logins);
    jwke_lock_released(&token);
    jwke_lock_released(&module_use);
    jwke_lock_taking(&token, JWKE_LOCK_TOKEN); /* all let go: any rank again */
    jwke_lock_released(&token);
}

static void token_then_module(void)
{
    jwke_lock_taking(&token, JWKE_LOCK_TOKEN);
    jwke_lock_taking(&module_use, JWKE_LOCK_MODULE_USE);
}

static void module_twice(void)
{
    jwke_lock_taking(&module_use, JWKE_LOCK_MODULE_USE);
    jwke_lock_taking(&module_use, JWKE_LOCK_MODULE_USE);
}

static void outage_then_token(void)
{
    jwke_lock_taking(&outage, JWKE_LOCK_OUTAGE);
    jwke_lock_taking(&token, JWKE_LOCK_TOKEN);
}

static void call_outside(void)
{
    jwke_lock_require(&module_use, "a call into a module outside it");
}
#endif

int main(void)
{
#if JWKE_LOCK_CHECKED
    CHECK(!aborts(in_order));
    CHECK(aborts(token_then_module));
    CHECK(aborts(module_twice));
    CHECK(aborts(outage_then_token));
    CHECK(aborts(call_outside));
#endif
    return check_summary();
}

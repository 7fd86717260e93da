/* SIGPIPE blocked around calls into a module (see sigpipe_guard.h). */
#include "sigpipe_guard.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

static int sigpipe_pending(void)
{
    sigset_t pending;
    return sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

void jwke_sigpipe_block(jwke_sigpipe_guard *guard)
{
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &guard->previous_mask);
    guard->was_blocked = sigismember(&guard->previous_mask, SIGPIPE) == 1;
    guard->was_pending = !guard->was_blocked && sigpipe_pending();
}

void jwke_sigpipe_restore(const jwke_sigpipe_guard *guard)
{
    if (guard->was_blocked)
        return;
    if (!guard->was_pending && sigpipe_pending()) {
        /* raised by a write the module made: taken here, so that unblocking
         * does not deliver it (a blocked SIGPIPE is kept once, not queued) */
        sigset_t pipe_only;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        const struct timespec no_wait = { 0, 0 };
        while (sigtimedwait(&pipe_only, NULL, &no_wait) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &guard->previous_mask, NULL);
}

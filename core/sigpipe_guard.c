/* SIGPIPE blocked around calls into a module (see sigpipe_guard.h). */
#include "sigpipe_guard.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { UNKNOWN, GUARDED, IGNORED };
static int disposition = UNKNOWN; /* read and written with __atomic builtins */
static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;

void jwke_sigpipe_recheck(void)
{
    __atomic_store_n(&disposition, UNKNOWN, __ATOMIC_RELAXED);
}

static void hook_fork(void)
{
    /* a server sets its dispositions before it forks its workers (nginx
     * ignores SIGPIPE after the configuration, and so after an engine its
     * init_by_lua opened) */
    pthread_atfork(NULL, NULL, jwke_sigpipe_recheck);
}

static int sigpipe_ignored(void)
{
    int d = __atomic_load_n(&disposition, __ATOMIC_RELAXED);
    if (d == UNKNOWN) {
        pthread_once(&fork_hook_once, hook_fork);
        struct sigaction current;
        d = sigaction(SIGPIPE, NULL, &current) == 0 && !(current.sa_flags & SA_SIGINFO) &&
                    current.sa_handler == SIG_IGN
                ? IGNORED
                : GUARDED;
        __atomic_store_n(&disposition, d, __ATOMIC_RELAXED);
    }
    return d == IGNORED;
}

void jwke_sigpipe_block(jwke_sigpipe_guard *guard)
{
    if (sigpipe_ignored()) {
        guard->idle = 1;
        return;
    }
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &guard->previous_mask);
    guard->idle = sigismember(&guard->previous_mask, SIGPIPE) == 1;
}

/* Whether SIGPIPE is pending for this thread itself, where the kernel puts
 * the one a write raises, as opposed to the process, where kill() puts the
 * host's: sigpending() tells only the union, /proc tells them apart
 * ("SigPnd" the thread's, "ShdPnd" the process's). Without /proc the
 * pending one is taken as the module's: the guard's purpose. */
static int pending_for_thread(void)
{
    char text[2048];
    int fd = open("/proc/thread-self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return 1;
    text[n] = '\0';
    const char *line = strstr(text, "\nSigPnd:");
    if (!line)
        return 1;
    unsigned long long mask = strtoull(line + 8, NULL, 16);
    return (mask >> (SIGPIPE - 1) & 1) != 0;
}

void jwke_sigpipe_restore(const jwke_sigpipe_guard *guard)
{
    if (guard->idle)
        return;
    sigset_t pending;
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1 && pending_for_thread()) {
        /* raised by a write the module made: taken here, so that unblocking
         * does not deliver it. The thread's own pending signals are taken
         * before the process's, so a host's SIGPIPE pending beside it stays
         * for delivery. */
        sigset_t pipe_only;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        const struct timespec no_wait = {0, 0};
        while (sigtimedwait(&pipe_only, NULL, &no_wait) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &guard->previous_mask, NULL);
}

/* The SIGPIPE guard takes back only the SIGPIPE a module's write raised in
 * the calling thread: one the host sends to the process while the guard is
 * up is delivered once the guard is down, alone or beside the module's. A
 * host that ignores SIGPIPE gets no guard (its disposition is read once,
 * again after a fork). */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "sigpipe_guard.h"

static volatile sig_atomic_t delivered;

static void count(int sig)
{
    (void)sig;
    delivered++;
}

/* A write to a pipe whose reader is gone: the kernel raises SIGPIPE at
 * this thread, as at a module writing to its dead server's socket. */
static int write_to_broken_pipe(void)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    close(fds[0]);
    ssize_t n = write(fds[1], "x", 1);
    int saved = errno;
    close(fds[1]);
    return n < 0 && saved == EPIPE ? 0 : -1;
}

static int guarded(int module_writes, int host_sends)
{
    jwke_sigpipe_guard guard;
    delivered = 0;
    jwke_sigpipe_block(&guard);
    int ok = guard.idle == 0;
    if (host_sends)
        ok = ok && kill(getpid(), SIGPIPE) == 0; /* process-directed */
    if (module_writes)
        ok = ok && write_to_broken_pipe() == 0;
    ok = ok && delivered == 0; /* blocked meanwhile */
    jwke_sigpipe_restore(&guard);
    return ok;
}

int main(void)
{
    struct sigaction handler = {0};
    handler.sa_handler = count;
    sigemptyset(&handler.sa_mask);
    sigaction(SIGPIPE, &handler, NULL);
    jwke_sigpipe_recheck();

    CHECK(guarded(1, 0) && delivered == 0); /* the module's: taken back */
    CHECK(guarded(0, 1) && delivered == 1); /* the host's: delivered */
    CHECK(guarded(1, 1) && delivered == 1); /* both: the host's delivered */
    CHECK(guarded(0, 0) && delivered == 0);

    /* the caller blocks SIGPIPE itself: nothing to undo, nothing taken */
    sigset_t pipe_only, old;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    CHECK(guard.idle == 1);
    jwke_sigpipe_restore(&guard);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    /* ignored: read once, no guard; a child reads it again after fork */
    signal(SIGPIPE, SIG_IGN);
    jwke_sigpipe_block(&guard);
    CHECK(guard.idle == 0); /* the disposition read before is kept */
    jwke_sigpipe_restore(&guard);
    jwke_sigpipe_recheck();
    jwke_sigpipe_block(&guard);
    CHECK(guard.idle == 1);
    CHECK(write_to_broken_pipe() == 0);
    jwke_sigpipe_restore(&guard);

    sigaction(SIGPIPE, &handler, NULL); /* the child must read it again */
    pid_t child = fork();
    if (child == 0) {
        jwke_sigpipe_block(&guard);
        _exit(guard.idle == 0 ? 0 : 1);
    }
    int status = 0;
    CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0);
    return check_summary();
}

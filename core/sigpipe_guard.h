/* Keeps SIGPIPE from killing the host process while a PKCS#11 module
 * writes to a connection whose other end has gone (p11-kit's client module
 * writes to its server's socket with plain write(): when the server dies,
 * the next call raises SIGPIPE, whose default action ends the process).
 * A library must not change the process's signal dispositions, so the
 * signal is blocked in the calling thread only, for the duration of the
 * calls, and one the module raised meanwhile (directed at this thread, as
 * the kernel directs a write's SIGPIPE) is taken back before unblocking:
 * the module sees EPIPE and reports a failure the engine recovers from. A
 * SIGPIPE the host sends to the process meanwhile is left pending, and is
 * delivered as the host meant once the thread unblocks it.
 *
 * A host that ignores SIGPIPE (nginx, most servers) needs no guard: the
 * disposition is read once per process (again in a forked child, where a
 * server usually sets it) and the guard costs nothing after that. A host
 * that turns an ignored SIGPIPE back to its default after that first call
 * must call jwke_sigpipe_recheck(). */
#ifndef JWKE_SIGPIPE_GUARD_H
#define JWKE_SIGPIPE_GUARD_H

#include <signal.h>

typedef struct {
    sigset_t previous_mask;
    int idle; /* nothing to undo: SIGPIPE ignored, or blocked by the caller */
} jwke_sigpipe_guard;

void jwke_sigpipe_block(jwke_sigpipe_guard *guard);
void jwke_sigpipe_restore(const jwke_sigpipe_guard *guard);

/* Reads the disposition again at the next call. */
void jwke_sigpipe_recheck(void);

#endif

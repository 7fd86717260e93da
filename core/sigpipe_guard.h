/* Keeps SIGPIPE from killing the host process while a PKCS#11 module
 * writes to a connection whose other end has gone (p11-kit's client module
 * writes to its server's socket with plain write(): when the server dies,
 * the next call raises SIGPIPE, whose default action ends the process).
 * A library must not change the process's signal dispositions, so the
 * signal is blocked in the calling thread only, for the duration of the
 * calls, and one it raised meanwhile is taken back before unblocking: the
 * module sees EPIPE and reports a failure the engine recovers from. */
#ifndef JWKE_SIGPIPE_GUARD_H
#define JWKE_SIGPIPE_GUARD_H

#include <signal.h>

typedef struct {
    sigset_t previous_mask;
    int was_blocked; /* nothing to undo: the caller blocks SIGPIPE itself */
    int was_pending; /* a SIGPIPE from before is not ours to take */
} jwke_sigpipe_guard;

void jwke_sigpipe_block(jwke_sigpipe_guard *guard);
void jwke_sigpipe_restore(const jwke_sigpipe_guard *guard);

#endif

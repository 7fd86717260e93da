/* The process around the module: fork and unload.
 *
 * A pthread_atfork handler keeps the lock usable in a child; the child
 * keeps the settings and the session map, and starts its counts and %P
 * coin afresh. With JWKE_FAULT_FORK_STRICT=1 a child behaves as under a
 * networked HSM's client library: CKR_CRYPTOKI_NOT_INITIALIZED until it
 * calls C_Initialize, and the sessions it inherited are not its own. */
#ifndef JWKE_FM_PROCESS_H
#define JWKE_FM_PROCESS_H

void fm_process_set_fork_strict_locked(int strict);

/* A strict child that has not called C_Initialize yet. */
int fm_process_child_uninitialized_locked(void);
/* Its C_Initialize: from now on it is initialized. */
void fm_process_child_initialized_locked(void);

#endif

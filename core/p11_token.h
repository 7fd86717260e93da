/* A token in use, opaque outside p11_token.c: its sessions (a pool,
 * p11_session.c), the fork catch-up and recovery; its login and kept PIN
 * (p11_login.c) and its outage state (p11_outage.c) are objects of their
 * own. The locks are taken in the order of lock_order.h.
 *
 * Sessions: a dedicated login session is opened first and never handed
 * out, so the login outlives every pooled session. Operations borrow
 * sessions from a bounded LIFO pool (most recently used first, the one most
 * likely to be warm); a borrower waits a bounded time for a free one. When
 * the token answers CKR_SESSION_COUNT the pool learns the lower limit. A
 * session goes back to the pool only after a fully successful operation;
 * after any failure it is closed, so no session is ever reused with an
 * operation still active.
 *
 * Recovery (jwke_p11_run): an operation that fails with a recoverable code
 * is retried once after the matching repair:
 *   CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED  -> a new session
 *   CKR_USER_NOT_LOGGED_IN                          -> log in again
 *   CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID -> find the object again
 *   CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT,
 *   CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR  -> full re-initialization,
 *                                                      at most once per interval
 * Anything else fails at once.
 *
 * Outages: when a full re-initialization does not bring the token back
 * (the module's C_Initialize fails, the token is not in any slot, the
 * retry fails the same way), the token is down. Every call then fails at
 * once with ERR_HSM_UNAVAILABLE (the cause, and when the next attempt is
 * due) without touching the module, until the attempt is due; the call
 * that finds it due re-initializes the module, finds the token by serial,
 * opens a login session and logs in. A failed attempt doubles the wait
 * (the backoff: p11_outage.h). A refused PIN ends the attempts: it stays
 * ERR_LOGIN_REFUSED. Each recovery is counted and queued as one log event
 * (never with a secret in it). PIN hygiene: p11_login.h. */
#ifndef JWKE_P11_TOKEN_H
#define JWKE_P11_TOKEN_H

#include <stddef.h>

#include "error.h"
#include "p11_module.h"
#include "p11_session.h"
#include "pin_source.h"

#define JWKE_EVENT_QUEUE 16
#define JWKE_EVENT_SIZE 160

/* Returned by an operation whose failure is not a PKCS#11 code: the
 * message is already in err. Never a real CKR value. */
#define JWKE_OP_FAILED ((CK_RV)0xfffffffeUL)

typedef struct jwke_p11_token jwke_p11_token;

enum jwke_recovery { JWKE_RECOVER_NONE, JWKE_RECOVER_SESSION, JWKE_RECOVER_LOGIN,
                     JWKE_RECOVER_OBJECT, JWKE_RECOVER_REINIT, JWKE_RECOVER_CLASSES };

typedef struct jwke_p11_stats {
    unsigned long recoveries[JWKE_RECOVER_CLASSES]; /* by class; [0] unused */
    unsigned long failed_recoveries;
    unsigned long signature_faults; /* signatures that failed verify-after-sign */
    jwke_p11_pool_stats pool;
} jwke_p11_stats;

/* Which token-made signatures are checked on the host before use
 * (hsm.verify_after_sign): by default RSA's, whose CRT faults leak the key. */
enum jwke_verify_after_sign { JWKE_VERIFY_RSA = 0, JWKE_VERIFY_ALL, JWKE_VERIFY_NONE };

typedef struct jwke_p11_options {
    /* 0 for the defaults, JWKE_POOL_* in engine_limits.h */
    int max_sessions;        /* pool bound */
    int session_wait_ms;     /* how long a borrower waits */
    int reinit_interval_ms;  /* minimum time between full re-inits, first backoff */
    int reinit_interval_max_ms; /* the longest backoff during an outage */
    int session_idle_max_ms; /* idle sessions older are checked; < 0: never */
    enum jwke_verify_after_sign verify_after_sign;
} jwke_p11_options;

/* Opens the token: takes a module reference, opens the login session.
 * label/serial identify it again after a device reset. */
jwke_p11_token *jwke_p11_token_open(jwke_p11_module *module, CK_SLOT_ID slot, const char *label,
                                    const char *serial, const jwke_p11_options *options,
                                    jwke_error *err);
/* Closes sessions (only those of this process generation), lets go of
 * the module and frees the token. */
void jwke_p11_token_close(jwke_p11_token *token);

/* CKU_USER login with a PIN (copied into locked memory for re-login). */
int jwke_p11_login(jwke_p11_token *token, const char *pin, size_t pin_len, jwke_error *err);

/* The same with the PIN written by fill straight into the locked buffer
 * (see pin_source.h), so it never needs a copy elsewhere. */
int jwke_p11_login_from(jwke_p11_token *token, jwke_pin_fill fill, const void *ctx,
                        jwke_error *err);

/* The same with the PIN read from a file (one line; a trailing newline is
 * dropped). The PIN never passes through Lua. */
int jwke_p11_login_file(jwke_p11_token *token, const char *path, jwke_error *err);

/* Copies the counters. */
void jwke_p11_token_stats(jwke_p11_token *token, jwke_p11_stats *out);

/* Takes the queued log events (recoveries), oldest first; returns count
 * (0, cheaply, when none are queued). */
int jwke_p11_take_events(jwke_p11_token *token, char (*out)[JWKE_EVENT_SIZE], int max);

/* The generic runner: borrows a session, calls op, returns the session, and
 * on a recoverable failure repairs and calls op once more. op returns the
 * CK_RV of its first failing call and names it in *function (or
 * JWKE_OP_FAILED with err filled for failures that are not PKCS#11 codes).
 * An op using cached object handles compares jwke_p11_token_object_epoch
 * with the epoch of its handles and finds them again when they differ. */
typedef CK_RV (*jwke_p11_op)(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                             const char **function, jwke_error *err);
int jwke_p11_run(jwke_p11_token *token, jwke_p11_op op, void *ctx, jwke_error *err);

/* Whether the token is down (see "Outages" above): 1 with the time until
 * the next attempt to come back and the cause, 0 when it is not. */
int jwke_p11_token_outage(jwke_p11_token *token, long long *retry_in_ms, char *cause,
                          size_t cause_size);

/* Which signatures this token's are checked after signing. */
enum jwke_verify_after_sign jwke_p11_token_verify_after_sign(const jwke_p11_token *token);

/* Counts a signature that failed that check and queues its log line. */
void jwke_p11_token_signature_fault(jwke_p11_token *token, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The function list of the token's module, for operations run by
 * jwke_p11_run (inside the module: see jwke_p11_module_fn). */
CK_FUNCTION_LIST_PTR jwke_p11_token_functions(const jwke_p11_token *token);

/* The token's module, for a caller that calls into it on its own (the
 * benchmark's raw floor): between jwke_p11_module_enter and _leave. */
jwke_p11_module *jwke_p11_token_module(const jwke_p11_token *token);

/* Whether a PIN is kept to log in again with (jwke_p11_login and friends,
 * not refused since). */
int jwke_p11_token_keeps_pin(jwke_p11_token *token);

/* The slot the token is in now (a device reset may move it). */
CK_SLOT_ID jwke_p11_token_slot(jwke_p11_token *token);

/* The token's label as it was opened (never changes), for messages. */
const char *jwke_p11_token_label(const jwke_p11_token *token);

/* The epoch of cached object handles: bumped whenever they may have gone
 * stale (a fork, a device reset, a new login, objects destroyed). */
unsigned jwke_p11_token_object_epoch(jwke_p11_token *token);

/* Marks every cached object handle stale (objects were changed). */
void jwke_p11_token_objects_changed(jwke_p11_token *token);

#endif

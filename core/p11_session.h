/* The session pool of a token, opaque outside p11_session.c: a bounded
 * LIFO stack of open sessions (the most recently used first, the one most
 * likely to be warm). A borrower waits a bounded time for a free session.
 *
 * Real HSMs limit and expire sessions, so the bound is the lowest of
 * hsm.max_sessions, what the token reports free at open (ulMaxSessionCount
 * and ulMaxRwSessionCount less the sessions already open), and what it
 * proves by answering CKR_SESSION_COUNT. A session idle longer than
 * hsm.session_idle_max is checked with C_GetSessionInfo before it is lent,
 * and replaced when the token closed it meanwhile (YubiHSM 2 does after
 * 30 s), so the first operation after a quiet period needs no recovery.
 * Every call but new/free is made inside the module (jwke_p11_module_enter)
 * with the token's lock held (the lock a borrower waits on); a borrow lets
 * the token's lock go while C_OpenSession runs. */
#ifndef JWKE_P11_SESSION_H
#define JWKE_P11_SESSION_H

#include <pthread.h>

#include "error.h"
#include "p11_module.h"
#include "pkcs11_header.h"

#include "engine_limits.h"

typedef struct jwke_p11_pool jwke_p11_pool;

/* max_sessions is capped at JWKE_POOL_LIMIT; < 0: the pool opens no
 * session and lends the login session (jwke_p11_pool_set_login) to one
 * borrower at a time, for a caller that never needs two at once (one
 * thread); idle_max_ms < 0: idle sessions are never checked. NULL when out
 * of memory. */
jwke_p11_pool *jwke_p11_pool_new(jwke_p11_module *module, int max_sessions, int wait_ms,
                                 int idle_max_ms);

/* Lowers the bound to the sessions the token in slot still allows, after
 * `reserved` more the caller opens itself (its login session). A token
 * reporting CK_EFFECTIVELY_INFINITE or CK_UNAVAILABLE_INFORMATION sets no
 * bound; one with no session left still gets one (its C_OpenSession will
 * say why). *former_limit is the bound before when it was lowered, else 0. */
int jwke_p11_pool_fit_token(jwke_p11_pool *pool, CK_SLOT_ID slot, int reserved,
                            int *former_limit, jwke_error *err);
/* The login session a pool that lends it lends; after every new one. */
void jwke_p11_pool_set_login(jwke_p11_pool *pool, CK_SESSION_HANDLE login);
int jwke_p11_pool_lends_login(const jwke_p11_pool *pool);

/* Frees the pool without closing a session (close_all does). */
void jwke_p11_pool_free(jwke_p11_pool *pool, int inherited_lock);

/* Borrows a session on slot: an idle one, a new one while under the bound
 * (opened with lock let go), or the next one given back within the wait
 * (on lock, held by the caller). When the token refused a session below the bound, the pool
 * learns the lower limit and *former_limit is the bound it had (0
 * otherwise), so the caller can say so. */
int jwke_p11_pool_borrow(jwke_p11_pool *pool, pthread_mutex_t *lock, CK_SLOT_ID slot,
                         CK_SESSION_HANDLE *session, int *former_limit, jwke_error *err);

/* Takes a borrowed session back: idle after success, closed after any
 * failure (so no operation can still be active on a pooled session).
 * Wakes one waiting borrower. */
void jwke_p11_pool_give_back(jwke_p11_pool *pool, CK_SESSION_HANDLE session, int healthy);

/* Wakes one waiting borrower (a session was dropped instead of given back). */
void jwke_p11_pool_signal(jwke_p11_pool *pool);

/* Forgets every session without closing it: they belong to a finalized
 * module or to the parent process. */
void jwke_p11_pool_forget(jwke_p11_pool *pool);

/* After a fork: the wait condition was copied in whatever state the
 * parent's threads left it. Also forgets the sessions. */
void jwke_p11_pool_after_fork(jwke_p11_pool *pool);

/* Closes the idle sessions. */
void jwke_p11_pool_close_idle(jwke_p11_pool *pool);

typedef struct jwke_p11_pool_stats {
    int sessions_open;        /* idle and borrowed now (a login session excluded) */
    int max_sessions;         /* the bound in use */
    long token_max_sessions;  /* ulMaxSessionCount at open; -1: the token sets no limit */
    long token_sessions;      /* ulSessionCount at open; -1: not reported */
    unsigned long sessions_opened;
    unsigned long session_waits;    /* borrowers that had to wait */
    unsigned long idle_checks;      /* idle sessions checked before use */
    unsigned long sessions_expired; /* of those, closed by the token and replaced */
} jwke_p11_pool_stats;

void jwke_p11_pool_counts(const jwke_p11_pool *pool, jwke_p11_pool_stats *out);

#endif

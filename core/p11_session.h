/* The session pool of a token, opaque outside p11_session.c: a bounded
 * LIFO stack of open sessions (the most recently used first, the one most
 * likely to be warm). A borrower waits a bounded time for a free session;
 * when the token answers CKR_SESSION_COUNT the pool learns the lower
 * limit. Every call but new/free is made with the token's lock held (the
 * lock a borrower waits on). */
#ifndef JWKE_P11_SESSION_H
#define JWKE_P11_SESSION_H

#include <pthread.h>

#include "error.h"
#include "pkcs11_header.h"

#define JWKE_POOL_LIMIT 64

typedef struct jwke_p11_pool jwke_p11_pool;

/* max_sessions is capped at JWKE_POOL_LIMIT. NULL when out of memory. */
jwke_p11_pool *jwke_p11_pool_new(CK_FUNCTION_LIST_PTR fn, int max_sessions, int wait_ms);
/* Frees the pool without closing a session (close_all does). */
void jwke_p11_pool_free(jwke_p11_pool *pool, int inherited_lock);

/* Borrows a session on slot: an idle one, a new one while under the bound,
 * or the next one given back within the wait (on lock, held by the
 * caller). When the token refused a session below the bound, the pool
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

/* Sessions open now (idle and borrowed), the current limit, and the
 * counters: sessions opened and borrowers that had to wait. */
void jwke_p11_pool_counts(const jwke_p11_pool *pool, int *open, int *max_sessions,
                          unsigned long *opened, unsigned long *waits);

#endif

/* The one lock order of the PKCS#11 layer, and its check.
 *
 * Several threads (nginx's thread pool, a C host) use one module, and one
 * thread's recovery re-initializes it; every lock is therefore taken in
 * this order, never against it:
 *
 *   module list      p11_module.c: the process's loaded modules, and the
 *                    catch-up of modules and tokens in a forked child
 *   module use       p11_module.c: read by every call into the module
 *                    (jwke_p11_module_enter), written by re-initialization
 *   token            p11_token.c: a token's state and its session pool
 *                    (p11_session.c has no lock of its own: its borrowers
 *                    wait on the token's)
 *   outage           p11_outage.c: a token's outage state (so that calls fail
 *                    fast while an attempt to come back holds the token)
 *   login records    p11_module.c: which PIN logged each slot in
 *
 * A thread may skip ranks, never go back to one it holds or an earlier
 * one: taking the module use lock twice would deadlock as soon as a
 * re-initialization waits between the two (the lock prefers writers).
 *
 * Debug builds (and the sanitizer builds) keep a per-thread record of the
 * locks held and abort with a message naming both locks on an inversion;
 * release builds compile the record away. */
#ifndef JWKE_LOCK_ORDER_H
#define JWKE_LOCK_ORDER_H

#include <pthread.h>

enum jwke_lock_rank {
    JWKE_LOCK_MODULE_LIST = 1,
    JWKE_LOCK_MODULE_USE,
    JWKE_LOCK_TOKEN,
    JWKE_LOCK_OUTAGE,
    JWKE_LOCK_LOGINS,
};

#if defined(JWKE_LOCK_CHECK) || !defined(NDEBUG)
#define JWKE_LOCK_CHECKED 1
/* Called before blocking on lock: aborts when the thread holds a lock of
 * this rank or a later one. */
void jwke_lock_taking(const void *lock, enum jwke_lock_rank rank);
void jwke_lock_released(const void *lock);
/* Whether this thread holds lock (for a caller that requires it). */
int jwke_lock_held(const void *lock);
/* Aborts with the message what when this thread does not hold lock. */
void jwke_lock_require(const void *lock, const char *what);
#else
#define JWKE_LOCK_CHECKED 0
static inline void jwke_lock_taking(const void *lock, enum jwke_lock_rank rank) { (void)lock; (void)rank; }
static inline void jwke_lock_released(const void *lock) { (void)lock; }
static inline void jwke_lock_require(const void *lock, const char *what) { (void)lock; (void)what; }
#endif

static inline void jwke_mutex_lock(pthread_mutex_t *m, enum jwke_lock_rank rank)
{
    jwke_lock_taking(m, rank);
    pthread_mutex_lock(m);
}

static inline void jwke_mutex_unlock(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
    jwke_lock_released(m);
}

#endif

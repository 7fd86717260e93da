/* The session pool of a token (see p11_session.h). */
#include "p11_session.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

struct jwke_p11_pool {
    CK_FUNCTION_LIST_PTR fn;
    pthread_cond_t session_free;
    CK_SESSION_HANDLE idle[JWKE_POOL_LIMIT];
    int idle_count;
    int open_count;        /* idle + borrowed */
    int max_sessions;
    int wait_ms;
    unsigned long opened;
    unsigned long waits;
};

jwke_p11_pool *jwke_p11_pool_new(CK_FUNCTION_LIST_PTR fn, int max_sessions, int wait_ms)
{
    jwke_p11_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->fn = fn;
    pool->max_sessions = max_sessions > JWKE_POOL_LIMIT ? JWKE_POOL_LIMIT : max_sessions;
    pool->wait_ms = wait_ms;
    pthread_cond_init(&pool->session_free, NULL);
    return pool;
}

void jwke_p11_pool_free(jwke_p11_pool *pool, int inherited_lock)
{
    if (!pool)
        return;
    if (!inherited_lock)
        pthread_cond_destroy(&pool->session_free);
    free(pool);
}

static struct timespec deadline_after(int ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    return deadline;
}

int jwke_p11_pool_borrow(jwke_p11_pool *pool, pthread_mutex_t *lock, CK_SLOT_ID slot,
                         CK_SESSION_HANDLE *session, int *former_limit, jwke_error *err)
{
    struct timespec deadline;
    int have_deadline = 0;
    *former_limit = 0;
    for (;;) {
        if (pool->idle_count > 0) {
            *session = pool->idle[--pool->idle_count];
            return 0;
        }
        if (pool->open_count < pool->max_sessions) {
            CK_RV rv = pool->fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                                               NULL, session);
            if (rv == CKR_OK) {
                pool->open_count++;
                pool->opened++;
                return 0;
            }
            if (rv != CKR_SESSION_COUNT || pool->open_count == 0)
                return jwke_fail_ckr(err, "C_OpenSession", rv);
            /* The token allows fewer sessions than configured: learn it. */
            *former_limit = pool->max_sessions;
            pool->max_sessions = pool->open_count;
        }
        if (!have_deadline) {
            deadline = deadline_after(pool->wait_ms);
            have_deadline = 1;
            pool->waits++;
        }
        if (pthread_cond_timedwait(&pool->session_free, lock, &deadline) == ETIMEDOUT &&
            pool->idle_count == 0 && pool->open_count >= pool->max_sessions)
            return jwke_fail_code(err, "ERR_HSM_BUSY", "no PKCS#11 session became free within %d ms (all %d are busy; "
                             "raise hsm.max_sessions or hsm.session_wait_ms)",
                             pool->wait_ms, pool->max_sessions);
    }
}

void jwke_p11_pool_give_back(jwke_p11_pool *pool, CK_SESSION_HANDLE session, int healthy)
{
    if (healthy && pool->idle_count < JWKE_POOL_LIMIT) {
        pool->idle[pool->idle_count++] = session;
    } else {
        pool->fn->C_CloseSession(session);
        pool->open_count--;
    }
    pthread_cond_signal(&pool->session_free);
}

void jwke_p11_pool_signal(jwke_p11_pool *pool)
{
    pthread_cond_signal(&pool->session_free);
}

void jwke_p11_pool_forget(jwke_p11_pool *pool)
{
    pool->idle_count = 0;
    pool->open_count = 0;
}

void jwke_p11_pool_after_fork(jwke_p11_pool *pool)
{
    pthread_cond_init(&pool->session_free, NULL);
    jwke_p11_pool_forget(pool);
}

void jwke_p11_pool_close_idle(jwke_p11_pool *pool)
{
    while (pool->idle_count > 0) {
        pool->fn->C_CloseSession(pool->idle[--pool->idle_count]);
        pool->open_count--;
    }
}

void jwke_p11_pool_counts(const jwke_p11_pool *pool, int *open, int *max_sessions,
                          unsigned long *opened, unsigned long *waits)
{
    *open = pool->open_count;
    *max_sessions = pool->max_sessions;
    *opened = pool->opened;
    *waits = pool->waits;
}

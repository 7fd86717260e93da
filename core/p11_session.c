/* The session pool of a token (see p11_session.h). */
#include "p11_session.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <time.h>

#include "lock_order.h"

struct jwke_p11_pool {
    jwke_p11_module *module; /* called into only by a caller inside it */
    pthread_cond_t session_free;
    CK_SESSION_HANDLE idle[JWKE_POOL_LIMIT];
    long long idle_since_ms[JWKE_POOL_LIMIT]; /* when each idle session came back */
    int idle_count;
    int open_count;        /* idle + borrowed */
    int wait_ms;
    int idle_max_ms;       /* < 0: never checked */
    /* No sessions of its own: the caller's login session is lent, to one
     * borrower at a time, and never closed (closing it would log out). */
    int lends_login;
    int login_lent;
    CK_SESSION_HANDLE login;
    jwke_p11_pool_stats stats; /* max_sessions is the bound in use */
};

jwke_p11_pool *jwke_p11_pool_new(jwke_p11_module *module, int max_sessions, int wait_ms,
                                 int idle_max_ms)
{
    jwke_p11_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->module = module;
    pool->lends_login = max_sessions < 0;
    pool->stats.max_sessions = max_sessions < 0 ? 0
                               : max_sessions > JWKE_POOL_LIMIT ? JWKE_POOL_LIMIT : max_sessions;
    pool->stats.token_max_sessions = -1;
    pool->stats.token_sessions = -1;
    pool->wait_ms = wait_ms;
    pool->idle_max_ms = idle_max_ms;
    pthread_cond_init(&pool->session_free, NULL);
    return pool;
}

/* A limit from the token info: -1 when it sets none or says nothing. */
static long reported_limit(CK_ULONG value)
{
    if (value == CK_EFFECTIVELY_INFINITE || value == CK_UNAVAILABLE_INFORMATION ||
        value > (CK_ULONG)LONG_MAX)
        return -1;
    return (long)value;
}

/* A count from the token info (0 is a count here): -1 when it says nothing. */
static long reported_count(CK_ULONG value)
{
    return value == CK_UNAVAILABLE_INFORMATION || value > (CK_ULONG)LONG_MAX ? -1 : (long)value;
}

/* The sessions a (maximum, in use) pair leaves, or -1 for no limit. A
 * token already full leaves 0, never a negative count that would read as
 * "no limit". */
static long sessions_left(CK_ULONG max, CK_ULONG in_use, int reserved)
{
    long limit = reported_limit(max), used = reported_count(in_use);
    if (limit < 0)
        return -1;
    long left = limit - (used < 0 ? 0 : used) - reserved;
    return left < 0 ? 0 : left;
}

int jwke_p11_pool_fit_token(jwke_p11_pool *pool, CK_SLOT_ID slot, int reserved,
                            int *former_limit, jwke_error *err)
{
    *former_limit = 0;
    CK_TOKEN_INFO info;
    CK_RV rv = jwke_p11_module_fn(pool->module)->C_GetTokenInfo(slot, &info);
    if (rv != CKR_OK)
        return jwke_fail_ckr(err, "C_GetTokenInfo", rv);
    pool->stats.token_max_sessions = reported_limit(info.ulMaxSessionCount);
    pool->stats.token_sessions = reported_count(info.ulSessionCount);
    /* our sessions are read-write: both limits apply */
    long left = sessions_left(info.ulMaxSessionCount, info.ulSessionCount, reserved);
    long rw_left = sessions_left(info.ulMaxRwSessionCount, info.ulRwSessionCount, reserved);
    if (left < 0 || (rw_left >= 0 && rw_left < left))
        left = rw_left;
    if (pool->lends_login || left < 0 || left >= pool->stats.max_sessions)
        return 0;
    *former_limit = pool->stats.max_sessions;
    pool->stats.max_sessions = left < 1 ? 1 : (int)left;
    return 0;
}

static long long monotonic_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Takes the most recently used idle session that is still open: one idle
 * past idle_max_ms is asked about first, and closed when the token no
 * longer knows it. 0 when none is left. */
static int take_idle(jwke_p11_pool *pool, CK_SESSION_HANDLE *session)
{
    while (pool->idle_count > 0) {
        int i = --pool->idle_count;
        *session = pool->idle[i];
        if (pool->idle_max_ms < 0 || monotonic_ms() - pool->idle_since_ms[i] < pool->idle_max_ms)
            return 1;
        pool->stats.idle_checks++;
        CK_SESSION_INFO info;
        CK_RV rv = jwke_p11_module_fn(pool->module)->C_GetSessionInfo(*session, &info);
        if (rv == CKR_OK)
            return 1;
        /* Expired is what the token says of a session it closed; any other
         * failure (the device gone) drops the session too, and shows under
         * its own code when the next one is opened. */
        if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
            pool->stats.sessions_expired++;
        jwke_p11_module_fn(pool->module)->C_CloseSession(*session); /* the token may still hold it */
        pool->open_count--;
    }
    return 0;
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

void jwke_p11_pool_set_login(jwke_p11_pool *pool, CK_SESSION_HANDLE login)
{
    pool->login = login;
    pool->login_lent = 0;
}

int jwke_p11_pool_lends_login(const jwke_p11_pool *pool)
{
    return pool->lends_login;
}

/* Whether a borrower would get a session now without waiting. */
static int session_available(const jwke_p11_pool *pool)
{
    if (pool->lends_login)
        return !pool->login_lent;
    return pool->idle_count > 0 || pool->open_count < pool->stats.max_sessions;
}

int jwke_p11_pool_borrow(jwke_p11_pool *pool, pthread_mutex_t *lock, CK_SLOT_ID slot,
                         CK_SESSION_HANDLE *session, int *former_limit, jwke_error *err)
{
    struct timespec deadline;
    int have_deadline = 0;
    *former_limit = 0;
    for (;;) {
        if (pool->lends_login) {
            if (!pool->login_lent) {
                pool->login_lent = 1;
                *session = pool->login;
                return 0;
            }
        } else if (take_idle(pool, session)) {
            return 0;
        } else if (pool->open_count < pool->stats.max_sessions) {
            /* The token's lock is let go while the session opens: on a
             * network HSM C_OpenSession may take as long as its timeout,
             * and every other thread of the token (a session given back,
             * stats, an outage failing fast) needs that lock meanwhile.
             * The session is counted before, so the bound holds. Nothing
             * forgets the pool meanwhile: that takes a new module epoch,
             * which waits for the caller's use lock to go. */
            pool->open_count++;
            CK_FUNCTION_LIST_PTR fn = jwke_p11_module_fn(pool->module);
            jwke_mutex_unlock(lock);
            CK_RV rv = fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                         session);
            jwke_mutex_lock(lock, JWKE_LOCK_TOKEN);
            if (rv == CKR_OK) {
                pool->stats.sessions_opened++;
                return 0;
            }
            pool->open_count--;
            pthread_cond_signal(&pool->session_free); /* the place is free again */
            if (rv != CKR_SESSION_COUNT || pool->open_count == 0)
                return jwke_fail_ckr(err, "C_OpenSession", rv);
            /* The token allows fewer sessions than configured: learn it. */
            *former_limit = pool->stats.max_sessions;
            pool->stats.max_sessions = pool->open_count;
        }
        if (!have_deadline) {
            deadline = deadline_after(pool->wait_ms);
            have_deadline = 1;
            pool->stats.session_waits++;
        }
        if (pthread_cond_timedwait(&pool->session_free, lock, &deadline) == ETIMEDOUT &&
            !session_available(pool)) {
            if (pool->lends_login)
                return jwke_fail_code(err, JWKE_ERR_HSM_BUSY, "the login session (hsm.max_sessions = 0: no "
                                      "pool) did not become free within %d ms (raise hsm.max_sessions "
                                      "or hsm.session_wait_ms)", pool->wait_ms);
            return jwke_fail_code(err, JWKE_ERR_HSM_BUSY, "no PKCS#11 session became free within %d ms (all %d are busy; "
                             "raise hsm.max_sessions or hsm.session_wait_ms)",
                             pool->wait_ms, pool->stats.max_sessions);
        }
    }
}

void jwke_p11_pool_give_back(jwke_p11_pool *pool, CK_SESSION_HANDLE session, int healthy)
{
    if (pool->lends_login) {
        /* kept even after a failure: a failed C_Sign ends its operation,
         * and searches are always finalized */
        pool->login_lent = 0;
    } else if (healthy && pool->idle_count < JWKE_POOL_LIMIT) {
        pool->idle_since_ms[pool->idle_count] = pool->idle_max_ms < 0 ? 0 : monotonic_ms();
        pool->idle[pool->idle_count++] = session;
    } else {
        jwke_p11_module_fn(pool->module)->C_CloseSession(session);
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
    pool->login_lent = 0;
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
        jwke_p11_module_fn(pool->module)->C_CloseSession(pool->idle[--pool->idle_count]);
        pool->open_count--;
    }
}

void jwke_p11_pool_counts(const jwke_p11_pool *pool, jwke_p11_pool_stats *out)
{
    *out = pool->stats;
    out->sessions_open = pool->open_count;
}

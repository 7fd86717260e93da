/* A token in use (see p11_token.h for the rules): opening and closing it,
 * the fork catch-up, its sessions (a pool, p11_session.c) and recovery
 * (jwke_p11_run). Its login and kept PIN are p11_login.c's, its outage
 * state p11_outage.c's.
 *
 * Names say the lock a function expects: _holding_token, the token's lock
 * held by the caller, who is also inside the module (jwke_p11_module_enter)
 * when the function calls into it; no suffix, no lock of ours held (the
 * function takes what it needs, in the order of lock_order.h). */
#include "p11_token.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "ckr_names.h"
#include "engine_limits.h"
#include "lock_order.h"
#include "p11_login.h"
#include "p11_outage.h"
#include "p11_session.h"
#include "sigpipe_guard.h"

struct jwke_p11_token {
    jwke_p11_module *module;
    CK_SLOT_ID slot;
    char label[33];        /* to find the token again after a re-insertion */
    char serial[17];

    pthread_mutex_t lock;  /* guards everything below */
    jwke_p11_pool *pool;
    unsigned fork_generation; /* the process generation this state belongs to (atomic:
                               * read before t->lock, which the catch-up renews) */
    unsigned epoch;        /* module epoch our sessions and login belong to */
    unsigned object_epoch; /* bumped whenever cached object handles go stale */
    CK_SESSION_HANDLE login_session;
    int have_login_session;
    unsigned login_session_epoch; /* module epoch the login session was opened in */
    long long login_session_checked_ms; /* when it was last logged in or asked about */
    int session_idle_max_ms;    /* sessions idle longer are asked about; < 0: never */
    int reinit_interval_ms;     /* the least time between re-initializations */
    long long last_reinit_ms;
    enum jwke_verify_after_sign verify_after_sign;

    jwke_p11_kept_pin *pin;     /* the login's PIN (p11_login.c) */
    /* An outage (p11_outage.c): a re-initialization did not bring the token
     * back. Its own lock, so calls fail fast while an attempt to come back
     * holds this token's. */
    jwke_p11_outage *outage;

    jwke_p11_stats stats;
    char events[JWKE_EVENT_QUEUE][JWKE_EVENT_SIZE];
    int event_count;
    int tracked;           /* the module's login record of our slot counts us */
};

static void queue_event(jwke_p11_token *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static long long now_ms(void);

static unsigned token_generation(const jwke_p11_token *t)
{
    return __atomic_load_n(&t->fork_generation, __ATOMIC_ACQUIRE);
}

/* Whether the token's state was copied from the parent by a fork and not
 * caught up yet (catch_up_after_fork): then its handles and its login
 * record are the parent's, and nothing may touch them. */
static int inherited(const jwke_p11_token *t)
{
    return token_generation(t) != jwke_p11_fork_generation() ||
           !jwke_p11_module_is_current(t->module);
}

/* The one fork catch-up of a token, done on its first use in a forked
 * child: the locks were copied in whatever state the parent's threads left
 * them, and every session handle belongs to the parent (dropped, never
 * closed); the module's catch-up dropped the login records. Done once,
 * even when several threads of the child get here together. */
static void catch_up_after_fork(jwke_p11_token *t)
{
    unsigned generation = jwke_p11_fork_generation();
    if (token_generation(t) == generation)
        return;
    jwke_p11_fork_lock();
    if (t->fork_generation != generation) {
        pthread_mutex_init(&t->lock, NULL);
        jwke_p11_outage_after_fork(t->outage);
        jwke_p11_pool_after_fork(t->pool);
        t->epoch = 0;
        t->have_login_session = 0;
        t->tracked = 0;
        t->object_epoch++;
        /* published last: a thread that sees it finds the fresh locks */
        __atomic_store_n(&t->fork_generation, generation, __ATOMIC_RELEASE);
    }
    jwke_p11_fork_unlock();
}

/* The token's lock (the token rank of lock_order.h). Every entry point
 * catches up with a fork first (catch_up_after_fork takes the module list
 * lock, which comes before the module's use lock). */
static void lock_token(jwke_p11_token *t)
{
    jwke_mutex_lock(&t->lock, JWKE_LOCK_TOKEN);
}

static void unlock_token(jwke_p11_token *t)
{
    jwke_mutex_unlock(&t->lock);
}

/* The module's function list; the caller is inside the module. */
static CK_FUNCTION_LIST_PTR fn_of(const jwke_p11_token *t)
{
    return jwke_p11_module_fn(t->module);
}

static jwke_p11_token *token_open(jwke_p11_module *module, CK_SLOT_ID slot, const char *label,
                                  const char *serial, const jwke_p11_options *options,
                                  jwke_error *err)
{
    jwke_p11_token *t = calloc(1, sizeof *t);
    if (!t) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory opening a token");
        return NULL;
    }
    if (jwke_p11_module_check(module, err) == 0) {
        free(t);
        return NULL;
    }
    t->module = module;
    t->slot = slot;
    snprintf(t->label, sizeof t->label, "%s", label ? label : "");
    snprintf(t->serial, sizeof t->serial, "%s", serial ? serial : "");
    /* 0 (or no options) takes the default; any other value is used as
     * given: the configuration's schema (lua/jwkengine/config_settings.lua)
     * checked it, and nothing here checks it again. */
    jwke_p11_options o = options ? *options : (jwke_p11_options){.verify_after_sign = JWKE_VERIFY_RSA};
    t->session_idle_max_ms = o.session_idle_max_ms ? o.session_idle_max_ms : JWKE_POOL_SESSION_IDLE_MAX_MS;
    t->pool = jwke_p11_pool_new(module, o.max_sessions ? o.max_sessions : JWKE_POOL_MAX_SESSIONS,
                                o.session_wait_ms ? o.session_wait_ms : JWKE_POOL_SESSION_WAIT_MS,
                                t->session_idle_max_ms);
    if (!t->pool) {
        free(t);
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory opening a token");
        return NULL;
    }
    t->reinit_interval_ms = o.reinit_interval_ms ? o.reinit_interval_ms : JWKE_POOL_REINIT_INTERVAL_MS;
    t->outage = jwke_p11_outage_new(t->reinit_interval_ms, o.reinit_interval_max_ms
                                                               ? o.reinit_interval_max_ms
                                                               : JWKE_POOL_REINIT_INTERVAL_MAX_MS);
    t->pin = jwke_p11_kept_pin_new();
    if (!t->outage || !t->pin) {
        jwke_p11_outage_free(t->outage, 0);
        jwke_p11_kept_pin_free(t->pin);
        jwke_p11_pool_free(t->pool, 0);
        free(t);
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory opening a token");
        return NULL;
    }
    t->last_reinit_ms = -1000000;
    t->verify_after_sign = o.verify_after_sign;
    pthread_mutex_init(&t->lock, NULL);
    t->fork_generation = jwke_p11_fork_generation();

    int former_limit = 0;
    CK_RV rv = CKR_OK;
    jwke_p11_module_enter(module);
    /* inside the module its epoch cannot change: the sessions belong to it */
    t->epoch = jwke_p11_module_check(module, err);
    /* the pool fits what the token has left beside the login session */
    int fitted = jwke_p11_pool_fit_token(t->pool, slot, 1, &former_limit, err) == 0;
    if (fitted)
        rv = fn_of(t)->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                  &t->login_session);
    jwke_p11_module_leave(module);
    if (!fitted || rv != CKR_OK) {
        if (fitted)
            jwke_fail_ckr(err, "C_OpenSession", rv);
        pthread_mutex_destroy(&t->lock);
        jwke_p11_outage_free(t->outage, 0);
        jwke_p11_kept_pin_free(t->pin);
        jwke_p11_pool_free(t->pool, 0);
        free(t);
        return NULL;
    }
    t->have_login_session = 1;
    t->login_session_epoch = t->epoch;
    jwke_p11_pool_set_login(t->pool, t->login_session);
    t->tracked = 1;
    if (former_limit) {
        jwke_p11_pool_stats pool;
        jwke_p11_pool_counts(t->pool, &pool);
        queue_event(t, "the token allows %ld sessions and %ld are open: the pool holds at most "
                    "%d beside the login session (hsm.max_sessions is %d)",
                    pool.token_max_sessions, pool.token_sessions < 0 ? 0 : pool.token_sessions,
                    pool.max_sessions, former_limit);
    }
    jwke_p11_module_track_slot(module, slot, +1);
    jwke_p11_module_retain(module); /* released in jwke_p11_token_close */
    return t;
}

jwke_p11_token *jwke_p11_token_open(jwke_p11_module *module, CK_SLOT_ID slot, const char *label,
                                    const char *serial, const jwke_p11_options *options,
                                    jwke_error *err)
{
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    jwke_p11_token *t = token_open(module, slot, label, serial, options, err);
    jwke_sigpipe_restore(&guard);
    return t;
}

void jwke_p11_token_close(jwke_p11_token *t)
{
    if (!t)
        return;
    /* closing talks to the module too, whose server may be gone */
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    /* a forked child's copy of a lock may be held by a parent's thread */
    int inherited_locks = token_generation(t) != jwke_p11_fork_generation();
    /* In a forked child that never caught up, the handles and the login
     * record belong to the parent: touch nothing. */
    if (!inherited(t)) {
        jwke_error ignored;
        jwke_p11_module_enter(t->module);
        lock_token(t);
        if (t->epoch == jwke_p11_module_check(t->module, &ignored)) {
            jwke_p11_pool_close_idle(t->pool);
            if (t->have_login_session)
                fn_of(t)->C_CloseSession(t->login_session);
        }
        t->have_login_session = 0;
        unlock_token(t);
        jwke_p11_module_leave(t->module);
        if (t->tracked)
            jwke_p11_module_track_slot(t->module, t->slot, -1);
    }
    jwke_p11_kept_pin_free(t->pin);
    jwke_p11_module_release(t->module);
    if (!inherited_locks)
        pthread_mutex_destroy(&t->lock);
    jwke_p11_outage_free(t->outage, inherited_locks);
    jwke_p11_pool_free(t->pool, inherited_locks);
    free(t);
    jwke_sigpipe_restore(&guard);
}

/* Logs the login session in with the kept PIN (p11_login.c). */
static int log_in_holding_token(jwke_p11_token *t, jwke_error *err)
{
    if (jwke_p11_kept_pin_log_in(t->pin, t->module, t->slot, &t->login_session, err) != 0)
        return -1;
    t->login_session_checked_ms = now_ms();
    return 0;
}

/* Puts a new PIN (from jwke_p11_pin_take, taken over; NULL drops the PIN)
 * in place of the kept one and logs in with it, under the token's lock: a
 * recovery in another thread may be logging in with the old one right now. */
static int keep_pin_and_log_in(jwke_p11_token *t, unsigned char *pin, size_t pin_len,
                               jwke_error *err)
{
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    catch_up_after_fork(t);
    int current = jwke_p11_module_check(t->module, err) != 0;
    jwke_p11_module_enter(t->module);
    lock_token(t);
    jwke_p11_kept_pin_replace(t->pin, pin, pin_len);
    int rc = pin && current ? log_in_holding_token(t, err) : -1;
    if (rc != 0)
        jwke_p11_kept_pin_drop(t->pin); /* a refused PIN is not kept */
    unlock_token(t);
    jwke_p11_module_leave(t->module);
    jwke_sigpipe_restore(&guard);
    return rc;
}

int jwke_p11_login_from(jwke_p11_token *t, jwke_pin_fill fill, const void *ctx, jwke_error *err)
{
    unsigned char *pin;
    size_t n;
    /* a PIN that cannot be taken drops the kept one all the same: the new
     * one was meant to replace it */
    jwke_p11_pin_take(fill, ctx, &pin, &n, err);
    return keep_pin_and_log_in(t, pin, n, err);
}

int jwke_p11_login(jwke_p11_token *t, const char *pin, size_t pin_len, jwke_error *err)
{
    jwke_pin_bytes given = {(const unsigned char *)pin, pin_len, "C_Login: the PIN"};
    return jwke_p11_login_from(t, jwke_pin_from_bytes, &given, err);
}

int jwke_p11_login_file(jwke_p11_token *t, const char *path, jwke_error *err)
{
    return jwke_p11_login_from(t, jwke_pin_from_file, path, err);
}

void jwke_p11_token_stats(jwke_p11_token *t, jwke_p11_stats *out)
{
    catch_up_after_fork(t);
    lock_token(t);
    *out = t->stats;
    jwke_p11_pool_counts(t->pool, &out->pool);
    unlock_token(t);
}

int jwke_p11_take_events(jwke_p11_token *t, char (*out)[JWKE_EVENT_SIZE], int max)
{
    catch_up_after_fork(t);
    lock_token(t);
    int n = t->event_count < max ? t->event_count : max;
    for (int i = 0; i < n; i++)
        memcpy(out[i], t->events[i], sizeof out[i]);
    memmove(t->events, t->events + n, (size_t)(t->event_count - n) * sizeof t->events[0]);
    t->event_count -= n;
    unlock_token(t);
    return n;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *ckr(CK_RV rv)
{
    const char *name = jwke_ckr_name(rv);
    return name ? name : "a vendor-defined error";
}

/* Queues one log line; the Lua side drains and logs them. Caller holds
 * t->lock. Never called with anything secret. */
static void queue_event(jwke_p11_token *t, const char *fmt, ...)
{
    if (t->event_count == JWKE_EVENT_QUEUE) { /* keep the newest */
        memmove(t->events, t->events + 1, (JWKE_EVENT_QUEUE - 1) * sizeof t->events[0]);
        t->event_count--;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->events[t->event_count++], sizeof t->events[0], fmt, ap);
    va_end(ap);
}

static enum jwke_recovery classify(CK_RV rv)
{
    switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
        return JWKE_RECOVER_SESSION;
    case CKR_USER_NOT_LOGGED_IN:
        return JWKE_RECOVER_LOGIN;
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID:
        return JWKE_RECOVER_OBJECT;
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_DEVICE_ERROR:
        return JWKE_RECOVER_REINIT;
    default:
        return JWKE_RECOVER_NONE;
    }
}

/* Finds our token again after a reset: the same slot if it still holds
 * the same token, else the slot holding its serial (or label). */
static int find_slot_again(jwke_p11_token *t, jwke_error *err)
{
    CK_TOKEN_INFO info;
    char serial[sizeof t->serial];
    if (fn_of(t)->C_GetTokenInfo(t->slot, &info) == CKR_OK) {
        jwke_p11_copy_padded(serial, sizeof serial, info.serialNumber, sizeof info.serialNumber);
        if (strcmp(serial, t->serial) == 0)
            return 0;
    }
    jwke_p11_slot *slots;
    size_t count;
    if (jwke_p11_list_slots_entered(t->module, &slots, &count, err) != 0)
        return -1;
    int found = 0;
    for (size_t i = 0; i < count && !found; i++) {
        if (slots[i].token_present && (t->serial[0] ? strcmp(slots[i].serial, t->serial) == 0
                                                    : strcmp(slots[i].label, t->label) == 0)) {
            t->slot = slots[i].id;
            found = 1;
        }
    }
    free(slots);
    if (!found)
        return jwke_fail_code(err, JWKE_ERR_TOKEN_NOT_FOUND, "token '%s' (serial %s) is not present",
                              t->label, t->serial);
    return 0;
}

/* Starts over on the module's current epoch: forgets every session handle
 * (never closing them: they belong to a finalized module or to the parent
 * process), finds the token, opens the login session and logs in again.
 * Cached object handles become stale. Caller holds t->lock. */
static int start_over_holding_token(jwke_p11_token *t, unsigned epoch, jwke_error *err)
{
    /* A reset that failed at login keeps the login session it opened for
     * this epoch: trying again must not open (and leak) another one. */
    int reuse = t->have_login_session && t->login_session_epoch == epoch;
    if (!reuse) {
        jwke_p11_pool_forget(t->pool);
        t->have_login_session = 0;
        t->object_epoch++;
    }
    if (jwke_p11_kept_pin_refused(t->pin))
        return log_in_holding_token(t, err); /* fails at once, saying why */
    if (!reuse) {
        if (find_slot_again(t, err) != 0)
            return -1;
        CK_RV rv = fn_of(t)->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                                NULL, NULL, &t->login_session);
        if (rv != CKR_OK)
            return jwke_fail_ckr(err, "C_OpenSession", rv);
        t->have_login_session = 1;
        t->login_session_epoch = epoch;
        jwke_p11_pool_set_login(t->pool, t->login_session);
    }
    if (!t->tracked) {
        t->tracked = 1;
        jwke_p11_module_track_slot(t->module, t->slot, +1);
    }
    if (jwke_p11_kept_pin_present(t->pin) && log_in_holding_token(t, err) != 0) {
        /* the PIN refused on the way back is a refusal, not an outage:
         * it is never tried again (p11_login.c), so no attempt can end it */
        if (jwke_p11_kept_pin_refused(t->pin))
            err->code = JWKE_ERR_LOGIN_REFUSED;
        return -1;
    }
    t->epoch = epoch;
    return 0;
}

/* Locks the token, first catching up with a module reset (a new epoch).
 * The caller is inside the module and has caught up with a fork. */
static int lock_token_on_current_epoch(jwke_p11_token *t, jwke_error *err)
{
    lock_token(t);
    unsigned epoch = jwke_p11_module_check(t->module, err);
    if (epoch == 0 || (epoch != t->epoch && start_over_holding_token(t, epoch, err) != 0)) {
        unlock_token(t);
        return -1;
    }
    return 0;
}

/* Borrows a session from the pool (see p11_session.h). Caller holds
 * t->lock. */
static int borrow_holding_token(jwke_p11_token *t, CK_SESSION_HANDLE *session, jwke_error *err)
{
    int former_limit;
    int result = jwke_p11_pool_borrow(t->pool, &t->lock, t->slot, session, &former_limit, err);
    if (former_limit) {
        jwke_p11_pool_stats pool;
        jwke_p11_pool_counts(t->pool, &pool);
        queue_event(t, "the token allows %d sessions for jwkengine (hsm.max_sessions was %d)",
                    pool.max_sessions, former_limit);
    }
    return result;
}

/* Logs in again. When the pool lends the login session, it is borrowed
 * first: another thread may be signing on it. Caller holds t->lock. */
static int log_in_again_holding_token(jwke_p11_token *t, jwke_error *err)
{
    if (!jwke_p11_pool_lends_login(t->pool))
        return log_in_holding_token(t, err);
    CK_SESSION_HANDLE login;
    if (borrow_holding_token(t, &login, err) != 0)
        return -1;
    int result = log_in_holding_token(t, err);
    jwke_p11_pool_give_back(t->pool, login, 1);
    return result;
}

/* Returns a borrowed session: to the pool after success, closed after any
 * failure (so no operation can still be active on a pooled session). A
 * session from an older epoch is just forgotten. */
static void give_back(jwke_p11_token *t, CK_SESSION_HANDLE session, unsigned epoch, int healthy)
{
    lock_token(t);
    if (epoch == t->epoch)
        jwke_p11_pool_give_back(t->pool, session, healthy);
    else /* it belongs to a module state that is gone: just forgotten */
        jwke_p11_pool_signal(t->pool);
    unlock_token(t);
}

static int is_login_refusal(const jwke_error *err)
{
    return err->code && strcmp(err->code, JWKE_ERR_LOGIN_REFUSED) == 0;
}

/* Starts an outage (or records one more failed attempt to end it) and
 * fills err with the fast failure; logs the start. Returns -1. */
static int fail_down_holding_token(jwke_p11_token *t, const char *cause, CK_RV rv,
                                   const char *why, jwke_error *err)
{
    char event[JWKE_EVENT_SIZE];
    jwke_p11_outage_mark_down(t->outage, cause, rv, why, err, event, sizeof event);
    if (event[0])
        queue_event(t, "%s", event);
    return -1;
}

int jwke_p11_token_outage(jwke_p11_token *t, long long *retry_in_ms, char *cause,
                          size_t cause_size)
{
    catch_up_after_fork(t);
    return jwke_p11_outage_state(t->outage, retry_in_ms, cause, cause_size);
}

/* The login session is never handed out, so a token that closes idle
 * sessions (YubiHSM 2: 30 s) closes it first; once every session is gone
 * the token has logged out too (PKCS#11: the login belongs to the
 * application's sessions), and an operation would fail on a private key.
 * So, like a pooled session, the login session is asked about when it has
 * been quiet longer than hsm.session_idle_max (which also keeps it alive on
 * a token whose timer a call resets); when the token closed it or lost the
 * login, a new one is opened and logged in before the operation: a login
 * recovery, no failure for the caller. A device that does not answer is
 * left to the operation, which meets it and recovers as usual. NOW asks
 * whatever the time (a pooled session was found closed by the token, which
 * then closed the older login session too). */
enum login_check { WHEN_QUIET, NOW };
static void check_login_session_holding_token(jwke_p11_token *t, enum login_check when)
{
    long long now = now_ms();
    jwke_error ignored;
    /* after a re-initialization the login session is another epoch's: the
     * reset that follows opens a new one and logs in (start_over_holding_token) */
    if (!jwke_p11_kept_pin_present(t->pin) || jwke_p11_kept_pin_refused(t->pin) ||
        !t->have_login_session ||
        t->login_session_epoch != t->epoch || jwke_p11_module_check(t->module, &ignored) != t->epoch)
        return;
    if (when == WHEN_QUIET && (t->session_idle_max_ms < 0 ||
                          now - t->login_session_checked_ms < t->session_idle_max_ms))
        return;
    t->login_session_checked_ms = now;
    CK_SESSION_INFO info;
    CK_RV rv = fn_of(t)->C_GetSessionInfo(t->login_session, &info);
    if (rv == CKR_OK && (info.state == CKS_RW_USER_FUNCTIONS || info.state == CKS_RO_USER_FUNCTIONS))
        return;
    if (rv != CKR_OK && rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_SESSION_CLOSED)
        return;
    const char *what = rv == CKR_OK ? "the token logged the login session out"
                                    : "the token closed the idle login session";
    jwke_error err;
    if (log_in_holding_token(t, &err) != 0) {
        queue_event(t, "PKCS#11 recovery failed: %s and logging in again did not work: %s", what,
                    err.message);
        return;
    }
    t->object_epoch++; /* tokens may drop private-object handles at logout */
    t->stats.recoveries[JWKE_RECOVER_LOGIN]++;
    queue_event(t, "PKCS#11 recovery: %s; logged in again before the next operation", what);
}

static const char *const recovery_names[JWKE_RECOVER_CLASSES] = {
    "", "opening a new session", "logging in again", "finding the object again",
    "re-initializing the module"};

/* The repair for one recoverable failure of a call made in failed_epoch.
 * The caller is outside the module: a re-initialization takes it for
 * writing, the other repairs enter it. */
static int recover(jwke_p11_token *t, enum jwke_recovery kind, const char *function, CK_RV rv,
                   unsigned failed_epoch, jwke_error *err)
{
    int inside = kind != JWKE_RECOVER_REINIT;
    if (inside)
        jwke_p11_module_enter(t->module);
    lock_token(t);
    int result = 0;
    jwke_error ignored;
    if (jwke_p11_module_check(t->module, &ignored) != failed_epoch)
        kind = JWKE_RECOVER_NONE; /* re-initialized meanwhile: the retry starts over */
    switch (kind) {
    case JWKE_RECOVER_SESSION:
        /* the failed session was closed when it came back; a token that
         * closed it may have closed the login session too */
        check_login_session_holding_token(t, NOW);
        break;
    case JWKE_RECOVER_LOGIN:
        /* Tokens may drop private-object handles at logout (SoftHSM does),
         * so keys find theirs again before the retry. */
        result = log_in_again_holding_token(t, err);
        t->object_epoch++;
        break;
    case JWKE_RECOVER_OBJECT:
        /* a token that logged out hides its private objects: logged in
         * again first, or finding the key again would find nothing */
        check_login_session_holding_token(t, NOW);
        t->object_epoch++; /* keys find their handles again before use */
        break;
    case JWKE_RECOVER_REINIT: {
        long long now = now_ms();
        char cause[128];
        snprintf(cause, sizeof cause, "%s: %s", function, ckr(rv));
        if (now - t->last_reinit_ms < t->reinit_interval_ms) {
            /* failing again so soon after a re-initialization: an outage,
             * tried again after the backoff rather than on every call */
            char why[96];
            snprintf(why, sizeof why, "the module was re-initialized %lld ms before",
                     now - t->last_reinit_ms);
            result = fail_down_holding_token(t, cause, rv, why, err);
            break;
        }
        t->last_reinit_ms = now;
        unlock_token(t);
        /* lock_token_on_current_epoch() on the retry sees the new epoch and starts over */
        result = jwke_p11_module_reinitialize(t->module, failed_epoch, err);
        lock_token(t);
        if (result != 0)
            fail_down_holding_token(t, cause, rv, err->message, err); /* copied before err is rewritten */
        break;
    }
    default:
        break;
    }
    if (kind == JWKE_RECOVER_NONE) {
        /* nothing to repair here */
    } else if (result == 0) {
        t->stats.recoveries[kind]++;
        /* Only the repair is done here: whether the retry works is told by
         * jwke_p11_run, so this line must not claim the recovery. */
        queue_event(t, "PKCS#11 recovery: %s failed with %s; retrying once after %s", function,
                    ckr(rv), recovery_names[kind]);
    } else {
        queue_event(t, "PKCS#11 recovery failed: %s failed with %s and %s did not work", function,
                    ckr(rv), recovery_names[kind]);
    }
    unlock_token(t);
    if (inside)
        jwke_p11_module_leave(t->module);
    return result;
}

/* The retry could not even start (the repair left no usable token): the
 * message keeps the failure that started it all. */
static int fail_after(jwke_p11_token *t, jwke_error *err, const char *function, CK_RV rv)
{
    lock_token(t);
    t->stats.failed_recoveries++;
    unlock_token(t);
    jwke_error why = *err;
    jwke_fail(err, "%s: %s (recovery failed: %s)", function, ckr(rv), why.message);
    err->ckr = rv;
    /* a refused login stays recognizable; any other cause is told by the CKR */
    if (why.code && strcmp(why.code, JWKE_ERR_LOGIN_REFUSED) == 0)
        err->code = why.code;
    return -1;
}

/* Tries once to end an outage: the module initialized anew (a module that
 * lost its server, as p11-kit's client, comes back only that way), the
 * token found by serial in whatever slot holds it now, a login session
 * opened and logged in with the kept PIN. */
static int try_to_end_outage(jwke_p11_token *t, jwke_error *err)
{
    unsigned epoch = jwke_p11_module_check(t->module, err);
    if (epoch == 0 || jwke_p11_module_reinitialize(t->module, epoch, err) != 0)
        return -1;
    jwke_p11_module_enter(t->module);
    int result = lock_token_on_current_epoch(t, err);
    if (result == 0)
        unlock_token(t);
    jwke_p11_module_leave(t->module);
    return result;
}

/* Lets a call through when the token is not down; during an outage fails
 * it at once, unless the next attempt to come back is due: then this call
 * makes it (one thread at a time) and goes on if it worked. */
static int admit_during_outage(jwke_p11_token *t, jwke_error *err)
{
    catch_up_after_fork(t);
    /* the outage's own lock, not the token's: an attempt may hold that */
    enum jwke_p11_admission admission = jwke_p11_outage_admit(t->outage, err);
    if (admission != JWKE_ADMIT_ATTEMPT)
        return admission == JWKE_ADMIT_UP ? 0 : -1;
    lock_token(t);
    t->last_reinit_ms = now_ms();
    unlock_token(t);
    jwke_error why;
    int result = try_to_end_outage(t, &why);
    enum jwke_p11_attempt outcome = result == 0 ? JWKE_ATTEMPT_BACK
                                    /* reachable again, but the PIN is refused: not retried */
                                    : is_login_refusal(&why) ? JWKE_ATTEMPT_REFUSED
                                                             : JWKE_ATTEMPT_FAILED;
    char event[JWKE_EVENT_SIZE];
    lock_token(t);
    jwke_p11_outage_attempt_ended(t->outage, outcome, why.message, err, event, sizeof event);
    if (outcome == JWKE_ATTEMPT_BACK)
        t->stats.recoveries[JWKE_RECOVER_REINIT]++;
    else if (outcome == JWKE_ATTEMPT_REFUSED)
        *err = why;
    if (event[0])
        queue_event(t, "%s", event);
    unlock_token(t);
    return result;
}

/* The token could not be made usable for a call (lock_token_on_current_epoch failed):
 * anything but a refused PIN starts (or continues) an outage. cause: the
 * failure a repair was for, or NULL when there was none. */
static int fail_unusable(jwke_p11_token *t, jwke_error *err, const char *function, CK_RV rv)
{
    if (is_login_refusal(err))
        return function ? fail_after(t, err, function, rv) : -1;
    char cause[128];
    if (function)
        snprintf(cause, sizeof cause, "%s: %s", function, ckr(rv));
    else
        snprintf(cause, sizeof cause, "%.*s", (int)sizeof cause - 1, err->message);
    jwke_error why = *err;
    lock_token(t);
    if (function)
        t->stats.failed_recoveries++;
    fail_down_holding_token(t, cause, function ? rv : why.ckr, why.message, err);
    unlock_token(t);
    return -1;
}

static int run_unguarded(jwke_p11_token *t, jwke_p11_op op, void *ctx, jwke_error *err)
{
    const char *failed_function = NULL;
    CK_RV failed_rv = CKR_OK;
    enum jwke_recovery repaired_by = JWKE_RECOVER_NONE;
    for (int attempt = 0;; attempt++) {
        CK_SESSION_HANDLE session;
        if (admit_during_outage(t, err) != 0)
            return -1;
        /* In a forked child the module catches up first (that renews its
         * locks); then the module stays initialized while this attempt uses
         * it: a re-initialization waits for the read lock to go. */
        if (jwke_p11_module_check(t->module, err) == 0)
            return fail_unusable(t, err, failed_function, failed_rv);
        jwke_p11_module_enter(t->module);
        if (lock_token_on_current_epoch(t, err) != 0) {
            jwke_p11_module_leave(t->module);
            return fail_unusable(t, err, failed_function, failed_rv);
        }
        check_login_session_holding_token(t, WHEN_QUIET);
        unsigned epoch = t->epoch;
        int borrowed = borrow_holding_token(t, &session, err);
        unlock_token(t);

        const char *function = "C_OpenSession";
        CK_RV rv;
        if (borrowed != 0) {
            jwke_p11_module_leave(t->module);
            /* a session refused because the device is gone is repaired as
             * an operation failing for that reason would be */
            if (classify(err->ckr) != JWKE_RECOVER_REINIT)
                return attempt ? fail_after(t, err, failed_function, failed_rv) : -1;
            rv = err->ckr;
        } else {
            function = "(no call)";
            rv = op(t, session, ctx, &function, err);
            give_back(t, session, epoch, rv == CKR_OK);
            jwke_p11_module_leave(t->module);
            if (rv == CKR_OK)
                return 0;
            if (rv == JWKE_OP_FAILED)
                return -1;
        }

        enum jwke_recovery kind = classify(rv);
        if (kind == JWKE_RECOVER_NONE || attempt == 1) {
            if (attempt == 1) {
                lock_token(t);
                if (kind != JWKE_RECOVER_NONE)
                    t->stats.failed_recoveries++;
                queue_event(t, "PKCS#11 recovery failed: the retry after %s failed with %s: %s",
                            recovery_names[repaired_by], function, ckr(rv));
                if (kind == JWKE_RECOVER_REINIT) {
                    /* re-initialized, and the device still fails: an outage */
                    char cause[128];
                    snprintf(cause, sizeof cause, "%s: %s", function, ckr(rv));
                    fail_down_holding_token(t, cause, rv,
                                     "the retry after re-initializing failed the same way", err);
                    unlock_token(t);
                    return -1;
                }
                unlock_token(t);
            }
            return jwke_fail_ckr(err, function, rv);
        }
        if (recover(t, kind, function, rv, epoch, err) != 0)
            return err->code && strcmp(err->code, JWKE_ERR_HSM_UNAVAILABLE) == 0
                       ? -1
                       : fail_after(t, err, function, rv);
        repaired_by = kind;
        failed_function = function;
        failed_rv = rv;
    }
}

int jwke_p11_run(jwke_p11_token *t, jwke_p11_op op, void *ctx, jwke_error *err)
{
    /* every call into the module, repairs included, is made in here */
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    int result = run_unguarded(t, op, ctx, err);
    jwke_sigpipe_restore(&guard);
    return result;
}

enum jwke_verify_after_sign jwke_p11_token_verify_after_sign(const jwke_p11_token *t)
{
    return t->verify_after_sign; /* set at open, never changed */
}

void jwke_p11_token_signature_fault(jwke_p11_token *t, const char *fmt, ...)
{
    char line[JWKE_EVENT_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    catch_up_after_fork(t);
    lock_token(t);
    t->stats.signature_faults++;
    queue_event(t, "%s", line);
    unlock_token(t);
}

CK_FUNCTION_LIST_PTR jwke_p11_token_functions(const jwke_p11_token *t)
{
    return fn_of(t);
}

jwke_p11_module *jwke_p11_token_module(const jwke_p11_token *t)
{
    return t->module;
}

CK_SLOT_ID jwke_p11_token_slot(jwke_p11_token *t)
{
    lock_token(t);
    CK_SLOT_ID slot = t->slot;
    unlock_token(t);
    return slot;
}

const char *jwke_p11_token_label(const jwke_p11_token *t)
{
    return t->label;
}

unsigned jwke_p11_token_object_epoch(jwke_p11_token *t)
{
    lock_token(t);
    unsigned epoch = t->object_epoch;
    unlock_token(t);
    return epoch;
}

int jwke_p11_token_keeps_pin(jwke_p11_token *t)
{
    lock_token(t);
    int keeps = jwke_p11_kept_pin_present(t->pin) && !jwke_p11_kept_pin_refused(t->pin);
    unlock_token(t);
    return keeps;
}

void jwke_p11_token_objects_changed(jwke_p11_token *t)
{
    lock_token(t);
    t->object_epoch++;
    unlock_token(t);
}

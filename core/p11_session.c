/* The session pool and recovery (see p11_token.h for the rules). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckr_names.h"
#include "p11_internal.h"

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
    __attribute__((format(printf, 2, 3)));
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
    if (t->module->fn->C_GetTokenInfo(t->slot, &info) == CKR_OK) {
        jwke_p11_copy_padded(serial, sizeof serial, info.serialNumber, sizeof info.serialNumber);
        if (strcmp(serial, t->serial) == 0)
            return 0;
    }
    jwke_p11_slot *slots;
    size_t count;
    if (jwke_p11_list_slots(t->module, &slots, &count, err) != 0)
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
        return jwke_fail_code(err, "ERR_TOKEN_NOT_FOUND", "token '%s' (serial %s) is not present",
                              t->label, t->serial);
    return 0;
}

/* Starts over on the module's current epoch: forgets every session handle
 * (never closing them: they belong to a finalized module or to the parent
 * process), finds the token, opens the login session and logs in again.
 * Cached object handles become stale. Caller holds t->lock. */
static int reset_locked(jwke_p11_token *t, unsigned epoch, jwke_error *err)
{
    /* A reset that failed at login keeps the login session it opened for
     * this epoch: trying again must not open (and leak) another one. */
    int reuse = t->have_login_session && t->login_session_epoch == epoch &&
                t->fork_generation == jwke_p11_fork_generation();
    if (!reuse) {
        t->idle_count = 0;
        t->open_count = 0;
        t->have_login_session = 0;
        t->object_epoch++;
    }
    if (t->pin_refused)
        return jwke_p11_login_locked(t, err); /* fails at once, saying why */
    if (!reuse) {
        if (find_slot_again(t, err) != 0)
            return -1;
        CK_RV rv = t->module->fn->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                                NULL, NULL, &t->login_session);
        if (rv != CKR_OK)
            return jwke_fail_ckr(err, "C_OpenSession", rv);
        t->have_login_session = 1;
        t->login_session_epoch = epoch;
    }
    if (t->tracked_generation != jwke_p11_fork_generation()) {
        t->tracked_generation = jwke_p11_fork_generation();
        jwke_p11_track_slot(t->module, t->slot, +1);
    }
    if (t->pin && jwke_p11_login_locked(t, err) != 0)
        return -1;
    t->epoch = epoch;
    return 0;
}

/* Locks the token, first catching up with a fork or a module reset. */
static int lock_current(jwke_p11_token *t, jwke_error *err)
{
    unsigned generation = jwke_p11_fork_generation();
    if (t->fork_generation != generation) {
        /* First call in a forked child: our locks were copied in whatever
         * state the parent's threads left them. Done once, even when
         * several threads of the child get here together. */
        jwke_p11_fork_lock();
        if (t->fork_generation != generation) {
            pthread_mutex_init(&t->lock, NULL);
            pthread_cond_init(&t->session_free, NULL);
            t->epoch = 0;
            t->fork_generation = generation;
        }
        jwke_p11_fork_unlock();
    }
    pthread_mutex_lock(&t->lock);
    if (t->closed) {
        pthread_mutex_unlock(&t->lock);
        return jwke_fail_code(err, "ERR_CLOSED", "the token is closed");
    }
    unsigned epoch = jwke_p11_module_check(t->module, err);
    if (epoch == 0 || (epoch != t->epoch && reset_locked(t, epoch, err) != 0)) {
        pthread_mutex_unlock(&t->lock);
        return -1;
    }
    return 0;
}

/* Borrows a session: the most recently returned one, a new one while under
 * the bound, or the next one returned within session_wait_ms. Caller holds
 * t->lock. */
static int borrow_locked(jwke_p11_token *t, CK_SESSION_HANDLE *session, jwke_error *err)
{
    struct timespec deadline;
    int have_deadline = 0;
    for (;;) {
        if (t->idle_count > 0) {
            *session = t->idle[--t->idle_count];
            return 0;
        }
        if (t->open_count < t->max_sessions) {
            CK_RV rv = t->module->fn->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                                    NULL, NULL, session);
            if (rv == CKR_OK) {
                t->open_count++;
                t->stats.sessions_opened++;
                return 0;
            }
            if (rv != CKR_SESSION_COUNT || t->open_count == 0)
                return jwke_fail_ckr(err, "C_OpenSession", rv);
            /* The token allows fewer sessions than configured: learn it. */
            queue_event(t, "the token allows %d sessions for jwkengine (hsm.max_sessions was %d)",
                        t->open_count, t->max_sessions);
            t->max_sessions = t->open_count;
        }
        if (!have_deadline) {
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += t->session_wait_ms / 1000;
            deadline.tv_nsec += (long)(t->session_wait_ms % 1000) * 1000000L;
            if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
            }
            have_deadline = 1;
            t->stats.session_waits++;
        }
        if (pthread_cond_timedwait(&t->session_free, &t->lock, &deadline) == ETIMEDOUT &&
            t->idle_count == 0 && t->open_count >= t->max_sessions)
            return jwke_fail_code(err, "ERR_HSM_BUSY",
                                  "no PKCS#11 session became free within %d ms (all %d are busy; "
                                  "raise hsm.max_sessions or hsm.session_wait_ms)",
                                  t->session_wait_ms, t->max_sessions);
    }
}

/* Returns a borrowed session: to the pool after success, closed after any
 * failure (so no operation can still be active on a pooled session). A
 * session from an older epoch is just forgotten. */
static void give_back(jwke_p11_token *t, CK_SESSION_HANDLE session, unsigned epoch, int healthy)
{
    pthread_mutex_lock(&t->lock);
    if (epoch == t->epoch && t->fork_generation == jwke_p11_fork_generation()) {
        if (healthy && t->idle_count < JWKE_POOL_LIMIT) {
            t->idle[t->idle_count++] = session;
        } else {
            t->module->fn->C_CloseSession(session);
            t->open_count--;
        }
    }
    pthread_cond_signal(&t->session_free);
    pthread_mutex_unlock(&t->lock);
}

static const char *const recovery_names[JWKE_RECOVER_CLASSES] = {
    "", "opening a new session", "logging in again", "finding the object again",
    "re-initializing the module"};

/* The repair for one recoverable failure. */
static int recover(jwke_p11_token *t, enum jwke_recovery kind, const char *function, CK_RV rv,
                   jwke_error *err)
{
    pthread_mutex_lock(&t->lock);
    int result = 0;
    switch (kind) {
    case JWKE_RECOVER_SESSION:
        break; /* the failed session was closed when it came back */
    case JWKE_RECOVER_LOGIN:
        /* Tokens may drop private-object handles at logout (SoftHSM does),
         * so keys find theirs again before the retry. */
        result = jwke_p11_login_locked(t, err);
        t->object_epoch++;
        break;
    case JWKE_RECOVER_OBJECT:
        t->object_epoch++; /* keys find their handles again before use */
        break;
    case JWKE_RECOVER_REINIT: {
        long long now = now_ms();
        if (now - t->last_reinit_ms < t->reinit_interval_ms) {
            result = jwke_fail(err, "%s: %s; not re-initializing again within %d ms", function,
                               ckr(rv), t->reinit_interval_ms);
            err->ckr = rv;
            break;
        }
        t->last_reinit_ms = now;
        pthread_mutex_unlock(&t->lock);
        /* lock_current() on the retry sees the new epoch and starts over */
        result = jwke_p11_module_reinitialize(t->module, err);
        pthread_mutex_lock(&t->lock);
        break;
    }
    default:
        break;
    }
    if (result == 0) {
        t->stats.recoveries[kind]++;
        /* Only the repair is done here: whether the retry works is told by
         * jwke_p11_run, so this line must not claim the recovery. */
        queue_event(t, "PKCS#11 recovery: %s failed with %s; retrying once after %s", function,
                    ckr(rv), recovery_names[kind]);
    } else {
        queue_event(t, "PKCS#11 recovery failed: %s failed with %s and %s did not work", function,
                    ckr(rv), recovery_names[kind]);
    }
    pthread_mutex_unlock(&t->lock);
    return result;
}

/* The retry could not even start (the repair left no usable token): the
 * message keeps the failure that started it all. */
static int fail_after(jwke_p11_token *t, jwke_error *err, const char *function, CK_RV rv)
{
    pthread_mutex_lock(&t->lock);
    t->stats.failed_recoveries++;
    pthread_mutex_unlock(&t->lock);
    jwke_error why = *err;
    jwke_fail(err, "%s: %s (recovery failed: %s)", function, ckr(rv), why.message);
    err->ckr = rv;
    /* a refused login stays recognizable; any other cause is told by the CKR */
    if (why.code && strcmp(why.code, "ERR_LOGIN_REFUSED") == 0)
        err->code = why.code;
    return -1;
}

int jwke_p11_run(jwke_p11_token *t, jwke_p11_op op, void *ctx, jwke_error *err)
{
    const char *failed_function = NULL;
    CK_RV failed_rv = CKR_OK;
    enum jwke_recovery repaired_by = JWKE_RECOVER_NONE;
    for (int attempt = 0;; attempt++) {
        CK_SESSION_HANDLE session;
        /* In a forked child the module catches up first (that renews its
         * locks); then the module stays initialized while this attempt uses
         * it: a re-initialization waits for the read lock to go. */
        if (jwke_p11_module_check(t->module, err) == 0)
            return attempt ? fail_after(t, err, failed_function, failed_rv) : -1;
        pthread_rwlock_t *use_lock = &t->module->use_lock;
        pthread_rwlock_rdlock(use_lock);
        if (lock_current(t, err) != 0) {
            pthread_rwlock_unlock(use_lock);
            return attempt ? fail_after(t, err, failed_function, failed_rv) : -1;
        }
        unsigned epoch = t->epoch;
        int borrowed = borrow_locked(t, &session, err);
        pthread_mutex_unlock(&t->lock);
        if (borrowed != 0) {
            pthread_rwlock_unlock(use_lock);
            return attempt ? fail_after(t, err, failed_function, failed_rv) : -1;
        }

        const char *function = "(no call)";
        CK_RV rv = op(t, session, ctx, &function, err);
        give_back(t, session, epoch, rv == CKR_OK);
        pthread_rwlock_unlock(use_lock);
        if (rv == CKR_OK)
            return 0;
        if (rv == JWKE_OP_FAILED)
            return -1;

        enum jwke_recovery kind = classify(rv);
        if (kind == JWKE_RECOVER_NONE || attempt == 1) {
            if (attempt == 1) {
                pthread_mutex_lock(&t->lock);
                if (kind != JWKE_RECOVER_NONE)
                    t->stats.failed_recoveries++;
                queue_event(t, "PKCS#11 recovery failed: the retry after %s failed with %s: %s",
                            recovery_names[repaired_by], function, ckr(rv));
                pthread_mutex_unlock(&t->lock);
            }
            return jwke_fail_ckr(err, function, rv);
        }
        if (recover(t, kind, function, rv, err) != 0)
            return fail_after(t, err, function, rv);
        repaired_by = kind;
        failed_function = function;
        failed_rv = rv;
    }
}

CK_RV jwke_p11_find(jwke_p11_token *t, CK_SESSION_HANDLE session, CK_ATTRIBUTE *template,
                    CK_ULONG template_len, CK_OBJECT_HANDLE **found, size_t *count,
                    const char **function, jwke_error *err)
{
    CK_FUNCTION_LIST_PTR fn = t->module->fn;
    *function = "C_FindObjectsInit";
    CK_RV rv = fn->C_FindObjectsInit(session, template, template_len);
    if (rv != CKR_OK)
        return rv;

    size_t capacity = 16, n = 0;
    CK_OBJECT_HANDLE *handles = malloc(capacity * sizeof *handles);
    *function = "C_FindObjects";
    while (handles) {
        if (n == capacity) {
            CK_OBJECT_HANDLE *grown = realloc(handles, 2 * capacity * sizeof *handles);
            if (!grown)
                break;
            handles = grown;
            capacity *= 2;
        }
        CK_ULONG got = 0, room = (CK_ULONG)(capacity - n);
        rv = fn->C_FindObjects(session, handles + n, room, &got);
        if (rv == CKR_OK && got > room) {
            jwke_fail(err, "C_FindObjects: token reported %lu handles, buffer holds %lu",
                      (unsigned long)got, (unsigned long)room);
            err->code = JWKE_ERR_TOKEN_LENGTH;
            rv = JWKE_OP_FAILED;
        }
        if (rv != CKR_OK || got == 0)
            break;
        n += got;
    }
    if (!handles || (rv == CKR_OK && n == capacity))
        rv = CKR_HOST_MEMORY;
    /* Always end the search, or the session stays busy with it. */
    CK_RV final_rv = fn->C_FindObjectsFinal(session);
    if (rv == CKR_OK && final_rv != CKR_OK) {
        *function = "C_FindObjectsFinal";
        rv = final_rv;
    }
    if (rv != CKR_OK) {
        free(handles);
        return rv;
    }
    *found = handles;
    *count = n;
    return CKR_OK;
}

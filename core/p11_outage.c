/* A token's outage (see p11_outage.h). */
#include "p11_outage.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <openssl/rand.h>

#include "lock_order.h"

struct jwke_p11_outage {
    pthread_mutex_t lock;  /* guards everything below */
    int interval_ms;       /* the first wait */
    int max_ms;            /* where the doubling stops */
    int down;
    int attempting;        /* a thread is trying to come back: the others fail fast */
    int backoff_ms;
    long long next_attempt_ms;
    CK_RV down_rv;
    char down_cause[128];  /* the failure that started the outage */
    char last_attempt[200]; /* why the latest try to come back failed */
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void lock(jwke_p11_outage *o)
{
    jwke_mutex_lock(&o->lock, JWKE_LOCK_OUTAGE);
}

static void unlock(jwke_p11_outage *o)
{
    jwke_mutex_unlock(&o->lock);
}

jwke_p11_outage *jwke_p11_outage_new(int interval_ms, int max_ms)
{
    jwke_p11_outage *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->interval_ms = interval_ms;
    o->max_ms = max_ms; /* at least interval_ms: the configuration's schema checked it */
    pthread_mutex_init(&o->lock, NULL);
    return o;
}

void jwke_p11_outage_free(jwke_p11_outage *o, int inherited_lock)
{
    if (!o)
        return;
    if (!inherited_lock)
        pthread_mutex_destroy(&o->lock);
    free(o);
}

void jwke_p11_outage_after_fork(jwke_p11_outage *o)
{
    pthread_mutex_init(&o->lock, NULL);
    o->attempting = 0;
}

/* The next wait: the backoff doubled (or started), a random point between
 * half and all of it. Caller holds o->lock. */
static long long next_wait_holding(jwke_p11_outage *o)
{
    if (o->backoff_ms == 0)
        o->backoff_ms = o->interval_ms;
    else if (o->backoff_ms < o->max_ms / 2)
        o->backoff_ms *= 2;
    else
        o->backoff_ms = o->max_ms;
    unsigned int r = 0;
    RAND_bytes((unsigned char *)&r, sizeof r);
    long long half = o->backoff_ms / 2;
    return o->backoff_ms - half + (half > 0 ? (long long)(r % (unsigned long long)(half + 1)) : 0);
}

static long long retry_in_holding(const jwke_p11_outage *o)
{
    long long wait = o->next_attempt_ms - now_ms();
    return wait > 0 ? wait : 0;
}

/* The fast failure of every call during the outage. Caller holds o->lock. */
static void fail_fast_holding(const jwke_p11_outage *o, jwke_error *err)
{
    jwke_fail_code(err, JWKE_ERR_HSM_UNAVAILABLE, "HSM unavailable: %s%s%s%s; next attempt in %lld ms",
                   o->down_cause, o->last_attempt[0] ? " (last attempt to come back: " : "",
                   o->last_attempt, o->last_attempt[0] ? ")" : "", retry_in_holding(o));
    err->ckr = o->down_rv;
}

static void mark_down_holding(jwke_p11_outage *o, const char *cause, CK_RV rv, const char *why,
                              char *event, size_t event_size)
{
    event[0] = '\0';
    if (!o->down) {
        o->down = 1;
        o->down_rv = rv;
        snprintf(o->down_cause, sizeof o->down_cause, "%s", cause);
        snprintf(event, event_size, "HSM unavailable: %s; trying to come back (backoff %d to %d ms)",
                 o->down_cause, o->interval_ms, o->max_ms);
    }
    snprintf(o->last_attempt, sizeof o->last_attempt, "%s", why ? why : "");
    o->next_attempt_ms = now_ms() + next_wait_holding(o);
}

enum jwke_p11_admission jwke_p11_outage_admit(jwke_p11_outage *o, jwke_error *err)
{
    lock(o);
    enum jwke_p11_admission admission = JWKE_ADMIT_UP;
    if (o->down && !o->attempting && now_ms() >= o->next_attempt_ms) {
        o->attempting = 1;
        admission = JWKE_ADMIT_ATTEMPT;
    } else if (o->down) {
        fail_fast_holding(o, err);
        admission = JWKE_ADMIT_FAIL_FAST;
    }
    unlock(o);
    return admission;
}

void jwke_p11_outage_mark_down(jwke_p11_outage *o, const char *cause, CK_RV rv, const char *why,
                               jwke_error *err, char *event, size_t event_size)
{
    lock(o);
    mark_down_holding(o, cause, rv, why, event, event_size);
    fail_fast_holding(o, err);
    unlock(o);
}

void jwke_p11_outage_attempt_ended(jwke_p11_outage *o, enum jwke_p11_attempt outcome,
                                   const char *why, jwke_error *err, char *event,
                                   size_t event_size)
{
    lock(o);
    o->attempting = 0;
    event[0] = '\0';
    if (outcome == JWKE_ATTEMPT_FAILED) {
        char cause[sizeof o->down_cause];
        snprintf(cause, sizeof cause, "%s", o->down_cause);
        mark_down_holding(o, cause, o->down_rv, why, event, event_size);
        fail_fast_holding(o, err);
    } else {
        if (outcome == JWKE_ATTEMPT_BACK)
            snprintf(event, event_size,
                     "HSM back: the outage after %s is over; the token is logged in again",
                     o->down_cause);
        o->down = 0;
        o->backoff_ms = 0;
    }
    unlock(o);
}

int jwke_p11_outage_state(jwke_p11_outage *o, long long *retry_in_ms, char *cause,
                          size_t cause_size)
{
    lock(o);
    int down = o->down;
    if (down) {
        *retry_in_ms = retry_in_holding(o);
        snprintf(cause, cause_size, "%s", o->down_cause);
    }
    unlock(o);
    return down;
}

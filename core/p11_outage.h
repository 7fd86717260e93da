/* A token's outage (see "Outages" in p11_token.h), opaque outside
 * p11_outage.c: whether the token is down, why, the backoff and when the
 * next attempt to come back is due, and whether a thread is making it.
 *
 * It has a lock of its own (the outage rank of lock_order.h), taken inside
 * every function here: the thread trying to come back holds the token's
 * lock through slow calls (C_OpenSession, C_Login on a token that may
 * hang), and every other call must fail fast without waiting for it.
 *
 * The backoff: the first wait is interval_ms, each failed attempt doubles
 * it up to max_ms, and each wait is drawn between half and all of it, so
 * that processes that lost the HSM together (nginx workers) do not all try
 * at once. */
#ifndef JWKE_P11_OUTAGE_H
#define JWKE_P11_OUTAGE_H

#include <stddef.h>

#include "error.h"
#include "pkcs11_header.h"

typedef struct jwke_p11_outage jwke_p11_outage;

/* NULL when out of memory. max_ms below interval_ms is taken as interval_ms. */
jwke_p11_outage *jwke_p11_outage_new(int interval_ms, int max_ms);
/* inherited_lock: a forked child's copy whose lock may be held by a
 * parent's thread (not destroyed). */
void jwke_p11_outage_free(jwke_p11_outage *outage, int inherited_lock);
/* In a forked child: a fresh lock, and no attempt under way (no thread of
 * the child makes the parent's). */
void jwke_p11_outage_after_fork(jwke_p11_outage *outage);

enum jwke_p11_admission {
    JWKE_ADMIT_UP,        /* the token is not down: go on */
    JWKE_ADMIT_FAIL_FAST, /* down, no attempt due (or another thread makes it): err is set */
    JWKE_ADMIT_ATTEMPT,   /* down and the attempt is due: this call makes it, then
                           * reports with jwke_p11_outage_attempt_ended */
};
enum jwke_p11_admission jwke_p11_outage_admit(jwke_p11_outage *outage, jwke_error *err);

/* Starts an outage, or records one more failed attempt to end it, and
 * fills err with the fast failure (ERR_HSM_UNAVAILABLE: the cause and when
 * the next attempt is due). cause: what started it (kept for the whole
 * outage); why: what the latest repair said. When this starts the outage,
 * event gets the log line for it; else event is empty. */
void jwke_p11_outage_mark_down(jwke_p11_outage *outage, const char *cause, CK_RV rv,
                               const char *why, jwke_error *err, char *event, size_t event_size);

enum jwke_p11_attempt { JWKE_ATTEMPT_BACK, JWKE_ATTEMPT_REFUSED, JWKE_ATTEMPT_FAILED };
/* Ends the attempt admitted: BACK and REFUSED (reachable again, but the
 * PIN refused: never retried) end the outage; FAILED is one more failed
 * attempt (why: what it said), err the fast failure. event gets the log
 * line of a return (BACK), else is empty. */
void jwke_p11_outage_attempt_ended(jwke_p11_outage *outage, enum jwke_p11_attempt outcome,
                                   const char *why, jwke_error *err, char *event,
                                   size_t event_size);

/* 1 with the time until the next attempt and the cause while down, else 0. */
int jwke_p11_outage_state(jwke_p11_outage *outage, long long *retry_in_ms, char *cause,
                          size_t cause_size);

#endif

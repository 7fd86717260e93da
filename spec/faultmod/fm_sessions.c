/* The session map (see fm_sessions.h). */
#include "fm_sessions.h"

#include "fm_lock.h"
#include "fm_stats.h"

#include <stdlib.h>
#include <time.h>

#define FM_BUCKETS 256

typedef struct fm_session {
    CK_SESSION_HANDLE handle; /* what the caller sees */
    CK_SESSION_HANDLE real;   /* what the real module gave */
    CK_SLOT_ID slot;
    struct timespec last_used; /* for JWKE_FAULT_SESSION_IDLE_MS */
    struct fm_session *next;
} fm_session;

static fm_session *sessions[FM_BUCKETS];
static unsigned long nsessions;
static unsigned long sessions_peak; /* most alive at once since loaded or forked */
static CK_SESSION_HANDLE next_handle = 1;

CK_SESSION_HANDLE fm_sessions_add_locked(CK_SESSION_HANDLE real, CK_SLOT_ID slot)
{
    fm_session *s = calloc(1, sizeof *s);
    if (!s)
        return 0;
    s->handle = next_handle++;
    s->real = real;
    s->slot = slot;
    clock_gettime(CLOCK_MONOTONIC, &s->last_used);
    fm_session **pp = &sessions[s->handle % FM_BUCKETS];
    s->next = *pp;
    *pp = s;
    nsessions++;
    if (nsessions > sessions_peak)
        sessions_peak = nsessions;
    return s->handle;
}

static fm_session **session_slot(CK_SESSION_HANDLE h)
{
    fm_session **pp = &sessions[h % FM_BUCKETS];
    while (*pp && (*pp)->handle != h)
        pp = &(*pp)->next;
    return pp;
}

CK_RV fm_sessions_use_locked(CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real)
{
    fm_session *s = *session_slot(h);
    if (!s)
        return CKR_SESSION_HANDLE_INVALID;
    clock_gettime(CLOCK_MONOTONIC, &s->last_used); /* its idle time starts over */
    *real = s->real;
    return CKR_OK;
}

int fm_sessions_issued_locked(CK_SESSION_HANDLE h)
{
    return h >= 1 && h < next_handle;
}

/* Takes the session at *pp out of the map, after closing it in close_in
 * (the real module) unless NULL. */
static void unlink_session(fm_session **pp, CK_FUNCTION_LIST_PTR close_in)
{
    fm_session *s = *pp;
    if (close_in)
        close_in->C_CloseSession(s->real);
    *pp = s->next;
    free(s);
    nsessions--;
}

void fm_sessions_forget_locked(CK_SESSION_HANDLE h)
{
    fm_session **pp = session_slot(h);
    if (*pp)
        unlink_session(pp, NULL);
}

void fm_sessions_drop_locked(int all_slots, CK_SLOT_ID slot, CK_FUNCTION_LIST_PTR close_in)
{
    for (int b = 0; b < FM_BUCKETS; b++) {
        fm_session **pp = &sessions[b];
        while (*pp) {
            if (all_slots || (*pp)->slot == slot)
                unlink_session(pp, close_in);
            else
                pp = &(*pp)->next;
        }
    }
}

static long long monotonic_ms(const struct timespec *t)
{
    return (long long)t->tv_sec * 1000 + t->tv_nsec / 1000000;
}

/* The token's own clock: on every call, each session idle past the limit
 * is closed in the real module, used or not, as a device closes them when
 * their time runs out. So the session a caller only logged in with expires
 * too, and when the last one goes the real token logs out (PKCS#11: the
 * login belongs to the application's sessions). Caller holds the lock. */
void fm_sessions_expire_idle_locked(unsigned long idle_ms, CK_FUNCTION_LIST_PTR real)
{
    if (!idle_ms)
        return;
    for (int b = 0; b < FM_BUCKETS; b++) {
        fm_session **pp = &sessions[b];
        while (*pp) {
            fm_session *s = *pp;
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (monotonic_ms(&now) - monotonic_ms(&s->last_used) <= (long long)idle_ms) {
                pp = &s->next;
                continue;
            }
            fm_stats_count_locked(FM_STAT_EXPIRED_SESSIONS);
            fm_log("session %lu idle for more than %lu ms: closed by the token",
                   (unsigned long)s->handle, idle_ms);
            unlink_session(pp, real);
        }
    }
}

unsigned long fm_sessions_count_locked(void) { return nsessions; }
unsigned long fm_sessions_peak_locked(void) { return sessions_peak; }
void fm_sessions_fork_child_locked(void) { sessions_peak = nsessions; }

/* The run-time check of the lock order (see lock_order.h). */
#include "lock_order.h"

#if JWKE_LOCK_CHECKED
#include <stdio.h>
#include <stdlib.h>

#define MAX_HELD 16

typedef struct held_lock {
    const void *lock;
    enum jwke_lock_rank rank;
} held_lock;

static __thread held_lock held[MAX_HELD];
static __thread int held_count;

static const char *rank_name(enum jwke_lock_rank rank)
{
    static const char *const names[] = {"?", "module list", "module use", "token", "outage",
                                        "login records"};
    return rank >= JWKE_LOCK_MODULE_LIST && rank <= JWKE_LOCK_LOGINS ? names[rank] : names[0];
}

static void die(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "jwkengine: lock order violated: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (the order: module list -> module use -> token -> outage -> login "
                    "records; core/lock_order.h)\n");
    abort();
}

void jwke_lock_taking(const void *lock, enum jwke_lock_rank rank)
{
    for (int i = 0; i < held_count; i++)
        if (held[i].rank >= rank)
            die("taking a %s lock while holding a %s lock", rank_name(rank),
                rank_name(held[i].rank));
    if (held_count == MAX_HELD)
        die("taking a %s lock with %s locks held already", rank_name(rank), "16");
    held[held_count++] = (held_lock){lock, rank};
}

void jwke_lock_released(const void *lock)
{
    for (int i = held_count - 1; i >= 0; i--) {
        if (held[i].lock == lock) {
            held[i] = held[--held_count];
            return;
        }
    }
    die("releasing a lock%s%s this thread does not hold", "", "");
}

int jwke_lock_held(const void *lock)
{
    for (int i = 0; i < held_count; i++)
        if (held[i].lock == lock)
            return 1;
    return 0;
}

void jwke_lock_require(const void *lock, const char *what)
{
    if (!jwke_lock_held(lock))
        die("%s%s", what, "");
}
#endif

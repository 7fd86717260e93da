/* Fork and unload (see fm_process.h). */
#include "fm_process.h"

#include "fm_control.h"
#include "fm_lock.h"
#include "fm_real.h"
#include "fm_rules.h"
#include "fm_sessions.h"
#include "fm_settings.h"
#include "fm_stats.h"

#include <pthread.h>

static int fork_strict;         /* JWKE_FAULT_FORK_STRICT: a child must C_Initialize */
static int child_uninitialized; /* a strict child that has not called C_Initialize yet */

void fm_process_set_fork_strict_locked(int strict) { fork_strict = strict; }
int fm_process_child_uninitialized_locked(void) { return child_uninitialized; }
void fm_process_child_initialized_locked(void) { child_uninitialized = 0; }

static void atfork_prepare(void) { fm_lock(); }
static void atfork_parent(void) { fm_unlock(); }

static void atfork_child(void)
{
    /* A new process: fresh counts and random sequence, same settings. */
    fm_config *cfg = fm_settings_locked();
    fm_stats_fork_child_locked();
    fm_sessions_fork_child_locked(); /* its peak: what the child inherited */
    fm_rules_restart_locked(cfg->rules, cfg->nrules, cfg->seed);
    if (fork_strict && fm_real_initialized_locked()) {
        /* As a networked HSM's client library behaves: the child must call
         * C_Initialize before anything else, and the parent's sessions are
         * not the child's (closing them would close the parent's). */
        child_uninitialized = 1;
        fm_sessions_drop_locked(1, 0, NULL);
    }
    fm_unlock();
}

__attribute__((constructor)) static void faultmod_load(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

__attribute__((destructor)) static void faultmod_unload(void)
{
    fm_lock();
    if (fm_real_initialized_locked()) {
        /* Never finalized (a host that exits without C_Finalize, or drops an
         * inherited generation): keep everything, other threads may still
         * be calling, and the real module stays loaded. */
        fm_stats_write_locked("unload");
    } else {
        fm_sessions_drop_locked(1, 0, NULL);
        fm_settings_free_locked();
        fm_real_free_locked();
        fm_control_free_locked();
        fm_stats_free_locked();
    }
    fm_unlock();
}

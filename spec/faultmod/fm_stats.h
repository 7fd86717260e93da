/* The counts a test reads back: per function (calls since loaded or
 * forked, the count window the @N triggers use, injected faults, errors)
 * and per event (reloads, removals, expired sessions, ...). Written as
 * "name value" lines to JWKE_FAULT_STATS (replaced atomically) on
 * C_Finalize, reload, unload, and after every call with
 * JWKE_FAULT_STATS_SYNC=1; the same text in process through the exported
 * jwke_faultmod_stats. The format is what specs parse: lines are only
 * ever added. */
#ifndef JWKE_FM_STATS_H
#define JWKE_FM_STATS_H

#include <stddef.h>

enum {
    FM_STAT_RELOADS,
    FM_STAT_CONTROL_ERRORS,
    FM_STAT_REMOVALS,
    FM_STAT_INSERTIONS,
    FM_STAT_EXPIRED_SESSIONS,      /* in the count window */
    FM_STAT_CORRUPTED_SIGNATURES,  /* in the count window */
    FM_STAT_COUNT
};

/* The stats file's path (owned, "%p" = pid; NULL: none) and whether every
 * call rewrites it. */
void fm_stats_configure_locked(char *path, int sync);
int fm_stats_sync_locked(void);

/* A call of fn: counted, and its number in the count window returned. */
unsigned long fm_stats_call_locked(int fn);
/* A call counted outside the window: a C_Initialize that failed before it
 * could start one (bad settings, no real module). */
void fm_stats_call_outside_window_locked(int fn);
void fm_stats_injected_locked(int fn);
void fm_stats_error_locked(int fn);
void fm_stats_count_locked(int counter);

/* A new count window (reload, first C_Initialize of a window); with
 * keep_init_counts the C_Initialize/C_Finalize counts go on, so that
 * "C_Initialize:...@2" means the second initialization. */
void fm_stats_reset_windows_locked(int keep_init_counts);
/* A C_Initialize succeeded: only the first one of a window restarts it,
 * so a caller that re-initializes to recover does not re-arm the faults
 * it recovers from. */
void fm_stats_initialized_locked(void);
/* A forked child counts afresh. */
void fm_stats_fork_child_locked(void);

/* Writes the stats file, when there is one; reason is its "reason" line. */
void fm_stats_write_locked(const char *reason);
void fm_stats_free_locked(void);

/* Exported: the stats text into buf, its length as snprintf returns it. */
int jwke_faultmod_stats(char *buf, size_t len);

#endif

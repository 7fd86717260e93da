/* The one lock over the module's own state, and the verbose log.
 *
 * Every piece of state (settings, counts, the session map, the real
 * module's handle) lives in the file of its concern; functions named
 * *_locked expect this lock held. It is never held while the real module
 * works, except for the session closes of a removal (so that a call racing
 * the removal cannot use a session being closed). */
#ifndef JWKE_FM_LOCK_H
#define JWKE_FM_LOCK_H

void fm_lock(void);
void fm_unlock(void);

/* JWKE_FAULT_VERBOSE: one line on stderr per injected fault, reload,
 * removal and insertion. */
void fm_log_set_verbose_locked(int verbose);
int fm_log_verbose(void);
void fm_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

/* The control file (JWKE_FAULT_CONTROL): "key=value" lines that a test
 * rewrites while the module runs, to change the settings without a
 * restart. The file is looked at when calls come in (at most every
 * JWKE_FAULT_CONTROL_INTERVAL_MS) and re-read when its identity (mtime,
 * size, inode) changes; a reload writes the stats of the window that ends
 * and starts a new count window. A file that does not parse is reported
 * on stderr and ignored, the previous settings stay. */
#ifndef JWKE_FM_CONTROL_H
#define JWKE_FM_CONTROL_H

#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "fm_settings.h"

/* What identifies a version of the file (exists = 0: there is none). */
struct fm_fileid {
    int exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

/* The file's path (owned; NULL: no control file) and how often to look. */
void fm_control_configure_locked(char *path, long interval_ms);

/* Applies the control file, when there is one, over cfg; *id is the
 * version read. */
int fm_control_apply(fm_config *cfg, fm_fileid *id, char *err, size_t errlen);

/* The version the settings in force were built from. */
void fm_control_remember_locked(const fm_fileid *id);

/* Re-reads the file and replaces the settings when it changed. */
void fm_control_maybe_reload_locked(void);

/* At unload, when not initialized. */
void fm_control_free_locked(void);

#endif

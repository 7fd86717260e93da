/* The control file (see fm_control.h). */
#include "fm_control.h"

#include "fm_lock.h"
#include "fm_stats.h"
#include "fm_text.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FM_MAX_CONTROL_BYTES (1024 * 1024)

static char *control_path;
static long control_interval_ms;
static struct timespec control_checked; /* when the file was last looked at */
static fm_fileid control_id;            /* the version the settings came from */

void fm_control_configure_locked(char *path, long interval_ms)
{
    free(control_path);
    control_path = path;
    control_interval_ms = interval_ms;
    clock_gettime(CLOCK_MONOTONIC, &control_checked);
}

void fm_control_remember_locked(const fm_fileid *id)
{
    control_id = *id;
}

void fm_control_free_locked(void)
{
    free(control_path);
    control_path = NULL;
}

static void fileid_from_stat(fm_fileid *id, const struct stat *sb)
{
    memset(id, 0, sizeof *id);
    id->exists = 1;
    id->dev = sb->st_dev;
    id->ino = sb->st_ino;
    id->size = sb->st_size;
    id->mtime = sb->st_mtim;
}

static void stat_fileid(const char *path, fm_fileid *id)
{
    struct stat sb;
    if (stat(path, &sb) == 0)
        fileid_from_stat(id, &sb);
    else
        memset(id, 0, sizeof *id);
}

static int fileid_equal(const fm_fileid *a, const fm_fileid *b)
{
    if (a->exists != b->exists)
        return 0;
    if (!a->exists)
        return 1;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Applies the control file over cfg; *id is what was read. */
static int read_control(const char *path, fm_config *cfg, fm_fileid *id, char *err, size_t errlen)
{
    memset(id, 0, sizeof *id);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        fm_set_err(err, errlen, "control file %s: %s", path, strerror(errno));
        stat_fileid(path, id);
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > FM_MAX_CONTROL_BYTES) {
        fm_set_err(err, errlen, "control file %s: not a regular file of at most %d bytes", path,
                   FM_MAX_CONTROL_BYTES);
        stat_fileid(path, id);
        close(fd);
        return -1;
    }
    fileid_from_stat(id, &sb);
    char *text = malloc((size_t)sb.st_size + 1);
    size_t have = 0;
    if (!text) {
        close(fd);
        fm_set_err(err, errlen, "control file %s: out of memory", path);
        return -1;
    }
    for (;;) {
        ssize_t r = read(fd, text + have, (size_t)sb.st_size - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        if (have == (size_t)sb.st_size)
            break;
    }
    close(fd);
    text[have] = '\0';

    int seen[KEY_COUNT] = { 0 };
    int rc = 0, lineno = 0;
    const char *p = text, *end = text + have;
    while (p < end && rc == 0) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        lineno++;
        const char *a = fm_skip_space(p, eol), *b = fm_trim_end(a, eol);
        if (a < b && *a != '#') {
            char where[64];
            const char *eq = memchr(a, '=', (size_t)(b - a));
            const char *key_end = eq ? fm_trim_end(a, eq) : b;
            int key = -1;
            for (int k = 0; k < KEY_COUNT; k++)
                if (strlen(fm_setting_control_key(k)) == (size_t)(key_end - a) &&
                    memcmp(fm_setting_control_key(k), a, (size_t)(key_end - a)) == 0)
                    key = k;
            snprintf(where, sizeof where, "control file line %d", lineno);
            if (!eq) {
                fm_set_err(err, errlen, "%s %s: expected key=value", path, where);
                rc = -1;
            } else if (key < 0) {
                char known[256] = "";
                for (int k = 0; k < KEY_COUNT; k++)
                    snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                             k ? ", " : "", fm_setting_control_key(k));
                fm_set_err(err, errlen, "%s %s: unknown key '%.*s' (%s)", path, where,
                           (int)(key_end - a), a, known);
                rc = -1;
            } else {
                const char *v = fm_skip_space(eq + 1, b);
                if (!seen[key]) {
                    fm_setting_reset(cfg, key); /* the file replaces the environment */
                    seen[key] = 1;
                } else if (!fm_setting_adds_up(key)) {
                    fm_setting_reset(cfg, key);
                }
                char full[128];
                snprintf(full, sizeof full, "%s %s", path, where);
                rc = fm_setting_apply(cfg, key, v, (size_t)(b - v), err, errlen, full);
            }
        }
        p = eol < end ? eol + 1 : end;
    }
    free(text);
    return rc;
}

int fm_control_apply(fm_config *cfg, fm_fileid *id, char *err, size_t errlen)
{
    return control_path ? read_control(control_path, cfg, id, err, errlen) : 0;
}

void fm_control_maybe_reload_locked(void)
{
    if (!control_path)
        return;
    if (control_interval_ms > 0) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        /* in nanoseconds: milliseconds per field would round a negative
         * tv_nsec difference up, and look again up to 1 ms early */
        long long elapsed_ns = (long long)(now.tv_sec - control_checked.tv_sec) * 1000000000LL +
                               (now.tv_nsec - control_checked.tv_nsec);
        if (elapsed_ns < (long long)control_interval_ms * 1000000LL)
            return;
        control_checked = now;
    }
    fm_fileid id;
    stat_fileid(control_path, &id);
    if (fileid_equal(&id, &control_id))
        return;
    fm_config cfg;
    char err[512];
    if (fm_settings_build(&cfg, &id, err, sizeof err) != 0) {
        control_id = id;
        fm_stats_count_locked(FM_STAT_CONTROL_ERRORS);
        fprintf(stderr, "jwke_faultmod: %s (the previous fault settings stay)\n", err);
        return;
    }
    control_id = id;
    fm_stats_write_locked("reload");
    fm_settings_replace_locked(&cfg);
    fm_stats_reset_windows_locked(0);
    fm_stats_count_locked(FM_STAT_RELOADS);
    fm_log("control file %s reloaded: %zu fault rule(s), removed=%d", control_path,
           fm_settings_locked()->nrules, fm_settings_locked()->removed);
}

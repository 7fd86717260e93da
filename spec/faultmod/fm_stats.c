/* The counts and the stats file (see fm_stats.h). */
#include "fm_stats.h"

#include "fm_functions.h"
#include "fm_lock.h"
#include "fm_real.h"
#include "fm_sessions.h"
#include "fm_settings.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long calls[FN_COUNT];
static unsigned long window[FN_COUNT];
static int window_initialized; /* a C_Initialize succeeded in this count window */
static unsigned long injected[FN_COUNT];
static unsigned long errors[FN_COUNT];
static unsigned long counters[FM_STAT_COUNT];
static char *stats_path;
static int stats_sync;

void fm_stats_configure_locked(char *path, int sync)
{
    free(stats_path);
    stats_path = path;
    stats_sync = sync;
}

int fm_stats_sync_locked(void) { return stats_sync; }

unsigned long fm_stats_call_locked(int fn)
{
    calls[fn]++;
    return ++window[fn];
}

void fm_stats_call_outside_window_locked(int fn) { calls[fn]++; }
void fm_stats_injected_locked(int fn) { injected[fn]++; }
void fm_stats_error_locked(int fn) { errors[fn]++; }
void fm_stats_count_locked(int counter) { counters[counter]++; }

void fm_stats_reset_windows_locked(int keep_init_counts)
{
    for (int i = 0; i < FN_COUNT; i++) {
        if (keep_init_counts && (i == FN_C_Initialize || i == FN_C_Finalize))
            continue;
        window[i] = 0;
    }
    counters[FM_STAT_EXPIRED_SESSIONS] = 0;
    counters[FM_STAT_CORRUPTED_SIGNATURES] = 0;
    /* a window that starts while the module is up is already initialized */
    window_initialized = fm_real_initialized_locked();
}

void fm_stats_initialized_locked(void)
{
    if (!window_initialized)
        fm_stats_reset_windows_locked(1);
    window_initialized = 1;
}

void fm_stats_fork_child_locked(void)
{
    memset(calls, 0, sizeof calls);
    memset(window, 0, sizeof window);
    memset(injected, 0, sizeof injected);
    memset(errors, 0, sizeof errors);
    counters[FM_STAT_RELOADS] = counters[FM_STAT_CONTROL_ERRORS] = 0;
    counters[FM_STAT_REMOVALS] = counters[FM_STAT_INSERTIONS] = 0;
}

void fm_stats_free_locked(void)
{
    free(stats_path);
    stats_path = NULL;
}

/* A growing text buffer; `failed` once out of memory. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} fm_buf;

static void buf_printf(fm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(fm_buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
}

static void format_stats(fm_buf *b, const char *reason)
{
    unsigned long injected_total = 0, errors_total = 0;
    for (int i = 0; i < FN_COUNT; i++) {
        injected_total += injected[i];
        errors_total += errors[i];
    }
    buf_printf(b, "pid %ld\nreason %s\ninitialized %d\nremoved %d\nsessions %lu\n"
               "reloads %lu\ncontrol_errors %lu\nremovals %lu\ninsertions %lu\n"
               "injected_total %lu\nerrors_total %lu\nexpired_sessions %lu\n"
               "corrupted_signatures %lu\nsessions_peak %lu\n",
               (long)getpid(), reason, fm_real_initialized_locked(), fm_settings_locked()->removed,
               fm_sessions_count_locked(), counters[FM_STAT_RELOADS],
               counters[FM_STAT_CONTROL_ERRORS], counters[FM_STAT_REMOVALS],
               counters[FM_STAT_INSERTIONS], injected_total, errors_total,
               counters[FM_STAT_EXPIRED_SESSIONS], counters[FM_STAT_CORRUPTED_SIGNATURES],
               fm_sessions_peak_locked());
    for (int i = 0; i < FN_COUNT; i++) {
        if (!calls[i] && !window[i])
            continue;
        buf_printf(b, "calls.%s %lu\nwindow.%s %lu\ninjected.%s %lu\nerrors.%s %lu\n",
                   fm_function_name(i), calls[i], fm_function_name(i), window[i],
                   fm_function_name(i), injected[i], fm_function_name(i), errors[i]);
    }
}

/* JWKE_FAULT_STATS with %p -> pid; NULL when unset. */
static char *stats_file_path(void)
{
    if (!stats_path)
        return NULL;
    fm_buf b = { 0 };
    for (const char *p = stats_path; *p; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            buf_printf(&b, "%ld", (long)getpid());
            p++;
        } else if (p[0] == '%' && p[1] == '%') {
            buf_printf(&b, "%%");
            p++;
        } else {
            buf_printf(&b, "%c", *p);
        }
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

void fm_stats_write_locked(const char *reason)
{
    char *path = stats_file_path();
    if (!path)
        return;
    fm_buf b = { 0 };
    format_stats(&b, reason);
    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (b.failed || !tmp) {
        free(path);
        free(tmp);
        free(b.p);
        return;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        size_t off = 0;
        while (off < b.len) {
            ssize_t w = write(fd, b.p + off, b.len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        close(fd);
        if (off == b.len && rename(tmp, path) == 0)
            tmp[0] = '\0';
        else
            unlink(tmp);
    } else {
        fprintf(stderr, "jwke_faultmod: cannot write stats to %s: %s\n", path, strerror(errno));
    }
    free(path);
    free(tmp);
    free(b.p);
}

FM_EXPORT int jwke_faultmod_stats(char *buf, size_t len)
{
    fm_buf b = { 0 };
    fm_lock();
    format_stats(&b, "query");
    fm_unlock();
    if (b.failed) {
        free(b.p);
        return -1;
    }
    if (buf && len) {
        size_t n = b.len < len - 1 ? b.len : len - 1;
        memcpy(buf, b.p, n);
        buf[n] = '\0';
    }
    int n = (int)b.len;
    free(b.p);
    return n;
}

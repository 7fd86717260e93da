/* The one lock and the verbose log (see fm_lock.h). */
#include "fm_lock.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int verbose;

void fm_lock(void) { pthread_mutex_lock(&state_lock); }
void fm_unlock(void) { pthread_mutex_unlock(&state_lock); }

void fm_log_set_verbose_locked(int on) { verbose = on; }
int fm_log_verbose(void) { return verbose; }

void fm_log(const char *fmt, ...)
{
    if (!verbose)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "jwke_faultmod[%ld]: %s\n", (long)getpid(), line);
}

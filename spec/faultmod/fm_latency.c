/* Added latency (see fm_latency.h). */
#include "fm_latency.h"

#include "fm_functions.h"
#include "fm_settings.h"
#include "fm_text.h"

#include <errno.h>
#include <string.h>
#include <time.h>

/* One latency item "C_Sign:2000" or "*:10" into cfg->latency_us (later
 * items win). */
int fm_add_latency(const char *a, const char *b, fm_config *cfg, char *err, size_t errlen,
                   const char *where)
{
    int len = (int)(b - a);
    const char *colon = memchr(a, ':', (size_t)(b - a));
    if (!colon) {
        fm_set_err(err, errlen, "%s: '%.*s': expected FUNCTION:MICROSECONDS", where, len, a);
        return -1;
    }
    const char *name_end = fm_trim_end(a, colon);
    int all = (name_end - a == 1 && *a == '*');
    int fn = all ? -1 : fm_function_lookup(a, (size_t)(name_end - a));
    if (!all && fn < 0) {
        fm_set_err(err, errlen, "%s: '%.*s': unknown PKCS#11 function '%.*s'", where, len, a,
                   (int)(name_end - a), a);
        return -1;
    }
    const char *q = fm_skip_space(colon + 1, b);
    unsigned long us;
    if (fm_parse_ulong(&q, b, &us) != 0 || fm_skip_space(q, b) != b || us > FM_MAX_LATENCY_US) {
        fm_set_err(err, errlen, "%s: '%.*s': latency must be a number of microseconds up to %lu",
                   where, len, a, FM_MAX_LATENCY_US);
        return -1;
    }
    for (int i = 0; i < FN_COUNT; i++)
        if (all || i == fn)
            cfg->latency_us[i] = us;
    return 0;
}

void fm_sleep_us(unsigned long us)
{
    struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

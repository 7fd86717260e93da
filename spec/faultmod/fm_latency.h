/* Added latency (JWKE_FAULT_LATENCY_US, latency= in the control file):
 * microseconds slept before a function is answered, per function or "*"
 * for all, so tests can see timeouts and slow tokens. */
#ifndef JWKE_FM_LATENCY_H
#define JWKE_FM_LATENCY_H

#include <stddef.h>

typedef struct fm_config fm_config;

/* A minute: more is a typo, not a slow token. */
#define FM_MAX_LATENCY_US 60000000UL

/* One latency item into cfg->latency_us (an fm_add_item). */
int fm_add_latency(const char *a, const char *b, fm_config *cfg, char *err, size_t errlen,
                   const char *where);

/* Sleeps us microseconds, through signals. */
void fm_sleep_us(unsigned long us);

#endif

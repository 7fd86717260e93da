/* The fault plan (JWKE_FAULTS, faults= in the control file): which call of
 * which function fails with which code. A rule is "FUNCTION:CODE" with a
 * trigger (@N, @N+, /N, /N+K, %P, or none = always), a burst (*K) and the
 * transient mark (~); the grammar is in faultmod.c's reference comment.
 *
 * The rules are parsed into the settings (fm_config.rules); a burst in
 * progress is kept in its rule, and the %P coin is a seeded generator kept
 * here, so that one seed replays the same faults. */
#ifndef JWKE_FM_RULES_H
#define JWKE_FM_RULES_H

#include <p11-kit/pkcs11.h>

#include <stddef.h>
#include <stdint.h>

typedef struct fm_config fm_config;

enum { TRIG_ALWAYS, TRIG_AT, TRIG_FROM, TRIG_PERCENT, TRIG_EVERY };

typedef struct {
    int fn;
    CK_RV rv;
    int trigger;
    unsigned long n;       /* @N, @N+; /N: the period */
    unsigned long offset;  /* /N+K: the first call that fails (default N) */
    double percent;        /* %P */
    unsigned long burst;   /* *K, >= 1 */
    int transient;         /* ~ */
    unsigned long burst_left;
} fm_rule;

/* One rule of a JWKE_FAULTS list into cfg->rules (an fm_add_item). */
int fm_add_rule(const char *a, const char *b, fm_config *cfg, char *err, size_t errlen,
                const char *where);

/* The fault for call `number` (in the count window) of function fn: the
 * rule's code and whether it is transient, or *fault left 0. A burst in
 * progress wins; otherwise the first rule of fn that fires. */
void fm_rules_decide_locked(fm_rule *rules, size_t nrules, int fn, unsigned long number,
                            CK_RV *fault, int *transient);

/* The %P coin starts over from seed (C_Initialize, reload). */
void fm_rules_reseed_locked(uint64_t seed);

/* A forked child: no burst carries over, and the coin starts over. */
void fm_rules_restart_locked(fm_rule *rules, size_t nrules, uint64_t seed);

#endif

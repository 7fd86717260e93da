/* The fault plan: parsing the rules and deciding each call's fault (see
 * fm_rules.h). */
#include "fm_rules.h"

#include "fm_functions.h"
#include "fm_settings.h"
#include "fm_text.h"

#include <ctype.h>
#include <string.h>

static uint64_t rng; /* the %P coin's state */

static int parse_percent(const char **pp, const char *end, double *out)
{
    const char *p = *pp;
    double v = 0;
    int digits = 0;
    while (p < end && isdigit((unsigned char)*p)) {
        v = v * 10 + (*p - '0');
        p++;
        digits++;
    }
    if (p < end && *p == '.') {
        double scale = 0.1;
        p++;
        while (p < end && isdigit((unsigned char)*p)) {
            v += (*p - '0') * scale;
            scale /= 10;
            p++;
            digits++;
        }
    }
    if (!digits || v > 100.0)
        return -1;
    *pp = p;
    *out = v;
    return 0;
}

/* A rule's marker and the whole number >= 1 after it ("@3", "/5", "+2",
 * "*4"): 0 when *q is not at `marker` (nothing read), 1 when the number is
 * in *out and *q past it, -1 when it is missing or 0 (err says what the
 * marker `needs`, in the rule [rule, rule + len)). */
static int marked_count(const char **q, const char *end, char marker, unsigned long *out,
                        const char *needs, char *err, size_t errlen, const char *where, int len,
                        const char *rule)
{
    if (*q >= end || **q != marker)
        return 0;
    (*q)++;
    if (fm_parse_ulong(q, end, out) == 0 && *out > 0)
        return 1;
    fm_set_err(err, errlen, "%s: '%.*s': %s >= 1", where, len, rule, needs);
    return -1;
}

/* One rule "FUNCTION:CODE[trigger][*K][~]" in [p, end). */
static int parse_rule(const char *p, const char *end, fm_rule *r, char *err, size_t errlen,
                      const char *where)
{
    int len = (int)(end - p);
    const char *colon = memchr(p, ':', (size_t)(end - p));
    memset(r, 0, sizeof *r);
    r->burst = 1;
    if (!colon) {
        fm_set_err(err, errlen, "%s: '%.*s': expected FUNCTION:CODE", where, len, p);
        return -1;
    }
    const char *name_end = fm_trim_end(p, colon);
    r->fn = fm_function_lookup(p, (size_t)(name_end - p));
    if (r->fn < 0) {
        fm_set_err(err, errlen, "%s: '%.*s': unknown PKCS#11 function '%.*s'", where, len, p,
                   (int)(name_end - p), p);
        return -1;
    }
    if (r->fn == FN_C_GetFunctionList) {
        fm_set_err(err, errlen, "%s: '%.*s': C_GetFunctionList cannot be made to fail", where, len, p);
        return -1;
    }
    const char *q = fm_skip_space(colon + 1, end);
    if (fm_parse_code(&q, end, &r->rv) != 0) {
        fm_set_err(err, errlen, "%s: '%.*s': expected a CKR_ name from p11-kit/pkcs11.h, a decimal "
                   "or a 0x hex code after ':'", where, len, p);
        return -1;
    }
    if (r->rv == CKR_OK) {
        fm_set_err(err, errlen, "%s: '%.*s': CKR_OK is not a fault", where, len, p);
        return -1;
    }
    q = fm_skip_space(q, end);
    int at = marked_count(&q, end, '@', &r->n, "'@' needs a call number", err, errlen, where,
                          len, p);
    int every = at ? 0 : marked_count(&q, end, '/', &r->n, "'/' needs a period", err, errlen, where,
                                      len, p);
    if (at < 0 || every < 0)
        return -1;
    if (at) {
        r->trigger = TRIG_AT;
        if (q < end && *q == '+') {
            r->trigger = TRIG_FROM;
            q++;
        }
    } else if (every) {
        /* /N or /N+K: calls K, K+N, K+2N, ... fail. Evenly spaced faults
         * let a soak promise that no retry ever meets a second fault. */
        r->offset = r->n;
        if (marked_count(&q, end, '+', &r->offset, "'/N+' needs a first call", err, errlen, where,
                         len, p) < 0)
            return -1;
        r->trigger = TRIG_EVERY;
    } else if (q < end && *q == '%') {
        q++;
        if (parse_percent(&q, end, &r->percent) != 0) {
            fm_set_err(err, errlen, "%s: '%.*s': '%%' needs a percentage from 0 to 100", where, len, p);
            return -1;
        }
        r->trigger = TRIG_PERCENT;
    } else {
        r->trigger = TRIG_ALWAYS;
    }
    q = fm_skip_space(q, end);
    if (marked_count(&q, end, '*', &r->burst, "'*' needs a count", err, errlen, where, len, p) < 0)
        return -1;
    q = fm_skip_space(q, end);
    if (q < end && *q == '~') {
        r->transient = 1;
        q++;
    }
    q = fm_skip_space(q, end);
    if (q != end) {
        fm_set_err(err, errlen, "%s: '%.*s': unexpected '%.*s'", where, len, p, (int)(end - q), q);
        return -1;
    }
    return 0;
}

FM_ADD_PARSED(rule, fm_rule, rules)

static uint64_t next_random(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ULL); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void fm_rules_reseed_locked(uint64_t seed)
{
    rng = seed;
}

void fm_rules_restart_locked(fm_rule *rules, size_t nrules, uint64_t seed)
{
    for (size_t i = 0; i < nrules; i++)
        rules[i].burst_left = 0;
    rng = seed;
}

void fm_rules_decide_locked(fm_rule *rules, size_t nrules, int fn, unsigned long number,
                            CK_RV *fault, int *transient)
{
    for (size_t i = 0; i < nrules; i++) {
        fm_rule *r = &rules[i];
        if (r->fn == fn && r->burst_left > 0) {
            r->burst_left--;
            *fault = r->rv;
            *transient = r->transient;
            return;
        }
    }
    for (size_t i = 0; i < nrules; i++) {
        fm_rule *r = &rules[i];
        if (r->fn != fn)
            continue;
        int fire = 0;
        switch (r->trigger) {
        case TRIG_ALWAYS: fire = 1; break;
        case TRIG_AT: fire = number == r->n; break;
        case TRIG_FROM: fire = number >= r->n; break;
        case TRIG_EVERY: fire = number >= r->offset && (number - r->offset) % r->n == 0; break;
        case TRIG_PERCENT:
            fire = (double)(next_random() >> 11) * (100.0 / 9007199254740992.0) < r->percent;
            break;
        }
        if (fire) {
            r->burst_left = r->burst - 1;
            *fault = r->rv;
            *transient = r->transient;
            return;
        }
    }
}

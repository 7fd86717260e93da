/* The small parsers of the settings (see fm_text.h). */
#include "fm_text.h"

#include "ckr_names.h" /* the core's one table of CKR_ names */

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void fm_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *fm_skip_space(const char *p, const char *end)
{
    while (p < end && isspace((unsigned char)*p))
        p++;
    return p;
}

const char *fm_trim_end(const char *start, const char *end)
{
    while (end > start && isspace((unsigned char)end[-1]))
        end--;
    return end;
}

int fm_parse_ulong(const char **pp, const char *end, unsigned long *out)
{
    const char *p = *pp;
    unsigned long v = 0;
    if (p >= end || !isdigit((unsigned char)*p))
        return -1;
    while (p < end && isdigit((unsigned char)*p)) {
        unsigned long d = (unsigned long)(*p - '0');
        if (v > (~0UL - d) / 10)
            return -1;
        v = v * 10 + d;
        p++;
    }
    *pp = p;
    *out = v;
    return 0;
}

int fm_parse_code(const char **pp, const char *end, CK_RV *rv)
{
    const char *p = *pp;
    if (end - p > 4 && memcmp(p, "CKR_", 4) == 0) {
        const char *q = p;
        while (q < end && (isalnum((unsigned char)*q) || *q == '_'))
            q++;
        if (jwke_ckr_value(p, (size_t)(q - p), rv) != 0)
            return -1;
        *pp = q;
        return 0;
    }
    if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        const char *q = p + 2;
        unsigned long v = 0;
        if (q >= end || !isxdigit((unsigned char)*q))
            return -1;
        while (q < end && isxdigit((unsigned char)*q)) {
            if (v >> (sizeof v * 8 - 4))
                return -1;
            v = v * 16 + (unsigned long)(isdigit((unsigned char)*q) ? *q - '0'
                                                                    : tolower((unsigned char)*q) - 'a' + 10);
            q++;
        }
        *rv = v;
        *pp = q;
        return 0;
    }
    unsigned long v;
    if (fm_parse_ulong(pp, end, &v) != 0)
        return -1;
    *rv = v;
    return 0;
}

int fm_parse_bool(const char *s, size_t n, int *out)
{
    static const char *const yes[] = { "1", "true", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off", "" };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (strlen(yes[i]) == n && strncasecmp(s, yes[i], n) == 0)
            return *out = 1, 0;
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (strlen(no[i]) == n && strncasecmp(s, no[i], n) == 0)
            return *out = 0, 0;
    return -1;
}

int fm_parse_u64(const char *s, size_t n, uint64_t *out)
{
    const char *p = s, *end = s + n;
    uint64_t v = 0;
    int base = 10;
    if (n > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    if (p >= end)
        return -1;
    for (; p < end; p++) {
        int d;
        if (isdigit((unsigned char)*p))
            d = *p - '0';
        else if (base == 16 && isxdigit((unsigned char)*p))
            d = tolower((unsigned char)*p) - 'a' + 10;
        else
            return -1;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
            return -1;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    *out = v;
    return 0;
}

int fm_parse_list(const char *spec, size_t speclen, fm_add_item add, fm_config *cfg, char *err,
                  size_t errlen, const char *where)
{
    const char *p = spec, *end = spec + speclen;
    while (p < end) {
        const char *item_end = p;
        while (item_end < end && *item_end != ';' && *item_end != '\n')
            item_end++;
        const char *a = fm_skip_space(p, item_end), *b = fm_trim_end(a, item_end);
        if (a < b && add(a, b, cfg, err, errlen, where) != 0)
            return -1;
        p = item_end < end ? item_end + 1 : end;
    }
    return 0;
}

void *fm_append_item(void *items, size_t *count, const void *item, size_t size, char *err,
                     size_t errlen, const char *where)
{
    unsigned char *grown = realloc(items, (*count + 1) * size);
    if (!grown) {
        fm_set_err(err, errlen, "%s: out of memory", where);
        return NULL;
    }
    memcpy(grown + *count * size, item, size);
    (*count)++;
    return grown;
}

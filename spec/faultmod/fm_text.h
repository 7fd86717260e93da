/* The small parsers every setting is read with (numbers, CKR_ codes,
 * switches, ';'-separated lists) and the error text they leave. Errors are
 * written into the caller's err[errlen], prefixed with `where` (the
 * variable's name or the control file's line), never printed here: the
 * caller decides whether a bad setting fails C_Initialize or is reported
 * and ignored. */
#ifndef JWKE_FM_TEXT_H
#define JWKE_FM_TEXT_H

#include <p11-kit/pkcs11.h>

#include <stddef.h>
#include <stdint.h>

typedef struct fm_config fm_config;

void fm_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

const char *fm_skip_space(const char *p, const char *end);
const char *fm_trim_end(const char *start, const char *end);

/* A decimal number (digits only) in [p, end); advances *pp. */
int fm_parse_ulong(const char **pp, const char *end, unsigned long *out);
/* A CKR_ name, 0x hex or decimal code; advances *pp. */
int fm_parse_code(const char **pp, const char *end, CK_RV *rv);
/* 1/true/yes/on or 0/false/no/off/"" (any case), the whole of s[0..n). */
int fm_parse_bool(const char *s, size_t n, int *out);
/* Decimal or 0x hex, the whole of s[0..n). */
int fm_parse_u64(const char *s, size_t n, uint64_t *out);

/* Adds one item (a..b, trimmed, not empty) of a setting's list to cfg. */
typedef int (*fm_add_item)(const char *a, const char *b, fm_config *cfg, char *err, size_t errlen,
                           const char *where);

/* Calls add for each item of a ';'/newline separated list. */
int fm_parse_list(const char *spec, size_t speclen, fm_add_item add, fm_config *cfg, char *err,
                  size_t errlen, const char *where);

/* `items` (an array of *count items of `size` bytes) grown by one, a copy
 * of `item`; NULL (and `items` unchanged) when out of memory. */
void *fm_append_item(void *items, size_t *count, const void *item, size_t size, char *err,
                     size_t errlen, const char *where);

/* fm_add_KIND, the fm_add_item of a list of `type` items: parse_KIND one
 * item and append it to cfg->ARRAY (cfg->nARRAY items). */
#define FM_ADD_PARSED(kind, type, array)                                   \
    int fm_add_##kind(const char *a, const char *b, fm_config *cfg, char *err, \
                      size_t errlen, const char *where)                    \
    {                                                                      \
        type item;                                                         \
        if (parse_##kind(a, b, &item, err, errlen, where) != 0)            \
            return -1;                                                     \
        void *grown = fm_append_item(cfg->array, &cfg->n##array, &item, sizeof item, \
                                     err, errlen, where);                  \
        if (grown)                                                         \
            cfg->array = grown;                                            \
        return grown ? 0 : -1;                                             \
    }

#endif

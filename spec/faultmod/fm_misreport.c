/* Misreported lengths and corrupt signatures (see fm_misreport.h). */
#include "fm_misreport.h"

#include "fm_call.h"
#include "fm_functions.h"
#include "fm_lock.h"
#include "fm_settings.h"
#include "fm_stats.h"
#include "fm_text.h"

#include <string.h>

/* Attribute names a length rule may use (others as 0x hex or decimal). */
static const struct {
    const char *name;
    CK_ATTRIBUTE_TYPE type;
} attribute_table[] = {
    {"CKA_CLASS", CKA_CLASS}, {"CKA_TOKEN", CKA_TOKEN}, {"CKA_PRIVATE", CKA_PRIVATE},
    {"CKA_LABEL", CKA_LABEL}, {"CKA_VALUE", CKA_VALUE}, {"CKA_KEY_TYPE", CKA_KEY_TYPE},
    {"CKA_ID", CKA_ID}, {"CKA_SENSITIVE", CKA_SENSITIVE}, {"CKA_ENCRYPT", CKA_ENCRYPT},
    {"CKA_DECRYPT", CKA_DECRYPT}, {"CKA_SIGN", CKA_SIGN}, {"CKA_VERIFY", CKA_VERIFY},
    {"CKA_MODULUS", CKA_MODULUS}, {"CKA_MODULUS_BITS", CKA_MODULUS_BITS},
    {"CKA_PUBLIC_EXPONENT", CKA_PUBLIC_EXPONENT}, {"CKA_EC_PARAMS", CKA_EC_PARAMS},
    {"CKA_EC_POINT", CKA_EC_POINT},
};

/* "CKA_NAME", "0xHEX" or decimal: the whole of [p, end). */
static int parse_attribute(const char *p, const char *end, CK_ATTRIBUTE_TYPE *out)
{
    for (size_t i = 0; i < sizeof attribute_table / sizeof attribute_table[0]; i++)
        if (strlen(attribute_table[i].name) == (size_t)(end - p) &&
            memcmp(attribute_table[i].name, p, (size_t)(end - p)) == 0)
            return *out = attribute_table[i].type, 0;
    uint64_t v;
    if (fm_parse_u64(p, (size_t)(end - p), &v) != 0)
        return -1;
    *out = (CK_ATTRIBUTE_TYPE)v;
    return 0;
}

/* One item "TARGET=LEN[,CODE]" in [p, end). */
static int parse_length(const char *p, const char *end, fm_length *l, char *err, size_t errlen,
                        const char *where)
{
    int len = (int)(end - p);
    memset(l, 0, sizeof *l);
    const char *eq = memchr(p, '=', (size_t)(end - p));
    if (!eq) {
        fm_set_err(err, errlen, "%s: '%.*s': expected FUNCTION[:ATTRIBUTE]=LENGTH[,CODE]", where,
                   len, p);
        return -1;
    }
    const char *target_end = fm_trim_end(p, eq);
    const char *colon = memchr(p, ':', (size_t)(target_end - p));
    const char *name_end = colon ? fm_trim_end(p, colon) : target_end;
    l->fn = fm_function_lookup(p, (size_t)(name_end - p));
    if (l->fn != FN_C_GetAttributeValue && l->fn != FN_C_Sign && l->fn != FN_C_FindObjects &&
        l->fn != FN_C_GetSlotList) {
        fm_set_err(err, errlen, "%s: '%.*s': lengths are misreported for C_GetAttributeValue:ATTRIBUTE, "
                   "C_Sign, C_FindObjects and C_GetSlotList only", where, len, p);
        return -1;
    }
    if ((l->fn == FN_C_GetAttributeValue) != (colon != NULL) ||
        (colon && parse_attribute(fm_skip_space(colon + 1, target_end), target_end, &l->attribute) != 0)) {
        fm_set_err(err, errlen, "%s: '%.*s': C_GetAttributeValue takes one attribute (CKA_ name or "
                   "number) after ':', the others none", where, len, p);
        return -1;
    }
    const char *q = fm_skip_space(eq + 1, end);
    const char *comma = q < end ? memchr(q, ',', (size_t)(end - q)) : NULL;
    const char *value_end = fm_trim_end(q, comma ? comma : end);
    unsigned long n = 0;
    uint64_t exact = 0;
    int ok;
    if (value_end - q == 4 && memcmp(q, "real", 4) == 0) {
        l->kind = LEN_REAL;
        ok = l->fn == FN_C_GetAttributeValue;
    } else if (value_end - q > 7 && memcmp(q, "buffer+", 7) == 0) {
        const char *r = q + 7;
        l->kind = LEN_OVER_BUFFER;
        ok = fm_parse_ulong(&r, value_end, &n) == 0 && r == value_end;
    } else if (q < value_end && (*q == '+' || *q == '-')) {
        const char *r = q + 1;
        l->kind = *q == '+' ? LEN_OVER_REAL : LEN_EXACT;
        ok = fm_parse_ulong(&r, value_end, &n) == 0 && r == value_end && (*q == '+' || n > 0);
        if (*q == '-')
            n = (unsigned long)((CK_ULONG)0 - (CK_ULONG)n); /* (CK_ULONG)-N */
    } else {
        l->kind = LEN_EXACT;
        ok = fm_parse_u64(q, (size_t)(value_end - q), &exact) == 0 && exact <= (CK_ULONG)-1;
        n = (unsigned long)exact;
    }
    if (!ok) {
        fm_set_err(err, errlen, "%s: '%.*s': LENGTH is N, -N, +N, buffer+N or (attributes only) "
                   "real", where, len, p);
        return -1;
    }
    l->n = (CK_ULONG)n;
    if (comma) {
        const char *c = fm_skip_space(comma + 1, end);
        if (fm_parse_code(&c, end, &l->code) != 0 || fm_skip_space(c, end) != end) {
            fm_set_err(err, errlen, "%s: '%.*s': expected a CKR_ name or number after ','", where,
                       len, p);
            return -1;
        }
        l->has_code = 1;
    }
    return 0;
}

FM_ADD_PARSED(length, fm_length, lengths)

/* A misreported length: counted with the injected faults. */
static void note_misreport(fm_call *c, const char *what, CK_ULONG claimed)
{
    fm_lock();
    fm_stats_injected_locked(c->fn);
    if (fm_log_verbose())
        fm_log("%s call %lu: reporting %lu for %s", fm_function_name(c->fn), c->number,
               (unsigned long)claimed, what);
    fm_unlock();
}

/* The length a rule claims, from what was really written and the buffer. */
static CK_ULONG claimed_length(const fm_length *l, CK_ULONG written, CK_ULONG buffer)
{
    switch (l->kind) {
    case LEN_EXACT: return l->n;
    case LEN_OVER_REAL: return written + l->n;
    case LEN_OVER_BUFFER: return buffer + l->n;
    default: return written; /* LEN_REAL */
    }
}

CK_RV fm_misreport_output(fm_call *c, int wrote, CK_ULONG_PTR out_len, CK_ULONG buffer, CK_RV rv)
{
    if (!c->nlengths || rv != CKR_OK || !wrote || !out_len)
        return rv;
    const fm_length *l = &c->lengths[0];
    *out_len = claimed_length(l, *out_len, buffer);
    note_misreport(c, "the output", *out_len);
    return l->has_code ? l->code : rv;
}

CK_RV fm_misreport_attributes(fm_call *c, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE object,
                              CK_ATTRIBUTE_PTR t, CK_ULONG count, const CK_ULONG *given, CK_RV rv)
{
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE &&
        rv != CKR_BUFFER_TOO_SMALL)
        return rv;
    CK_RV result = rv;
    for (CK_ULONG i = 0; i < count; i++) {
        const fm_length *l = NULL;
        for (size_t k = 0; k < c->nlengths && !l; k++)
            if (c->lengths[k].attribute == t[i].type)
                l = &c->lengths[k];
        if (!l)
            continue;
        CK_ULONG value_len = t[i].ulValueLen;
        int too_small = 0;
        if (value_len == CK_UNAVAILABLE_INFORMATION) {
            /* absent, sensitive or too large: only the last has a length */
            CK_ATTRIBUTE q = {t[i].type, NULL, 0};
            if (c->R->C_GetAttributeValue(real, object, &q, 1) != CKR_OK ||
                q.ulValueLen == CK_UNAVAILABLE_INFORMATION)
                continue;
            value_len = q.ulValueLen;
            too_small = t[i].pValue != NULL && value_len > given[i];
        }
        if (l->kind == LEN_REAL && !too_small)
            continue;
        t[i].ulValueLen = claimed_length(l, value_len, given[i]);
        note_misreport(c, "an attribute", t[i].ulValueLen);
        if (l->has_code)
            result = l->code;
    }
    return result;
}

CK_RV fm_corrupt_signature(CK_RV rv, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len, CK_ULONG buffer)
{
    if (rv != CKR_OK || !sig || !sig_len)
        return rv;
    CK_ULONG written = *sig_len < buffer ? *sig_len : buffer;
    fm_lock();
    int corrupt = fm_settings_locked()->corrupt_signature && written > 0;
    if (corrupt) {
        fm_stats_count_locked(FM_STAT_CORRUPTED_SIGNATURES);
        fm_stats_injected_locked(FN_C_Sign);
        fm_log("C_Sign: flipping the last byte of a %lu-byte signature", (unsigned long)written);
    }
    fm_unlock();
    if (corrupt)
        sig[written - 1] ^= 0x01;
    return rv;
}

#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "ckr_names.h"

static int fail_with(jwke_error *err, const char *code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static int fail_with(jwke_error *err, const char *code, const char *fmt, va_list ap)
{
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    err->ckr = CKR_OK;
    err->code = code;
    return -1;
}

int jwke_fail(jwke_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_with(err, NULL, fmt, ap);
    va_end(ap);
    return -1;
}

int jwke_fail_code(jwke_error *err, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_with(err, code, fmt, ap);
    va_end(ap);
    return -1;
}

int jwke_fail_in(jwke_error *err, const char *operation_code)
{
    if (!err->code && err->ckr == CKR_OK)
        err->code = operation_code;
    return -1;
}

int jwke_fail_ckr(jwke_error *err, const char *function, CK_RV rv)
{
    const char *name = jwke_ckr_name(rv);
    if (name)
        jwke_fail(err, "%s: %s", function, name);
    else
        jwke_fail(err, "%s: CKR_0x%08lx (vendor defined)", function, (unsigned long)rv);
    err->ckr = rv;
    err->code = NULL;
    return -1;
}

int jwke_fail_openssl(jwke_error *err, const char *what)
{
    size_t used = (size_t)snprintf(err->message, sizeof err->message, "%s", what);
    unsigned long code;
    int first = 1;
    /* Innermost reason first: the earliest queued error is usually the cause. */
    while ((code = ERR_get_error()) != 0) {
        if (used >= sizeof err->message - 1)
            continue; /* keep draining so the queue is left empty */
        char reason[256];
        ERR_error_string_n(code, reason, sizeof reason);
        used += (size_t)snprintf(err->message + used, sizeof err->message - used,
                                 "%s%s", first ? ": " : "; ", reason);
        first = 0;
    }
    err->ckr = CKR_OK;
    err->code = NULL;
    return -1;
}

/* Error reporting inside the C core.
 *
 * Core functions return 0 on success and -1 on failure, with a readable
 * message in a caller-owned jwke_error. Messages never contain secrets: a
 * PIN or key material must never be passed to jwke_fail. */
#ifndef JWKE_ERROR_H
#define JWKE_ERROR_H

#include <stddef.h>
#include "pkcs11_header.h"
/* JWKE_ERR_* (made from lua/jwkengine/errors.lua, the one registry). A
 * failure path that sets no code is a bug: the binding names it
 * JWKE_ERR_INTERNAL, and spec/core/error_codes_spec.lua keeps every reachable
 * path away from it. */
#include "error_codes.h"

typedef struct jwke_error {
    char message[512];
    /* Set for PKCS#11 failures so policy code can tell "not found" and
     * recoverable classes apart; 0 (CKR_OK) otherwise. */
    CK_RV ckr;
    /* The stable ERR_* code of the failure (static strings only); NULL
     * for PKCS#11 failures, which are known by their CKR name instead. */
    const char *code;
} jwke_error;

/* printf-style; always returns -1 so callers can `return jwke_fail(...)`. */
int jwke_fail(jwke_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The same with a stable ERR_* code (a static string), for failures that
 * have no CKR of their own: every failure reaches Lua with a code. */
int jwke_fail_code(jwke_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Gives a failure that has neither a code nor a CKR of its own the code of
 * the operation it happened in (ERR_KEY_IMPORT for any step of an import),
 * so helpers shared by several operations need not know which one called
 * them. Always returns -1. */
int jwke_fail_in(jwke_error *err, const char *operation_code);

/* "C_Login: CKR_PIN_INCORRECT" (or "CKR_0x80000001 (vendor defined)"). */
int jwke_fail_ckr(jwke_error *err, const char *function, CK_RV rv);

/* Appends OpenSSL's error queue (and clears it) to a message that starts with
 * `what`, so a failure says which step failed and what OpenSSL thought. */
int jwke_fail_openssl(jwke_error *err, const char *what);

#endif

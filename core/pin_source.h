/* Where a PIN can come from without ever becoming a Lua string: an
 * environment variable (erased once used) or the pin-value of a PKCS#11
 * URI (RFC 7512, percent-decoded straight into the caller's buffer). */
#ifndef JWKE_PIN_SOURCE_H
#define JWKE_PIN_SOURCE_H

#include <stddef.h>

#include "error.h"

/* The buffer a PIN kept for the process lands in (taken from the
 * environment, or kept by a host for its workers): at most 255 bytes. */
#define JWKE_PIN_KEPT_CAP 256

/* Fills buf (cap bytes) with a PIN and sets *len; 0 or -1 with err. The
 * shape of jwke_p11_login_from's filler: every source below is declared
 * as one, so the shape is written here only. */
typedef int jwke_pin_filler(const void *ctx, unsigned char *buf, size_t cap, size_t *len,
                            jwke_error *err);
typedef jwke_pin_filler *jwke_pin_fill;

/* ctx: a jwke_pin_bytes, bytes in memory (a PIN or secret a caller
 * holds); `what` names them in the error ("C_Login: the PIN"). */
typedef struct jwke_pin_bytes {
    const unsigned char *data;
    size_t len;
    const char *what;
} jwke_pin_bytes;
jwke_pin_filler jwke_pin_from_bytes;

/* ctx: the variable's name (const char *). The first read moves the value
 * into locked memory kept for the process and erases the variable (see
 * jwke_env_erase); later reads get that copy. */
jwke_pin_filler jwke_pin_from_env;

/* ctx: the URI (const char *, NUL-terminated); reads its query's pin-value. */
jwke_pin_filler jwke_pin_from_uri;

/* 1 when the variable is set and not empty (or was taken by
 * jwke_pin_from_env); its value is not copied. */
int jwke_env_is_set(const char *name);

/* Overwrites NAME=value where environ holds it (for a variable the process
 * started with, that is the area /proc/PID/environ shows), then unsets it. */
void jwke_env_erase(const char *name);

#endif

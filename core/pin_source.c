#include "pin_source.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "kept_secret.h"

extern char **environ;

/* A PIN taken from the environment is kept (kept_secret.h, under the
 * variable's name) for the rest of the process: the variable is erased at
 * once, and an open that fails after login and is retried (nginx workers
 * do) still finds it. taken_lock makes reading and erasing the variable
 * one step. */
static pthread_mutex_t taken_lock = PTHREAD_MUTEX_INITIALIZER;

int jwke_env_is_set(const char *name)
{
    pthread_mutex_lock(&taken_lock);
    const char *value = getenv(name);
    int set = jwke_kept_len(name) > 0 || (value && *value);
    pthread_mutex_unlock(&taken_lock);
    return set;
}

void jwke_env_erase(const char *name)
{
    size_t name_len = strlen(name);
    for (char **entry = environ; entry && *entry; entry++) {
        if (strncmp(*entry, name, name_len) == 0 && (*entry)[name_len] == '=')
            OPENSSL_cleanse(*entry + name_len + 1, strlen(*entry + name_len + 1));
    }
    unsetenv(name);
}

/* Moves the variable's value into the kept secrets; the caller holds
 * taken_lock. */
static int take(const char *name, jwke_error *err)
{
    const char *value = getenv(name);
    size_t n = value ? strlen(value) : 0;
    if (n == 0)
        return jwke_kept_len(name) > 0 ? 0 : jwke_fail_code(err, JWKE_ERR_CONFIG, "%s is not set", name);
    if (n >= JWKE_PIN_KEPT_CAP) {
        jwke_env_erase(name);
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "%s: the PIN must be 1 to %d bytes long", name, JWKE_PIN_KEPT_CAP - 1);
    }
    jwke_pin_bytes bytes = {(const unsigned char *)value, n, "a secret"};
    int rc = jwke_kept_fill(name, JWKE_PIN_KEPT_CAP, jwke_pin_from_bytes, &bytes, err);
    jwke_env_erase(name);
    return rc;
}

int jwke_pin_from_bytes(const void *ctx, unsigned char *buf, size_t cap, size_t *len,
                        jwke_error *err)
{
    const jwke_pin_bytes *given = ctx;
    if (given->len == 0 || given->len >= cap)
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "%s must be 1 to %zu bytes long", given->what,
                              cap - 1);
    memcpy(buf, given->data, given->len);
    *len = given->len;
    return 0;
}

int jwke_pin_from_env(const void *ctx, unsigned char *buf, size_t cap, size_t *len,
                      jwke_error *err)
{
    const char *name = ctx;
    pthread_mutex_lock(&taken_lock);
    int rc = take(name, err);
    pthread_mutex_unlock(&taken_lock);
    if (rc != 0)
        return rc;
    if (jwke_kept_copy(name, buf, cap, len, err) != 0)
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "%s: the PIN must be 1 to %zu bytes long", name, cap - 1);
    return 0;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes text[0..text_len) into buf; never writes past cap - 1. */
static int percent_decode(const char *text, size_t text_len, unsigned char *buf, size_t cap,
                          size_t *len, jwke_error *err)
{
    size_t n = 0;
    for (size_t i = 0; i < text_len; i++) {
        int byte = (unsigned char)text[i];
        if (byte == '%') {
            int complete = i + 2 < text_len;
            int hi = complete ? hex_value((unsigned char)text[i + 1]) : -1;
            int lo = complete ? hex_value((unsigned char)text[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                OPENSSL_cleanse(buf, n);
                return jwke_fail_code(err, JWKE_ERR_PKCS11_URI, "PKCS#11 URI: pin-value has a malformed percent-encoding");
            }
            byte = hi * 16 + lo;
            i += 2;
        }
        if (n + 1 >= cap) {
            OPENSSL_cleanse(buf, n);
            return jwke_fail_code(err, JWKE_ERR_PKCS11_URI, "PKCS#11 URI: the pin-value must be 1 to %zu bytes long",
                             cap - 1);
        }
        buf[n++] = (unsigned char)byte;
    }
    if (n == 0)
        return jwke_fail_code(err, JWKE_ERR_PKCS11_URI, "PKCS#11 URI: pin-value is empty");
    *len = n;
    return 0;
}

int jwke_pin_from_uri(const void *ctx, unsigned char *buf, size_t cap, size_t *len,
                      jwke_error *err)
{
    static const char attribute[] = "pin-value=";
    const char *query = strchr((const char *)ctx, '?');
    while (query) {
        const char *item = query + 1;
        const char *next = strchr(item, '&');
        size_t item_len = next ? (size_t)(next - item) : strlen(item);
        if (item_len >= sizeof attribute - 1 &&
            strncasecmp(item, attribute, sizeof attribute - 1) == 0)
            return percent_decode(item + sizeof attribute - 1, item_len - (sizeof attribute - 1),
                                  buf, cap, len, err);
        query = next;
    }
    return jwke_fail_code(err, JWKE_ERR_PKCS11_URI, "PKCS#11 URI: no pin-value in the query");
}

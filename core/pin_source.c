#include "pin_source.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include <openssl/crypto.h>

extern char **environ;

/* A PIN taken from the environment, kept (locked, out of core dumps) for
 * the rest of the process: the variable is erased at once, and an open that
 * fails after login and is retried (nginx workers do) still finds it. */
#define TAKEN_CAP 256
static struct {
    char name[64];
    unsigned char *pin; /* TAKEN_CAP bytes once taken */
    size_t len;
} taken;
static pthread_mutex_t taken_lock = PTHREAD_MUTEX_INITIALIZER;

static int taken_holds(const char *name)
{
    return taken.len > 0 && strcmp(taken.name, name) == 0;
}

int jwke_env_is_set(const char *name)
{
    pthread_mutex_lock(&taken_lock);
    const char *value = getenv(name);
    int set = taken_holds(name) || (value && *value);
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

/* Moves the variable's value into `taken`; the caller holds taken_lock. */
static int take(const char *name, jwke_error *err)
{
    const char *value = getenv(name);
    size_t n = value ? strlen(value) : 0;
    if (n == 0)
        return taken_holds(name) ? 0 : jwke_fail_code(err, "ERR_CONFIG", "%s is not set", name);
    if (n >= TAKEN_CAP || strlen(name) >= sizeof taken.name) {
        jwke_env_erase(name);
        return jwke_fail_code(err, "ERR_CONFIG", "%s: the PIN must be 1 to %d bytes long", name, TAKEN_CAP - 1);
    }
    if (!taken.pin) {
        taken.pin = malloc(TAKEN_CAP);
        if (!taken.pin)
            return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory storing the PIN");
        mlock(taken.pin, TAKEN_CAP); /* best effort, as for the token's copy */
        madvise(taken.pin, TAKEN_CAP, MADV_DONTDUMP);
    }
    OPENSSL_cleanse(taken.pin, TAKEN_CAP);
    memcpy(taken.pin, value, n);
    taken.len = n;
    snprintf(taken.name, sizeof taken.name, "%s", name);
    jwke_env_erase(name);
    return 0;
}

int jwke_pin_from_env(const void *ctx, unsigned char *buf, size_t cap, size_t *len,
                      jwke_error *err)
{
    const char *name = ctx;
    pthread_mutex_lock(&taken_lock);
    int rc = take(name, err);
    if (rc == 0 && taken.len >= cap)
        rc = jwke_fail_code(err, "ERR_CONFIG", "%s: the PIN must be 1 to %zu bytes long", name, cap - 1);
    if (rc == 0) {
        memcpy(buf, taken.pin, taken.len);
        *len = taken.len;
    }
    pthread_mutex_unlock(&taken_lock);
    return rc;
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
                return jwke_fail_code(err, "ERR_PKCS11_URI", "PKCS#11 URI: pin-value has a malformed percent-encoding");
            }
            byte = hi * 16 + lo;
            i += 2;
        }
        if (n + 1 >= cap) {
            OPENSSL_cleanse(buf, n);
            return jwke_fail_code(err, "ERR_PKCS11_URI", "PKCS#11 URI: the pin-value must be 1 to %zu bytes long",
                             cap - 1);
        }
        buf[n++] = (unsigned char)byte;
    }
    if (n == 0)
        return jwke_fail_code(err, "ERR_PKCS11_URI", "PKCS#11 URI: pin-value is empty");
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
    return jwke_fail_code(err, "ERR_PKCS11_URI", "PKCS#11 URI: no pin-value in the query");
}

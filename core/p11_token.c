/* Opening and closing a token, and logging in (PIN handling). The session
 * pool and recovery are in p11_session.c. */
#include "p11_token.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "p11_internal.h"

#define MAX_PIN_LEN 256

/* The per-process key of PIN fingerprints: random, never stored. */
static unsigned char fingerprint_key[32];
static pthread_once_t fingerprint_key_once = PTHREAD_ONCE_INIT;

static void make_fingerprint_key(void)
{
    RAND_bytes(fingerprint_key, sizeof fingerprint_key);
}

/* HMAC is not told the room: out holds exactly one SHA-256 value */
static void pin_fingerprint(const unsigned char *pin, size_t pin_len,
                            unsigned char out[SHA256_DIGEST_LENGTH])
{
    unsigned int len = 0;
    pthread_once(&fingerprint_key_once, make_fingerprint_key);
    HMAC(EVP_sha256(), fingerprint_key, sizeof fingerprint_key, pin, pin_len, out, &len);
}

/* The login record of a slot; the caller holds module->lock. */
static jwke_p11_login_record *login_record(jwke_p11_module *module, CK_SLOT_ID slot, int create)
{
    for (jwke_p11_login_record *r = module->logins; r; r = r->next)
        if (r->slot == slot)
            return r;
    if (!create)
        return NULL;
    jwke_p11_login_record *r = calloc(1, sizeof *r);
    if (r) {
        r->slot = slot;
        r->next = module->logins;
        module->logins = r;
    }
    return r;
}

/* Counts our tokens on a slot; when the last one closes the token logs out
 * (PKCS#11 §5.6) and the record goes. */
void jwke_p11_track_slot(jwke_p11_module *module, CK_SLOT_ID slot, int delta)
{
    pthread_mutex_lock(&module->lock);
    jwke_p11_login_record *r = login_record(module, slot, delta > 0);
    if (r) {
        r->sessions += delta;
        if (r->sessions <= 0) {
            for (jwke_p11_login_record **p = &module->logins; *p; p = &(*p)->next) {
                if (*p == r) {
                    *p = r->next;
                    break;
                }
            }
            OPENSSL_cleanse(r, sizeof *r);
            free(r);
        }
    }
    pthread_mutex_unlock(&module->lock);
}

/* PIN memory: locked so it is never swapped out, kept out of core dumps,
 * wiped before it is freed. Locking is best effort (RLIMIT_MEMLOCK). */
static unsigned char *pin_alloc(void)
{
    unsigned char *p = malloc(MAX_PIN_LEN);
    if (p) {
        mlock(p, MAX_PIN_LEN);
        madvise(p, MAX_PIN_LEN, MADV_DONTDUMP);
    }
    return p;
}

static void pin_free(jwke_p11_token *t)
{
    if (!t->pin)
        return;
    OPENSSL_cleanse(t->pin, MAX_PIN_LEN);
    munlock(t->pin, MAX_PIN_LEN);
    free(t->pin);
    t->pin = NULL;
    t->pin_len = 0;
}

jwke_p11_token *jwke_p11_token_open(jwke_p11_module *module, CK_SLOT_ID slot, const char *label,
                                    const char *serial, const jwke_p11_options *options,
                                    jwke_error *err)
{
    jwke_p11_token *t = calloc(1, sizeof *t);
    if (!t) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory opening a token");
        return NULL;
    }
    t->module = module;
    t->slot = slot;
    snprintf(t->label, sizeof t->label, "%s", label ? label : "");
    snprintf(t->serial, sizeof t->serial, "%s", serial ? serial : "");
    t->max_sessions =
        options && options->max_sessions > 0 ? options->max_sessions : JWKE_POOL_MAX_SESSIONS;
    if (t->max_sessions > JWKE_POOL_LIMIT)
        t->max_sessions = JWKE_POOL_LIMIT;
    t->session_wait_ms = options && options->session_wait_ms > 0 ? options->session_wait_ms
                                                                : JWKE_POOL_SESSION_WAIT_MS;
    t->reinit_interval_ms =
        options && options->reinit_interval_ms > 0 ? options->reinit_interval_ms
                                                    : JWKE_POOL_REINIT_INTERVAL_MS;
    t->last_reinit_ms = -1000000;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->session_free, NULL);
    t->fork_generation = jwke_p11_fork_generation();
    t->epoch = module->epoch;

    CK_RV rv = module->fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                         &t->login_session);
    if (rv != CKR_OK) {
        jwke_fail_ckr(err, "C_OpenSession", rv);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->session_free);
        free(t);
        return NULL;
    }
    t->have_login_session = 1;
    t->login_session_epoch = t->epoch;
    t->tracked_generation = t->fork_generation;
    jwke_p11_track_slot(module, slot, +1);
    jwke_p11_module_retain(module); /* released in jwke_p11_token_close */
    t->stats.max_sessions = t->max_sessions;
    return t;
}

void jwke_p11_token_close(jwke_p11_token *t)
{
    if (!t || t->closed)
        return;
    /* In a forked child the handles belong to the parent: touch nothing. */
    if (t->fork_generation == jwke_p11_fork_generation() &&
        t->module->fork_generation == t->fork_generation) {
        pthread_mutex_lock(&t->lock);
        CK_FUNCTION_LIST_PTR fn = t->module->fn;
        if (t->epoch == t->module->epoch) {
            while (t->idle_count > 0)
                fn->C_CloseSession(t->idle[--t->idle_count]);
            if (t->have_login_session)
                fn->C_CloseSession(t->login_session);
        }
        t->have_login_session = 0;
        pthread_mutex_unlock(&t->lock);
    }
    if (t->tracked_generation == jwke_p11_fork_generation())
        jwke_p11_track_slot(t->module, t->slot, -1);
    pin_free(t);
    t->closed = 1;
    jwke_p11_module_release(t->module);
    t->module = NULL;
}

static int refuse_by_flags(CK_FLAGS flags, jwke_error *err)
{
    if (flags & CKF_USER_PIN_LOCKED)
        jwke_fail(err, "C_Login refused: the token reports CKF_USER_PIN_LOCKED (the user PIN "
                  "is locked; unlock it with the security officer PIN)");
    else if (flags & CKF_USER_PIN_FINAL_TRY)
        jwke_fail(err, "C_Login refused: the token reports CKF_USER_PIN_FINAL_TRY (one more "
                  "wrong PIN locks it; log in by hand to clear the counter)");
    else if (flags & CKF_USER_PIN_TO_BE_CHANGED)
        jwke_fail(err, "C_Login refused: the token reports CKF_USER_PIN_TO_BE_CHANGED "
                  "(change the user PIN first)");
    else
        return 0;
    err->code = "ERR_LOGIN_REFUSED";
    return -1;
}

/* Logs the login session in with the stored PIN. Caller holds t->lock. */
int jwke_p11_login_locked(jwke_p11_token *t, jwke_error *err)
{
    if (!t->pin)
        return jwke_fail_code(err, "ERR_CONFIG", "C_Login: no PIN is configured");
    if (t->pin_refused) {
        jwke_fail(err, "C_Login: the token refused this PIN before (CKR_PIN_INCORRECT); "
                  "jwkengine never tries a refused PIN again");
        err->code = "ERR_LOGIN_REFUSED";
        return -1;
    }
    CK_FUNCTION_LIST_PTR fn = t->module->fn;
    CK_TOKEN_INFO info;
    CK_RV rv = fn->C_GetTokenInfo(t->slot, &info);
    if (rv != CKR_OK)
        return jwke_fail_ckr(err, "C_GetTokenInfo", rv);
    if (refuse_by_flags(info.flags, err) != 0)
        return -1;

    unsigned char fingerprint[SHA256_DIGEST_LENGTH];
    _Static_assert(sizeof fingerprint == sizeof ((jwke_p11_login_record *)0)->pin_fingerprint,
                   "a login record keeps one PIN fingerprint");
    pin_fingerprint(t->pin, t->pin_len, fingerprint);
    jwke_p11_module *module = t->module;
    pthread_mutex_lock(&module->lock);
    rv = fn->C_Login(t->login_session, CKU_USER, t->pin, (CK_ULONG)t->pin_len);
    if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) {
        /* the login session itself went away: one new one */
        rv = fn->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                               &t->login_session);
        if (rv == CKR_OK)
            rv = fn->C_Login(t->login_session, CKU_USER, t->pin, (CK_ULONG)t->pin_len);
    }
    jwke_p11_login_record *record = login_record(module, t->slot, rv == CKR_OK);
    int result = 0;
    if (rv == CKR_OK) {
        if (record) {
            memcpy(record->pin_fingerprint, fingerprint, sizeof fingerprint);
            record->logged_in = 1;
        }
    } else if (rv == CKR_USER_ALREADY_LOGGED_IN) {
        /* Logged in by another of our engines: only with the same PIN. */
        if (record && record->logged_in &&
            CRYPTO_memcmp(record->pin_fingerprint, fingerprint, sizeof fingerprint) != 0) {
            jwke_fail(err, "C_Login: the token is already logged in by this process with "
                      "another PIN; this PIN was not checked and is refused");
            err->ckr = CKR_PIN_INCORRECT;
            result = -1;
        }
    } else {
        if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE ||
            rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED)
            t->pin_refused = 1;
        result = jwke_fail_ckr(err, "C_Login", rv);
    }
    pthread_mutex_unlock(&module->lock);
    OPENSSL_cleanse(fingerprint, sizeof fingerprint);
    return result;
}

static int store_pin_and_login(jwke_p11_token *t, jwke_error *err)
{
    pthread_mutex_lock(&t->lock);
    int rc = jwke_p11_login_locked(t, err);
    pthread_mutex_unlock(&t->lock);
    if (rc != 0)
        pin_free(t); /* a refused PIN is not kept */
    return rc;
}

int jwke_p11_login_from(jwke_p11_token *t, jwke_pin_fill fill, const void *ctx, jwke_error *err)
{
    pin_free(t);
    t->pin_refused = 0; /* a PIN given anew gets one try */
    t->pin = pin_alloc();
    if (!t->pin)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory storing the PIN");
    size_t n = 0;
    if (fill(ctx, t->pin, MAX_PIN_LEN, &n, err) != 0) { /* each filler checks 1 <= n < cap */
        pin_free(t);
        return -1;
    }
    t->pin_len = n;
    return store_pin_and_login(t, err);
}

typedef struct pin_bytes {
    const char *pin;
    size_t len;
} pin_bytes;

static int pin_from_bytes(const void *ctx, unsigned char *buf, size_t cap, size_t *len,
                          jwke_error *err)
{
    const pin_bytes *given = ctx;
    if (given->len == 0 || given->len >= cap)
        return jwke_fail_code(err, "ERR_CONFIG", "C_Login: the PIN must be 1 to %zu bytes long", cap - 1);
    memcpy(buf, given->pin, given->len);
    *len = given->len;
    return 0;
}

int jwke_p11_login(jwke_p11_token *t, const char *pin, size_t pin_len, jwke_error *err)
{
    pin_bytes given = {pin, pin_len};
    return jwke_p11_login_from(t, pin_from_bytes, &given, err);
}

int jwke_p11_login_file(jwke_p11_token *t, const char *path, jwke_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return jwke_fail_code(err, "ERR_CONFIG", "cannot read the PIN file '%s': %s", path, strerror(errno));
    pin_free(t);
    t->pin_refused = 0;
    t->pin = pin_alloc();
    if (!t->pin) {
        fclose(f);
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory storing the PIN");
    }
    size_t n = fread(t->pin, 1, MAX_PIN_LEN, f);
    int failed = ferror(f);
    fclose(f);
    while (n > 0 && (t->pin[n - 1] == '\n' || t->pin[n - 1] == '\r'))
        n--;
    if (failed || n == 0 || n >= MAX_PIN_LEN) {
        pin_free(t);
        return jwke_fail_code(err, "ERR_CONFIG", "the PIN file '%s' %s", path,
                         failed ? "cannot be read" : n == 0 ? "is empty" : "is too long");
    }
    t->pin_len = n;
    return store_pin_and_login(t, err);
}

void jwke_p11_token_stats(jwke_p11_token *t, jwke_p11_stats *out)
{
    pthread_mutex_lock(&t->lock);
    *out = t->stats;
    out->sessions_open = t->open_count;
    out->max_sessions = t->max_sessions;
    pthread_mutex_unlock(&t->lock);
}

int jwke_p11_take_events(jwke_p11_token *t, char (*out)[160], int max)
{
    pthread_mutex_lock(&t->lock);
    int n = t->event_count < max ? t->event_count : max;
    for (int i = 0; i < n; i++)
        memcpy(out[i], t->events[i], sizeof out[i]);
    memmove(t->events, t->events + n, (size_t)(t->event_count - n) * sizeof t->events[0]);
    t->event_count -= n;
    pthread_mutex_unlock(&t->lock);
    return n;
}

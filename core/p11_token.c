#include "p11_token.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

/* The per-process key of PIN fingerprints: random, never stored. */
static unsigned char fingerprint_key[32];
static pthread_once_t fingerprint_key_once = PTHREAD_ONCE_INIT;

static void make_fingerprint_key(void)
{
    RAND_bytes(fingerprint_key, sizeof fingerprint_key);
}

static void pin_fingerprint(const char *pin, size_t pin_len, unsigned char out[32])
{
    unsigned int len = 32;
    pthread_once(&fingerprint_key_once, make_fingerprint_key);
    HMAC(EVP_sha256(), fingerprint_key, sizeof fingerprint_key, (const unsigned char *)pin,
         pin_len, out, &len);
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

/* Counts our sessions on a slot; when the last one closes the token logs
 * out (PKCS#11 §5.6) and the record goes. */
static int track_session(jwke_p11_module *module, CK_SLOT_ID slot, int delta)
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
    return r || delta < 0 ? 0 : -1;
}

jwke_p11_token *jwke_p11_token_open(jwke_p11_module *module, CK_SLOT_ID slot, jwke_error *err)
{
    jwke_p11_token *token = calloc(1, sizeof *token);
    if (!token) {
        jwke_fail(err, "out of memory opening a token session");
        return NULL;
    }
    CK_RV rv = module->fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                         &token->session);
    if (rv != CKR_OK) {
        jwke_fail_ckr(err, "C_OpenSession", rv);
        free(token);
        return NULL;
    }
    if (track_session(module, slot, +1) != 0) {
        module->fn->C_CloseSession(token->session);
        free(token);
        jwke_fail(err, "out of memory opening a token session");
        return NULL;
    }
    jwke_p11_module_retain(module); /* released in jwke_p11_token_close */
    token->module = module;
    token->slot = slot;
    token->open = 1;
    pthread_mutex_init(&token->lock, NULL);
    return token;
}

void jwke_p11_token_close(jwke_p11_token *token)
{
    if (!token || !token->open)
        return;
    token->module->fn->C_CloseSession(token->session);
    track_session(token->module, token->slot, -1);
    token->open = 0;
    pthread_mutex_destroy(&token->lock);
    jwke_p11_module_release(token->module);
    token->module = NULL;
}

int jwke_p11_login(jwke_p11_token *token, const char *pin, size_t pin_len, jwke_error *err)
{
    unsigned char fingerprint[32];
    pin_fingerprint(pin, pin_len, fingerprint);

    jwke_p11_module *module = token->module;
    pthread_mutex_lock(&module->lock);
    pthread_mutex_lock(&token->lock);
    CK_RV rv = module->fn->C_Login(token->session, CKU_USER, (CK_UTF8CHAR_PTR)pin,
                                   (CK_ULONG)pin_len);
    pthread_mutex_unlock(&token->lock);
    jwke_p11_login_record *record = login_record(module, token->slot, 0);
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
        result = jwke_fail_ckr(err, "C_Login", rv);
    }
    pthread_mutex_unlock(&module->lock);
    OPENSSL_cleanse(fingerprint, sizeof fingerprint);
    return result;
}

int jwke_p11_find(jwke_p11_token *token, CK_ATTRIBUTE *template, CK_ULONG template_len,
                  CK_OBJECT_HANDLE **found, size_t *count, jwke_error *err)
{
    CK_FUNCTION_LIST_PTR fn = token->module->fn;
    CK_RV rv = fn->C_FindObjectsInit(token->session, template, template_len);
    if (rv != CKR_OK)
        return jwke_fail_ckr(err, "C_FindObjectsInit", rv);

    size_t capacity = 16, n = 0;
    CK_OBJECT_HANDLE *handles = malloc(capacity * sizeof *handles);
    int result = 0;
    for (;;) {
        if (!handles) {
            result = jwke_fail(err, "out of memory searching the token");
            break;
        }
        if (n == capacity) {
            CK_OBJECT_HANDLE *grown = realloc(handles, 2 * capacity * sizeof *handles);
            if (!grown) {
                free(handles);
                handles = NULL;
                continue;
            }
            handles = grown;
            capacity *= 2;
        }
        CK_ULONG got = 0;
        rv = fn->C_FindObjects(token->session, handles + n, (CK_ULONG)(capacity - n), &got);
        if (rv != CKR_OK) {
            result = jwke_fail_ckr(err, "C_FindObjects", rv);
            break;
        }
        if (got == 0)
            break;
        n += got;
    }
    /* Always end the search, or the session stays busy with it. */
    rv = fn->C_FindObjectsFinal(token->session);
    if (result == 0 && rv != CKR_OK)
        result = jwke_fail_ckr(err, "C_FindObjectsFinal", rv);
    if (result != 0) {
        free(handles);
        return -1;
    }
    *found = handles;
    *count = n;
    return 0;
}

/* A token's login and its kept PIN (see p11_login.h). */
#include "p11_login.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/crypto.h>

#define MAX_PIN_LEN 256

struct jwke_p11_kept_pin {
    unsigned char *pin;    /* locked memory, wiped on free */
    size_t pin_len;
    int refused;           /* the token said CKR_PIN_INCORRECT (or the like): never again */
};

/* PIN memory: locked so it is never swapped out, kept out of core dumps,
 * wiped before it is freed. Locking is best effort (RLIMIT_MEMLOCK). */
static unsigned char *pin_alloc(void)
{
    unsigned char *p = calloc(1, MAX_PIN_LEN);
    if (p) {
        mlock(p, MAX_PIN_LEN);
        madvise(p, MAX_PIN_LEN, MADV_DONTDUMP);
    }
    return p;
}

static void pin_wipe(unsigned char *pin)
{
    if (!pin)
        return;
    OPENSSL_cleanse(pin, MAX_PIN_LEN);
    munlock(pin, MAX_PIN_LEN);
    free(pin);
}

jwke_p11_kept_pin *jwke_p11_kept_pin_new(void)
{
    return calloc(1, sizeof(jwke_p11_kept_pin));
}

void jwke_p11_kept_pin_free(jwke_p11_kept_pin *kept)
{
    if (!kept)
        return;
    pin_wipe(kept->pin);
    free(kept);
}

int jwke_p11_pin_take(jwke_pin_fill fill, const void *ctx, unsigned char **pin, size_t *len,
                      jwke_error *err)
{
    *pin = pin_alloc();
    *len = 0;
    if (!*pin)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory storing the PIN");
    if (fill(ctx, *pin, MAX_PIN_LEN, len, err) != 0) { /* each filler checks 1 <= n < cap */
        pin_wipe(*pin);
        *pin = NULL;
        return -1;
    }
    return 0;
}

void jwke_p11_kept_pin_replace(jwke_p11_kept_pin *kept, unsigned char *pin, size_t len)
{
    pin_wipe(kept->pin);
    kept->pin = pin;
    kept->pin_len = pin ? len : 0;
    kept->refused = 0;
}

void jwke_p11_kept_pin_drop(jwke_p11_kept_pin *kept)
{
    pin_wipe(kept->pin);
    kept->pin = NULL;
    kept->pin_len = 0;
}

int jwke_p11_kept_pin_present(const jwke_p11_kept_pin *kept)
{
    return kept->pin != NULL;
}

int jwke_p11_kept_pin_refused(const jwke_p11_kept_pin *kept)
{
    return kept->refused;
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
    err->code = JWKE_ERR_LOGIN_REFUSED;
    return -1;
}

int jwke_p11_kept_pin_log_in(jwke_p11_kept_pin *kept, jwke_p11_module *module, CK_SLOT_ID slot,
                             CK_SESSION_HANDLE *session, jwke_error *err)
{
    if (!kept->pin)
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "C_Login: no PIN is configured");
    if (kept->refused) {
        jwke_fail(err, "C_Login: the token refused this PIN before (CKR_PIN_INCORRECT); "
                  "jwkengine never tries a refused PIN again");
        err->code = JWKE_ERR_LOGIN_REFUSED;
        return -1;
    }
    CK_TOKEN_INFO info;
    CK_RV rv = jwke_p11_module_fn(module)->C_GetTokenInfo(slot, &info);
    if (rv != CKR_OK)
        return jwke_fail_ckr(err, "C_GetTokenInfo", rv);
    if (refuse_by_flags(info.flags, err) != 0)
        return -1;

    CK_RV login_rv;
    if (jwke_p11_module_login(module, slot, session, kept->pin, kept->pin_len, &login_rv, err) == 0)
        return 0;
    if (login_rv == CKR_PIN_INCORRECT || login_rv == CKR_PIN_INVALID ||
        login_rv == CKR_PIN_LEN_RANGE || login_rv == CKR_PIN_LOCKED || login_rv == CKR_PIN_EXPIRED)
        kept->refused = 1;
    return -1;
}

int jwke_pin_from_file(const void *ctx, unsigned char *buf, size_t cap, size_t *len,
                       jwke_error *err)
{
    const char *path = ctx;
    FILE *f = fopen(path, "rb");
    if (!f)
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "cannot read the PIN file '%s': %s", path, strerror(errno));
    size_t n = fread(buf, 1, cap, f);
    int failed = ferror(f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (failed || n == 0 || n >= cap)
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "the PIN file '%s' %s", path,
                              failed ? "cannot be read" : n == 0 ? "is empty" : "is too long");
    *len = n;
    return 0;
}

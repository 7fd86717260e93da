/* Sealing for the software key store, byte-compatible with Ory Hydra.
 *
 * Hydra (aead/aesgcm.go, x/secret.go, driver/config/provider_secrets.go)
 * turns every configured secret into an AES-256 key with SHA-256, whatever
 * its length, encrypts with the first and decrypts with any, and stores
 * base64url WITH padding (Go's base64.URLEncoding) of
 * nonce(12) || ciphertext || tag(16), with no additional data. */
#ifndef JWKE_AESGCM_H
#define JWKE_AESGCM_H

#include <stddef.h>

#include "error.h"
#include "engine_limits.h" /* JWKE_MIN_SECRET_LENGTH: the shortest secret that seals */

#define JWKE_AESGCM_NONCE_SIZE 12
#define JWKE_AESGCM_TAG_SIZE 16

typedef struct jwke_secret {
    const unsigned char *data;
    size_t len;
} jwke_secret;

/* Encrypts with SHA-256(secret) and a fresh random nonce. *out is a
 * malloc'd, NUL-terminated text of *out_len characters. */
int jwke_aesgcm_seal(const unsigned char *secret, size_t secret_len,
                     const unsigned char *plaintext, size_t plaintext_len, char **out,
                     size_t *out_len, jwke_error *err);

/* Tries each secret in order (rotation). *plaintext is NUL-terminated and
 * must be released with jwke_aesgcm_free; *used receives the index of the
 * secret that opened it. */
int jwke_aesgcm_open(const jwke_secret *secrets, size_t count, const char *text,
                     size_t text_len, unsigned char **plaintext, size_t *plaintext_len,
                     size_t *used, jwke_error *err);

/* Rotation of one sealed text: opens it with any of the secrets and seals
 * it again with the first (Hydra's "encrypt with the first"), in one call,
 * so the plaintext stays in C and is wiped before this returns. *out as for
 * jwke_aesgcm_seal. err->code: ERR_KEY_DECRYPT or ERR_KEY_ENCRYPT. */
int jwke_aesgcm_reseal(const jwke_secret *secrets, size_t count, const char *text,
                       size_t text_len, char **out, size_t *out_len, jwke_error *err);

/* Wipes and frees a plaintext returned by jwke_aesgcm_open (it is usually a
 * private JWK). */
void jwke_aesgcm_free(unsigned char *plaintext, size_t plaintext_len);

#endif

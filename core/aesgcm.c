/* What Hydra does, as read in ory/hydra (v2 master):
 *  - x/secret.go: HashByteSecret(secret) = sha256.Sum256(secret). Every
 *    secret is hashed, so a secret longer (or shorter) than 32 bytes is
 *    never truncated or padded; aeadKey() then copies key[:32] of the hash,
 *    a no-op.
 *  - driver/config/provider_secrets.go: secrets.system[0] must be at least
 *    16 characters (bytes of the Go string) and encrypts; secrets.system[1:]
 *    are only tried when decrypting, with no length check.
 *  - aead/aesgcm.go: aes.NewCipher(key), cipher.NewGCM (12-byte nonce,
 *    16-byte tag), nonce from crypto/rand, gcm.Seal(nonce, nonce, pt, aad),
 *    base64.URLEncoding (padded). Decrypt tries each key in order.
 *  - persistence/sql/persister_jwk.go: JWK rows are sealed with aad nil. */
#include "aesgcm.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "b64url.h"

#define OVERHEAD (JWKE_AESGCM_NONCE_SIZE + JWKE_AESGCM_TAG_SIZE)

static void derive_key(const unsigned char *secret, size_t secret_len,
                       unsigned char key[SHA256_DIGEST_LENGTH])
{
    SHA256(secret, secret_len, key);
}

/* AES-256-GCM over in; out receives the same number of bytes. tag is
 * written when sealing and checked when opening. Returns 1 on success,
 * 0 when the tag does not match, -1 when OpenSSL itself failed. */
static int gcm(int sealing, const unsigned char key[32], const unsigned char *nonce,
               const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n, result = -1;
    if (!ctx || len > INT_MAX)
        goto done;
    if (!EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce, sealing))
        goto done;
    if (len > 0 && !EVP_CipherUpdate(ctx, out, &n, in, (int)len))
        goto done;
    if (sealing) {
        if (!EVP_CipherFinal_ex(ctx, out + len, &n) ||
            !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, JWKE_AESGCM_TAG_SIZE, tag))
            goto done;
        result = 1;
    } else {
        if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, JWKE_AESGCM_TAG_SIZE, tag))
            goto done;
        result = EVP_CipherFinal_ex(ctx, out + len, &n) > 0 ? 1 : 0;
    }
done:
    EVP_CIPHER_CTX_free(ctx);
    return result;
}

int jwke_aesgcm_seal(const unsigned char *secret, size_t secret_len,
                     const unsigned char *plaintext, size_t plaintext_len, char **out,
                     size_t *out_len, jwke_error *err)
{
    if (secret_len < JWKE_MIN_SECRET_LENGTH)
        return jwke_fail_code(err, JWKE_ERR_KEY_ENCRYPT,
                              "the encryption secret must be at least %d bytes long",
                              JWKE_MIN_SECRET_LENGTH);
    if (plaintext_len > (size_t)INT_MAX - OVERHEAD)
        return jwke_fail_code(err, JWKE_ERR_KEY_ENCRYPT, "plaintext is too large to seal");

    size_t raw_len = OVERHEAD + plaintext_len;
    unsigned char *raw = malloc(raw_len);
    size_t text_len = jwke_b64url_encoded_len(raw_len, JWKE_B64_PAD);
    char *text = malloc(text_len + 1);
    unsigned char key[SHA256_DIGEST_LENGTH];
    int rc = -1;
    if (!raw || !text) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory sealing");
        goto done;
    }
    if (RAND_bytes(raw, JWKE_AESGCM_NONCE_SIZE) != 1) {
        jwke_fail_openssl(err, "cannot make a nonce");
        goto done;
    }
    derive_key(secret, secret_len, key);
    /* Go's gcm.Seal(nonce, nonce, ...) layout: nonce, ciphertext, tag. */
    if (gcm(1, key, raw, plaintext, plaintext_len, raw + JWKE_AESGCM_NONCE_SIZE,
            raw + JWKE_AESGCM_NONCE_SIZE + plaintext_len) != 1) {
        jwke_fail_openssl(err, "AES-GCM encryption failed");
        goto done;
    }
    if (jwke_b64url_encode(raw, raw_len, text, text_len, JWKE_B64_PAD) != (long)text_len) {
        jwke_fail(err, "the sealed value does not fit its buffer");
        goto done;
    }
    text[text_len] = '\0';
    *out = text;
    *out_len = text_len;
    text = NULL;
    rc = 0;
done:
    OPENSSL_cleanse(key, sizeof key);
    free(raw); /* nonce and ciphertext only: nothing secret */
    free(text);
    return rc == 0 ? 0 : jwke_fail_in(err, JWKE_ERR_KEY_ENCRYPT);
}

int jwke_aesgcm_open(const jwke_secret *secrets, size_t count, const char *text,
                     size_t text_len, unsigned char **plaintext, size_t *plaintext_len,
                     size_t *used, jwke_error *err)
{
    if (count == 0)
        return jwke_fail_code(err, JWKE_ERR_KEY_DECRYPT, "cannot decrypt: no secrets are configured");
    size_t raw_size = jwke_b64url_decoded_max(text_len);
    unsigned char *raw = malloc(raw_size);
    if (!raw)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory opening");
    const char *why;
    long raw_len = jwke_b64url_decode(text, text_len, raw, raw_size, JWKE_B64_PAD, &why);
    if (raw_len < 0) {
        free(raw);
        return jwke_fail_code(err, JWKE_ERR_KEY_DECRYPT, "encrypted key data is not valid base64url: %s",
                              why);
    }
    if ((size_t)raw_len < OVERHEAD) {
        free(raw);
        return jwke_fail_code(err, JWKE_ERR_KEY_DECRYPT,
                              "ciphertext is truncated: %ld bytes, at least %d expected", raw_len,
                              OVERHEAD);
    }

    size_t len = (size_t)raw_len - OVERHEAD;
    unsigned char *out = OPENSSL_malloc(len + 1); /* freed with OPENSSL_clear_free */
    if (!out) {
        free(raw);
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory opening");
    }
    const unsigned char *nonce = raw, *ciphertext = raw + JWKE_AESGCM_NONCE_SIZE;
    unsigned char *tag = raw + JWKE_AESGCM_NONCE_SIZE + len;
    int rc = -1, opened = 0;
    for (size_t i = 0; i < count && !opened; i++) {
        unsigned char key[SHA256_DIGEST_LENGTH];
        derive_key(secrets[i].data, secrets[i].len, key);
        int r = gcm(0, key, nonce, ciphertext, len, out, tag);
        OPENSSL_cleanse(key, sizeof key);
        if (r < 0) {
            jwke_fail_openssl(err, "AES-GCM decryption failed");
            goto done;
        }
        if (r == 1) {
            opened = 1;
            *used = i;
        }
    }
    if (!opened) {
        jwke_fail(err, "cannot decrypt: no secret matches");
        goto done;
    }
    out[len] = '\0';
    *plaintext = out;
    *plaintext_len = len;
    out = NULL;
    rc = 0;
done:
    /* A failed tag check leaves unauthenticated plaintext in out: wipe it. */
    if (out)
        OPENSSL_clear_free(out, len + 1);
    free(raw);
    return rc == 0 ? 0 : jwke_fail_in(err, JWKE_ERR_KEY_DECRYPT);
}

int jwke_aesgcm_reseal(const jwke_secret *secrets, size_t count, const char *text,
                       size_t text_len, char **out, size_t *out_len, jwke_error *err)
{
    unsigned char *plaintext;
    size_t plaintext_len, used;
    if (jwke_aesgcm_open(secrets, count, text, text_len, &plaintext, &plaintext_len, &used,
                         err) != 0) {
        err->code = JWKE_ERR_KEY_DECRYPT;
        return -1;
    }
    int rc = jwke_aesgcm_seal(secrets[0].data, secrets[0].len, plaintext, plaintext_len, out,
                              out_len, err);
    if (rc != 0)
        err->code = JWKE_ERR_KEY_ENCRYPT;
    jwke_aesgcm_free(plaintext, plaintext_len);
    return rc;
}

void jwke_aesgcm_free(unsigned char *plaintext, size_t plaintext_len)
{
    if (plaintext)
        OPENSSL_clear_free(plaintext, plaintext_len + 1);
}

#include <stdlib.h>

#include "aesgcm.h"
#include "check.h"

#define S(text) {(const unsigned char *)(text), sizeof(text) - 1}

static const jwke_secret first = S("first-secret-0123456789");
static const jwke_secret second = S("second-secret-0123456789");
static const jwke_secret wrong = S("wrong-secret-0123456789");

/* Opens text with the given secrets; returns the plaintext (caller frees
 * with jwke_aesgcm_free) or NULL with the error in err. */
static unsigned char *open_text(const jwke_secret *secrets, size_t count, const char *text,
                                size_t *len, size_t *used, jwke_error *err)
{
    unsigned char *plaintext = NULL;
    if (jwke_aesgcm_open(secrets, count, text, strlen(text), &plaintext, len, used, err) != 0)
        return NULL;
    return plaintext;
}

static char *seal(const jwke_secret *secret, const char *plaintext, jwke_error *err)
{
    char *text = NULL;
    size_t len;
    if (jwke_aesgcm_seal(secret->data, secret->len, (const unsigned char *)plaintext,
                         strlen(plaintext), &text, &len, err) != 0)
        return NULL;
    return text;
}

int main(void)
{
    const char *message = "{\"kty\":\"EC\",\"crv\":\"P-256\",\"d\":\"...\"}";
    jwke_error err;
    size_t len, used;

    /* Round trip; two seals of the same text differ (fresh nonce). */
    char *text = seal(&first, message, &err);
    char *again = seal(&first, message, &err);
    CHECK(text && again && strcmp(text, again) != 0);
    CHECK(text && strlen(text) % 4 == 0); /* padded base64url */
    unsigned char *plain = open_text(&first, 1, text, &len, &used, &err);
    CHECK(plain && len == strlen(message) && memcmp(plain, message, len) == 0 && used == 0);
    jwke_aesgcm_free(plain, len);

    /* Rotation: the second secret in the list opens it and says so. */
    jwke_secret rotated[] = {second, first};
    plain = open_text(rotated, 2, text, &len, &used, &err);
    CHECK(plain && used == 1 && len == strlen(message));
    jwke_aesgcm_free(plain, len);

    /* Wrong secret. */
    CHECK(open_text(&wrong, 1, text, &len, &used, &err) == NULL);
    CHECK(strcmp(err.message, "cannot decrypt: no secret matches") == 0);
    CHECK(strstr(err.message, "wrong-secret") == NULL);

    /* One byte of ciphertext changed (a character in the middle). */
    char *tampered = strdup(text);
    size_t mid = strlen(tampered) / 2;
    tampered[mid] = tampered[mid] == 'A' ? 'B' : 'A';
    CHECK(open_text(&first, 1, tampered, &len, &used, &err) == NULL);
    CHECK(strcmp(err.message, "cannot decrypt: no secret matches") == 0);
    free(tampered);

    /* Truncated: shorter than nonce + tag. */
    CHECK(open_text(&first, 1, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", &len, &used, &err) == NULL);
    CHECK(strncmp(err.message, "ciphertext is truncated", 23) == 0);

    /* Not base64url: standard alphabet, missing padding. */
    CHECK(open_text(&first, 1, "ab+/", &len, &used, &err) == NULL);
    CHECK(strstr(err.message, "not valid base64url") != NULL);
    text[strlen(text) - 1] = '\0';
    CHECK(open_text(&first, 1, text, &len, &used, &err) == NULL);
    CHECK(strstr(err.message, "not valid base64url") != NULL);

    CHECK(open_text(NULL, 0, again, &len, &used, &err) == NULL);

    /* Too short a secret to encrypt with (Hydra asks for 16). */
    jwke_secret short_secret = S("short");
    CHECK(seal(&short_secret, message, &err) == NULL);

    /* Known answer, made independently with python3-cryptography:
     *   key = sha256(secret); nonce = 00 01 .. 0b
     *   base64.urlsafe_b64encode(nonce + AESGCM(key).encrypt(nonce, pt, None))
     * with a secret longer than 32 bytes (it is hashed, never cut). */
    jwke_secret kat_secret = S("kat-secret-0123456789abcdef-longer-than-32-bytes!");
    const char *kat_plain = "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"k\"}";
    const char *kat_text = "AAECAwQFBgcICQoLZNpQgqBOZzAlEBfUYPW2g7G1Kea-53y_LJxjsH6spJ3D2fyOyz1D"
                           "28_fdRSKxrJ08rOz0bg=";
    jwke_secret kat_list[] = {first, kat_secret};
    plain = open_text(kat_list, 2, kat_text, &len, &used, &err);
    CHECK(plain && used == 1 && len == strlen(kat_plain) && memcmp(plain, kat_plain, len) == 0);
    jwke_aesgcm_free(plain, len);
    /* Empty plaintext: the text is nonce (ff * 12) and tag only. */
    const char *empty_text = "________________WpPRp6OG1lUCcbjuuDmraw==";
    plain = open_text(&kat_secret, 1, empty_text, &len, &used, &err);
    CHECK(plain && len == 0);
    jwke_aesgcm_free(plain, len);

    /* Rotation: sealed with the second, re-sealed with the first of
     * {first, second}; a text no secret opens is ERR_KEY_DECRYPT. */
    {
        const jwke_secret ring[] = {first, second};
        char *old_text = seal(&second, message, &err), *rotated = NULL;
        size_t rotated_len;
        CHECK(old_text && jwke_aesgcm_reseal(ring, 2, old_text, strlen(old_text), &rotated,
                                             &rotated_len, &err) == 0);
        plain = rotated ? open_text(&first, 1, rotated, &len, &used, &err) : NULL;
        CHECK(plain && len == strlen(message) && memcmp(plain, message, len) == 0);
        jwke_aesgcm_free(plain, len);
        char *none = NULL;
        CHECK(old_text && jwke_aesgcm_reseal(&wrong, 1, old_text, strlen(old_text), &none,
                                             &rotated_len, &err) != 0 && none == NULL);
        CHECK(err.code && strcmp(err.code, "ERR_KEY_DECRYPT") == 0);
        free(old_text);
        free(rotated);
    }

    free(text);
    free(again);
    return check_summary();
}

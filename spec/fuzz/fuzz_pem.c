/* PEM and DER key import (core/swkey.c jwke_swkey_from_pem), then what a
 * signer does with the key: export it, sign with every algorithm it fits
 * and verify the signature with its public half.
 *
 * Input: one selector byte, then either PEM text as it is (selector 0) or
 * DER that the target wraps in a PEM block of one of the kinds the
 * importer takes (1..4), so mutations reach the DER decoders directly
 * instead of first having to be valid base64.
 *
 * A key that imports must stay within the supported RSA size, and every
 * signature must fit JWKE_MAX_SIGNATURE and verify. */
#include <string.h>

#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "alg.h"
#include "evp_sig.h"
#include "fuzz_input.h"
#include "pkey.h"
#include "swkey.h"

static const char *const block_names[] = {"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY",
                                          "PUBLIC KEY"};
static const char *const algs[] = {"RS256", "PS384", "ES256", "ES384", "ES512", "EdDSA"};

/* Signing with RSA costs a modular exponentiation per call: only keys up
 * to this size sign here (the import itself already signed once). */
#define SIGN_MAX_RSA_BITS 4096

static void sign_and_verify(const jwke_swkey *key)
{
    static const unsigned char input[] = "eyJhbGciOiJub25lIn0.e30";
    for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++) {
        const jwke_alg *alg = jwke_alg_by_name(algs[i]);
        jwke_error err;
        if (jwke_pkey_fits_alg(key->pkey, alg, 0, &err) != 0)
            continue;
        unsigned char sig[JWKE_MAX_SIGNATURE];
        size_t sig_len = sizeof sig;
        FUZZ_ASSERT(jwke_evp_sign(key->pkey, alg, input, sizeof input - 1, sig, &sig_len, &err) == 0);
        FUZZ_ASSERT(sig_len <= sizeof sig);
        FUZZ_ASSERT(jwke_evp_verify(key->public_pkey, alg, input, sizeof input - 1, sig, sig_len,
                                    &err) == 1);
    }
}

static void import(const char *pem, size_t pem_len, int is_der_of_public)
{
    jwke_swkey key;
    memset(&key, 0, sizeof key);
    jwke_error err;
    if (jwke_swkey_from_pem(pem, pem_len, &key, &err) != 0) {
        FUZZ_ASSERT(!key.pkey && err.message[0] != '\0');
        ERR_clear_error();
        return;
    }
    FUZZ_ASSERT(key.pkey && key.public_pkey);
    if (is_der_of_public)
        FUZZ_ASSERT(!key.is_private);
    if (jwke_pkey_kind(key.pkey) == JWKE_KIND_RSA)
        FUZZ_ASSERT(EVP_PKEY_get_bits(key.pkey) <= JWKE_RSA_MAX_BITS);
    jwke_public_members pub;
    FUZZ_ASSERT(jwke_pkey_public_members(key.public_pkey, &pub, &err) == 0);
    jwke_public_members_clear(&pub);
    if (key.is_private) {
        jwke_jwk_members m;
        FUZZ_ASSERT(jwke_swkey_private_members(&key, &m, &err) == 0);
        jwke_jwk_members_clear(&m);
        if (jwke_pkey_kind(key.pkey) != JWKE_KIND_RSA ||
            EVP_PKEY_get_bits(key.pkey) <= SIGN_MAX_RSA_BITS)
            sign_and_verify(&key);
    }
    jwke_swkey_free(&key);
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input in = {data, size};
    unsigned kind = fuzz_byte(&in) % (1 + sizeof block_names / sizeof block_names[0]);
    if (kind == 0) {
        import((const char *)in.p, in.left, 0);
        return 0;
    }
    if (in.left == 0)
        return 0;
    BIO *bio = BIO_new(BIO_s_mem());
    FUZZ_ASSERT(bio && PEM_write_bio(bio, block_names[kind - 1], "", in.p, (long)in.left) > 0);
    BUF_MEM *text;
    BIO_get_mem_ptr(bio, &text);
    import(text->data, text->length, kind == 4);
    BIO_free(bio);
    return 0;
}

/* Certificates as a token or a stored row hands them over (core/x509_cert.c):
 * arbitrary bytes as CKA_VALUE / x5c, checked against a fixed Ed25519 key
 * (private bytes 00 01 .. 1f, the key of the seeds make_corpus.py writes).
 * Accepted means one whole DER certificate holding exactly that key; the
 * names and serial read from it are whole DER values.
 *
 * Input: a selector byte (unused, kept for the shared layout), then one
 * length-prefixed field (fuzz_input.h). */
#include <openssl/x509.h>

#include "engine_limits.h"
#include "fuzz_input.h"
#include "x509_cert.h"

static EVP_PKEY *fixed_key(void)
{
    static EVP_PKEY *key;
    if (!key) {
        unsigned char private_bytes[32];
        for (int i = 0; i < 32; i++)
            private_bytes[i] = (unsigned char)i;
        key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, private_bytes, 32);
    }
    return key;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input in = {data, size};
    (void)fuzz_byte(&in);
    size_t der_len;
    const uint8_t *der = fuzz_field(&in, JWKE_CERTIFICATE_MAX_LEN + 16, &der_len);
    jwke_error err;

    if (jwke_x509_check(der, der_len, fixed_key(), "fuzz", &err) == 0) {
        const unsigned char *p = der;
        X509 *cert = d2i_X509(NULL, &p, (long)der_len);
        FUZZ_ASSERT(cert && p == der + der_len);
        FUZZ_ASSERT(EVP_PKEY_eq(X509_get0_pubkey(cert), fixed_key()) == 1);
        X509_free(cert);
    } else {
        FUZZ_ASSERT(err.code != NULL);
    }

    jwke_x509_fields fields;
    if (jwke_x509_fields_of(der, der_len, &fields, &err) == 0) {
        for (int i = 0; i < JWKE_X509_FIELDS; i++) {
            const unsigned char *p = fields.der[i];
            ASN1_TYPE *value = d2i_ASN1_TYPE(NULL, &p, (long)fields.len[i]);
            FUZZ_ASSERT(value && p == fields.der[i] + fields.len[i]);
            ASN1_TYPE_free(value);
        }
        jwke_x509_fields_clear(&fields);
    }
    return 0;
}

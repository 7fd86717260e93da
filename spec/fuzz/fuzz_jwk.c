/* JWK import (core/pkey.c public keys, core/swkey.c private keys) with
 * decoded member bytes, then what a verifier does with the key: check it
 * against every algorithm, export its members, verify a signature.
 *
 * Input: one selector byte, then length-prefixed fields (fuzz_input.h).
 * Exported members must be the imported ones (RSA n and e without leading
 * zero bytes), so a key can never change on its way through. */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "alg.h"
#include "evp_sig.h"
#include "fuzz_input.h"
#include "pkey.h"
#include "swkey.h"

static const char *const curves[] = {"P-256", "P-384", "P-521", "Ed25519", "X25519", "P-192", ""};

static const uint8_t *strip(const uint8_t *p, size_t *len)
{
    while (*len && *p == 0) {
        p++;
        (*len)--;
    }
    return p;
}

/* What a verifier does with a key it built. */
static void use_key(EVP_PKEY *pkey, fuzz_input *in)
{
    jwke_error err;
    size_t sig_len, input_len;
    const uint8_t *sig = fuzz_field(in, 1100, &sig_len);
    const uint8_t *input = fuzz_field(in, 256, &input_len);
    for (size_t i = 0; i < jwke_alg_count(); i++) { /* every algorithm of the table */
        const jwke_alg *alg = jwke_alg_at(i);
        if (jwke_pkey_fits_alg(pkey, alg, 0, &err) != 0)
            continue;
        int ok = jwke_evp_verify(pkey, alg, input, input_len, sig, sig_len, &err);
        FUZZ_ASSERT(ok == 0 || ok == 1 || ok == -1);
        if (ok == 1) /* a fuzzer forging a signature would be news */
            FUZZ_ASSERT(sig_len == jwke_alg_signature_size(alg, EVP_PKEY_get_bits(pkey)));
    }
    ERR_clear_error();
}

static void public_rsa(fuzz_input *in)
{
    size_t n_len, e_len;
    const uint8_t *n = fuzz_field(in, 1024, &n_len);
    const uint8_t *e = fuzz_field(in, 16, &e_len);
    jwke_error err;
    EVP_PKEY *pkey = jwke_pkey_rsa_public(n, n_len, e, e_len, &err);
    if (!pkey)
        return;
    jwke_public_members m;
    FUZZ_ASSERT(jwke_pkey_public_members(pkey, &m, &err) == 0);
    n = strip(n, &n_len);
    e = strip(e, &e_len);
    FUZZ_ASSERT(m.kind == JWKE_KIND_RSA && m.n_len == n_len && memcmp(m.n, n, n_len) == 0);
    FUZZ_ASSERT(m.e_len == e_len && memcmp(m.e, e, e_len) == 0);
    FUZZ_ASSERT(n[n_len - 1] & 1); /* even moduli never build */
    jwke_public_members_clear(&m);
    use_key(pkey, in);
    EVP_PKEY_free(pkey);
}

static void public_ec(fuzz_input *in, const char *crv)
{
    size_t x_len, y_len;
    const uint8_t *x = fuzz_field(in, 80, &x_len);
    const uint8_t *y = fuzz_field(in, 80, &y_len);
    jwke_error err;
    EVP_PKEY *pkey = jwke_pkey_ec_public(crv, x, x_len, y, y_len, &err);
    if (!pkey)
        return;
    jwke_public_members m;
    FUZZ_ASSERT(jwke_pkey_public_members(pkey, &m, &err) == 0);
    FUZZ_ASSERT(m.kind == JWKE_KIND_EC && strcmp(m.crv, crv) == 0);
    FUZZ_ASSERT(m.coordinate_len == x_len && memcmp(m.x, x, x_len) == 0);
    FUZZ_ASSERT(m.coordinate_len == y_len && memcmp(m.y, y, y_len) == 0);
    use_key(pkey, in);
    EVP_PKEY_free(pkey);
}

static void public_okp(fuzz_input *in, const char *crv)
{
    size_t x_len;
    const uint8_t *x = fuzz_field(in, 64, &x_len);
    jwke_error err;
    EVP_PKEY *pkey = jwke_pkey_okp_public(crv, x, x_len, &err);
    if (!pkey)
        return;
    jwke_public_members m;
    FUZZ_ASSERT(jwke_pkey_public_members(pkey, &m, &err) == 0);
    FUZZ_ASSERT(m.kind == JWKE_KIND_OKP && m.coordinate_len == 32 && memcmp(m.x, x, 32) == 0);
    use_key(pkey, in);
    EVP_PKEY_free(pkey);
}

static void member(fuzz_input *in, size_t max, jwke_bytes *out)
{
    size_t len;
    const uint8_t *p = fuzz_field(in, max, &len);
    if (!len)
        return; /* absent */
    out->data = OPENSSL_malloc(len);
    memcpy(out->data, p, len);
    out->len = len;
}

/* A private (or public) key from members, as the store and import_jwk do.
 * RSA stays small: every RSA private import signs once to prove d. */
static void software_key(fuzz_input *in, uint8_t selector)
{
    jwke_jwk_members m;
    memset(&m, 0, sizeof m);
    static const char *const ktys[] = {"RSA", "EC", "OKP", "oct"};
    m.kty = ktys[selector % 4];
    m.crv = curves[(selector / 4) % (sizeof curves / sizeof curves[0])];
    if (selector & 0x80)
        m.crv = NULL;
    member(in, 160, &m.n);
    member(in, 8, &m.e);
    member(in, 160, &m.d);
    if (selector & 0x40) {
        member(in, 80, &m.p);
        member(in, 80, &m.q);
        member(in, 80, &m.dp);
        member(in, 80, &m.dq);
        member(in, 80, &m.qi);
    }
    member(in, 80, &m.x);
    member(in, 80, &m.y);
    jwke_swkey key;
    memset(&key, 0, sizeof key);
    jwke_error err;
    if (jwke_swkey_from_jwk(&m, &key, &err) == 0) {
        FUZZ_ASSERT(key.pkey && key.public_pkey);
        FUZZ_ASSERT(key.is_private == (m.d.data != NULL));
        use_key(key.public_pkey, in);
        if (key.is_private) {
            jwke_jwk_members out;
            FUZZ_ASSERT(jwke_swkey_private_members(&key, &out, &err) == 0);
            jwke_jwk_members_clear(&out);
        }
        jwke_swkey_free(&key);
    }
    jwke_jwk_members_clear(&m);
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input in = {data, size};
    uint8_t selector = fuzz_byte(&in);
    switch (selector & 3) {
    case 0:
        public_rsa(&in);
        break;
    case 1:
        public_ec(&in, curves[(selector >> 2) % 3]);
        break;
    case 2:
        public_okp(&in, (selector & 4) ? "X25519" : "Ed25519");
        break;
    default:
        software_key(&in, fuzz_byte(&in));
        break;
    }
    return 0;
}

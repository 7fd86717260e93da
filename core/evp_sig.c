#include "evp_sig.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

/* One fetched method per digest of the table, kept for the process: the
 * static one EVP_get_digestbyname returns (itself a name lookup) makes
 * every EVP_Digest and DigestSignInit fetch the provider's method again, a
 * lookup under a lock, ~3 k instructions per signature. Written once with
 * compare-and-swap: a thread that loses the race frees its own. */
static EVP_MD *fetched[JWKE_DIGEST_COUNT];

void jwke_alg_md_release(void)
{
    for (size_t i = 0; i < JWKE_DIGEST_COUNT; i++)
        EVP_MD_free(__atomic_exchange_n(&fetched[i], NULL, __ATOMIC_ACQ_REL));
}

const EVP_MD *jwke_alg_md(const jwke_alg *alg)
{
    if (!alg->digest)
        return NULL;
    EVP_MD **slot = &fetched[jwke_digest_index(alg->digest)];
    EVP_MD *md = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (md)
        return md;
    md = EVP_MD_fetch(NULL, alg->digest->openssl_name, NULL);
    if (!md) /* not cached: the lookup of before, which fails the same way */
        return EVP_get_digestbyname(alg->digest->openssl_name);
    EVP_MD *none = NULL;
    if (!__atomic_compare_exchange_n(slot, &none, md, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        EVP_MD_free(md);
        md = none;
    }
    return md;
}

/* Sets up a DigestSign/DigestVerify context for the algorithm's padding. */
static int init_context(EVP_MD_CTX *md_ctx, EVP_PKEY *pkey, const jwke_alg *alg, int signing)
{
    EVP_PKEY_CTX *pctx = NULL;
    const EVP_MD *md = jwke_alg_md(alg);
    int ok = signing ? EVP_DigestSignInit(md_ctx, &pctx, md, NULL, pkey)
                     : EVP_DigestVerifyInit(md_ctx, &pctx, md, NULL, pkey);
    if (ok <= 0)
        return 0;
    if (alg->scheme == JWKE_SCHEME_RSA_PSS) {
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0)
            return 0;
    } else if (alg->scheme == JWKE_SCHEME_RSA_PKCS1) {
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
            return 0;
    }
    return 1;
}

int jwke_ecdsa_raw_to_der(const unsigned char *raw, size_t half, unsigned char **der,
                          int *der_len)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, (int)half, NULL);
    BIGNUM *s = BN_bin2bn(raw + half, (int)half, NULL);
    if (!sig || !r || !s || !ECDSA_SIG_set0(sig, r, s)) {
        ECDSA_SIG_free(sig);
        BN_free(r);
        BN_free(s);
        return -1;
    }
    *der = NULL;
    *der_len = i2d_ECDSA_SIG(sig, der);
    ECDSA_SIG_free(sig);
    return *der_len > 0 ? 0 : -1;
}

/* OpenSSL's DER signature to fixed-size raw R || S (2 * half bytes) in
 * raw, which holds raw_size. */
static int ecdsa_der_to_raw(const unsigned char *der, size_t der_len, unsigned char *raw,
                            size_t raw_size, size_t half)
{
    if (2 * half > raw_size)
        return 0;
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!sig)
        return 0;
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(sig, &r, &s);
    int ok = BN_bn2binpad(r, raw, (int)half) == (int)half &&
             BN_bn2binpad(s, raw + half, (int)half) == (int)half;
    ECDSA_SIG_free(sig);
    return ok;
}

int jwke_evp_verify(EVP_PKEY *pkey, const jwke_alg *alg, const unsigned char *input,
                    size_t input_len, const unsigned char *sig, size_t sig_len,
                    jwke_error *err)
{
    size_t expected = jwke_alg_signature_size(alg, EVP_PKEY_get_bits(pkey));
    if (sig_len != expected) {
        jwke_fail(err, "%s signature must be %zu bytes, got %zu", alg->name, expected, sig_len);
        return 0;
    }

    unsigned char *der = NULL;
    int der_len = 0;
    if (alg->scheme == JWKE_SCHEME_ECDSA) {
        if (jwke_ecdsa_raw_to_der(sig, alg->coordinate_size, &der, &der_len) != 0) {
            jwke_fail_openssl(err, "cannot decode ECDSA signature");
            return -1;
        }
        sig = der;
        sig_len = (size_t)der_len;
    }

    int result;
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    if (!md_ctx || !init_context(md_ctx, pkey, alg, 0)) {
        result = jwke_fail_openssl(err, "cannot start signature verification");
    } else {
        int ok = EVP_DigestVerify(md_ctx, sig, sig_len, input, input_len);
        if (ok == 1) {
            result = 1;
        } else {
            ERR_clear_error();
            jwke_fail(err, "signature does not verify");
            result = 0;
        }
    }
    EVP_MD_CTX_free(md_ctx);
    OPENSSL_free(der);
    return result;
}

int jwke_evp_sign(EVP_PKEY *pkey, const jwke_alg *alg, const unsigned char *input,
                  size_t input_len, unsigned char *sig, size_t *sig_len, jwke_error *err)
{
    const size_t room = *sig_len;
    size_t expected = jwke_alg_signature_size(alg, EVP_PKEY_get_bits(pkey));
    if (expected > room)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN,
                              "a %s signature of %zu bytes does not fit the %zu bytes given",
                              alg->name, expected, room);
    int result = -1;
    unsigned char der[160]; /* a P-521 ECDSA-Sig-Value is at most 139 bytes */
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    if (!md_ctx || !init_context(md_ctx, pkey, alg, 1)) {
        jwke_fail_openssl(err, "cannot start signing");
        goto done;
    }
    if (alg->scheme == JWKE_SCHEME_ECDSA) {
        size_t der_len = sizeof der;
        if (EVP_DigestSign(md_ctx, der, &der_len, input, input_len) <= 0 || der_len > sizeof der) {
            jwke_fail_openssl(err, "ECDSA signing failed");
            goto done;
        }
        if (!ecdsa_der_to_raw(der, der_len, sig, room, alg->coordinate_size)) {
            jwke_fail_openssl(err, "cannot encode ECDSA signature");
            goto done;
        }
        *sig_len = 2 * alg->coordinate_size;
    } else {
        /* OpenSSL is told the whole buffer: it refuses rather than overrun. */
        size_t len = room;
        if (EVP_DigestSign(md_ctx, sig, &len, input, input_len) <= 0 || len > room) {
            jwke_fail_openssl(err, "signing failed");
            goto done;
        }
        *sig_len = len;
    }
    result = 0;
done:
    EVP_MD_CTX_free(md_ctx);
    return result == 0 ? 0 : jwke_fail_in(err, JWKE_ERR_JWS_SIGN);
}

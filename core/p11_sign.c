/* Signing on the token: one C_SignInit and one C_Sign into a buffer already
 * sized for the result. The hash is computed on the host where the mechanism
 * allows it, which is faster than streaming the input to the token. */
#include "p11_token.h"

#include <string.h>

#include "evp_sig.h"

/* DER DigestInfo prefixes (RFC 8017 §9.2, note 1) for CKM_RSA_PKCS. */
static const unsigned char digest_info_sha256[] = {
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    0x05, 0x00, 0x04, 0x20};
static const unsigned char digest_info_sha384[] = {
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
    0x05, 0x00, 0x04, 0x30};
static const unsigned char digest_info_sha512[] = {
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
    0x05, 0x00, 0x04, 0x40};

static void digest_info_prefix(size_t digest_size, const unsigned char **prefix, size_t *len)
{
    switch (digest_size) {
    case 32: *prefix = digest_info_sha256; *len = sizeof digest_info_sha256; break;
    case 48: *prefix = digest_info_sha384; *len = sizeof digest_info_sha384; break;
    default: *prefix = digest_info_sha512; *len = sizeof digest_info_sha512; break;
    }
}

static CK_MECHANISM_TYPE pss_hash(size_t digest_size, CK_RSA_PKCS_MGF_TYPE *mgf)
{
    switch (digest_size) {
    case 32: *mgf = CKG_MGF1_SHA256; return CKM_SHA256;
    case 48: *mgf = CKG_MGF1_SHA384; return CKM_SHA384;
    default: *mgf = CKG_MGF1_SHA512; return CKM_SHA512;
    }
}

int jwke_p11_sign(jwke_p11_token *token, CK_OBJECT_HANDLE private_handle, const jwke_alg *alg,
                  const unsigned char *input, size_t input_len, unsigned char *sig,
                  size_t *sig_len, jwke_error *err)
{
    unsigned char to_sign[19 + 64]; /* DigestInfo prefix + the largest digest */
    const unsigned char *data = input;
    size_t data_len = input_len;
    CK_MECHANISM mechanism = {0, NULL, 0};
    CK_RSA_PKCS_PSS_PARAMS pss;

    if (alg->scheme != JWKE_SCHEME_EDDSA) {
        size_t offset = 0;
        if (alg->scheme == JWKE_SCHEME_RSA_PKCS1) {
            const unsigned char *prefix;
            digest_info_prefix(alg->digest_size, &prefix, &offset);
            memcpy(to_sign, prefix, offset);
        }
        unsigned int digest_len = 0;
        if (!EVP_Digest(input, input_len, to_sign + offset, &digest_len, jwke_alg_md(alg), NULL))
            return jwke_fail_openssl(err, "cannot hash the signing input");
        data = to_sign;
        data_len = offset + digest_len;
    }
    switch (alg->scheme) {
    case JWKE_SCHEME_RSA_PKCS1:
        mechanism.mechanism = CKM_RSA_PKCS;
        break;
    case JWKE_SCHEME_RSA_PSS:
        pss.hashAlg = pss_hash(alg->digest_size, &pss.mgf);
        pss.sLen = alg->digest_size;
        mechanism = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &pss, sizeof pss};
        break;
    case JWKE_SCHEME_ECDSA:
        mechanism.mechanism = CKM_ECDSA; /* returns raw R || S, as JWS wants */
        break;
    case JWKE_SCHEME_EDDSA:
        mechanism.mechanism = CKM_EDDSA;
        break;
    }

    CK_FUNCTION_LIST_PTR fn = token->module->fn;
    CK_ULONG out_len = (CK_ULONG)*sig_len;
    pthread_mutex_lock(&token->lock);
    CK_RV rv = fn->C_SignInit(token->session, &mechanism, private_handle);
    if (rv == CKR_OK) {
        rv = fn->C_Sign(token->session, (CK_BYTE_PTR)data, (CK_ULONG)data_len, sig, &out_len);
        if (rv != CKR_OK) {
            pthread_mutex_unlock(&token->lock);
            return jwke_fail_ckr(err, "C_Sign", rv);
        }
    }
    pthread_mutex_unlock(&token->lock);
    if (rv != CKR_OK)
        return jwke_fail_ckr(err, "C_SignInit", rv);
    *sig_len = out_len;
    return 0;
}

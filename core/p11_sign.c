/* Signing on the token: one C_SignInit and one C_Sign into a buffer already
 * sized for the result. The hash is computed on the host where the mechanism
 * allows it, which is faster than streaming the input to the token. */
#include "p11_sign.h"

#include <stdlib.h>
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

typedef struct sign_context {
    jwke_p11_key *key;
    const jwke_alg *alg;
    CK_MECHANISM *mechanism;
    const unsigned char *data;
    size_t data_len;
    unsigned char *sig;
    size_t sig_size;     /* the caller's buffer */
    size_t expected_len; /* what the algorithm and key make */
    CK_ULONG sig_len;
} sign_context;

/* Finds the private half again by label and id (after a fork, a device
 * reset or CKR_OBJECT_HANDLE_INVALID). */
static CK_RV refind_private(jwke_p11_token *token, CK_SESSION_HANDLE session, jwke_p11_key *key,
                            unsigned object_epoch, const char **function, jwke_error *err)
{
    CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE search[] = {
        {CKA_CLASS, &private_class, sizeof private_class},
        {CKA_LABEL, key->label, (CK_ULONG)key->label_len},
        {CKA_ID, key->id, (CK_ULONG)key->id_len},
    };
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    CK_RV rv = jwke_p11_find(token, session, search, 3, &handles, &n, function, err);
    if (rv != CKR_OK)
        return rv;
    if (n != 1) {
        free(handles);
        jwke_fail(err, "key '%.*s' is %s on the token", (int)key->id_len, (const char *)key->id,
                  n == 0 ? "no longer" : "more than once");
        return JWKE_OP_FAILED;
    }
    key->private_handle = handles[0];
    key->object_epoch = object_epoch;
    free(handles);
    return CKR_OK;
}

static CK_RV sign_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                     const char **function, jwke_error *err)
{
    sign_context *c = ctx;
    CK_FUNCTION_LIST_PTR fn = jwke_p11_token_functions(token);
    unsigned object_epoch = jwke_p11_token_object_epoch(token);
    if (c->key->object_epoch != object_epoch) {
        CK_RV rv = refind_private(token, session, c->key, object_epoch, function, err);
        if (rv != CKR_OK)
            return rv;
    }
    *function = "C_SignInit";
    CK_RV rv = fn->C_SignInit(session, c->mechanism, c->key->private_handle);
    if (rv != CKR_OK)
        return rv;
    *function = "C_Sign";
    c->sig_len = (CK_ULONG)c->sig_size; /* a failed first attempt may have changed it */
    rv = fn->C_Sign(session, (CK_BYTE_PTR)c->data, (CK_ULONG)c->data_len, c->sig, &c->sig_len);
    if (rv != CKR_OK)
        return rv;
    /* The token's word on the length is not trusted: it must fit the buffer
     * and be the algorithm's size, or bytes it never wrote would go out. */
    if (c->sig_len > c->sig_size)
        jwke_fail(err, "C_Sign: token reported %lu bytes for the signature, buffer holds %zu",
                  (unsigned long)c->sig_len, c->sig_size);
    else if (c->sig_len != c->expected_len)
        jwke_fail(err, "C_Sign: token reported %lu bytes for the signature, but %s with this "
                  "key makes %zu", (unsigned long)c->sig_len, c->alg->name, c->expected_len);
    else
        return CKR_OK;
    err->code = JWKE_ERR_TOKEN_LENGTH;
    return JWKE_OP_FAILED;
}

int jwke_p11_prepare_sign(const jwke_alg *alg, const unsigned char *input, size_t input_len,
                          jwke_p11_prepared *out, jwke_error *err)
{
    out->data = input;
    out->data_len = input_len;
    out->mechanism = (CK_MECHANISM){0, NULL, 0};
    if (alg->scheme != JWKE_SCHEME_EDDSA) {
        size_t offset = 0;
        if (alg->scheme == JWKE_SCHEME_RSA_PKCS1) {
            const unsigned char *prefix;
            digest_info_prefix(alg->digest_size, &prefix, &offset);
            memcpy(out->buffer, prefix, offset);
        }
        unsigned int digest_len = 0;
        if (!EVP_Digest(input, input_len, out->buffer + offset, &digest_len, jwke_alg_md(alg), NULL))
            return jwke_fail_openssl(err, "cannot hash the signing input");
        out->data = out->buffer;
        out->data_len = offset + digest_len;
    }
    switch (alg->scheme) {
    case JWKE_SCHEME_RSA_PKCS1:
        out->mechanism.mechanism = CKM_RSA_PKCS;
        break;
    case JWKE_SCHEME_RSA_PSS:
        out->pss.hashAlg = pss_hash(alg->digest_size, &out->pss.mgf);
        out->pss.sLen = alg->digest_size;
        out->mechanism = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &out->pss, sizeof out->pss};
        break;
    case JWKE_SCHEME_ECDSA:
        out->mechanism.mechanism = CKM_ECDSA; /* returns raw R || S, as JWS wants */
        break;
    case JWKE_SCHEME_EDDSA:
        out->mechanism.mechanism = CKM_EDDSA;
        break;
    }
    return 0;
}

int jwke_p11_sign(jwke_p11_token *token, jwke_p11_key *key, const jwke_alg *alg,
                  const unsigned char *input, size_t input_len, unsigned char *sig,
                  size_t *sig_len, jwke_error *err)
{
    size_t expected_len = jwke_alg_signature_size(alg, EVP_PKEY_get_bits(key->public_key));
    if (*sig_len < expected_len)
        return jwke_fail(err, "a %s signature with this key has %zu bytes, more than the %zu-byte "
                         "buffer", alg->name, expected_len, *sig_len);
    jwke_p11_prepared prepared;
    if (jwke_p11_prepare_sign(alg, input, input_len, &prepared, err) != 0)
        return -1;
    sign_context c = {key, alg, &prepared.mechanism, prepared.data, prepared.data_len, sig,
                      *sig_len, expected_len, 0};
    if (jwke_p11_run(token, sign_op, &c, err) != 0)
        return -1;
    *sig_len = c.sig_len;
    return 0;
}

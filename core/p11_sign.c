/* Signing on the token: one C_SignInit and one C_Sign into a buffer already
 * sized for the result. The hash is computed on the host where the mechanism
 * allows it, which is faster than streaming the input to the token. */
#include "p11_sign.h"
#include "p11_key_struct.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "ckr_names.h"
#include "evp_sig.h"
#include "p11_map.h"

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
    int retired; /* C_SignInit refused a key whose CKA_SIGN reads false */
} sign_context;

/* Whether the token refused C_SignInit because the key is retired on the
 * key (jwke_p11_set_sign): SoftHSM answers CKR_KEY_FUNCTION_NOT_PERMITTED,
 * NSS softokn CKR_KEY_TYPE_INCONSISTENT; CKA_SIGN reading false is what
 * tells it from a genuine mismatch. Read only after such a refusal. */
static int refused_as_retired(CK_FUNCTION_LIST_PTR fn, CK_SESSION_HANDLE session,
                              CK_OBJECT_HANDLE handle, CK_RV rv)
{
    if (rv != CKR_KEY_FUNCTION_NOT_PERMITTED && rv != CKR_KEY_TYPE_INCONSISTENT)
        return 0;
    CK_BBOOL sign = CK_TRUE;
    CK_ATTRIBUTE attribute = {CKA_SIGN, &sign, sizeof sign};
    return fn->C_GetAttributeValue(session, handle, &attribute, 1) == CKR_OK &&
           attribute.ulValueLen == sizeof sign && sign == CK_FALSE;
}

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
    CK_RV hidden = n == 0 ? jwke_p11_private_hidden(token, session) : CKR_OK;
    if (hidden != CKR_OK) {
        /* A logged-out token hides its private keys: the search finds
         * nothing and says CKR_OK. A token that closed every idle session
         * (YubiHSM 2 after 30 s) is logged out when the next one opens, so
         * this is a login (or a session) to repair and the search to run
         * again, not a key that went away. */
        free(handles);
        *function = "C_FindObjects";
        return hidden;
    }
    if (n != 1) {
        free(handles);
        char kid[2 * JWKE_MAX_ID_LEN + 3]; /* a CKA_ID is bytes: hex unless printable */
        jwke_fail(err, "key '%s' (label '%s') is %s on the token",
                  jwke_p11_printable_kid(key->id, key->id_len, kid, sizeof kid), key->label,
                  n == 0 ? "no longer" : "more than once");
        return JWKE_OP_FAILED;
    }
    /* Threads share the key: the handle is stored before the epoch that
     * says it is current (sign_op reads them the other way round). */
    __atomic_store_n(&key->private_handle, handles[0], __ATOMIC_RELAXED);
    __atomic_store_n(&key->object_epoch, object_epoch, __ATOMIC_RELEASE);
    free(handles);
    return CKR_OK;
}

static CK_RV sign_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                     const char **function, jwke_error *err)
{
    sign_context *c = ctx;
    CK_FUNCTION_LIST_PTR fn = jwke_p11_token_functions(token);
    unsigned object_epoch = jwke_p11_token_object_epoch(token);
    if (__atomic_load_n(&c->key->object_epoch, __ATOMIC_ACQUIRE) != object_epoch) {
        CK_RV rv = refind_private(token, session, c->key, object_epoch, function, err);
        if (rv != CKR_OK)
            return rv;
    }
    *function = "C_SignInit";
    CK_OBJECT_HANDLE private_handle = __atomic_load_n(&c->key->private_handle, __ATOMIC_RELAXED);
    CK_RV rv = fn->C_SignInit(session, c->mechanism, private_handle);
    if (rv != CKR_OK) {
        c->retired = refused_as_retired(fn, session, private_handle, rv);
        return rv;
    }
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
    const jwke_digest *digest = alg->digest;
    out->data = input;
    out->data_len = input_len;
    out->mechanism = (CK_MECHANISM){alg->sign_mechanism.type, NULL, 0};
    if (alg->scheme == JWKE_SCHEME_EDDSA)
        return 0; /* pure EdDSA: the token hashes the whole input itself */

    /* Every fact comes from the table: a digest it does not describe fully
     * (no DigestInfo, no PKCS#11 hash) is refused, never guessed. */
    size_t prefix_len = alg->scheme == JWKE_SCHEME_RSA_PKCS1 && digest ? digest->digest_info_len : 0;
    if (!digest || digest->size > JWKE_DIGEST_MAX || prefix_len > JWKE_DIGEST_INFO_MAX ||
        (alg->scheme == JWKE_SCHEME_RSA_PKCS1 && !digest->digest_info) ||
        (alg->scheme == JWKE_SCHEME_RSA_PSS && !digest->mechanism.name))
        return jwke_fail(err, "%s: the algorithm table gives no usable digest for the token", alg->name);
    if (prefix_len)
        memcpy(out->buffer, digest->digest_info, prefix_len);
    unsigned int digest_len = 0;
    if (!EVP_Digest(input, input_len, out->buffer + prefix_len, &digest_len, jwke_alg_md(alg), NULL))
        return jwke_fail_openssl(err, "cannot hash the signing input");
    out->data = out->buffer;
    out->data_len = prefix_len + digest_len;
    if (alg->scheme == JWKE_SCHEME_RSA_PSS) {
        out->pss.hashAlg = digest->mechanism.type;
        out->pss.mgf = digest->mgf1;
        out->pss.sLen = digest->size; /* salt as long as the hash (RFC 7518 3.5) */
        out->mechanism.pParameter = &out->pss;
        out->mechanism.ulParameterLen = sizeof out->pss;
    }
    return 0;
}

static int verifies_after_sign(const jwke_p11_token *token, const jwke_alg *alg)
{
    switch (jwke_p11_token_verify_after_sign(token)) {
    case JWKE_VERIFY_ALL:
        return 1;
    case JWKE_VERIFY_NONE:
        return 0;
    default: /* an RSA-CRT fault makes a signature that gives the key away */
        return alg->scheme == JWKE_SCHEME_RSA_PKCS1 || alg->scheme == JWKE_SCHEME_RSA_PSS;
    }
}

/* The token's signature checked on the host against the public half read
 * at load: a faulty HSM's signature is never used (and wiped), counted and
 * logged. */
static int check_signature(jwke_p11_token *token, const jwke_p11_key *key, const jwke_alg *alg,
                           const unsigned char *input, size_t input_len, unsigned char *sig,
                           size_t sig_len, jwke_error *err)
{
    int valid = jwke_evp_verify(key->public_key, alg, input, input_len, sig, sig_len, err);
    if (valid == 1)
        return 0;
    OPENSSL_cleanse(sig, sig_len);
    if (valid < 0)
        return jwke_fail_in(err, JWKE_ERR_JWS_SIGN);
    char kid[2 * JWKE_MAX_ID_LEN + 3]; /* a CKA_ID is bytes: hex unless printable */
    jwke_fail_code(err, JWKE_ERR_SIGNATURE_FAULT,
                   "the token's %s signature with key '%s' does not verify against its public "
                   "key (hsm.verify_after_sign): the HSM may be faulty; no token was made",
                   alg->name, jwke_p11_printable_kid(key->id, key->id_len, kid, sizeof kid));
    jwke_p11_token_signature_fault(token, "%s", err->message);
    return -1;
}

int jwke_p11_sign(jwke_p11_token *token, jwke_p11_key *key, const jwke_alg *alg,
                  const unsigned char *input, size_t input_len, unsigned char *sig,
                  size_t *sig_len, jwke_error *err)
{
    size_t expected_len = jwke_alg_signature_size(alg, EVP_PKEY_get_bits(key->public_key));
    if (*sig_len < expected_len)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "a %s signature with this key has %zu bytes, "
                              "more than the %zu-byte buffer", alg->name, expected_len, *sig_len);
    jwke_p11_prepared prepared;
    if (jwke_p11_prepare_sign(alg, input, input_len, &prepared, err) != 0)
        return jwke_fail_in(err, JWKE_ERR_JWS_SIGN);
    sign_context c = {key, alg, &prepared.mechanism, prepared.data, prepared.data_len, sig,
                      *sig_len, expected_len, 0, 0};
    if (jwke_p11_run(token, sign_op, &c, err) != 0) {
        if (err->ckr == CKR_MECHANISM_INVALID) {
            jwke_fail(err, "C_SignInit: CKR_MECHANISM_INVALID (the token does not sign with %s, "
                      "which %s needs)", alg->sign_mechanism.name, alg->name);
            err->ckr = CKR_MECHANISM_INVALID; /* the message says more; the code stays the CKR */
        } else if (c.retired) {
            /* CKA_SIGN went false since the load: another process retired
             * the key on the token (jwke_p11_set_sign) */
            CK_RV refused = err->ckr;
            char kid[2 * JWKE_MAX_ID_LEN + 3];
            jwke_fail_code(err, JWKE_ERR_KEY_STATE, "C_SignInit: %s: key '%s' is retired on the token "
                           "(CKA_SIGN false) and never signs again; read the set again",
                           jwke_ckr_name(refused),
                           jwke_p11_printable_kid(key->id, key->id_len, kid, sizeof kid));
            err->ckr = refused;
        }
        return jwke_fail_in(err, JWKE_ERR_JWS_SIGN); /* a vanished key, a hash that failed */
    }
    if (verifies_after_sign(token, alg) &&
        check_signature(token, key, alg, input, input_len, sig, c.sig_len, err) != 0)
        return -1;
    *sig_len = c.sig_len;
    return 0;
}

/* X.509 certificates beside key pairs on a token (see p11_cert.h). */
#include "p11_cert.h"
#include "p11_key_struct.h"

#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"
#include "p11_map.h"
#include "x509_cert.h"

static const CK_OBJECT_CLASS certificate_class = CKO_CERTIFICATE;

/* The search for the certificates of a set (or of its pair `id`, when id
 * is not NULL), in `search`; returns its length. */
static CK_ULONG certificate_search(CK_ATTRIBUTE search[3], const char *label, size_t label_len,
                                   const unsigned char *id, size_t id_len)
{
    search[0] = (CK_ATTRIBUTE){CKA_CLASS, (void *)&certificate_class, sizeof certificate_class};
    search[1] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, (CK_ULONG)label_len};
    search[2] = (CK_ATTRIBUTE){CKA_ID, (void *)id, (CK_ULONG)id_len};
    return id ? 3 : 2;
}

typedef struct attach_context {
    CK_ATTRIBUTE search[3];
    CK_ULONG search_len;
    jwke_p11_key *keys;
    size_t count;
    unsigned char *value; /* JWKE_CERTIFICATE_MAX_LEN bytes */
} attach_context;

static jwke_p11_key *key_with_id(attach_context *c, const unsigned char *id, size_t id_len)
{
    for (size_t i = 0; i < c->count; i++)
        if (c->keys[i].id_len == id_len && memcmp(c->keys[i].id, id, id_len) == 0)
            return &c->keys[i];
    return NULL;
}

static void forget_certificate(jwke_p11_key *key)
{
    free(key->certificate);
    key->certificate = NULL;
    free(key->certificate_problem);
    key->certificate_problem = NULL;
}

/* Records why the key's certificate is not used (a later certificate for
 * the same pair does not make it usable: several is itself a problem). */
static CK_RV set_problem(jwke_p11_key *key, const jwke_error *why, jwke_error *err)
{
    forget_certificate(key);
    key->certificate_problem = malloc(sizeof *key->certificate_problem);
    if (!key->certificate_problem) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading certificates");
        return JWKE_OP_FAILED;
    }
    *key->certificate_problem = *why;
    return CKR_OK;
}

/* Judges one certificate object, read into template (CKA_ID,
 * CKA_CERTIFICATE_TYPE, CKA_VALUE), for the pair with its CKA_ID. Every
 * reported length is checked against its buffer, whatever the call said. */
static CK_RV judge(attach_context *c, const CK_ATTRIBUTE *template, jwke_error *err)
{
    CK_ULONG id_len = template[0].ulValueLen;
    if (id_len == CK_UNAVAILABLE_INFORMATION || id_len > JWKE_MAX_ID_LEN)
        return CKR_OK; /* no pair has such an id */
    jwke_p11_key *key = key_with_id(c, template[0].pValue, id_len);
    if (!key)
        return CKR_OK; /* a CA's certificate, or one whose pair is gone */
    char kid[2 * JWKE_MAX_ID_LEN + 3];
    jwke_p11_printable_kid(key->id, key->id_len, kid, sizeof kid);
    jwke_error why;
    CK_ULONG value_len = template[2].ulValueLen;
    if (key->certificate || key->certificate_problem)
        jwke_fail_code(&why, JWKE_ERR_CERTIFICATE_INVALID, "key '%s': several certificates on "
                       "the token have its label and CKA_ID; none is published", kid);
    else if (template[1].ulValueLen != sizeof(CK_CERTIFICATE_TYPE) ||
             *(CK_CERTIFICATE_TYPE *)template[1].pValue != CKC_X_509)
        jwke_fail_code(&why, JWKE_ERR_CERTIFICATE_INVALID, "key '%s': the certificate beside it "
                       "is not CKC_X_509", kid);
    else if (value_len == CK_UNAVAILABLE_INFORMATION || value_len > JWKE_CERTIFICATE_MAX_LEN)
        jwke_fail_code(&why, JWKE_ERR_TOKEN_LENGTH, "key '%s': C_GetAttributeValue: the "
                       "certificate's CKA_VALUE is unreadable or larger than %d bytes", kid,
                       JWKE_CERTIFICATE_MAX_LEN);
    else if (jwke_x509_check(c->value, value_len, key->public_key, kid, &why) == 0) {
        key->certificate = malloc(value_len);
        if (!key->certificate) {
            jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading certificates");
            return JWKE_OP_FAILED;
        }
        memcpy(key->certificate, c->value, value_len);
        key->certificate_len = value_len;
        return CKR_OK;
    }
    return set_problem(key, &why, err);
}

static CK_RV attach_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                       const char **function, jwke_error *err)
{
    attach_context *c = ctx;
    for (size_t i = 0; i < c->count; i++)
        forget_certificate(&c->keys[i]); /* from a failed first attempt */
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    CK_RV rv = jwke_p11_find(token, session, c->search, c->search_len, &handles, &n, function, err);
    *function = "C_GetAttributeValue";
    for (size_t i = 0; rv == CKR_OK && i < n; i++) {
        unsigned char id[JWKE_MAX_ID_LEN];
        CK_CERTIFICATE_TYPE type = 0;
        CK_ATTRIBUTE template[] = {
            {CKA_ID, id, sizeof id},
            {CKA_CERTIFICATE_TYPE, &type, sizeof type},
            {CKA_VALUE, c->value, JWKE_CERTIFICATE_MAX_LEN},
        };
        rv = jwke_p11_token_functions(token)->C_GetAttributeValue(session, handles[i], template, 3);
        switch (rv) {
        case CKR_OBJECT_HANDLE_INVALID: /* destroyed since the search */
            rv = CKR_OK;
            break;
        case CKR_OK:
        case CKR_BUFFER_TOO_SMALL: /* judged by the lengths, as the others */
        case CKR_ATTRIBUTE_SENSITIVE:
        case CKR_ATTRIBUTE_TYPE_INVALID:
            rv = judge(c, template, err);
            break;
        default:
            break;
        }
    }
    free(handles);
    return rv;
}

int jwke_p11_attach_certificates(jwke_p11_token *token, const char *label, size_t label_len,
                                 const unsigned char *id, size_t id_len, jwke_p11_key *keys,
                                 size_t count, jwke_error *err)
{
    attach_context c = {.keys = keys, .count = count, .value = malloc(JWKE_CERTIFICATE_MAX_LEN)};
    c.search_len = certificate_search(c.search, label, label_len, id, id_len);
    if (!c.value)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading certificates");
    int result = jwke_p11_run(token, attach_op, &c, err);
    free(c.value);
    return result;
}

typedef struct store_context {
    CK_ATTRIBUTE search[3];
    CK_ULONG search_len;
    CK_ATTRIBUTE *template; /* of the new certificate */
    CK_ULONG template_len;
} store_context;

/* The new certificate is made first and the old ones (found before it, so
 * by handle: the search after would find the new one too) destroyed after:
 * a failure to make it leaves the pair its old certificate, never none.
 * For that moment the pair has two, which a reader publishes as none (see
 * judge); when an old one cannot be destroyed, the new one is destroyed
 * again so the pair keeps the certificate it had. */
static CK_RV store_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                      const char **function, jwke_error *err)
{
    store_context *c = ctx;
    CK_FUNCTION_LIST_PTR fn = jwke_p11_token_functions(token);
    CK_OBJECT_HANDLE *old = NULL;
    size_t n = 0;
    CK_RV rv = jwke_p11_find(token, session, c->search, c->search_len, &old, &n, function, err);
    if (rv != CKR_OK)
        return rv;
    CK_OBJECT_HANDLE created;
    *function = "C_CreateObject";
    rv = fn->C_CreateObject(session, c->template, c->template_len, &created);
    for (size_t i = 0; rv == CKR_OK && i < n; i++) {
        *function = "C_DestroyObject";
        rv = fn->C_DestroyObject(session, old[i]);
        if (rv == CKR_OBJECT_HANDLE_INVALID)
            rv = CKR_OK; /* another process replaced it first */
        if (rv != CKR_OK)
            (void)fn->C_DestroyObject(session, created); /* the error is rv's, not this one's */
    }
    free(old);
    return rv;
}

int jwke_p11_store_certificate(jwke_p11_token *token, const char *label, size_t label_len,
                               const unsigned char *id, size_t id_len, const unsigned char *der,
                               size_t der_len, jwke_error *err)
{
    jwke_x509_fields fields;
    if (jwke_x509_fields_of(der, der_len, &fields, err) != 0)
        return -1;
    CK_CERTIFICATE_TYPE x509 = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE template[] = {
        {CKA_CLASS, (void *)&certificate_class, sizeof certificate_class},
        {CKA_CERTIFICATE_TYPE, &x509, sizeof x509},
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_PRIVATE, &no, sizeof no},
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_ID, (void *)id, (CK_ULONG)id_len},
        {CKA_SUBJECT, fields.der[JWKE_X509_SUBJECT], (CK_ULONG)fields.len[JWKE_X509_SUBJECT]},
        {CKA_ISSUER, fields.der[JWKE_X509_ISSUER], (CK_ULONG)fields.len[JWKE_X509_ISSUER]},
        {CKA_SERIAL_NUMBER, fields.der[JWKE_X509_SERIAL], (CK_ULONG)fields.len[JWKE_X509_SERIAL]},
        {CKA_VALUE, (void *)der, (CK_ULONG)der_len},
    };
    store_context c = {.template = template, .template_len = sizeof template / sizeof template[0]};
    c.search_len = certificate_search(c.search, label, label_len, id, id_len);
    int result = jwke_p11_run(token, store_op, &c, err);
    jwke_x509_fields_clear(&fields);
    return result;
}

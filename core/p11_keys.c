/* Key sets on the token (see p11_keys.h). */
#include "p11_keys.h"
#include "p11_key_struct.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ckr_names.h"
#include "ec_der.h"
#include "p11_cert.h"
#include "p11_map.h"
#include "pkey.h"

CK_RV jwke_p11_find(jwke_p11_token *t, CK_SESSION_HANDLE session, CK_ATTRIBUTE *template,
                    CK_ULONG template_len, CK_OBJECT_HANDLE **found, size_t *count,
                    const char **function, jwke_error *err)
{
    CK_FUNCTION_LIST_PTR fn = jwke_p11_token_functions(t);
    *function = "C_FindObjectsInit";
    CK_RV rv = fn->C_FindObjectsInit(session, template, template_len);
    if (rv != CKR_OK)
        return rv;

    size_t capacity = 16, n = 0;
    CK_OBJECT_HANDLE *handles = malloc(capacity * sizeof *handles);
    *function = "C_FindObjects";
    while (handles) {
        if (n == capacity) {
            CK_OBJECT_HANDLE *grown = realloc(handles, 2 * capacity * sizeof *handles);
            if (!grown)
                break;
            handles = grown;
            capacity *= 2;
        }
        CK_ULONG got = 0, room = (CK_ULONG)(capacity - n);
        rv = fn->C_FindObjects(session, handles + n, room, &got);
        if (rv == CKR_OK && got > room) {
            jwke_fail(err, "C_FindObjects: token reported %lu handles, buffer holds %lu",
                      (unsigned long)got, (unsigned long)room);
            err->code = JWKE_ERR_TOKEN_LENGTH;
            rv = JWKE_OP_FAILED;
        }
        if (rv != CKR_OK || got == 0)
            break;
        n += got;
    }
    if (!handles || (rv == CKR_OK && n == capacity))
        rv = CKR_HOST_MEMORY;
    /* Always end the search, or the session stays busy with it. */
    CK_RV final_rv = fn->C_FindObjectsFinal(session);
    if (rv == CKR_OK && final_rv != CKR_OK) {
        *function = "C_FindObjectsFinal";
        rv = final_rv;
    }
    if (rv != CKR_OK) {
        free(handles);
        return rv;
    }
    *found = handles;
    *count = n;
    return CKR_OK;
}

CK_RV jwke_p11_private_hidden(jwke_p11_token *token, CK_SESSION_HANDLE session)
{
    if (!jwke_p11_token_keeps_pin(token))
        return CKR_OK; /* never logged in: public halves are all it can read */
    CK_SESSION_INFO info;
    CK_RV rv = jwke_p11_token_functions(token)->C_GetSessionInfo(session, &info);
    if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
        return rv;
    if (rv != CKR_OK || info.state == CKS_RW_USER_FUNCTIONS ||
        info.state == CKS_RO_USER_FUNCTIONS)
        return CKR_OK;
    return CKR_USER_NOT_LOGGED_IN;
}

typedef struct load_context {
    const char *label;
    size_t label_len;
    const unsigned char *id; /* NULL: the whole set */
    size_t id_len;
    jwke_p11_objects *objects;
} load_context;

static CK_RV load_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                     const char **function, jwke_error *err)
{
    load_context *c = ctx;
    CK_ATTRIBUTE search[] = {{CKA_LABEL, (void *)c->label, (CK_ULONG)c->label_len},
                             {CKA_ID, (void *)c->id, (CK_ULONG)c->id_len}};
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    jwke_p11_objects_free(c->objects); /* from a failed first attempt */
    c->objects = NULL;
    CK_RV rv = jwke_p11_find(token, session, search, c->id ? 2 : 1, &handles, &n, function, err);
    if (rv == CKR_OK && (rv = jwke_p11_private_hidden(token, session)) != CKR_OK)
        free(handles); /* only the public halves were found: log in and read again */
    if (rv != CKR_OK)
        return rv;
    c->objects = jwke_p11_objects_new(n, err);
    if (!c->objects) {
        free(handles);
        return JWKE_OP_FAILED;
    }
    *function = "C_GetAttributeValue";
    for (size_t i = 0; i < n && rv == CKR_OK; i++) {
        CK_ULONG count;
        CK_ATTRIBUTE *template = jwke_p11_object_template(c->objects, i, handles[i], &count);
        rv = jwke_p11_token_functions(token)->C_GetAttributeValue(session, handles[i], template, count);
        rv = jwke_p11_object_check(c->objects, i, rv, err);
    }
    free(handles);
    return rv;
}

int jwke_p11_load_set(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, int min_rsa_bits,
                      jwke_p11_key **keys, size_t *count, jwke_error *err)
{
    load_context c = {label, label_len, id, id_len, NULL};
    /* read before the search: a change meanwhile makes the handles stale */
    unsigned object_epoch = jwke_p11_token_object_epoch(token);
    int result = jwke_p11_run(token, load_op, &c, err);
    if (result == 0)
        result = jwke_p11_map_objects(c.objects, min_rsa_bits, keys, count, err);
    if (result == 0) {
        /* every key remembers where it came from, to be found again */
        for (size_t i = 0; i < *count; i++) {
            (*keys)[i].label = malloc(label_len + 1);
            if (!(*keys)[i].label) {
                jwke_p11_keys_free(*keys, *count);
                jwke_p11_objects_free(c.objects);
                return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading a key set");
            }
            memcpy((*keys)[i].label, label, label_len);
            (*keys)[i].label[label_len] = '\0';
            (*keys)[i].label_len = label_len;
            (*keys)[i].object_epoch = object_epoch;
        }
    }
    jwke_p11_objects_free(c.objects);
    if (result == 0 && *count > 0 &&
        jwke_p11_attach_certificates(token, label, label_len, id, id_len, *keys, *count, err) != 0) {
        jwke_p11_keys_free(*keys, *count);
        return -1;
    }
    return result;
}

/* Generation is one at a time per process: some tokens cannot run two
 * generations at once, and the startup policy must never race itself. */
static pthread_mutex_t generation_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct generate_context {
    CK_MECHANISM *mechanism;
    CK_ATTRIBUTE *public_template;
    CK_ULONG public_count;
    CK_ATTRIBUTE *private_template;
    CK_ULONG private_count;
} generate_context;

static CK_RV generate_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                         const char **function, jwke_error *err)
{
    generate_context *c = ctx;
    CK_OBJECT_HANDLE public_handle, private_handle;
    *function = "C_GenerateKeyPair";
    return jwke_p11_token_functions(token)->C_GenerateKeyPair(session, c->mechanism, c->public_template,
                                                c->public_count, c->private_template,
                                                c->private_count, &public_handle, &private_handle);
}

int jwke_p11_generate(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, const jwke_alg *alg,
                      enum jwke_key_use use, int rsa_bits, jwke_error *err)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL sign = use == JWKE_USE_SIG ? CK_TRUE : CK_FALSE;
    CK_BBOOL decrypt = use == JWKE_USE_ENC ? CK_TRUE : CK_FALSE;
    CK_ULONG modulus_bits = (CK_ULONG)rsa_bits;
    static CK_BYTE exponent_65537[] = {0x01, 0x00, 0x01};
    CK_MECHANISM mechanism = {0, NULL, 0};

    if (id_len > JWKE_MAX_ID_LEN)
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "kid is longer than %d bytes",
                              JWKE_MAX_ID_LEN);

    /* Tokens default other usages (wrap, unwrap, derive) to true; a JWT
     * signing key gets exactly the one usage it needs. */
    CK_ATTRIBUTE public_template[10] = {
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_PRIVATE, &no, sizeof no},
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_ID, (void *)id, (CK_ULONG)id_len},
        {CKA_VERIFY, &sign, sizeof sign},
        {CKA_ENCRYPT, &decrypt, sizeof decrypt},
        {CKA_WRAP, &no, sizeof no},
        {CKA_DERIVE, &no, sizeof no},
    };
    CK_ULONG public_count = 8;
    CK_ATTRIBUTE private_template[11] = {
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &yes, sizeof yes},
        {CKA_EXTRACTABLE, &no, sizeof no},
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_ID, (void *)id, (CK_ULONG)id_len},
        {CKA_SIGN, &sign, sizeof sign},
        {CKA_DECRYPT, &decrypt, sizeof decrypt},
        {CKA_UNWRAP, &no, sizeof no},
        {CKA_DERIVE, &no, sizeof no},
    };
    CK_ULONG private_count = 10;
    /* The token records that a PS* key signs with PSS only (and which hash):
     * jwke_p11_map_objects reads the alg back from it, and the token refuses
     * PKCS#1 v1.5 with it. */
    CK_MECHANISM_TYPE pss_only[2];

    if (!alg->hsm_generates)
        return jwke_fail_code(err, JWKE_ERR_UNSUPPORTED_ALG, "the HSM does not generate keys for %s", alg->name);
    mechanism.mechanism = alg->generate_mechanism.type;
    if (alg->kind == JWKE_KIND_RSA) {
        public_template[public_count++] =
            (CK_ATTRIBUTE){CKA_MODULUS_BITS, &modulus_bits, sizeof modulus_bits};
        public_template[public_count++] =
            (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, exponent_65537, sizeof exponent_65537};
        if (alg->scheme == JWKE_SCHEME_RSA_PSS) {
            if (use != JWKE_USE_SIG)
                return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "%s keys can only sign: use "
                                      "must be 'sig'", alg->name);
            pss_only[0] = alg->sign_mechanism.type;
            pss_only[1] = alg->digest->rsa_pss.type;
            private_template[private_count++] =
                (CK_ATTRIBUTE){CKA_ALLOWED_MECHANISMS, pss_only, sizeof pss_only};
        }
    } else {
        if (use != JWKE_USE_SIG)
            return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "%s keys can only sign: use must be 'sig'",
                                  alg->name);
        const unsigned char *params;
        size_t params_len;
        if (jwke_ec_params_der(alg, &params, &params_len) != 0)
            return jwke_fail_code(err, JWKE_ERR_UNSUPPORTED_ALG, "no curve known for %s", alg->name);
        public_template[public_count++] =
            (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)params, (CK_ULONG)params_len};
    }

    generate_context c = {&mechanism, public_template, public_count, private_template,
                          private_count};
    pthread_mutex_lock(&generation_lock);
    int result = jwke_p11_run(token, generate_op, &c, err);
    pthread_mutex_unlock(&generation_lock);
    /* Tokens differ in what they implement (NSS softokn 3.87 has no Ed25519
     * generation): name the token and the mechanism it lacks, under the code
     * a program branches on, rather than a bare CKR. */
    if (result != 0 && err->ckr == CKR_MECHANISM_INVALID)
        jwke_fail_code(err, JWKE_ERR_UNSUPPORTED_ALG,
                       "token '%s' has no %s: it cannot generate %s keys "
                       "(C_GenerateKeyPair: CKR_MECHANISM_INVALID)",
                       jwke_p11_token_label(token), alg->generate_mechanism.name, alg->name);
    /* A PSS key is only a PSS key by its CKA_ALLOWED_MECHANISMS mark (that is
     * how it reads back as PS256): a token that refuses the mark (NSS
     * softokn 3.87 answers CKR_GENERAL_ERROR) cannot hold one. */
    else if (result != 0 && alg->scheme == JWKE_SCHEME_RSA_PSS &&
             (err->ckr == CKR_GENERAL_ERROR || err->ckr == CKR_ATTRIBUTE_TYPE_INVALID ||
              err->ckr == CKR_ATTRIBUTE_VALUE_INVALID || err->ckr == CKR_TEMPLATE_INCONSISTENT)) {
        CK_RV refused = err->ckr;
        jwke_fail_code(err, JWKE_ERR_UNSUPPORTED_ALG,
                       "token '%s' refused a key pair marked with CKA_ALLOWED_MECHANISMS, the mark "
                       "that makes an RSA key %s: it cannot hold %s keys (C_GenerateKeyPair: %s)",
                       jwke_p11_token_label(token), alg->name, alg->name, jwke_ckr_name(refused));
    }
    return result;
}

/* An operation on every object a search finds (deleting, renaming). A
 * retry after a recoverable failure searches again and finds only what is
 * left, so `done` adds up across attempts. */
typedef CK_RV (*object_fn)(jwke_p11_token *token, CK_SESSION_HANDLE session,
                           CK_OBJECT_HANDLE handle, void *arg);

typedef struct each_object_context {
    CK_ATTRIBUTE *search;
    CK_ULONG search_len;
    const char *function; /* the call `apply` makes, for error messages */
    object_fn apply;
    void *arg;
    size_t done;
} each_object_context;

static CK_RV each_object_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                            const char **function, jwke_error *err)
{
    each_object_context *c = ctx;
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    CK_RV rv = jwke_p11_find(token, session, c->search, c->search_len, &handles, &n, function,
                             err);
    if (rv != CKR_OK)
        return rv;
    *function = c->function;
    for (size_t i = 0; i < n && rv == CKR_OK; i++) {
        rv = c->apply(token, session, handles[i], c->arg);
        if (rv == CKR_OK)
            c->done++;
    }
    free(handles);
    return rv;
}

static CK_RV destroy_object(jwke_p11_token *token, CK_SESSION_HANDLE session,
                            CK_OBJECT_HANDLE handle, void *arg)
{
    return jwke_p11_token_functions(token)->C_DestroyObject(session, handle);
}

int jwke_p11_delete(jwke_p11_token *token, const char *label, size_t label_len,
                    const unsigned char *id, size_t id_len, size_t *destroyed, jwke_error *err)
{
    CK_ATTRIBUTE search[] = {
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_ID, (void *)id, (CK_ULONG)id_len},
    };
    each_object_context c = {search, id ? 2 : 1, "C_DestroyObject", destroy_object, NULL, 0};
    int result = jwke_p11_run(token, each_object_op, &c, err);
    *destroyed = c.done;
    if (result == 0)
        jwke_p11_token_objects_changed(token); /* cached handles are stale */
    return result;
}

static CK_RV set_attribute(jwke_p11_token *token, CK_SESSION_HANDLE session,
                           CK_OBJECT_HANDLE handle, void *arg)
{
    return jwke_p11_token_functions(token)->C_SetAttributeValue(session, handle, arg, 1);
}

int jwke_p11_set_id(jwke_p11_token *token, const char *label, size_t label_len,
                    const unsigned char *old_id, size_t old_id_len, const unsigned char *new_id,
                    size_t new_id_len, size_t *changed, jwke_error *err)
{
    if (new_id_len > JWKE_MAX_ID_LEN)
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "kid is longer than %d bytes",
                              JWKE_MAX_ID_LEN);
    CK_ATTRIBUTE search[] = {
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_ID, (void *)old_id, (CK_ULONG)old_id_len},
    };
    CK_ATTRIBUTE id = {CKA_ID, (void *)new_id, (CK_ULONG)new_id_len};
    each_object_context c = {search, 2, "C_SetAttributeValue", set_attribute, &id, 0};
    int result = jwke_p11_run(token, each_object_op, &c, err);
    *changed = c.done;
    jwke_p11_token_objects_changed(token); /* cached handles are stale */
    return result;
}
int jwke_p11_set_sign(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, int allowed, size_t *changed,
                      jwke_error *err)
{
    CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE search[] = {
        {CKA_CLASS, &private_class, sizeof private_class},
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_ID, (void *)id, (CK_ULONG)id_len},
    };
    CK_BBOOL value = allowed ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE sign = {CKA_SIGN, &value, sizeof value};
    each_object_context c = {search, 3, "C_SetAttributeValue", set_attribute, &sign, 0};
    int result = jwke_p11_run(token, each_object_op, &c, err);
    *changed = c.done;
    jwke_p11_token_objects_changed(token); /* loaded keys' retired flags are stale */
    if (result != 0) {
        switch (err->ckr) {
        case CKR_ATTRIBUTE_READ_ONLY:
        case CKR_ACTION_PROHIBITED:
        case CKR_ATTRIBUTE_VALUE_INVALID:
        case CKR_ATTRIBUTE_TYPE_INVALID:
        case CKR_TEMPLATE_INCONSISTENT:
        case CKR_FUNCTION_NOT_SUPPORTED: {
            CK_RV refused = err->ckr;
            jwke_fail_code(err, JWKE_ERR_KEY_MARK_REFUSED,
                           "token '%s' refused to set CKA_SIGN %s on a private key "
                           "(C_SetAttributeValue: %s): the key's state lives in the set's "
                           "records only on this token", jwke_p11_token_label(token),
                           allowed ? "true" : "false", jwke_ckr_name(refused));
            err->ckr = refused;
            break;
        }
        default:
            break;
        }
    }
    return result;
}

/* ---- one key, for the binding and hosts (the struct is opaque there) -- */

const unsigned char *jwke_p11_key_id(const jwke_p11_key *key, size_t *len)
{
    *len = key->id_len;
    return key->id;
}

const jwke_alg *jwke_p11_key_alg(const jwke_p11_key *key)
{
    return key->alg;
}

enum jwke_key_use jwke_p11_key_use(const jwke_p11_key *key)
{
    return key->use;
}

int jwke_p11_key_retired(const jwke_p11_key *key)
{
    return key->retired;
}

EVP_PKEY *jwke_p11_key_public(const jwke_p11_key *key)
{
    return key->public_key;
}

const unsigned char *jwke_p11_key_certificate(const jwke_p11_key *key, size_t *len,
                                              const jwke_error **problem)
{
    *problem = key->certificate_problem;
    *len = key->certificate_len;
    return key->certificate;
}

int jwke_p11_key_signing(const jwke_p11_key *key, const jwke_alg **alg, size_t *sig_max,
                         jwke_error *err)
{
    if (key->use != JWKE_USE_SIG)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN,
                              "key '%.*s' is an encryption key (use 'enc') and cannot sign",
                              (int)key->id_len, (const char *)key->id);
    if (key->retired)
        return jwke_fail_code(err, JWKE_ERR_KEY_STATE,
                              "key '%.*s' is retired on the token (CKA_SIGN false) and never signs",
                              (int)key->id_len, (const char *)key->id);
    if (!*alg)
        *alg = key->alg;
    else if (*alg != key->alg && jwke_pkey_fits_alg(key->public_key, *alg, 0, err) != 0)
        return jwke_fail_in(err, JWKE_ERR_JWS_SIGN);
    *sig_max = jwke_alg_signature_size(*alg, EVP_PKEY_get_bits(key->public_key));
    return 0;
}

int jwke_p11_key_set_sign(jwke_p11_token *token, const jwke_p11_key *key, int allowed,
                          size_t *changed, jwke_error *err)
{
    return jwke_p11_set_sign(token, key->label, key->label_len, key->id, key->id_len, allowed,
                             changed, err);
}

jwke_p11_key *jwke_p11_keys_take(jwke_p11_key *keys, size_t i)
{
    jwke_p11_key *key = malloc(sizeof *key);
    if (!key)
        return NULL;
    *key = keys[i];
    /* what the key owns moves with it */
    keys[i].public_key = NULL;
    keys[i].label = NULL;
    keys[i].certificate = NULL;
    keys[i].certificate_problem = NULL;
    return key;
}

void jwke_p11_key_free(jwke_p11_key *key)
{
    if (!key)
        return;
    jwke_p11_key_clear(key);
    free(key);
}

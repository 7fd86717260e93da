/* Key sets on the token: reading pairs into JWK-ready keys, generating and
 * deleting them. Mapping rules follow DESIGN.md ("Behaviour to match"). */
#include "p11_token.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ec_der.h"
#include "p11_internal.h"
#include "pkey.h"

/* Big enough for every key we accept, so one C_GetAttributeValue per object
 * suffices; anything larger is refused with a clear message. */
#define MAX_MODULUS_LEN 2048  /* 16384-bit RSA */
#define MAX_EXPONENT_LEN 16
#define MAX_EC_PARAMS_LEN 64
#define MAX_EC_POINT_LEN 160  /* P-521 uncompressed point in an OCTET STRING */

enum { A_CLASS, A_KEY_TYPE, A_ID, A_SIGN, A_DECRYPT, A_MODULUS, A_EXPONENT, A_EC_PARAMS,
       A_EC_POINT, A_COUNT };

static const char *const attribute_names[A_COUNT] = {
    "CKA_CLASS", "CKA_KEY_TYPE", "CKA_ID", "CKA_SIGN", "CKA_DECRYPT", "CKA_MODULUS",
    "CKA_PUBLIC_EXPONENT", "CKA_EC_PARAMS", "CKA_EC_POINT"};

typedef struct object_attributes {
    CK_OBJECT_HANDLE handle;
    CK_OBJECT_CLASS object_class;
    CK_KEY_TYPE key_type;
    CK_BBOOL sign, decrypt;
    unsigned char id[JWKE_MAX_ID_LEN];
    unsigned char modulus[MAX_MODULUS_LEN];
    unsigned char exponent[MAX_EXPONENT_LEN];
    unsigned char ec_params[MAX_EC_PARAMS_LEN];
    unsigned char ec_point[MAX_EC_POINT_LEN];
    CK_ATTRIBUTE template[A_COUNT];
} object_attributes;

static int present(const object_attributes *o, int which)
{
    return o->template[which].ulValueLen != CK_UNAVAILABLE_INFORMATION;
}

/* Reads the attributes a key needs in one call. Attributes that do not apply
 * to the object's class come back unavailable, which is fine. */
static CK_RV read_attributes(jwke_p11_token *token, CK_SESSION_HANDLE session,
                             object_attributes *o, jwke_error *err)
{
    CK_ATTRIBUTE t[A_COUNT] = {
        {CKA_CLASS, &o->object_class, sizeof o->object_class},
        {CKA_KEY_TYPE, &o->key_type, sizeof o->key_type},
        {CKA_ID, o->id, sizeof o->id},
        {CKA_SIGN, &o->sign, sizeof o->sign},
        {CKA_DECRYPT, &o->decrypt, sizeof o->decrypt},
        {CKA_MODULUS, o->modulus, sizeof o->modulus},
        {CKA_PUBLIC_EXPONENT, o->exponent, sizeof o->exponent},
        {CKA_EC_PARAMS, o->ec_params, sizeof o->ec_params},
        {CKA_EC_POINT, o->ec_point, sizeof o->ec_point},
    };
    memcpy(o->template, t, sizeof t);
    CK_RV rv = token->module->fn->C_GetAttributeValue(session, o->handle, o->template, A_COUNT);
    switch (rv) {
    case CKR_OK:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_ATTRIBUTE_SENSITIVE:
        break;
    case CKR_BUFFER_TOO_SMALL:
        for (int i = 0; i < A_COUNT; i++)
            if (o->template[i].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
                o->template[i].ulValueLen > t[i].ulValueLen) {
                jwke_fail(err, "object on the token has a %s of %lu bytes, more than the "
                          "%lu bytes jwkengine supports", attribute_names[i],
                          (unsigned long)o->template[i].ulValueLen,
                          (unsigned long)t[i].ulValueLen);
                return JWKE_OP_FAILED;
            }
        return rv;
    default:
        return rv;
    }
    if (!present(o, A_CLASS) || !present(o, A_ID)) {
        jwke_fail(err, "object on the token has no readable CKA_CLASS or CKA_ID");
        return JWKE_OP_FAILED;
    }
    return CKR_OK;
}

/* A kid for messages: as-is when printable, else hex. */
static const char *printable_kid(const unsigned char *id, size_t len, char *buf, size_t size)
{
    int printable = len > 0;
    for (size_t i = 0; i < len; i++)
        if (!isprint(id[i]) || id[i] == '\'')
            printable = 0;
    if (printable && len < size) {
        memcpy(buf, id, len);
        buf[len] = '\0';
        return buf;
    }
    size_t used = (size_t)snprintf(buf, size, "0x");
    for (size_t i = 0; i < len && used + 3 < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%02x", id[i]);
    return buf;
}

static int compare_ids(const object_attributes *a, const object_attributes *b)
{
    size_t la = a->template[A_ID].ulValueLen, lb = b->template[A_ID].ulValueLen;
    int c = memcmp(a->id, b->id, la < lb ? la : lb);
    return c ? c : (la > lb) - (la < lb);
}

static int compare_objects(const void *a, const void *b)
{
    return compare_ids(*(object_attributes *const *)a, *(object_attributes *const *)b);
}

/* Fills key from its two halves, applying the mapping rules. */
static int map_pair(const object_attributes *priv, const object_attributes *pub,
                    int min_rsa_bits, jwke_p11_key *key, const char *kid, jwke_error *err)
{
    key->id_len = priv->template[A_ID].ulValueLen;
    memcpy(key->id, priv->id, key->id_len);
    key->private_handle = priv->handle;
    key->public_handle = pub->handle;

    if (priv->key_type != pub->key_type)
        return jwke_fail(err, "key '%s': private and public halves have different key types", kid);

    int can_sign = present(priv, A_SIGN) && priv->sign;
    int can_decrypt = present(priv, A_DECRYPT) && priv->decrypt;

    switch (pub->key_type) {
    case CKK_RSA: {
        if (!present(pub, A_MODULUS) || !present(pub, A_EXPONENT))
            return jwke_fail(err, "key '%s': RSA public half has no readable modulus or exponent",
                             kid);
        key->public_key = jwke_pkey_rsa_public(pub->modulus, pub->template[A_MODULUS].ulValueLen,
                                               pub->exponent,
                                               pub->template[A_EXPONENT].ulValueLen, err);
        if (!key->public_key)
            return -1;
        key->bits = EVP_PKEY_get_bits(key->public_key);
        if (key->bits < min_rsa_bits)
            return jwke_fail(err, "key '%s': RSA key of %d bits is below the minimum of %d bits "
                             "(lower hsm.min_rsa_bits to accept it)", kid, key->bits, min_rsa_bits);
        key->alg = jwke_alg_by_name("RS256");
        /* A pair allowed to do both (as SoftHSM leaves `pkcs11-tool
         * --usage-sign` pairs) is a signing key. */
        if (can_sign)
            key->use = JWKE_USE_SIG;
        else if (can_decrypt)
            key->use = JWKE_USE_ENC;
        else
            return jwke_fail(err, "key '%s': private key has neither CKA_SIGN nor CKA_DECRYPT set, "
                             "so it is unusable", kid);
        return 0;
    }
    case CKK_EC:
    case CKK_EC_EDWARDS: {
        if (!present(pub, A_EC_PARAMS) || !present(pub, A_EC_POINT))
            return jwke_fail(err, "key '%s': EC public half has no readable CKA_EC_PARAMS or "
                             "CKA_EC_POINT", kid);
        jwke_error why;
        const jwke_alg *curve =
            jwke_ec_params_curve(pub->ec_params, pub->template[A_EC_PARAMS].ulValueLen, &why);
        if (!curve)
            return jwke_fail(err, "key '%s': %s", kid, why.message);
        if ((curve->kind == JWKE_KIND_OKP) != (pub->key_type == CKK_EC_EDWARDS))
            return jwke_fail(err, "key '%s': CKA_KEY_TYPE does not match curve %s", kid,
                             curve->curve);
        const unsigned char *point;
        size_t point_len;
        if (jwke_ec_point_unwrap(curve, pub->ec_point, pub->template[A_EC_POINT].ulValueLen,
                                 &point, &point_len, &why) != 0)
            return jwke_fail(err, "key '%s': %s", kid, why.message);
        if (curve->kind == JWKE_KIND_OKP)
            key->public_key = jwke_pkey_okp_public(curve->curve, point, point_len, &why);
        else
            key->public_key = jwke_pkey_ec_public(curve->curve, point + 1, curve->coordinate_size,
                                                  point + 1 + curve->coordinate_size,
                                                  curve->coordinate_size, &why);
        if (!key->public_key)
            return jwke_fail(err, "key '%s': %s", kid, why.message);
        key->alg = curve;
        /* EC and Edwards keys cannot decrypt: they are signing keys. */
        key->use = JWKE_USE_SIG;
        return 0;
    }
    default:
        return jwke_fail(err, "key '%s': unsupported CKA_KEY_TYPE 0x%lx (RSA, EC and EC_EDWARDS "
                         "are supported)", kid, (unsigned long)pub->key_type);
    }
}

void jwke_p11_key_clear(jwke_p11_key *key)
{
    EVP_PKEY_free(key->public_key);
    key->public_key = NULL;
    free(key->label);
    key->label = NULL;
}

void jwke_p11_keys_free(jwke_p11_key *keys, size_t count)
{
    if (!keys)
        return;
    for (size_t i = 0; i < count; i++)
        jwke_p11_key_clear(&keys[i]);
    free(keys);
}

/* Splits the objects into sorted private and public lists, then walks both
 * in step: n log n, so a token with thousands of pairs loads quickly. */
static int pair_objects(object_attributes *objects, size_t n, int min_rsa_bits,
                        jwke_p11_key **keys_out, size_t *count_out, jwke_error *err)
{
    object_attributes **privs = calloc(n + 1, sizeof *privs);
    object_attributes **pubs = calloc(n + 1, sizeof *pubs);
    jwke_p11_key *keys = calloc(n + 1, sizeof *keys);
    size_t n_priv = 0, n_pub = 0, n_keys = 0;
    int result = 0;
    char kid[2 * JWKE_MAX_ID_LEN + 3];

    if (!privs || !pubs || !keys) {
        result = jwke_fail(err, "out of memory reading a key set");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (objects[i].object_class == CKO_PRIVATE_KEY)
            privs[n_priv++] = &objects[i];
        else if (objects[i].object_class == CKO_PUBLIC_KEY)
            pubs[n_pub++] = &objects[i];
        /* Certificates or data objects sharing the label are not keys. */
    }
    qsort(privs, n_priv, sizeof *privs, compare_objects);
    qsort(pubs, n_pub, sizeof *pubs, compare_objects);

    size_t i = 0, j = 0;
    while (i < n_priv || j < n_pub) {
        int c = i == n_priv ? 1 : j == n_pub ? -1 : compare_ids(privs[i], pubs[j]);
        object_attributes *half = c <= 0 ? privs[i] : pubs[j];
        printable_kid(half->id, half->template[A_ID].ulValueLen, kid, sizeof kid);
        if (c != 0) {
            result = jwke_fail(err, "key '%s' has a %s half but no %s half with the same CKA_ID",
                               kid, c < 0 ? "private" : "public", c < 0 ? "public" : "private");
            goto done;
        }
        if ((i + 1 < n_priv && compare_ids(privs[i], privs[i + 1]) == 0) ||
            (j + 1 < n_pub && compare_ids(pubs[j], pubs[j + 1]) == 0)) {
            result = jwke_fail(err, "key '%s' appears more than once in the set (duplicate CKA_ID)",
                               kid);
            goto done;
        }
        if (map_pair(privs[i], pubs[j], min_rsa_bits, &keys[n_keys], kid, err) != 0) {
            n_keys++; /* so its public key is freed */
            result = -1;
            goto done;
        }
        n_keys++;
        i++;
        j++;
    }
done:
    free(privs);
    free(pubs);
    if (result != 0) {
        jwke_p11_keys_free(keys, n_keys);
        return -1;
    }
    *keys_out = keys;
    *count_out = n_keys;
    return 0;
}

typedef struct load_context {
    const char *label;
    size_t label_len;
    const unsigned char *id; /* NULL: the whole set */
    size_t id_len;
    object_attributes *objects;
    size_t count;
} load_context;

static CK_RV load_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                     const char **function, jwke_error *err)
{
    load_context *c = ctx;
    CK_ATTRIBUTE search[] = {{CKA_LABEL, (void *)c->label, (CK_ULONG)c->label_len},
                             {CKA_ID, (void *)c->id, (CK_ULONG)c->id_len}};
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    free(c->objects); /* from a failed first attempt */
    c->objects = NULL;
    c->count = 0;
    CK_RV rv = jwke_p11_find(token, session, search, c->id ? 2 : 1, &handles, &n, function);
    if (rv != CKR_OK)
        return rv;
    c->objects = malloc((n ? n : 1) * sizeof *c->objects);
    if (!c->objects) {
        free(handles);
        jwke_fail(err, "out of memory reading a key set");
        return JWKE_OP_FAILED;
    }
    *function = "C_GetAttributeValue";
    for (size_t i = 0; i < n && rv == CKR_OK; i++) {
        c->objects[i].handle = handles[i];
        rv = read_attributes(token, session, &c->objects[i], err);
    }
    free(handles);
    c->count = n;
    return rv;
}

int jwke_p11_load_set(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, int min_rsa_bits,
                      jwke_p11_key **keys, size_t *count, jwke_error *err)
{
    load_context c = {label, label_len, id, id_len, NULL, 0};
    int result = jwke_p11_run(token, load_op, &c, err);
    if (result == 0)
        result = pair_objects(c.objects, c.count, min_rsa_bits, keys, count, err);
    if (result == 0) {
        /* every key remembers where it came from, to be found again */
        for (size_t i = 0; i < *count; i++) {
            (*keys)[i].label = malloc(label_len + 1);
            if (!(*keys)[i].label) {
                jwke_p11_keys_free(*keys, *count);
                free(c.objects);
                return jwke_fail(err, "out of memory reading a key set");
            }
            memcpy((*keys)[i].label, label, label_len);
            (*keys)[i].label[label_len] = '\0';
            (*keys)[i].label_len = label_len;
            (*keys)[i].object_epoch = token->object_epoch;
        }
    }
    free(c.objects);
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
    return token->module->fn->C_GenerateKeyPair(session, c->mechanism, c->public_template,
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
        return jwke_fail(err, "kid is longer than %d bytes", JWKE_MAX_ID_LEN);

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
    CK_ATTRIBUTE private_template[] = {
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

    if (alg->kind == JWKE_KIND_RSA) {
        if (alg->scheme != JWKE_SCHEME_RSA_PKCS1 || strcmp(alg->name, "RS256") != 0)
            return jwke_fail(err, "the HSM generates RSA keys for RS256 only, not %s", alg->name);
        mechanism.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
        public_template[public_count++] =
            (CK_ATTRIBUTE){CKA_MODULUS_BITS, &modulus_bits, sizeof modulus_bits};
        public_template[public_count++] =
            (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, exponent_65537, sizeof exponent_65537};
    } else {
        if (use != JWKE_USE_SIG)
            return jwke_fail(err, "%s keys can only sign: use must be 'sig'", alg->name);
        const unsigned char *params;
        size_t params_len;
        if (jwke_ec_params_der(alg, &params, &params_len) != 0)
            return jwke_fail(err, "no curve known for %s", alg->name);
        mechanism.mechanism = alg->kind == JWKE_KIND_OKP ? CKM_EC_EDWARDS_KEY_PAIR_GEN
                                                         : CKM_EC_KEY_PAIR_GEN;
        public_template[public_count++] =
            (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)params, (CK_ULONG)params_len};
    }

    generate_context c = {&mechanism, public_template, public_count, private_template,
                          sizeof private_template / sizeof private_template[0]};
    pthread_mutex_lock(&generation_lock);
    int result = jwke_p11_run(token, generate_op, &c, err);
    pthread_mutex_unlock(&generation_lock);
    if (result != 0 && err->ckr == CKR_MECHANISM_INVALID)
        jwke_fail(err, "C_GenerateKeyPair: CKR_MECHANISM_INVALID (the token cannot generate %s "
                  "keys)", alg->name);
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
    CK_RV rv = jwke_p11_find(token, session, c->search, c->search_len, &handles, &n, function);
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

/* Cached handles of the objects touched must not be used again. */
static void objects_changed(jwke_p11_token *token)
{
    pthread_mutex_lock(&token->lock);
    token->object_epoch++;
    pthread_mutex_unlock(&token->lock);
}

static CK_RV destroy_object(jwke_p11_token *token, CK_SESSION_HANDLE session,
                            CK_OBJECT_HANDLE handle, void *arg)
{
    return token->module->fn->C_DestroyObject(session, handle);
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
        objects_changed(token);
    return result;
}

static CK_RV set_id(jwke_p11_token *token, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE handle,
                    void *arg)
{
    return token->module->fn->C_SetAttributeValue(session, handle, arg, 1);
}

int jwke_p11_set_id(jwke_p11_token *token, const char *label, size_t label_len,
                    const unsigned char *old_id, size_t old_id_len, const unsigned char *new_id,
                    size_t new_id_len, size_t *changed, jwke_error *err)
{
    if (new_id_len > JWKE_MAX_ID_LEN)
        return jwke_fail(err, "kid is longer than %d bytes", JWKE_MAX_ID_LEN);
    CK_ATTRIBUTE search[] = {
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_ID, (void *)old_id, (CK_ULONG)old_id_len},
    };
    CK_ATTRIBUTE id = {CKA_ID, (void *)new_id, (CK_ULONG)new_id_len};
    each_object_context c = {search, 2, "C_SetAttributeValue", set_id, &id, 0};
    int result = jwke_p11_run(token, each_object_op, &c, err);
    *changed = c.done;
    objects_changed(token);
    return result;
}

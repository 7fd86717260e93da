/* Token objects to keys (see p11_map.h). Mapping rules follow DESIGN.md
 * ("Behaviour to match"). */
#include "p11_map.h"
#include "p11_key_struct.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ec_der.h"
#include "pkey.h"

/* Big enough for every key we accept, so one C_GetAttributeValue per object
 * suffices; anything larger is refused with a clear message. */
#define MAX_MODULUS_LEN 2048  /* 16384-bit RSA */
#define MAX_EXPONENT_LEN 16
#define MAX_EC_PARAMS_LEN 64
#define MAX_EC_POINT_LEN 160  /* P-521 uncompressed point in an OCTET STRING */
#define MAX_ALLOWED_MECHANISMS 64 /* more than any key needs: a longer list is refused */

enum { A_CLASS, A_KEY_TYPE, A_ID, A_SIGN, A_DECRYPT, A_MODULUS, A_EXPONENT, A_EC_PARAMS,
       A_EC_POINT, A_ALLOWED_MECHANISMS, A_COUNT };

static const char *const attribute_names[A_COUNT] = {
    "CKA_CLASS", "CKA_KEY_TYPE", "CKA_ID", "CKA_SIGN", "CKA_DECRYPT", "CKA_MODULUS",
    "CKA_PUBLIC_EXPONENT", "CKA_EC_PARAMS", "CKA_EC_POINT", "CKA_ALLOWED_MECHANISMS"};

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
    CK_MECHANISM_TYPE allowed_mechanisms[MAX_ALLOWED_MECHANISMS];
    CK_ATTRIBUTE template[A_COUNT];
} object_attributes;

#define MEMBER_SIZE(member) sizeof(((object_attributes *)0)->member)

/* The buffer each attribute is read into: the only bound on what a token
 * may report. */
static const size_t attribute_sizes[A_COUNT] = {
    MEMBER_SIZE(object_class), MEMBER_SIZE(key_type), MEMBER_SIZE(id),
    MEMBER_SIZE(sign), MEMBER_SIZE(decrypt), MEMBER_SIZE(modulus),
    MEMBER_SIZE(exponent), MEMBER_SIZE(ec_params), MEMBER_SIZE(ec_point),
    MEMBER_SIZE(allowed_mechanisms)};

static int present(const object_attributes *o, int which)
{
    return o->template[which].ulValueLen != CK_UNAVAILABLE_INFORMATION;
}

struct jwke_p11_objects {
    size_t count;
    object_attributes items[];
};

jwke_p11_objects *jwke_p11_objects_new(size_t count, jwke_error *err)
{
    if (count > (SIZE_MAX - sizeof(jwke_p11_objects)) / sizeof(object_attributes)) {
        jwke_fail_code(err, JWKE_ERR_TOKEN_LENGTH, "a key set of %zu objects is too large", count);
        return NULL;
    }
    jwke_p11_objects *objects = calloc(1, sizeof *objects + count * sizeof objects->items[0]);
    if (!objects) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading a key set");
        return NULL;
    }
    objects->count = count;
    return objects;
}

void jwke_p11_objects_free(jwke_p11_objects *objects)
{
    free(objects);
}

CK_ATTRIBUTE *jwke_p11_object_template(jwke_p11_objects *objects, size_t i,
                                       CK_OBJECT_HANDLE handle, CK_ULONG *count)
{
    object_attributes *o = &objects->items[i];
    static const CK_ATTRIBUTE_TYPE types[A_COUNT] = {
        CKA_CLASS, CKA_KEY_TYPE, CKA_ID, CKA_SIGN, CKA_DECRYPT, CKA_MODULUS,
        CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT, CKA_ALLOWED_MECHANISMS};
    void *const buffers[A_COUNT] = {
        &o->object_class, &o->key_type, o->id, &o->sign, &o->decrypt, o->modulus,
        o->exponent, o->ec_params, o->ec_point, o->allowed_mechanisms};
    for (int a = 0; a < A_COUNT; a++)
        o->template[a] = (CK_ATTRIBUTE){types[a], buffers[a], (CK_ULONG)attribute_sizes[a]};
    o->handle = handle;
    *count = A_COUNT;
    return o->template;
}

/* Scalars (class, key type, booleans) have one size; byte strings may be
 * shorter than their buffer. */
static int fixed_size(int which)
{
    return which == A_CLASS || which == A_KEY_TYPE || which == A_SIGN || which == A_DECRYPT;
}

CK_RV jwke_p11_object_check(jwke_p11_objects *objects, size_t i, CK_RV rv, jwke_error *err)
{
    object_attributes *o = &objects->items[i];
    switch (rv) {
    case CKR_OK:
    case CKR_ATTRIBUTE_TYPE_INVALID: /* attributes of another key type */
    case CKR_ATTRIBUTE_SENSITIVE:
    case CKR_BUFFER_TOO_SMALL:
        break;
    default:
        return rv; /* a failed call: its lengths mean nothing */
    }
    /* Tokens commonly report a value's real length where PKCS#11 says
     * CK_UNAVAILABLE_INFORMATION, and with any of the codes above: the
     * template's own sizes (the buffers) are the only bound to trust. */
    for (int a = 0; a < A_COUNT; a++) {
        CK_ULONG reported = o->template[a].ulValueLen;
        CK_ULONG buffer = (CK_ULONG)attribute_sizes[a];
        if (reported == CK_UNAVAILABLE_INFORMATION)
            continue;
        if (reported > buffer) {
            jwke_fail(err, "C_GetAttributeValue: token reported %lu bytes for %s, buffer holds "
                      "%lu", (unsigned long)reported, attribute_names[a], (unsigned long)buffer);
            err->code = JWKE_ERR_TOKEN_LENGTH;
            return JWKE_OP_FAILED;
        }
        if ((fixed_size(a) && reported != buffer) ||
            (a == A_ALLOWED_MECHANISMS && reported % sizeof(CK_MECHANISM_TYPE) != 0)) {
            jwke_fail(err, "C_GetAttributeValue: token reported %lu bytes for %s, a %lu-byte "
                      "value", (unsigned long)reported, attribute_names[a], (unsigned long)buffer);
            err->code = JWKE_ERR_TOKEN_LENGTH;
            return JWKE_OP_FAILED;
        }
    }
    if (rv == CKR_BUFFER_TOO_SMALL)
        return rv; /* a value larger than jwkengine supports, reported as PKCS#11 says */
    /* Data objects (a set's key states) and certificates share the label
     * and carry no CKA_ID: jwke_p11_map_objects skips them. */
    if (present(o, A_CLASS) && o->object_class != CKO_PRIVATE_KEY && o->object_class != CKO_PUBLIC_KEY)
        return CKR_OK;
    if (!present(o, A_CLASS) || !present(o, A_ID)) {
        jwke_fail_code(err, JWKE_ERR_KEY_INVALID, "object on the token has no readable CKA_CLASS or CKA_ID");
        return JWKE_OP_FAILED;
    }
    return CKR_OK;
}

const char *jwke_p11_printable_kid(const unsigned char *id, size_t len, char *buf, size_t size)
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

/* Whether the private half's CKA_ALLOWED_MECHANISMS lists type. */
static int allows(const object_attributes *priv, CK_MECHANISM_TYPE type)
{
    size_t n = priv->template[A_ALLOWED_MECHANISMS].ulValueLen / sizeof(CK_MECHANISM_TYPE);
    for (size_t i = 0; i < n; i++)
        if (priv->allowed_mechanisms[i] == type)
            return 1;
    return 0;
}

/* RS256 (Hydra's rule), unless CKA_ALLOWED_MECHANISMS restricts the key to
 * PSS: then PS256, PS384 or PS512 by the hash-named PSS mechanism it also
 * lists (CKM_SHA384_RSA_PKCS_PSS -> PS384), PS256 when it names none. This
 * is how the engine's PS* generation records the alg on the token, and how
 * an operator marks a pair made elsewhere (pkcs11-tool --allowed-mechanisms
 * RSA-PKCS-PSS,SHA256-RSA-PKCS-PSS). */
static const jwke_alg *rsa_alg(const object_attributes *priv)
{
    const jwke_alg *pkcs1 = jwke_alg_default(JWKE_KIND_RSA, NULL);
    const jwke_alg *pss = jwke_alg_by_name("PS256");
    if (!present(priv, A_ALLOWED_MECHANISMS) || allows(priv, pkcs1->sign_mechanism.type) ||
        !allows(priv, pss->sign_mechanism.type))
        return pkcs1;
    for (size_t i = 0; i < jwke_alg_count(); i++) {
        const jwke_alg *alg = jwke_alg_at(i);
        if (alg->scheme == JWKE_SCHEME_RSA_PSS && allows(priv, alg->digest->rsa_pss.type))
            return alg;
    }
    return pss;
}

/* Fills key from its two halves, applying the mapping rules. */
static int map_pair(const object_attributes *priv, const object_attributes *pub,
                    int min_rsa_bits, jwke_p11_key *key, const char *kid, jwke_error *err)
{
    _Static_assert(sizeof key->id >= MEMBER_SIZE(id), "a checked CKA_ID fits a key's id");
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
        key->alg = rsa_alg(priv);
        /* A pair allowed to do both (as SoftHSM leaves `pkcs11-tool
         * --usage-sign` pairs) is a signing key. */
        if (can_sign)
            key->use = JWKE_USE_SIG;
        else if (can_decrypt)
            key->use = JWKE_USE_ENC;
        else if (present(priv, A_SIGN))
            key->use = JWKE_USE_SIG, key->retired = 1; /* jwke_p11_set_sign's mark */
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
        /* EC and Edwards keys cannot decrypt: they are signing keys, retired
         * on the key when CKA_SIGN reads false (jwke_p11_set_sign). */
        key->use = JWKE_USE_SIG;
        key->retired = present(priv, A_SIGN) && !priv->sign;
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
    free(key->certificate);
    key->certificate = NULL;
    free(key->certificate_problem);
    key->certificate_problem = NULL;
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
int jwke_p11_map_objects(jwke_p11_objects *all, int min_rsa_bits, jwke_p11_key **keys_out,
                         size_t *count_out, jwke_error *err)
{
    object_attributes *objects = all->items;
    size_t n = all->count;
    object_attributes **privs = calloc(n + 1, sizeof *privs);
    object_attributes **pubs = calloc(n + 1, sizeof *pubs);
    jwke_p11_key *keys = calloc(n + 1, sizeof *keys);
    size_t n_priv = 0, n_pub = 0, n_keys = 0;
    int result = 0;
    char kid[2 * JWKE_MAX_ID_LEN + 3];

    if (!privs || !pubs || !keys) {
        result = jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading a key set");
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
        jwke_p11_printable_kid(half->id, half->template[A_ID].ulValueLen, kid, sizeof kid);
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
        return jwke_fail_in(err, JWKE_ERR_KEY_INVALID); /* a pair jwkengine cannot use as it is */
    }
    *keys_out = keys;
    *count_out = n_keys;
    return 0;
}


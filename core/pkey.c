#include "pkey.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>

int jwke_pkey_check_rsa_bits(int bits, jwke_error *err)
{
    if (bits > JWKE_RSA_MAX_BITS)
        return jwke_fail(err, "RSA key of %d bits is larger than the supported maximum of %d bits",
                         bits, JWKE_RSA_MAX_BITS);
    if (bits < JWKE_RSA_ABSOLUTE_MIN_BITS)
        return jwke_fail(err, "RSA key of %d bits is outside %d..%d bits", bits,
                         JWKE_RSA_ABSOLUTE_MIN_BITS, JWKE_RSA_MAX_BITS);
    return 0;
}

/* Bits of a big-endian number whose first byte is not zero. */
static int big_endian_bits(const unsigned char *bytes, size_t len)
{
    if (len > (size_t)JWKE_RSA_MAX_BITS) /* far too large either way; keeps the int exact */
        return JWKE_RSA_MAX_BITS + 1;
    int bits = (int)len * 8;
    for (unsigned char top = bytes[0]; !(top & 0x80); top <<= 1)
        bits--;
    return bits;
}

EVP_PKEY *jwke_pkey_from_params(const char *type, int selection, OSSL_PARAM_BLD *bld,
                                int pushed, const char *what, jwke_error *err)
{
    EVP_PKEY *pkey = NULL;
    if (!pushed) {
        jwke_fail_openssl(err, what);
        OSSL_PARAM_BLD_free(bld);
        return NULL;
    }
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, selection, params) <= 0) {
        jwke_fail_openssl(err, selection == EVP_PKEY_KEYPAIR ? "cannot build private key"
                                                             : "cannot build public key");
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params); /* wipes the secure block private BIGNUMs went to */
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

EVP_PKEY *jwke_pkey_rsa_public(const unsigned char *n, size_t n_len,
                               const unsigned char *e, size_t e_len, jwke_error *err)
{
    /* Leading zero bytes do not count towards the size of the modulus. */
    while (n_len > 0 && n[0] == 0) { n++; n_len--; }
    while (e_len > 0 && e[0] == 0) { e++; e_len--; }
    if (n_len == 0 || e_len == 0) {
        jwke_fail(err, "RSA key has an empty modulus or exponent");
        return NULL;
    }
    if (jwke_pkey_check_rsa_bits(big_endian_bits(n, n_len), err) != 0)
        return NULL;
    if ((n[n_len - 1] & 1) == 0) {
        jwke_fail(err, "RSA modulus is even");
        return NULL;
    }
    if ((e[e_len - 1] & 1) == 0 || (e_len == 1 && e[0] < 3) || e_len > 8) {
        jwke_fail(err, "RSA public exponent is invalid");
        return NULL;
    }

    BIGNUM *bn_n = BN_bin2bn(n, (int)n_len, NULL);
    BIGNUM *bn_e = BN_bin2bn(e, (int)e_len, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    int pushed = bn_n && bn_e && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) &&
                 OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e);
    EVP_PKEY *pkey = jwke_pkey_from_params("RSA", EVP_PKEY_PUBLIC_KEY, bld, pushed,
                                           "cannot build RSA public key", err);
    BN_free(bn_n);
    BN_free(bn_e);
    return pkey;
}

const char *jwke_pkey_group_name(const jwke_alg *curve)
{
    return curve && curve->kind == JWKE_KIND_EC ? OBJ_nid2sn(curve->curve_nid) : NULL;
}

EVP_PKEY *jwke_pkey_ec_public(const char *crv, const unsigned char *x, size_t x_len,
                              const unsigned char *y, size_t y_len, jwke_error *err)
{
    const jwke_alg *curve = jwke_alg_for_curve(crv);
    const char *group = jwke_pkey_group_name(curve);
    if (!curve || !group) {
        jwke_fail(err, "unsupported EC curve '%s'", crv);
        return NULL;
    }
    size_t size = curve->coordinate_size;
    if (x_len != size || y_len != size) {
        jwke_fail(err, "EC coordinates for %s must be %zu bytes each, got x=%zu y=%zu", crv,
                  size, x_len, y_len);
        return NULL;
    }
    unsigned char point[JWKE_EC_MAX_POINT]; /* size <= JWKE_EC_MAX_COORDINATE: from the table */
    point[0] = 0x04; /* uncompressed */
    memcpy(point + 1, x, size);
    memcpy(point + 1 + size, y, size);

    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    int pushed = bld &&
                 OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
                 OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * size);
    EVP_PKEY *pkey = jwke_pkey_from_params("EC", EVP_PKEY_PUBLIC_KEY, bld, pushed,
                                           "cannot build EC public key", err);
    if (!pkey && pushed)
        jwke_fail(err, "EC point is not on curve %s", crv);
    return pkey;
}

EVP_PKEY *jwke_pkey_okp_public(const char *crv, const unsigned char *x, size_t x_len,
                               jwke_error *err)
{
    const jwke_alg *curve = jwke_alg_for_curve(crv);
    if (!curve || curve->kind != JWKE_KIND_OKP) {
        jwke_fail(err, "unsupported OKP curve '%s'", crv);
        return NULL;
    }
    if (x_len != curve->coordinate_size) {
        jwke_fail(err, "%s public key must be %zu bytes, got %zu", crv, curve->coordinate_size,
                  x_len);
        return NULL;
    }
    /* An EVP_PKEY type is the NID of its algorithm (EVP_PKEY_ED25519 == NID_ED25519). */
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(curve->curve_nid, NULL, x, x_len);
    if (!pkey)
        jwke_fail_openssl(err, "cannot build OKP public key");
    return pkey;
}

enum jwke_key_kind jwke_pkey_kind(const EVP_PKEY *pkey)
{
    if (EVP_PKEY_is_a(pkey, "RSA")) return JWKE_KIND_RSA;
    if (EVP_PKEY_is_a(pkey, "EC")) return JWKE_KIND_EC;
    const jwke_alg *edwards = jwke_alg_for_curve_nid(EVP_PKEY_get_base_id(pkey));
    return edwards && edwards->kind == JWKE_KIND_OKP ? JWKE_KIND_OKP : 0;
}

const jwke_alg *jwke_pkey_curve(const EVP_PKEY *pkey)
{
    switch (jwke_pkey_kind(pkey)) {
    case JWKE_KIND_OKP:
        return jwke_alg_for_curve_nid(EVP_PKEY_get_base_id(pkey));
    case JWKE_KIND_EC: {
        char group[64];
        size_t len = 0;
        if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                            sizeof group, &len))
            return NULL;
        const jwke_alg *curve = jwke_alg_for_curve_nid(OBJ_sn2nid(group));
        return curve && curve->kind == JWKE_KIND_EC ? curve : NULL;
    }
    default:
        return NULL;
    }
}

int jwke_pkey_fits_alg(const EVP_PKEY *pkey, const jwke_alg *alg, int min_rsa_bits,
                       jwke_error *err)
{
    enum jwke_key_kind kind = jwke_pkey_kind(pkey);
    if (kind != alg->kind)
        return jwke_fail(err, "algorithm %s does not fit a %s key", alg->name, jwke_kind_name(kind));
    if (kind == JWKE_KIND_RSA) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < min_rsa_bits)
            return jwke_fail(err, "RSA key of %d bits is below the minimum of %d bits", bits,
                             min_rsa_bits);
        return 0;
    }
    const jwke_alg *curve = jwke_pkey_curve(pkey);
    if (curve != alg)
        return jwke_fail(err, "algorithm %s needs curve %s, the key is on %s", alg->name,
                         alg->curve, curve ? curve->curve : "an unsupported curve");
    return 0;
}

int jwke_pkey_public_members(const EVP_PKEY *pkey, jwke_public_members *out, jwke_error *err)
{
    memset(out, 0, sizeof *out);
    out->kind = jwke_pkey_kind(pkey);
    switch (out->kind) {
    case JWKE_KIND_RSA: {
        BIGNUM *n = NULL, *e = NULL;
        int ok = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) &&
                 EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) &&
                 BN_num_bytes(e) <= (int)sizeof out->e;
        if (ok) {
            out->n_len = (size_t)BN_num_bytes(n);
            out->n = malloc(out->n_len ? out->n_len : 1);
            ok = out->n != NULL;
        }
        if (ok) {
            BN_bn2bin(n, out->n);
            out->e_len = (size_t)BN_bn2bin(e, out->e);
        }
        BN_free(n);
        BN_free(e);
        if (!ok) {
            jwke_public_members_clear(out);
            return jwke_fail_openssl(err, "cannot read RSA public key");
        }
        return 0;
    }
    case JWKE_KIND_EC: {
        const jwke_alg *curve = jwke_pkey_curve(pkey);
        unsigned char point[JWKE_EC_MAX_POINT];
        size_t len = 0;
        if (!curve)
            return jwke_fail(err, "EC key is on an unsupported curve");
        if (!EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                             sizeof point, &len) ||
            len != 1 + 2 * curve->coordinate_size || point[0] != 0x04)
            return jwke_fail_openssl(err, "cannot read EC public point");
        out->crv = curve->curve;
        out->coordinate_len = curve->coordinate_size;
        memcpy(out->x, point + 1, out->coordinate_len);
        memcpy(out->y, point + 1 + out->coordinate_len, out->coordinate_len);
        return 0;
    }
    case JWKE_KIND_OKP: {
        const jwke_alg *curve = jwke_pkey_curve(pkey);
        size_t len = sizeof out->x;
        if (!curve)
            return jwke_fail(err, "OKP key is on an unsupported curve");
        if (!EVP_PKEY_get_raw_public_key(pkey, out->x, &len))
            return jwke_fail_openssl(err, "cannot read OKP public key");
        out->crv = curve->curve;
        out->coordinate_len = len;
        return 0;
    }
    default:
        return jwke_fail(err, "unsupported key type");
    }
}

void jwke_public_members_clear(jwke_public_members *members)
{
    free(members->n);
    members->n = NULL;
}

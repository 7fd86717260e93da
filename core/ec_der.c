#include "ec_der.h"

#include <string.h>

size_t jwke_der_header_len(const unsigned char *der, size_t total, unsigned char tag)
{
    if (total < 2 || der[0] != tag)
        return 0;
    size_t header, len;
    if (der[1] < 0x80) {
        header = 2;
        len = der[1];
    } else if (der[1] == 0x81 && total >= 3 && der[2] >= 0x80) {
        header = 3;
        len = der[2];
    } else if (der[1] == 0x82 && total >= 4 && der[2] != 0) {
        header = 4;
        len = (size_t)der[2] << 8 | der[3];
    } else {
        return 0; /* longer or non-minimal lengths never occur here */
    }
    return header + len == total ? header : 0;
}

const jwke_alg *jwke_ec_params_curve(const unsigned char *der, size_t len, jwke_error *err)
{
    for (size_t i = 0; i < jwke_alg_count(); i++) {
        const jwke_alg *alg = jwke_alg_at(i);
        if (alg->curve_oid && len == alg->curve_oid_len && memcmp(der, alg->curve_oid, len) == 0)
            return alg;
    }

    /* Some tokens name Edwards curves by a PrintableString (PKCS#11 3.0 §2.3.5). */
    size_t header = jwke_der_header_len(der, len, 0x13);
    if (header && len - header == 12 && memcmp(der + header, "edwards25519", 12) == 0)
        return jwke_alg_for_curve("Ed25519");

    if (header && len - header == 10 && memcmp(der + header, "edwards448", 10) == 0)
        jwke_fail(err, "curve Ed448 is not supported");
    else if (len >= 2 && der[0] == 0x06)
        jwke_fail(err, "EC curve with this OID is not supported (P-256, P-384, P-521 and Ed25519 are)");
    else
        jwke_fail(err, "CKA_EC_PARAMS is neither a named-curve OID nor a curve name");
    return NULL;
}

int jwke_ec_params_der(const jwke_alg *curve, const unsigned char **der, size_t *len)
{
    if (!curve->curve_oid)
        return -1;
    *der = curve->curve_oid;
    *len = curve->curve_oid_len;
    return 0;
}

int jwke_ec_point_unwrap(const jwke_alg *curve, const unsigned char *value, size_t len,
                         const unsigned char **point, size_t *point_len, jwke_error *err)
{
    int edwards = curve->kind == JWKE_KIND_OKP;
    size_t expected = edwards ? curve->coordinate_size : 1 + 2 * curve->coordinate_size;

    /* The wrapped form is tried first: its length alone tells it apart,
     * since a raw point is exactly `expected` bytes long. */
    size_t header = jwke_der_header_len(value, len, 0x04);
    if (header && len - header == expected) {
        value += header;
        len -= header;
    } else if (len != expected) {
        return jwke_fail(err, "CKA_EC_POINT of %zu bytes does not hold a %s public key", len,
                         curve->curve);
    }
    if (!edwards && value[0] != 0x04)
        return jwke_fail(err, "CKA_EC_POINT is not an uncompressed point");
    *point = value;
    *point_len = len;
    return 0;
}

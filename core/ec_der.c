#include "ec_der.h"

#include <string.h>

/* OBJECT IDENTIFIER DER for each supported curve. */
static const unsigned char oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
static const unsigned char oid_p521[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
static const unsigned char oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};

static const struct {
    const char *crv;
    const unsigned char *oid;
    size_t oid_len;
} curves[] = {
    {"P-256", oid_p256, sizeof oid_p256},
    {"P-384", oid_p384, sizeof oid_p384},
    {"P-521", oid_p521, sizeof oid_p521},
    {"Ed25519", oid_ed25519, sizeof oid_ed25519},
};

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
    for (size_t i = 0; i < sizeof curves / sizeof curves[0]; i++)
        if (len == curves[i].oid_len && memcmp(der, curves[i].oid, len) == 0)
            return jwke_alg_for_curve(curves[i].crv);

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
    for (size_t i = 0; i < sizeof curves / sizeof curves[0]; i++) {
        if (strcmp(curves[i].crv, curve->curve) == 0) {
            *der = curves[i].oid;
            *len = curves[i].oid_len;
            return 0;
        }
    }
    return -1;
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

/* The few DER shapes PKCS#11 uses for elliptic-curve keys.
 *
 * Tokens differ: CKA_EC_POINT may be a DER OCTET STRING around the point or
 * the raw point; an Ed25519 CKA_EC_PARAMS may be the OID 1.3.101.112 or the
 * PrintableString "edwards25519". We accept each form and write the
 * standard one (OID, OCTET STRING). */
#ifndef JWKE_EC_DER_H
#define JWKE_EC_DER_H

#include <stddef.h>
#include "alg.h"
#include "error.h"

/* The curve's algorithm entry (ES256, ES384, ES512, EdDSA) for the DER in
 * CKA_EC_PARAMS, or NULL with a message for curves we do not support. */
const jwke_alg *jwke_ec_params_curve(const unsigned char *der, size_t len, jwke_error *err);

/* The standard DER of CKA_EC_PARAMS for a curve (its named-curve OID). */
int jwke_ec_params_der(const jwke_alg *curve, const unsigned char **der, size_t *len);

/* Finds the public key inside a CKA_EC_POINT value. For EC curves the result
 * is the uncompressed point 04 || X || Y; for Ed25519 the 32-byte key. Sets
 * *point to a position inside value. */
int jwke_ec_point_unwrap(const jwke_alg *curve, const unsigned char *value, size_t len,
                         const unsigned char **point, size_t *point_len, jwke_error *err);

/* Length of a DER header (tag + length) for a value of `len` bytes at
 * `der`, checking that it spans exactly `total` bytes; 0 if it does not. */
size_t jwke_der_header_len(const unsigned char *der, size_t total, unsigned char tag);

#endif

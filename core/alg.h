/* The JWS algorithms jwkengine knows, and what each one needs from a key.
 *
 * One table drives HSM signing, software signing and verification so the
 * three can never disagree about hashes, curves or signature sizes. HMAC
 * algorithms are deliberately absent: symmetric keys are out of scope, so
 * no key can ever be used as an HMAC secret. */
#ifndef JWKE_ALG_H
#define JWKE_ALG_H

#include <stddef.h>

/* The largest RSA key jwkengine accepts (imported, generated or found on a
 * token), and so the largest signature it makes or checks: every signature
 * buffer is JWKE_MAX_SIGNATURE bytes, and a larger key is refused before
 * anything signs with it. */
#define JWKE_RSA_MAX_BITS 16384
#define JWKE_MAX_SIGNATURE (JWKE_RSA_MAX_BITS / 8)

/* The largest coordinate_size in the table (P-521), and the uncompressed
 * point 0x04 || x || y built from two of them. */
#define JWKE_EC_MAX_COORDINATE 66
#define JWKE_EC_MAX_POINT (1 + 2 * JWKE_EC_MAX_COORDINATE)

enum jwke_key_kind { JWKE_KIND_RSA = 1, JWKE_KIND_EC, JWKE_KIND_OKP };

enum jwke_sig_scheme {
    JWKE_SCHEME_RSA_PKCS1 = 1, /* RSASSA-PKCS1-v1_5 */
    JWKE_SCHEME_RSA_PSS,       /* RSASSA-PSS, MGF1 with the same hash, salt = hash length */
    JWKE_SCHEME_ECDSA,         /* raw R || S, each coordinate_size bytes */
    JWKE_SCHEME_EDDSA          /* pure EdDSA over the whole input */
};

typedef struct jwke_alg {
    const char *name;          /* "RS256" */
    enum jwke_key_kind kind;
    enum jwke_sig_scheme scheme;
    const char *digest;        /* OpenSSL digest name; NULL for EdDSA */
    size_t digest_size;
    const char *curve;         /* JWK crv for EC/OKP; NULL for RSA */
    size_t coordinate_size;    /* EC: bytes per coordinate; OKP: public key size */
} jwke_alg;

/* NULL for unknown names, "none" and HMAC algorithms. */
const jwke_alg *jwke_alg_by_name(const char *name);

/* The EC/OKP curve named by a JWK crv ("P-256"), or NULL. */
const jwke_alg *jwke_alg_for_curve(const char *crv);

/* Size in bytes of a signature by this algorithm with a key of `key_bits`
 * bits (RSA) or on its curve (EC/OKP). */
size_t jwke_alg_signature_size(const jwke_alg *alg, int key_bits);

#endif

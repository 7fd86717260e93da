/* The JWS algorithms jwkengine knows, and everything any layer needs to
 * know about each one: the one table.
 *
 * HSM signing, software signing, verification, key generation and the Lua
 * policy (through core.algorithms()) all read it, so they can never disagree
 * about hashes, curves, sizes or mechanisms. Adding an algorithm means one
 * row here (and its tests). HMAC algorithms are deliberately absent:
 * symmetric keys are out of scope, so no key can ever be used as an HMAC
 * secret. */
#ifndef JWKE_ALG_H
#define JWKE_ALG_H

#include <stddef.h>

#include "engine_limits.h"
#include "pkcs11_header.h"

/* Every signature buffer is JWKE_MAX_SIGNATURE bytes: the largest RSA key
 * (engine_limits.h) makes the largest signature, and a larger key is refused
 * before anything signs with it. */
#define JWKE_MAX_SIGNATURE (JWKE_RSA_MAX_BITS / 8)

/* The largest coordinate_size in the table (P-521), and the uncompressed
 * point 0x04 || x || y built from two of them. */
#define JWKE_EC_MAX_COORDINATE 66
#define JWKE_EC_MAX_POINT (1 + 2 * JWKE_EC_MAX_COORDINATE)

/* The longest DigestInfo prefix in the table and the largest digest: what
 * CKM_RSA_PKCS signs for an RS* algorithm fits in their sum. */
#define JWKE_DIGEST_INFO_MAX 19
#define JWKE_DIGEST_MAX 64

enum jwke_key_kind { JWKE_KIND_RSA = 1, JWKE_KIND_EC, JWKE_KIND_OKP };

enum jwke_sig_scheme {
    JWKE_SCHEME_RSA_PKCS1 = 1, /* RSASSA-PKCS1-v1_5 */
    JWKE_SCHEME_RSA_PSS,       /* RSASSA-PSS, MGF1 with the same hash, salt = hash length */
    JWKE_SCHEME_ECDSA,         /* raw R || S, each coordinate_size bytes */
    JWKE_SCHEME_EDDSA          /* pure EdDSA over the whole input */
};

/* A PKCS#11 mechanism and its name, written once by JWKE_MECHANISM. */
typedef struct jwke_mechanism {
    CK_MECHANISM_TYPE type;
    const char *name;
} jwke_mechanism;

typedef struct jwke_digest {
    const char *name;              /* "SHA-256": JOSE's (RFC 7638) and the Lua API's name */
    const char *openssl_name;      /* "SHA256" */
    size_t size;                   /* bytes */
    const unsigned char *digest_info; /* DER DigestInfo prefix (RFC 8017 9.2 note 1) */
    size_t digest_info_len;
    jwke_mechanism mechanism;      /* CKM_SHA256: the hash of CKM_RSA_PKCS_PSS */
    CK_RSA_PKCS_MGF_TYPE mgf1;     /* CKG_MGF1_SHA256: PSS's mask generation */
    jwke_mechanism rsa_pss;        /* CKM_SHA256_RSA_PKCS_PSS: in a PS key's
                                    * CKA_ALLOWED_MECHANISMS, it names the hash */
} jwke_digest;

typedef struct jwke_alg {
    const char *name;              /* "RS256" */
    enum jwke_key_kind kind;
    enum jwke_sig_scheme scheme;
    const jwke_digest *digest;     /* hashed on the host; NULL for EdDSA */
    const char *curve;             /* JWK crv for EC/OKP; NULL for RSA */
    int curve_nid;                 /* OpenSSL's NID of the curve; 0 for RSA */
    const unsigned char *curve_oid; /* its named-curve OID, DER: CKA_EC_PARAMS */
    size_t curve_oid_len;
    size_t coordinate_size;        /* EC: bytes per coordinate; OKP: public key size */
    size_t signature_size;         /* fixed size; 0: the RSA modulus size */
    jwke_mechanism sign_mechanism; /* what C_SignInit gets */
    jwke_mechanism generate_mechanism; /* what C_GenerateKeyPair gets */
    unsigned hsm_generates : 1;    /* the HSM path makes keys for it */
    unsigned software_generates : 1;
    unsigned is_default : 1;       /* the alg its kty (RSA) or crv implies when none is named */
} jwke_alg;

/* NULL for unknown names, "none" and HMAC algorithms. */
const jwke_alg *jwke_alg_by_name(const char *name);

/* The EC/OKP curve named by a JWK crv ("P-256"), or NULL. */
const jwke_alg *jwke_alg_for_curve(const char *crv);

/* The curve entry for an OpenSSL NID, or NULL. */
const jwke_alg *jwke_alg_for_curve_nid(int nid);

/* The algorithm a key of this kind (and, for EC/OKP, crv) signs with when
 * none is named: RSA -> RS256, P-256 -> ES256, Ed25519 -> EdDSA. */
const jwke_alg *jwke_alg_default(enum jwke_key_kind kind, const char *crv);

/* Every algorithm, in table order: index 0 .. jwke_alg_count() - 1. */
size_t jwke_alg_count(void);
const jwke_alg *jwke_alg_at(size_t index);

/* The digest named as JOSE names it ("SHA-256"), or NULL. */
const jwke_digest *jwke_digest_by_name(const char *name);

/* A digest's place in the table, 0 .. JWKE_DIGEST_COUNT - 1 (for caches
 * kept beside the constant table). */
#define JWKE_DIGEST_COUNT 3
size_t jwke_digest_index(const jwke_digest *digest);

/* The JWK kty of a key kind ("RSA", "EC", "OKP"), and the name of a
 * signature scheme ("RSASSA-PKCS1-v1_5", "RSASSA-PSS", "ECDSA", "EdDSA"). */
const char *jwke_kind_name(enum jwke_key_kind kind);
const char *jwke_scheme_name(enum jwke_sig_scheme scheme);

/* Size in bytes of a signature by this algorithm with a key of `key_bits`
 * bits (RSA) or on its curve (EC/OKP). */
size_t jwke_alg_signature_size(const jwke_alg *alg, int key_bits);

#endif

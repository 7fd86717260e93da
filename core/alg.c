#include "alg.h"

#include <string.h>

#include <openssl/obj_mac.h>

#define JWKE_MECHANISM(m) {m, #m}
#define BYTES(array) array, sizeof array

/* DER DigestInfo prefixes (RFC 8017 section 9.2, note 1): what CKM_RSA_PKCS
 * signs is prefix || digest. */
static const unsigned char digest_info_sha256[] = {
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    0x05, 0x00, 0x04, 0x20};
static const unsigned char digest_info_sha384[] = {
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
    0x05, 0x00, 0x04, 0x30};
static const unsigned char digest_info_sha512[] = {
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
    0x05, 0x00, 0x04, 0x40};

static const jwke_digest digests[] = {
    {"SHA-256", "SHA256", 32, BYTES(digest_info_sha256), JWKE_MECHANISM(CKM_SHA256), CKG_MGF1_SHA256,
     JWKE_MECHANISM(CKM_SHA256_RSA_PKCS_PSS)},
    {"SHA-384", "SHA384", 48, BYTES(digest_info_sha384), JWKE_MECHANISM(CKM_SHA384), CKG_MGF1_SHA384,
     JWKE_MECHANISM(CKM_SHA384_RSA_PKCS_PSS)},
    {"SHA-512", "SHA512", 64, BYTES(digest_info_sha512), JWKE_MECHANISM(CKM_SHA512), CKG_MGF1_SHA512,
     JWKE_MECHANISM(CKM_SHA512_RSA_PKCS_PSS)},
};
#define SHA256 (&digests[0])
#define SHA384 (&digests[1])
#define SHA512 (&digests[2])

/* Named-curve OIDs, DER (what CKA_EC_PARAMS holds). */
static const unsigned char oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
static const unsigned char oid_p521[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23};
static const unsigned char oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};

/* sign_mechanism is a JWKE_MECHANISM(...) already: stringified where it is
 * written, before CKM_* expands to its number. */
#define RSA_ROW(name, scheme, digest, sign_mechanism, hsm, is_default)                 \
    {name, JWKE_KIND_RSA, scheme, digest, NULL, 0, NULL, 0, 0, 0, sign_mechanism,       \
     JWKE_MECHANISM(CKM_RSA_PKCS_KEY_PAIR_GEN), hsm, 1, is_default}

/* ECDSA's signature is R || S, two coordinates; Ed25519's is 64 bytes (RFC 8032). */
static const jwke_alg algorithms[] = {
    RSA_ROW("RS256", JWKE_SCHEME_RSA_PKCS1, SHA256, JWKE_MECHANISM(CKM_RSA_PKCS), 1, 1),
    RSA_ROW("RS384", JWKE_SCHEME_RSA_PKCS1, SHA384, JWKE_MECHANISM(CKM_RSA_PKCS), 0, 0),
    RSA_ROW("RS512", JWKE_SCHEME_RSA_PKCS1, SHA512, JWKE_MECHANISM(CKM_RSA_PKCS), 0, 0),
    RSA_ROW("PS256", JWKE_SCHEME_RSA_PSS, SHA256, JWKE_MECHANISM(CKM_RSA_PKCS_PSS), 1, 0),
    RSA_ROW("PS384", JWKE_SCHEME_RSA_PSS, SHA384, JWKE_MECHANISM(CKM_RSA_PKCS_PSS), 1, 0),
    RSA_ROW("PS512", JWKE_SCHEME_RSA_PSS, SHA512, JWKE_MECHANISM(CKM_RSA_PKCS_PSS), 1, 0),
    {"ES256", JWKE_KIND_EC, JWKE_SCHEME_ECDSA, SHA256, "P-256", NID_X9_62_prime256v1,
     BYTES(oid_p256), 32, 2 * 32, JWKE_MECHANISM(CKM_ECDSA),
     JWKE_MECHANISM(CKM_EC_KEY_PAIR_GEN), 1, 1, 1},
    {"ES384", JWKE_KIND_EC, JWKE_SCHEME_ECDSA, SHA384, "P-384", NID_secp384r1,
     BYTES(oid_p384), 48, 2 * 48, JWKE_MECHANISM(CKM_ECDSA),
     JWKE_MECHANISM(CKM_EC_KEY_PAIR_GEN), 1, 1, 1},
    {"ES512", JWKE_KIND_EC, JWKE_SCHEME_ECDSA, SHA512, "P-521", NID_secp521r1,
     BYTES(oid_p521), 66, 2 * 66, JWKE_MECHANISM(CKM_ECDSA),
     JWKE_MECHANISM(CKM_EC_KEY_PAIR_GEN), 1, 1, 1},
    {"EdDSA", JWKE_KIND_OKP, JWKE_SCHEME_EDDSA, NULL, "Ed25519", NID_ED25519,
     BYTES(oid_ed25519), 32, 64, JWKE_MECHANISM(CKM_EDDSA),
     JWKE_MECHANISM(CKM_EC_EDWARDS_KEY_PAIR_GEN), 1, 1, 1},
};

#define N_ALGORITHMS (sizeof algorithms / sizeof algorithms[0])
#define N_DIGESTS (sizeof digests / sizeof digests[0])
_Static_assert(N_DIGESTS == JWKE_DIGEST_COUNT, "JWKE_DIGEST_COUNT names the table's length");

const jwke_alg *jwke_alg_by_name(const char *name)
{
    for (size_t i = 0; i < N_ALGORITHMS; i++)
        if (strcmp(algorithms[i].name, name) == 0)
            return &algorithms[i];
    return NULL;
}

const jwke_alg *jwke_alg_for_curve(const char *crv)
{
    for (size_t i = 0; i < N_ALGORITHMS; i++)
        if (algorithms[i].curve && strcmp(algorithms[i].curve, crv) == 0)
            return &algorithms[i];
    return NULL;
}

const jwke_alg *jwke_alg_for_curve_nid(int nid)
{
    for (size_t i = 0; i < N_ALGORITHMS; i++)
        if (algorithms[i].curve && algorithms[i].curve_nid == nid)
            return &algorithms[i];
    return NULL;
}

const jwke_alg *jwke_alg_default(enum jwke_key_kind kind, const char *crv)
{
    for (size_t i = 0; i < N_ALGORITHMS; i++) {
        const jwke_alg *alg = &algorithms[i];
        if (alg->is_default && alg->kind == kind &&
            (kind == JWKE_KIND_RSA || (crv && strcmp(alg->curve, crv) == 0)))
            return alg;
    }
    return NULL;
}

size_t jwke_alg_count(void)
{
    return N_ALGORITHMS;
}

const jwke_alg *jwke_alg_at(size_t index)
{
    return index < N_ALGORITHMS ? &algorithms[index] : NULL;
}

const jwke_digest *jwke_digest_by_name(const char *name)
{
    for (size_t i = 0; i < N_DIGESTS; i++)
        if (strcmp(digests[i].name, name) == 0)
            return &digests[i];
    return NULL;
}

size_t jwke_digest_index(const jwke_digest *digest)
{
    return (size_t)(digest - digests);
}

const char *jwke_kind_name(enum jwke_key_kind kind)
{
    switch (kind) {
    case JWKE_KIND_RSA: return "RSA";
    case JWKE_KIND_EC: return "EC";
    case JWKE_KIND_OKP: return "OKP";
    }
    return "unknown";
}

const char *jwke_scheme_name(enum jwke_sig_scheme scheme)
{
    switch (scheme) {
    case JWKE_SCHEME_RSA_PKCS1: return "RSASSA-PKCS1-v1_5";
    case JWKE_SCHEME_RSA_PSS: return "RSASSA-PSS";
    case JWKE_SCHEME_ECDSA: return "ECDSA";
    case JWKE_SCHEME_EDDSA: return "EdDSA";
    }
    return "unknown";
}

size_t jwke_alg_signature_size(const jwke_alg *alg, int key_bits)
{
    return alg->signature_size ? alg->signature_size : (size_t)(key_bits + 7) / 8;
}

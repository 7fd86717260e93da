/* Software keys: private (or public-only) keys held as OpenSSL EVP_PKEYs,
 * for the encrypted key store and for keys added by an administrator.
 *
 * Only what JWS signing can use is accepted: RSA, EC on P-256/P-384/P-521
 * and Ed25519. Symmetric keys are refused. Every import is checked: EC
 * points lie on the curve and match d, Ed25519 x matches d, RSA d matches
 * n and e (and the CRT members agree when given). */
#ifndef JWKE_SWKEY_H
#define JWKE_SWKEY_H

#include <stddef.h>
#include <openssl/evp.h>

#include "alg.h"
#include "error.h"

typedef struct jwke_swkey {
    EVP_PKEY *pkey;        /* the key itself; holds the private half if any */
    EVP_PKEY *public_pkey; /* a public-only copy, safe to hand to verifiers */
    int is_private;
} jwke_swkey;

/* A byte string owned by the structure that holds it. */
typedef struct jwke_bytes {
    unsigned char *data; /* OPENSSL_malloc'd; NULL when the member is absent */
    size_t len;
} jwke_bytes;

/* JWK members (RFC 7517/7518/8037) as raw big-endian bytes, used both to
 * import and to export. Release with jwke_jwk_members_clear, which wipes. */
typedef struct jwke_jwk_members {
    const char *kty;                 /* "RSA", "EC", "OKP" */
    const char *crv;                 /* EC/OKP */
    jwke_bytes n, e, d, p, q, dp, dq, qi; /* RSA (d: also EC and OKP) */
    jwke_bytes x, y;                 /* EC; OKP: x only */
} jwke_jwk_members;

void jwke_jwk_members_clear(jwke_jwk_members *m);

/* Largest decoded JWK member: the largest modulus (alg.h), plus the
 * leading zero byte some encoders put in front of it. */
#define JWKE_JWK_MEMBER_MAX (JWKE_MAX_SIGNATURE + 1)

/* The base64url members of jwke_jwk_members, by name, in one order, and
 * the key types each belongs to (RFC 7517 section 4: members of other key
 * types are ignored, never decoded). */
#define JWKE_JWK_BINARY_MEMBERS 10
enum { JWKE_KTY_RSA = 1 << 0, JWKE_KTY_EC = 1 << 1, JWKE_KTY_OKP = 1 << 2 };
extern const char *const jwke_jwk_binary_members[JWKE_JWK_BINARY_MEMBERS];
jwke_bytes *jwke_jwk_member_at(jwke_jwk_members *m, size_t index);
int jwke_jwk_member_ktys(size_t index);

/* 1 when the member named (len bytes) is private key material (d, p, q,
 * dp, dq, qi), which must never leave C as text. */
int jwke_jwk_member_is_private(const char *name, size_t len);

/* Decodes one base64url member (no padding) into out, checked against
 * JWKE_JWK_MEMBER_MAX; out is wiped by jwke_jwk_members_clear even when
 * this fails part-way. */
int jwke_jwk_member_decode(const char *name, const char *text, size_t len, jwke_bytes *out,
                           jwke_error *err);

/* A fresh key for alg: RSA (rsa_bits, 0 for JWKE_RSA_GENERATE_BITS, within
 * JWKE_RSA_MIN_BITS..JWKE_RSA_MAX_BITS of engine_limits.h; e = 65537), the
 * curve of an ES* algorithm, or Ed25519 for EdDSA. Fails ERR_KEY_GENERATE. */
int jwke_swkey_generate(const jwke_alg *alg, int rsa_bits, jwke_swkey *out, jwke_error *err);

/* A key from decoded JWK members: private when d is present, else public.
 * Shared by imports, public keys and stored rows, so failures carry no code:
 * the caller names its operation's (jwke_fail_in). */
int jwke_swkey_from_jwk(const jwke_jwk_members *m, jwke_swkey *out, jwke_error *err);

/* A key from PEM text holding one unencrypted key: PKCS#8 "PRIVATE KEY",
 * "RSA PRIVATE KEY", "EC PRIVATE KEY" (an "EC PARAMETERS" block before it
 * is skipped) or SubjectPublicKeyInfo "PUBLIC KEY". Encrypted keys are
 * refused; OpenSSL is never allowed to ask for a passphrase. Fails
 * ERR_KEY_IMPORT. */
int jwke_swkey_from_pem(const char *pem, size_t pem_len, jwke_swkey *out, jwke_error *err);

/* All members of a private key, for the encrypted store only: RSA n, e, d
 * and (when the key has them) p, q, dp, dq, qi; EC crv, x, y, d; OKP crv,
 * x, d. */
int jwke_swkey_private_members(const jwke_swkey *key, jwke_jwk_members *out, jwke_error *err);

/* Frees both EVP_PKEYs (OpenSSL wipes private material on free). */
void jwke_swkey_free(jwke_swkey *key);

#endif

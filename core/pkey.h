/* Public keys as OpenSSL EVP_PKEYs, built from JWK members.
 *
 * Used to verify JWS signatures for HSM keys (from the public half read off
 * the token), software keys and foreign JWKs alike. Every constructor checks
 * what it is given: EC points must lie on the curve, RSA moduli must be odd
 * and of a sane size. */
#ifndef JWKE_PKEY_H
#define JWKE_PKEY_H

#include <stddef.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "alg.h"
#include "error.h"

/* 0 when an RSA key of `bits` bits is within what jwkengine supports
 * (512..JWKE_RSA_MAX_BITS), else -1 with a message giving both sizes.
 * Every RSA key passes here before anything signs or verifies with it. */
int jwke_pkey_check_rsa_bits(int bits, jwke_error *err);

/* Big-endian modulus and exponent, as in a JWK's n and e. */
EVP_PKEY *jwke_pkey_rsa_public(const unsigned char *n, size_t n_len,
                               const unsigned char *e, size_t e_len, jwke_error *err);

/* crv is a JWK curve name (P-256, P-384, P-521); x and y are the fixed-size
 * big-endian coordinates. */
EVP_PKEY *jwke_pkey_ec_public(const char *crv, const unsigned char *x, size_t x_len,
                              const unsigned char *y, size_t y_len, jwke_error *err);

/* crv is an OKP curve of the table (Ed25519); x is its public key. */
EVP_PKEY *jwke_pkey_okp_public(const char *crv, const unsigned char *x, size_t x_len,
                               jwke_error *err);

/* A key of OpenSSL type `type` ("RSA", "EC") from the parameters pushed
 * into bld (which it frees); selection is EVP_PKEY_PUBLIC_KEY or
 * EVP_PKEY_KEYPAIR. pushed is 0 when making bld or a push failed: the
 * failure is then `what`, with OpenSSL's reasons. */
EVP_PKEY *jwke_pkey_from_params(const char *type, int selection, OSSL_PARAM_BLD *bld,
                                int pushed, const char *what, jwke_error *err);

/* OpenSSL's group name of an EC curve entry ("prime256v1"), from its NID;
 * NULL for anything else. */
const char *jwke_pkey_group_name(const jwke_alg *curve);

/* The key's kind, and for EC/OKP keys the algorithm entry of its curve. */
enum jwke_key_kind jwke_pkey_kind(const EVP_PKEY *pkey);
const jwke_alg *jwke_pkey_curve(const EVP_PKEY *pkey);

/* 0 if the key can be used with alg (kind, curve, and for RSA at least
 * min_rsa_bits), else -1 with a message saying why. */
int jwke_pkey_fits_alg(const EVP_PKEY *pkey, const jwke_alg *alg, int min_rsa_bits,
                       jwke_error *err);

/* A key's public JWK members as raw big-endian bytes. */
typedef struct jwke_public_members {
    enum jwke_key_kind kind;
    const char *crv;                  /* EC/OKP */
    unsigned char *n;                 /* RSA modulus, malloc'd */
    size_t n_len;
    unsigned char e[16];              /* RSA public exponent */
    size_t e_len;
    unsigned char x[JWKE_EC_MAX_COORDINATE], y[JWKE_EC_MAX_COORDINATE]; /* EC; OKP: x only */
    size_t coordinate_len;
} jwke_public_members;

int jwke_pkey_public_members(const EVP_PKEY *pkey, jwke_public_members *out, jwke_error *err);
void jwke_public_members_clear(jwke_public_members *members);

#endif

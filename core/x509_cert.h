/* X.509 certificates next to keys (x5c): checking that a certificate
 * belongs to a key, and making a self-signed one whose signature any
 * signer makes (an HSM key signs its own certificate: the private key never
 * leaves the token). OpenSSL only; no PKCS#11 here (p11_cert.c). */
#ifndef JWKE_X509_CERT_H
#define JWKE_X509_CERT_H

#include <stddef.h>
#include <openssl/evp.h>

#include "alg.h"
#include "error.h"
#include "jws.h" /* jwke_sign_fn */

/* 0 when der is exactly one X.509 certificate (at most
 * JWKE_CERTIFICATE_MAX_LEN bytes) whose public key is `key`; else -1 with
 * ERR_CERTIFICATE_INVALID or ERR_CERTIFICATE_MISMATCH and a message naming
 * `kid`. */
int jwke_x509_check(const unsigned char *der, size_t der_len, const EVP_PKEY *key,
                    const char *kid, jwke_error *err);

/* What PKCS#11 stores beside a certificate's CKA_VALUE, as DER: the
 * subject and issuer Names (CKA_SUBJECT, CKA_ISSUER) and the serial number
 * INTEGER (CKA_SERIAL_NUMBER). Tokens differ in which they require (NSS
 * softokn: all three). Release with jwke_x509_fields_clear. */
enum { JWKE_X509_SUBJECT, JWKE_X509_ISSUER, JWKE_X509_SERIAL, JWKE_X509_FIELDS };
typedef struct jwke_x509_fields {
    unsigned char *der[JWKE_X509_FIELDS];
    size_t len[JWKE_X509_FIELDS];
} jwke_x509_fields;

int jwke_x509_fields_of(const unsigned char *der, size_t der_len, jwke_x509_fields *out,
                        jwke_error *err);
void jwke_x509_fields_clear(jwke_x509_fields *fields);

/* The algorithm a key signs its certificate with. key_alg is the JWS alg
 * the key is bound to (an HSM pair), or NULL (a software key signs with
 * any that fits). A PSS key (key_alg PS256/384/512: on a token it may be
 * PSS-only) signs with RSASSA-PSS, id-RSASSA-PSS with explicit parameters:
 * its alg's hash for the hash and MGF1, salt as long as the hash (PS256:
 * SHA-256, MGF1-SHA-256, 32). Other RSA keys: RS256
 * (sha256WithRSAEncryption); EC and OKP keys: the curve's ECDSA or EdDSA. */
const jwke_alg *jwke_x509_signature_alg(const EVP_PKEY *key, const jwke_alg *key_alg);

/* A self-signed X.509 v3 certificate for `key`: subject = issuer =
 * `subject` ("CN=issuer.example, O=Example": RDNs in the order written),
 * valid from now for `days` days, a random 64-bit serial. sign() signs
 * the TBSCertificate with the private half by `alg` (what
 * jwke_x509_signature_alg chose), in JWS form (ECDSA as raw R||S); the
 * result is checked against `key` before it is returned. *der is malloc'd. */
int jwke_x509_self_signed(const EVP_PKEY *key, const jwke_alg *alg, const char *subject, int days,
                          jwke_sign_fn sign, void *signer, unsigned char **der, size_t *der_len,
                          jwke_error *err);

#endif

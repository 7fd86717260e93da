/* JWS signatures computed and checked by OpenSSL EVP.
 *
 * Signatures are always in JWS form: RSA as-is, ECDSA as raw R || S of a
 * fixed size (never DER), EdDSA as its 64 bytes. */
#ifndef JWKE_EVP_SIG_H
#define JWKE_EVP_SIG_H

#include <stddef.h>
#include <openssl/evp.h>

#include "alg.h"
#include "error.h"

/* 1 when the signature is valid, 0 when it is not (err says why, e.g. a
 * wrong length), -1 when the check itself failed. The caller has already
 * made sure the key fits the algorithm (jwke_pkey_fits_alg). */
int jwke_evp_verify(EVP_PKEY *pkey, const jwke_alg *alg, const unsigned char *input,
                    size_t input_len, const unsigned char *sig, size_t sig_len,
                    jwke_error *err);

/* Signs with a private EVP_PKEY into sig. *sig_len is the size of sig on
 * entry (a buffer smaller than jwke_alg_signature_size fails) and the
 * signature's length on return. */
int jwke_evp_sign(EVP_PKEY *pkey, const jwke_alg *alg, const unsigned char *input,
                  size_t input_len, unsigned char *sig, size_t *sig_len, jwke_error *err);

/* Raw R || S (JWS, `half` bytes each) to the DER ECDSA-Sig-Value that
 * OpenSSL and X.509 use; *der is OpenSSL's (OPENSSL_free). 0, or -1 when
 * OpenSSL fails (the caller names the failure). */
int jwke_ecdsa_raw_to_der(const unsigned char *raw, size_t half, unsigned char **der,
                          int *der_len);

/* The digest of an algorithm, looked up once and kept. */
const EVP_MD *jwke_alg_md(const jwke_alg *alg);

/* Gives the kept digests back (fetched again when next asked for). Only
 * when nothing can sign meanwhile: the binding calls it when its last Lua
 * state closes, before the library is unloaded and before OpenSSL cleans
 * up at exit, which would otherwise leave OpenSSL's own caches held by the
 * kept methods unreachable. */
void jwke_alg_md_release(void);

#endif

/* Signing with a key of a token: one C_SignInit and one C_Sign, never an
 * object search unless the cached handle went stale. */
#ifndef JWKE_P11_SIGN_H
#define JWKE_P11_SIGN_H

#include <stddef.h>

#include "alg.h"
#include "error.h"
#include "p11_keys.h"
#include "p11_token.h"

/* What C_Sign gets for an algorithm: the mechanism and the data (the
 * host-computed digest, with a DigestInfo prefix for RS*, or the input
 * itself for EdDSA). `data` may point into `buffer` or at the input. */
typedef struct jwke_p11_prepared {
    CK_MECHANISM mechanism;
    CK_RSA_PKCS_PSS_PARAMS pss;
    unsigned char buffer[JWKE_DIGEST_INFO_MAX + JWKE_DIGEST_MAX];
    const unsigned char *data;
    size_t data_len;
} jwke_p11_prepared;

int jwke_p11_prepare_sign(const jwke_alg *alg, const unsigned char *input, size_t input_len,
                          jwke_p11_prepared *out, jwke_error *err);

/* Signs input with the key's private half: hashing happens on the host
 * where the mechanism allows it; the result is in JWS form (raw R || S for
 * ECDSA). The key's handle is found again when stale. When the token's
 * setting asks for it (jwke_p11_token_verify_after_sign), the signature is
 * checked against the key's public half first: ERR_SIGNATURE_FAULT when it
 * does not verify. *sig_len is the size
 * of sig on the way in, the signature's on the way out; a length the token
 * reports that does not fit sig, or is not the algorithm's size, fails. */
int jwke_p11_sign(jwke_p11_token *token, jwke_p11_key *key, const jwke_alg *alg,
                  const unsigned char *input, size_t input_len, unsigned char *sig,
                  size_t *sig_len, jwke_error *err);

#endif

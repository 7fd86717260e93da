/* Compact JWS assembly: BASE64URL(header) "." BASE64URL(payload) "."
 * BASE64URL(signature), with the signature made by any signer (HSM or
 * software key) over the first two parts. */
#ifndef JWKE_JWS_H
#define JWKE_JWS_H

#include <stddef.h>
#include "alg.h" /* JWKE_MAX_SIGNATURE */
#include "error.h"

typedef int (*jwke_sign_fn)(void *signer, const unsigned char *input, size_t input_len,
                            unsigned char *sig, size_t *sig_len, jwke_error *err);

/* The buffer a token needs (its terminating NUL included). */
size_t jwke_jws_compact_size(size_t header_len, size_t payload_len, size_t sig_max);

/* header_b64 is already encoded (callers cache it per key). The token is
 * written into buf (cap bytes, at least jwke_jws_compact_size), NUL
 * terminated; sig_max bounds the signature size. */
int jwke_jws_compact(const char *header_b64, size_t header_len, const unsigned char *payload,
                     size_t payload_len, size_t sig_max, jwke_sign_fn sign, void *signer,
                     char *buf, size_t cap, size_t *out_len, jwke_error *err);

#endif

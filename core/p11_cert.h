/* X.509 certificates on a token beside key pairs (CKO_CERTIFICATE,
 * CKC_X_509, the pair's CKA_LABEL and CKA_ID): read when a set loads, so
 * the public JWK can carry x5c, and written by `keys cert`. */
#ifndef JWKE_P11_CERT_H
#define JWKE_P11_CERT_H

#include <stddef.h>

#include "error.h"
#include "p11_keys.h"
#include "p11_token.h"

/* Gives each of the keys (a set labelled `label`, or its pair with CKA_ID
 * `id`) the certificate beside it: key->certificate when its public key
 * is the pair's, else key->certificate_problem (a mismatch, a certificate
 * that is not X.509 or larger than JWKE_CERTIFICATE_MAX_LEN, several for
 * one pair), so one bad certificate never stops a key from signing.
 * Certificates with no pair (a CA's) are left alone. Fails only when the
 * token does. */
int jwke_p11_attach_certificates(jwke_p11_token *token, const char *label, size_t label_len,
                                 const unsigned char *id, size_t id_len, jwke_p11_key *keys,
                                 size_t count, jwke_error *err);

/* Stores der (an X.509 certificate) beside the pair (label, id), token
 * and public, replacing the certificates already there for that pair. */
int jwke_p11_store_certificate(jwke_p11_token *token, const char *label, size_t label_len,
                               const unsigned char *id, size_t id_len, const unsigned char *der,
                               size_t der_len, jwke_error *err);

#endif

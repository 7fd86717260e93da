/* The fields of jwke_p11_key, for the core files that map, load and sign
 * with token keys (p11_map.c, p11_keys.c, p11_cert.c, p11_sign.c) and the
 * white-box C tests; everything else reads a key through p11_keys.h. */
#ifndef JWKE_P11_KEY_STRUCT_H
#define JWKE_P11_KEY_STRUCT_H

#include "p11_keys.h"

struct jwke_p11_key {
    unsigned char id[JWKE_MAX_ID_LEN]; /* CKA_ID: the kid */
    size_t id_len;
    char *label;                       /* CKA_LABEL, to find the key again */
    size_t label_len;
    CK_OBJECT_HANDLE private_handle;
    CK_OBJECT_HANDLE public_handle;
    unsigned object_epoch;             /* token object epoch of the handles */
    const jwke_alg *alg;               /* RS256, ES256, ES384, ES512 or EdDSA */
    enum jwke_key_use use;
    int retired;                       /* jwke_p11_key_retired */
    int bits;                          /* RSA modulus size */
    EVP_PKEY *public_key;              /* built from the public half */
    unsigned char *certificate;        /* DER of the pair's X.509 certificate (p11_cert.h), or NULL */
    size_t certificate_len;
    jwke_error *certificate_problem;   /* why a certificate beside the pair is not used, or NULL */
};

#endif

/* A software-store row (AES-GCM sealed JSON of a private JWK) opened into
 * a key in one step: the plaintext, and every private member in it, stays
 * in C and is wiped before this returns, so no private member ever
 * becomes a Lua string on the load path. */
#ifndef JWKE_SEALED_KEY_H
#define JWKE_SEALED_KEY_H

#include <stddef.h>

#include "aesgcm.h"
#include "error.h"
#include "swkey.h"

/* Decrypts text with any of the secrets, imports the JWK it holds into
 * *key, and sets *public_json (malloc'd, NUL-terminated) to the same JSON
 * object without its private members (d, p, q, dp, dq, qi): kid, alg, use
 * and the public members as stored. Multi-prime keys ('oth') are refused. */
int jwke_sealed_key_open(const jwke_secret *secrets, size_t count, const char *text,
                         size_t text_len, jwke_swkey *key, char **public_json,
                         size_t *public_len, jwke_error *err);

/* Retirement written on a software key (its row keeps Hydra's hydra_jwk
 * schema): opens text with any of the secrets and seals with the first
 * the same JWK with its key_ops member replaced by ["verify"] (retired) or
 * removed (not retired), every other member as it was. The plaintext, its
 * private members included, stays in C and is wiped. *out as for
 * jwke_aesgcm_seal. err->code: ERR_KEY_DECRYPT, ERR_KEY_INVALID (not a JSON
 * object), ERR_KEY_ENCRYPT. */
int jwke_sealed_key_mark(const jwke_secret *secrets, size_t count, const char *text,
                         size_t text_len, int retired, char **out, size_t *out_len,
                         jwke_error *err);

#endif

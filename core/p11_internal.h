/* Shared between the token files of the core; not part of its API. */
#ifndef JWKE_P11_INTERNAL_H
#define JWKE_P11_INTERNAL_H

#include "p11_token.h"

/* Returned by an operation whose failure is not a PKCS#11 code: the
 * message is already in err. Never a real CKR value. */
#define JWKE_OP_FAILED ((CK_RV)0xfffffffeUL)

/* The code of a length a token reported that its buffer cannot hold (or a
 * wrong one for a fixed-size value): the token misbehaves, whatever CKR it
 * returned. The message names the function and what was measured. */
#define JWKE_ERR_TOKEN_LENGTH "ERR_TOKEN_LENGTH"

void jwke_p11_track_slot(jwke_p11_module *module, CK_SLOT_ID slot, int delta);
int jwke_p11_login_locked(jwke_p11_token *token, jwke_error *err);

#endif

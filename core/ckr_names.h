#ifndef JWKE_CKR_NAMES_H
#define JWKE_CKR_NAMES_H
#include "pkcs11_header.h"

/* The symbolic name of a return value ("CKR_PIN_INCORRECT"), or NULL when the
 * header does not know it (vendor-defined codes). */
const char *jwke_ckr_name(CK_RV rv);

#endif

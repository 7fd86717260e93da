/* The one table of CKR_ names (core/ckr_names.c, generated from the
 * PKCS#11 header by scripts/gen-ckr-names.sh). The core names failures
 * with it; the fault module (spec/faultmod) compiles the same file. */
#ifndef JWKE_CKR_NAMES_H
#define JWKE_CKR_NAMES_H
#include <stddef.h>
#include "pkcs11_header.h"

/* The symbolic name of a return value ("CKR_PIN_INCORRECT"), or NULL when the
 * header does not know it (vendor-defined codes). */
const char *jwke_ckr_name(CK_RV rv);

/* The value of the CKR_ name in the first len bytes of name: 0 and *rv set,
 * or -1 when the header knows no such name. */
int jwke_ckr_value(const char *name, size_t len, CK_RV *rv);

#endif

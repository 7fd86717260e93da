/* One place that includes the Cryptoki header, so every file agrees on it.
 * Debian's libp11-kit-dev ships it (with CKM_EDDSA and CKK_EC_EDWARDS); its
 * compatibility mode gives the standard CK_* type names. */
#ifndef JWKE_PKCS11_HEADER_H
#define JWKE_PKCS11_HEADER_H
#include <p11-kit/pkcs11.h>
#endif

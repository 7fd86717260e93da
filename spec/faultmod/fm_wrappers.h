/* The wrappers, w_C_Initialize ... w_C_WaitForSlotEvent, one per function
 * of the table, each declared with the type of its slot in
 * CK_FUNCTION_LIST (so a wrapper whose parameters drift from the
 * specification does not compile). They live in fm_w_*.c by the
 * specification's function groups; faultmod.c puts them in the list. */
#ifndef JWKE_FM_WRAPPERS_H
#define JWKE_FM_WRAPPERS_H

#include <p11-kit/pkcs11.h>

#include "fm_functions.h"

#define FM_DECLARE_WRAPPER(name) extern __typeof__(*(CK_##name)0) w_##name;
FM_FUNCTIONS(FM_DECLARE_WRAPPER)
#undef FM_DECLARE_WRAPPER

#endif

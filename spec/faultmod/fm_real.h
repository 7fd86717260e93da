/* The real module every call is forwarded to (JWKE_FAULT_MODULE, SoftHSM by
 * default): loaded with dlopen at the first C_Initialize, unloaded when this
 * module's C_Finalize succeeds. Also whether this module is initialized,
 * and whether its C_Initialize initialized the real one ("owned"): only
 * then does its C_Finalize finalize the real one, since a real module
 * already initialized (inherited across fork, or loaded directly in the
 * same process: dlopen shares one instance) belongs to someone else. */
#ifndef JWKE_FM_REAL_H
#define JWKE_FM_REAL_H

#include <p11-kit/pkcs11.h>

#include <stddef.h>

#define FM_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

/* The path to load (owned). */
void fm_real_set_path_locked(char *path);

/* Loads the real module unless loaded; err says why not. */
int fm_real_load_locked(char *err, size_t errlen);
/* Unloads it; the next C_Initialize loads it again. */
void fm_real_unload_locked(void);
/* Its function list, NULL when not loaded. */
CK_FUNCTION_LIST_PTR fm_real_list_locked(void);

int fm_real_initialized_locked(void);
int fm_real_owned_locked(void);
void fm_real_set_initialized_locked(int initialized, int owned);

/* At unload, when not initialized. */
void fm_real_free_locked(void);

#endif

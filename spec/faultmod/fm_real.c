/* The real module (see fm_real.h). */
#include "fm_real.h"

#include "fm_text.h"

#include <dlfcn.h>
#include <stdlib.h>

static char *module_path;
static void *real_library;
static CK_FUNCTION_LIST_PTR real;
static int initialized;
static int real_owned; /* our C_Initialize initialized the real module (CKR_OK) */

void fm_real_set_path_locked(char *path)
{
    free(module_path);
    module_path = path;
}

int fm_real_load_locked(char *err, size_t errlen)
{
    if (real)
        return 0;
    const char *path = module_path;
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        fm_set_err(err, errlen, "JWKE_FAULT_MODULE: cannot load '%s': %s", path, dlerror());
        return -1;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(library, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR list = NULL;
    if (!get) {
        fm_set_err(err, errlen, "JWKE_FAULT_MODULE: '%s' has no C_GetFunctionList", path);
    } else if (get == C_GetFunctionList) {
        /* (calling it would take the lock held here) */
        fm_set_err(err, errlen, "JWKE_FAULT_MODULE: '%s' is the fault module itself", path);
    } else if (get(&list) != CKR_OK || !list) {
        fm_set_err(err, errlen, "JWKE_FAULT_MODULE: C_GetFunctionList of '%s' failed", path);
        list = NULL;
    }
    if (!list) {
        dlclose(library);
        return -1;
    }
    real_library = library;
    real = list;
    return 0;
}

void fm_real_unload_locked(void)
{
    if (real_library) {
        dlclose(real_library);
        real_library = NULL;
        real = NULL;
    }
}

CK_FUNCTION_LIST_PTR fm_real_list_locked(void) { return real; }
int fm_real_initialized_locked(void) { return initialized; }
int fm_real_owned_locked(void) { return real_owned; }

void fm_real_set_initialized_locked(int now_initialized, int owned)
{
    initialized = now_initialized;
    real_owned = owned;
}

void fm_real_free_locked(void)
{
    free(module_path);
    module_path = NULL;
}

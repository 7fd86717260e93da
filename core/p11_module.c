#include "p11_module.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "p11_internal.h"

/* More slots than any device has: a count beyond it is a module's
 * garbage, not something to allocate for. */
#define MAX_SLOTS 65536

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static jwke_p11_module *modules;

/* Bumped in the child after every fork; nothing else happens there, since
 * only async-signal-safe work is allowed in an atfork child handler. */
static volatile unsigned fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    fork_generation++;
    /* The module list lock may have been held by another thread at fork
     * time; the child has one thread, so a fresh lock is the safe state. */
    pthread_mutex_init(&modules_lock, NULL);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

unsigned jwke_p11_fork_generation(void)
{
    return fork_generation;
}

void jwke_p11_fork_lock(void)
{
    pthread_mutex_lock(&modules_lock);
}

void jwke_p11_fork_unlock(void)
{
    pthread_mutex_unlock(&modules_lock);
}

static CK_RV initialize(jwke_p11_module *m)
{
    /* The module may be called from several threads (a C host, OpenResty's
     * thread pool): let it use the OS's locks. */
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    CK_RV rv = m->fn->C_Initialize(&args);
    m->initialized_here = rv == CKR_OK;
    m->fork_generation = fork_generation;
    m->epoch++;
    return rv == CKR_CRYPTOKI_ALREADY_INITIALIZED ? CKR_OK : rv;
}
static int load_and_initialize(jwke_p11_module *m, const char *path, jwke_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return jwke_fail_code(err, "ERR_CONFIG", "PKCS#11 module '%s' cannot be read: %s", path, strerror(errno));

    m->library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!m->library)
        return jwke_fail_code(err, "ERR_CONFIG", "PKCS#11 module '%s' cannot be loaded: %s", path, dlerror());

    CK_C_GetFunctionList get_function_list =
        (CK_C_GetFunctionList)dlsym(m->library, "C_GetFunctionList");
    if (!get_function_list) {
        jwke_fail_code(err, "ERR_CONFIG", "'%s' is not a PKCS#11 module: it has no C_GetFunctionList", path);
        goto fail;
    }
    CK_RV rv = get_function_list(&m->fn);
    if (rv != CKR_OK || !m->fn) {
        jwke_fail_ckr(err, "C_GetFunctionList", rv);
        goto fail;
    }

    rv = initialize(m);
    if (rv != CKR_OK) {
        jwke_fail_ckr(err, "C_Initialize", rv);
        goto fail;
    }
    return 0;
fail:
    dlclose(m->library);
    m->library = NULL;
    return -1;
}

jwke_p11_module *jwke_p11_module_acquire(const char *path, jwke_error *err)
{
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&modules_lock);
    jwke_p11_module *m;
    for (m = modules; m; m = m->next) {
        if (strcmp(m->path, path) == 0) {
            m->references++;
            pthread_mutex_unlock(&modules_lock);
            /* in a forked child, the first use re-initializes */
            if (jwke_p11_module_check(m, err) == 0) {
                jwke_p11_module_release(m);
                return NULL;
            }
            return m;
        }
    }
    m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        pthread_mutex_unlock(&modules_lock);
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory loading PKCS#11 module");
        return NULL;
    }
    if (load_and_initialize(m, path, err) != 0) {
        free(m->path);
        free(m);
        pthread_mutex_unlock(&modules_lock);
        return NULL;
    }
    m->references = 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_rwlock_init(&m->use_lock, NULL);
    m->next = modules;
    modules = m;
    pthread_mutex_unlock(&modules_lock);
    return m;
}

void jwke_p11_module_retain(jwke_p11_module *module)
{
    pthread_mutex_lock(&modules_lock);
    module->references++;
    pthread_mutex_unlock(&modules_lock);
}

void jwke_p11_module_release(jwke_p11_module *module)
{
    if (!module)
        return;
    pthread_mutex_lock(&modules_lock);
    if (--module->references > 0) {
        pthread_mutex_unlock(&modules_lock);
        return;
    }
    for (jwke_p11_module **p = &modules; *p; p = &(*p)->next) {
        if (*p == module) {
            *p = module->next;
            break;
        }
    }
    pthread_mutex_unlock(&modules_lock);
    /* Finalizing is only ours to do in the process generation that
     * initialized the module: a forked child must leave it alone. */
    if (module->initialized_here && module->fork_generation == fork_generation) {
        module->fn->C_Finalize(NULL);
        dlclose(module->library);
    }
    while (module->logins) {
        jwke_p11_login_record *next = module->logins->next;
        free(module->logins);
        module->logins = next;
    }
    pthread_mutex_destroy(&module->lock);
    pthread_rwlock_destroy(&module->use_lock);
    free(module->path);
    free(module);
}

unsigned jwke_p11_module_check(jwke_p11_module *module, jwke_error *err)
{
    if (module->fork_generation == fork_generation)
        return module->epoch;
    /* First use in a forked child; several threads may get here at once,
     * so the catch-up is done once, under the process-wide lock. */
    pthread_mutex_lock(&modules_lock);
    CK_RV rv = CKR_OK;
    if (module->fork_generation != fork_generation) {
        /* The locks were copied in whatever state the parent's threads
         * left them; the login records describe the parent's sessions. */
        pthread_mutex_init(&module->lock, NULL);
        pthread_rwlock_init(&module->use_lock, NULL);
        while (module->logins) {
            jwke_p11_login_record *next = module->logins->next;
            free(module->logins);
            module->logins = next;
        }
        rv = initialize(module);
    }
    unsigned epoch = module->epoch;
    pthread_mutex_unlock(&modules_lock);
    if (rv != CKR_OK) {
        jwke_fail_ckr(err, "C_Initialize", rv);
        return 0;
    }
    return epoch;
}

int jwke_p11_module_reinitialize(jwke_p11_module *module, jwke_error *err)
{
    /* waits for every operation in flight on this module to finish */
    pthread_rwlock_wrlock(&module->use_lock);
    pthread_mutex_lock(&module->lock);
    if (module->initialized_here && module->fork_generation == fork_generation)
        module->fn->C_Finalize(NULL);
    CK_RV rv = initialize(module);
    pthread_mutex_unlock(&module->lock);
    pthread_rwlock_unlock(&module->use_lock);
    if (rv != CKR_OK)
        return jwke_fail_ckr(err, "C_Initialize", rv);
    return 0;
}

void jwke_p11_copy_padded(char *dst, size_t dst_size, const unsigned char *src, size_t src_len)
{
    if (dst_size == 0)
        return;
    size_t len = src_len;
    while (len > 0 && (src[len - 1] == ' ' || src[len - 1] == '\0'))
        len--;
    if (len > dst_size - 1)
        len = dst_size - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

int jwke_p11_list_slots(jwke_p11_module *module, jwke_p11_slot **slots, size_t *count,
                        jwke_error *err)
{
    CK_ULONG n = 0;
    CK_SLOT_ID *ids = NULL;
    CK_RV rv;
    /* The slot count can change between the two calls (hot-plug): retry. */
    for (;;) {
        rv = module->fn->C_GetSlotList(CK_FALSE, NULL, &n);
        if (rv != CKR_OK)
            return jwke_fail_ckr(err, "C_GetSlotList", rv);
        free(ids);
        if (n > MAX_SLOTS) {
            jwke_fail(err, "C_GetSlotList: the module reported %lu slots, jwkengine reads at most "
                      "%d", (unsigned long)n, MAX_SLOTS);
            err->code = JWKE_ERR_TOKEN_LENGTH;
            return -1;
        }
        CK_ULONG allocated = n ? n : 1;
        ids = calloc(allocated, sizeof *ids);
        if (!ids)
            return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory listing slots");
        n = allocated;
        rv = module->fn->C_GetSlotList(CK_FALSE, ids, &n);
        if (rv == CKR_BUFFER_TOO_SMALL)
            continue;
        if (rv == CKR_OK && n > allocated) {
            free(ids);
            jwke_fail(err, "C_GetSlotList: the module reported %lu slots, buffer holds %lu",
                      (unsigned long)n, (unsigned long)allocated);
            err->code = JWKE_ERR_TOKEN_LENGTH;
            return -1;
        }
        if (rv != CKR_OK) {
            free(ids);
            return jwke_fail_ckr(err, "C_GetSlotList", rv);
        }
        break;
    }

    jwke_p11_slot *out = calloc(n ? n : 1, sizeof *out);
    if (!out) {
        free(ids);
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory listing slots");
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_SLOT_INFO slot_info;
        out[i].id = ids[i];
        rv = module->fn->C_GetSlotInfo(ids[i], &slot_info);
        if (rv != CKR_OK) {
            free(ids);
            free(out);
            return jwke_fail_ckr(err, "C_GetSlotInfo", rv);
        }
        out[i].slot_flags = slot_info.flags;
        out[i].token_present = (slot_info.flags & CKF_TOKEN_PRESENT) != 0;
        if (!out[i].token_present)
            continue;
        CK_TOKEN_INFO token_info;
        rv = module->fn->C_GetTokenInfo(ids[i], &token_info);
        if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_TOKEN_NOT_RECOGNIZED) {
            out[i].token_present = 0; /* removed between the two calls */
            continue;
        }
        if (rv != CKR_OK) {
            free(ids);
            free(out);
            return jwke_fail_ckr(err, "C_GetTokenInfo", rv);
        }
        jwke_p11_copy_padded(out[i].label, sizeof out[i].label, token_info.label,
                             sizeof token_info.label);
        jwke_p11_copy_padded(out[i].serial, sizeof out[i].serial, token_info.serialNumber,
                             sizeof token_info.serialNumber);
        jwke_p11_copy_padded(out[i].manufacturer, sizeof out[i].manufacturer,
                             token_info.manufacturerID, sizeof token_info.manufacturerID);
        jwke_p11_copy_padded(out[i].model, sizeof out[i].model, token_info.model,
                             sizeof token_info.model);
        out[i].token_flags = token_info.flags;
    }
    free(ids);
    *slots = out;
    *count = n;
    return 0;
}

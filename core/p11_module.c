#include "p11_module.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "lock_order.h"
#include "sigpipe_guard.h"

/* More slots than any device has: a count beyond it is a module's
 * garbage, not something to allocate for. */
#define MAX_SLOTS 65536

typedef struct login_record {
    CK_SLOT_ID slot;
    int sessions;
    int logged_in;
    unsigned char pin_fingerprint[SHA256_DIGEST_LENGTH];
    struct login_record *next;
} login_record;

struct jwke_p11_module {
    char *path;
    char *init_args;          /* CK_C_INITIALIZE_ARGS.pReserved, or NULL */
    pthread_mutex_t lock;     /* guards logins (the login records rank) */
    /* Held for reading by every call into the module and for writing by
     * (re-)initialization and finalization (the module use rank). */
    pthread_rwlock_t use_lock;
    login_record *logins;
    void *library;            /* dlopen handle */
    CK_FUNCTION_LIST_PTR fn;
    int references;
    /* Written under the use lock held for writing, read with atomic loads
     * (jwke_p11_module_check runs before a caller enters). */
    unsigned fork_generation; /* the process generation this state belongs to */
    int initialized_here;     /* our C_Initialize returned CKR_OK in that generation */
    unsigned epoch;           /* bumped by every (re-)initialization */
    struct jwke_p11_module *next;
};

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static jwke_p11_module *modules;

/* Bumped in the child after every fork; nothing else happens there, since
 * only async-signal-safe work is allowed in an atfork child handler. */
static unsigned fork_generation; /* atomic */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    __atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELEASE);
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
    return __atomic_load_n(&fork_generation, __ATOMIC_ACQUIRE);
}

void jwke_p11_fork_lock(void)
{
    jwke_mutex_lock(&modules_lock, JWKE_LOCK_MODULE_LIST);
}

void jwke_p11_fork_unlock(void)
{
    jwke_mutex_unlock(&modules_lock);
}

/* The use lock prefers writers: a re-initialization is not starved by
 * signers on other threads that keep it read-locked in turn. */
static void init_use_lock(jwke_p11_module *m)
{
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&m->use_lock, &attr);
    pthread_rwlockattr_destroy(&attr);
}

static void write_lock(jwke_p11_module *m)
{
    jwke_lock_taking(&m->use_lock, JWKE_LOCK_MODULE_USE);
    pthread_rwlock_wrlock(&m->use_lock);
}

static void write_unlock(jwke_p11_module *m)
{
    pthread_rwlock_unlock(&m->use_lock);
    jwke_lock_released(&m->use_lock);
}

void jwke_p11_module_enter(jwke_p11_module *module)
{
    jwke_lock_taking(&module->use_lock, JWKE_LOCK_MODULE_USE);
    pthread_rwlock_rdlock(&module->use_lock);
}

void jwke_p11_module_leave(jwke_p11_module *module)
{
    pthread_rwlock_unlock(&module->use_lock);
    jwke_lock_released(&module->use_lock);
}

CK_FUNCTION_LIST_PTR jwke_p11_module_fn(const jwke_p11_module *module)
{
    jwke_lock_require(&module->use_lock, "a call into a PKCS#11 module without its use lock "
                                         "(jwke_p11_module_enter)");
    return module->fn;
}

/* Caller holds the use lock for writing (or owns the module alone). */
static CK_RV initialize(jwke_p11_module *m)
{
    /* The module may be called from several threads (a C host, OpenResty's
     * thread pool): let it use the OS's locks. */
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = m->init_args;
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    CK_RV rv = m->fn->C_Initialize(&args);
    jwke_sigpipe_restore(&guard);
    m->initialized_here = rv == CKR_OK;
    __atomic_store_n(&m->fork_generation, jwke_p11_fork_generation(), __ATOMIC_RELEASE);
    __atomic_add_fetch(&m->epoch, 1, __ATOMIC_RELEASE);
    return rv == CKR_CRYPTOKI_ALREADY_INITIALIZED ? CKR_OK : rv;
}
static void finalize(jwke_p11_module *m)
{
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    m->fn->C_Finalize(NULL);
    jwke_sigpipe_restore(&guard);
}

static int load_and_initialize(jwke_p11_module *m, const char *path, jwke_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "PKCS#11 module '%s' cannot be read: %s", path, strerror(errno));

    m->library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!m->library)
        return jwke_fail_code(err, JWKE_ERR_CONFIG, "PKCS#11 module '%s' cannot be loaded: %s", path, dlerror());

    CK_C_GetFunctionList get_function_list =
        (CK_C_GetFunctionList)dlsym(m->library, "C_GetFunctionList");
    if (!get_function_list) {
        jwke_fail_code(err, JWKE_ERR_CONFIG, "'%s' is not a PKCS#11 module: it has no C_GetFunctionList", path);
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

static int same_init_args(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static void free_logins(jwke_p11_module *m)
{
    while (m->logins) {
        login_record *next = m->logins->next;
        OPENSSL_cleanse(m->logins, sizeof *m->logins);
        free(m->logins);
        m->logins = next;
    }
}

static void free_module(jwke_p11_module *m)
{
    free(m->path);
    free(m->init_args);
    free(m);
}

jwke_p11_module *jwke_p11_module_acquire(const char *path, const char *init_args,
                                         jwke_error *err)
{
    pthread_once(&atfork_once, register_atfork);
    jwke_p11_fork_lock();
    jwke_p11_module *m;
    for (m = modules; m; m = m->next) {
        if (strcmp(m->path, path) == 0 && same_init_args(m->init_args, init_args)) {
            m->references++;
            jwke_p11_fork_unlock();
            /* in a forked child, the first use re-initializes */
            if (jwke_p11_module_check(m, err) == 0) {
                jwke_p11_module_release(m);
                return NULL;
            }
            return m;
        }
    }
    m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path)) || (init_args && !(m->init_args = strdup(init_args)))) {
        if (m)
            free_module(m);
        jwke_p11_fork_unlock();
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory loading PKCS#11 module");
        return NULL;
    }
    /* No other thread can see the module yet; the write lock is taken all
     * the same, so that the rule has no exception. C_GetFunctionList may
     * already reach a module's server. */
    pthread_mutex_init(&m->lock, NULL);
    init_use_lock(m);
    write_lock(m);
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    int loaded = load_and_initialize(m, path, err);
    jwke_sigpipe_restore(&guard);
    write_unlock(m);
    if (loaded != 0) {
        pthread_mutex_destroy(&m->lock);
        pthread_rwlock_destroy(&m->use_lock);
        free_module(m);
        jwke_p11_fork_unlock();
        return NULL;
    }
    m->references = 1;
    m->next = modules;
    modules = m;
    jwke_p11_fork_unlock();
    return m;
}

void jwke_p11_module_retain(jwke_p11_module *module)
{
    jwke_p11_fork_lock();
    module->references++;
    jwke_p11_fork_unlock();
}

void jwke_p11_module_release(jwke_p11_module *module)
{
    if (!module)
        return;
    jwke_p11_fork_lock();
    if (--module->references > 0) {
        jwke_p11_fork_unlock();
        return;
    }
    for (jwke_p11_module **p = &modules; *p; p = &(*p)->next) {
        if (*p == module) {
            *p = module->next;
            break;
        }
    }
    /* Finalizing is only ours to do in the process generation that
     * initialized the module: a forked child must leave it alone. Nobody
     * else holds a reference; the write lock keeps the rule all the same.
     * The module list stays locked until the library is finalized and
     * closed: an acquire of the same path that found no module here would
     * otherwise load and initialize it again, as a module object of its
     * own (with a use lock of its own), while this C_Finalize and dlclose
     * run -- and its calls would land in a finalized or unloaded library
     * (the lua_threads crash: jwkengine.slots releasing the last reference
     * while an engine opened, threads.c acquire-release). */
    if (module->initialized_here && jwke_p11_module_is_current(module)) {
        write_lock(module);
        finalize(module);
        write_unlock(module);
        dlclose(module->library);
    }
    jwke_p11_fork_unlock();
    free_logins(module);
    pthread_mutex_destroy(&module->lock);
    pthread_rwlock_destroy(&module->use_lock);
    free_module(module);
}

unsigned jwke_p11_module_check(jwke_p11_module *module, jwke_error *err)
{
    if (jwke_p11_module_is_current(module))
        return __atomic_load_n(&module->epoch, __ATOMIC_ACQUIRE);
    /* First use in a forked child; several threads may get here at once,
     * so the catch-up is done once, under the process-wide lock. */
    jwke_p11_fork_lock();
    CK_RV rv = CKR_OK;
    if (!jwke_p11_module_is_current(module)) {
        /* The locks were copied in whatever state the parent's threads
         * left them; the login records describe the parent's sessions.
         * The new generation is published (by initialize) only once the
         * fresh use lock is written, so no thread of the child enters
         * before. */
        pthread_mutex_init(&module->lock, NULL);
        init_use_lock(module);
        free_logins(module);
        write_lock(module);
        rv = initialize(module);
        write_unlock(module);
    }
    unsigned epoch = __atomic_load_n(&module->epoch, __ATOMIC_ACQUIRE);
    jwke_p11_fork_unlock();
    if (rv != CKR_OK) {
        jwke_fail_ckr(err, "C_Initialize", rv);
        return 0;
    }
    return epoch;
}

int jwke_p11_module_is_current(const jwke_p11_module *module)
{
    return __atomic_load_n(&module->fork_generation, __ATOMIC_ACQUIRE) ==
           jwke_p11_fork_generation();
}

/* Re-initialization holds the use lock for writing across C_Finalize and
 * C_Initialize together: a reader let in between would call a finalized
 * module, which is what crashed SoftHSM (its slot list freed under a
 * listing). It cannot deadlock: the caller holds no lock of the layer (the
 * lock order puts the use lock before every other, checked in Debug
 * builds), readers hold the lock only for calls that end (a borrower
 * waiting for a session waits at most hsm.session_wait_ms), and the lock
 * prefers writers, so steady signing on other threads does not starve it.
 * Tokens that failed together (several threads, several tokens on one
 * module) each ask for it; the epoch they failed in tells the second one
 * that the first already did it, so the module is not finalized again
 * under the sessions the first just opened. */
int jwke_p11_module_reinitialize(jwke_p11_module *module, unsigned failed_epoch,
                                 jwke_error *err)
{
    write_lock(module);
    CK_RV rv = CKR_OK;
    if (module->epoch == failed_epoch) {
        if (module->initialized_here && jwke_p11_module_is_current(module))
            finalize(module);
        rv = initialize(module);
    }
    write_unlock(module);
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

static int list_slots(jwke_p11_module *module, jwke_p11_slot **slots, size_t *count,
                      jwke_error *err)
{
    CK_FUNCTION_LIST_PTR fn = jwke_p11_module_fn(module);
    CK_ULONG n = 0;
    CK_SLOT_ID *ids = NULL;
    CK_RV rv;
    /* The slot count can change between the two calls (hot-plug): retry. */
    for (;;) {
        rv = fn->C_GetSlotList(CK_FALSE, NULL, &n);
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
        rv = fn->C_GetSlotList(CK_FALSE, ids, &n);
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
        rv = fn->C_GetSlotInfo(ids[i], &slot_info);
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
        rv = fn->C_GetTokenInfo(ids[i], &token_info);
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

int jwke_p11_list_slots_entered(jwke_p11_module *module, jwke_p11_slot **slots, size_t *count,
                                jwke_error *err)
{
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    int result = list_slots(module, slots, count, err);
    jwke_sigpipe_restore(&guard);
    return result;
}

int jwke_p11_list_slots(jwke_p11_module *module, jwke_p11_slot **slots, size_t *count,
                        jwke_error *err)
{
    if (jwke_p11_module_check(module, err) == 0)
        return -1;
    jwke_p11_module_enter(module);
    int result = jwke_p11_list_slots_entered(module, slots, count, err);
    jwke_p11_module_leave(module);
    return result;
}

/* The per-process key of PIN fingerprints: random, never stored. */
static unsigned char fingerprint_key[32];
static pthread_once_t fingerprint_key_once = PTHREAD_ONCE_INIT;

static void make_fingerprint_key(void)
{
    RAND_bytes(fingerprint_key, sizeof fingerprint_key);
}

/* HMAC is not told the room: out holds exactly one SHA-256 value */
static void pin_fingerprint(const unsigned char *pin, size_t pin_len,
                            unsigned char out[SHA256_DIGEST_LENGTH])
{
    unsigned int len = 0;
    pthread_once(&fingerprint_key_once, make_fingerprint_key);
    HMAC(EVP_sha256(), fingerprint_key, sizeof fingerprint_key, pin, pin_len, out, &len);
}

/* The login record of a slot; the caller holds module->lock. */
static login_record *find_login_record(jwke_p11_module *module, CK_SLOT_ID slot, int create)
{
    for (login_record *r = module->logins; r; r = r->next)
        if (r->slot == slot)
            return r;
    if (!create)
        return NULL;
    login_record *r = calloc(1, sizeof *r);
    if (r) {
        r->slot = slot;
        r->next = module->logins;
        module->logins = r;
    }
    return r;
}

void jwke_p11_module_track_slot(jwke_p11_module *module, CK_SLOT_ID slot, int delta)
{
    jwke_mutex_lock(&module->lock, JWKE_LOCK_LOGINS);
    login_record *r = find_login_record(module, slot, delta > 0);
    if (r) {
        r->sessions += delta;
        if (r->sessions <= 0) {
            for (login_record **p = &module->logins; *p; p = &(*p)->next) {
                if (*p == r) {
                    *p = r->next;
                    break;
                }
            }
            OPENSSL_cleanse(r, sizeof *r);
            free(r);
        }
    }
    jwke_mutex_unlock(&module->lock);
}

int jwke_p11_module_login(jwke_p11_module *module, CK_SLOT_ID slot,
                          CK_SESSION_HANDLE *session, const unsigned char *pin, size_t pin_len,
                          CK_RV *login_rv, jwke_error *err)
{
    CK_FUNCTION_LIST_PTR fn = jwke_p11_module_fn(module);
    unsigned char fingerprint[SHA256_DIGEST_LENGTH];
    pin_fingerprint(pin, pin_len, fingerprint);
    jwke_mutex_lock(&module->lock, JWKE_LOCK_LOGINS);
    jwke_sigpipe_guard guard;
    jwke_sigpipe_block(&guard);
    CK_RV rv = fn->C_Login(*session, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pin_len);
    if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) {
        /* the login session itself went away: one new one */
        rv = fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, session);
        if (rv == CKR_OK)
            rv = fn->C_Login(*session, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pin_len);
    }
    jwke_sigpipe_restore(&guard);
    login_record *record = find_login_record(module, slot, rv == CKR_OK);
    int result = 0;
    if (rv == CKR_OK) {
        if (record) {
            memcpy(record->pin_fingerprint, fingerprint, sizeof fingerprint);
            record->logged_in = 1;
        }
    } else if (rv == CKR_USER_ALREADY_LOGGED_IN) {
        /* Logged in by another of our engines: only with the same PIN. */
        if (record && record->logged_in &&
            CRYPTO_memcmp(record->pin_fingerprint, fingerprint, sizeof fingerprint) != 0) {
            jwke_fail(err, "C_Login: the token is already logged in by this process with "
                      "another PIN; this PIN was not checked and is refused");
            err->ckr = CKR_PIN_INCORRECT;
            result = -1;
        }
    } else {
        result = jwke_fail_ckr(err, "C_Login", rv);
    }
    jwke_mutex_unlock(&module->lock);
    OPENSSL_cleanse(fingerprint, sizeof fingerprint);
    *login_rv = rv;
    return result;
}

/* Loading a PKCS#11 module and listing its slots.
 *
 * A module is initialized once per process however many engines use it
 * (C_Initialize is process-wide), and finalized when the last one lets go.
 *
 * Fork safety: a pthread_atfork child handler only bumps a process-wide
 * fork generation. The first use of a module in the child notices the new
 * generation, calls C_Initialize again (CKR_CRYPTOKI_ALREADY_INITIALIZED is
 * fine) and bumps the module's epoch, which tells every token that its
 * sessions, login and object handles are gone. Inherited handles are never
 * closed, and C_Finalize is only called by the process generation that
 * initialized the module itself. */
#ifndef JWKE_P11_MODULE_H
#define JWKE_P11_MODULE_H

#include <pthread.h>
#include <stddef.h>
#include "error.h"
#include "pkcs11_header.h"

/* PKCS#11 login state belongs to the process, not the session: while one
 * of our sessions on a slot is logged in, C_Login answers "already logged
 * in" whatever PIN it is given. To keep a second engine with a wrong PIN
 * out, we remember a keyed fingerprint (never the PIN) of the PIN that
 * logged the slot in, for as long as we hold sessions on it. */
typedef struct jwke_p11_login_record {
    CK_SLOT_ID slot;
    int sessions;
    int logged_in;
    unsigned char pin_fingerprint[32];
    struct jwke_p11_login_record *next;
} jwke_p11_login_record;

typedef struct jwke_p11_module {
    char *path;
    pthread_mutex_t lock;     /* guards logins, epoch and re-initialization */
    /* Held for reading by every operation in flight and for writing by a
     * full re-initialization, so C_Finalize never runs under another
     * thread's C_Sign. */
    pthread_rwlock_t use_lock;
    jwke_p11_login_record *logins;
    void *library;            /* dlopen handle */
    CK_FUNCTION_LIST_PTR fn;
    int references;
    unsigned fork_generation; /* the process generation this state belongs to */
    int initialized_here;     /* our C_Initialize returned CKR_OK in that generation */
    unsigned epoch;           /* bumped by every (re-)initialization */
    struct jwke_p11_module *next;
} jwke_p11_module;

typedef struct jwke_p11_slot {
    CK_SLOT_ID id;
    int token_present;
    /* Token fields, blank-trimmed and NUL-terminated (empty without a token). */
    char label[33];
    char serial[17];
    char manufacturer[33];
    char model[17];
    CK_FLAGS token_flags;
    CK_FLAGS slot_flags;
} jwke_p11_slot;

/* Loads (or re-uses) the module at path and initializes it with
 * CKF_OS_LOCKING_OK. Each successful call needs one jwke_p11_module_release. */
jwke_p11_module *jwke_p11_module_acquire(const char *path, jwke_error *err);
void jwke_p11_module_release(jwke_p11_module *module);

/* One more reference to a module already acquired. */
void jwke_p11_module_retain(jwke_p11_module *module);

/* The process's fork generation (bumped in every child). */
unsigned jwke_p11_fork_generation(void);

/* Brings the module up to date with the current process generation: in a
 * forked child, calls C_Initialize again and bumps the epoch. Cheap when
 * nothing changed. Returns the current epoch, or 0 with err set. */
unsigned jwke_p11_module_check(jwke_p11_module *module, jwke_error *err);

/* Serializes the first-use catch-up of modules and tokens in a forked
 * child (several threads of the child may get there at once). */
void jwke_p11_fork_lock(void);
void jwke_p11_fork_unlock(void);

/* Full re-initialization after the device failed (C_Finalize when this
 * process generation initialized it, then C_Initialize); bumps the epoch.
 * Other tokens on the same module follow on their next call. */
int jwke_p11_module_reinitialize(jwke_p11_module *module, jwke_error *err);

/* Every slot (with or without a token), in the module's order. The caller
 * frees *slots. */
int jwke_p11_list_slots(jwke_p11_module *module, jwke_p11_slot **slots, size_t *count,
                        jwke_error *err);

/* Copies a blank-padded PKCS#11 string field into a C string of at most
 * dst_size bytes (terminator included). */
void jwke_p11_copy_padded(char *dst, size_t dst_size, const unsigned char *src, size_t src_len);

#endif

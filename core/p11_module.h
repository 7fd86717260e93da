/* A loaded PKCS#11 module: the first layer of the object model
 * (module -> slots -> token -> sessions -> keys), opaque outside
 * p11_module.c.
 *
 * A module is loaded and initialized once per process however many
 * engines use it (C_Initialize is process-wide), and finalized when the
 * last reference goes. Listing slots and opening a token on the same
 * module object therefore never initializes twice.
 *
 * Fork safety: a pthread_atfork child handler only bumps a process-wide
 * fork generation. jwke_p11_module_check, the one catch-up of a module,
 * notices the new generation on the first use in the child, calls
 * C_Initialize again (CKR_CRYPTOKI_ALREADY_INITIALIZED is fine) and bumps
 * the module's epoch, which tells every token that its sessions, login and
 * object handles are gone. Inherited handles are never closed, and
 * C_Finalize is only called by the process generation that initialized
 * the module itself.
 *
 * PKCS#11 login state belongs to the process, not the session: while one
 * of our sessions on a slot is logged in, C_Login answers "already logged
 * in" whatever PIN it is given. To keep a second engine with a wrong PIN
 * out, the module remembers per slot a keyed fingerprint (never the PIN) of
 * the PIN that logged it in, for as long as tokens are open on it. */
#ifndef JWKE_P11_MODULE_H
#define JWKE_P11_MODULE_H

#include <stddef.h>
#include "error.h"
#include "pkcs11_header.h"

typedef struct jwke_p11_module jwke_p11_module;

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
 * CKF_OS_LOCKING_OK; init_args (may be NULL) goes to the module as
 * CK_C_INITIALIZE_ARGS.pReserved, as NSS softokn wants its configuration.
 * The same path with other init_args is another module object. Each
 * successful call needs one jwke_p11_module_release. */
jwke_p11_module *jwke_p11_module_acquire(const char *path, const char *init_args,
                                         jwke_error *err);
void jwke_p11_module_release(jwke_p11_module *module);

/* One more reference to a module already acquired. */
void jwke_p11_module_retain(jwke_p11_module *module);

/* The one rule of calls into a module: no C_* function runs without the
 * module's use lock held for reading, and re-initialization holds it for
 * writing, so C_Finalize never runs under another thread's call (SoftHSM
 * frees what a listing in another thread is reading; p11-kit's client
 * closes the socket it is writing to). jwke_p11_module_enter takes it, and
 * the function list is reachable only through jwke_p11_module_fn, which
 * Debug and sanitizer builds check is called between enter and leave (see
 * lock_order.h). Not re-entrant: a caller that is inside already (the
 * operations jwke_p11_run runs, a token's reset) uses what it has. */
void jwke_p11_module_enter(jwke_p11_module *module);
void jwke_p11_module_leave(jwke_p11_module *module);
CK_FUNCTION_LIST_PTR jwke_p11_module_fn(const jwke_p11_module *module);

/* The process's fork generation (bumped in every child). */
unsigned jwke_p11_fork_generation(void);

/* Serializes the first-use catch-up of modules and tokens in a forked
 * child (several threads of the child may get there at once). */
void jwke_p11_fork_lock(void);
void jwke_p11_fork_unlock(void);

/* Brings the module up to date with the current process generation: in a
 * forked child, calls C_Initialize again and bumps the epoch. Cheap when
 * nothing changed (atomic loads). Returns the current epoch, or 0 with err
 * set. Called before jwke_p11_module_enter: its catch-up takes the module
 * list lock and writes the use lock. */
unsigned jwke_p11_module_check(jwke_p11_module *module, jwke_error *err);

/* Whether the module's state belongs to this process generation (a forked
 * child that has not caught up yet must not touch inherited handles). */
int jwke_p11_module_is_current(const jwke_p11_module *module);

/* Full re-initialization after the device failed in failed_epoch
 * (C_Finalize when this process generation initialized it, then
 * C_Initialize); bumps the epoch. Done at most once per epoch: when another
 * thread re-initialized since, that is the fresh start asked for and
 * nothing more is done. The caller holds no lock of the layer (it waits
 * for every call in flight). Other tokens on the module follow on their
 * next call. */
int jwke_p11_module_reinitialize(jwke_p11_module *module, unsigned failed_epoch,
                                 jwke_error *err);

/* Every slot (with or without a token), in the module's order. The caller
 * frees *slots. jwke_p11_list_slots enters the module itself;
 * jwke_p11_list_slots_entered is for a caller already inside. */
int jwke_p11_list_slots(jwke_p11_module *module, jwke_p11_slot **slots, size_t *count,
                        jwke_error *err);
int jwke_p11_list_slots_entered(jwke_p11_module *module, jwke_p11_slot **slots, size_t *count,
                                jwke_error *err);

/* Counts the tokens open on a slot; when the last one closes, the slot's
 * login record goes (the token logs out, PKCS#11 §5.6). */
void jwke_p11_module_track_slot(jwke_p11_module *module, CK_SLOT_ID slot, int delta);

/* (Called between enter and leave.) CKU_USER login of *session on slot, reopening *session once when it is
 * gone. An "already logged in" answer is success only when the same PIN
 * logged the slot in (by fingerprint); otherwise it fails as
 * CKR_PIN_INCORRECT without the PIN being checked. *login_rv is what
 * C_Login answered, so the caller can tell a refused PIN. */
int jwke_p11_module_login(jwke_p11_module *module, CK_SLOT_ID slot,
                          CK_SESSION_HANDLE *session, const unsigned char *pin, size_t pin_len,
                          CK_RV *login_rv, jwke_error *err);

/* Copies a blank-padded PKCS#11 string field into a C string of at most
 * dst_size bytes (terminator included). */
void jwke_p11_copy_padded(char *dst, size_t dst_size, const unsigned char *src, size_t src_len);

#endif

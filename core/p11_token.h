/* A token in use: a pool of sessions, the login, and recovery.
 *
 * Sessions: a dedicated login session is opened first and never handed
 * out, so the login outlives every pooled session. Operations borrow
 * sessions from a bounded LIFO pool (most recently used first, the one most
 * likely to be warm); a borrower waits a bounded time for a free one. When
 * the token answers CKR_SESSION_COUNT the pool learns the lower limit. A
 * session goes back to the pool only after a fully successful operation;
 * after any failure it is closed, so no session is ever reused with an
 * operation still active.
 *
 * Recovery (jwke_p11_run): an operation that fails with a recoverable code
 * is retried once after the matching repair:
 *   CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED  -> a new session
 *   CKR_USER_NOT_LOGGED_IN                          -> log in again
 *   CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID -> find the object again
 *   CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT,
 *   CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR  -> full re-initialization,
 *                                                      at most once per interval
 * Anything else fails at once. Each recovery is counted and queued as one
 * log event (never with a secret in it).
 *
 * PIN hygiene: the PIN lives in one locked, wiped-on-free buffer, needed
 * for logging in again after a fork or a device reset. A PIN the token
 * refused is never tried again, and no login is attempted while the token
 * says the PIN is locked, on its final try, or must be changed. */
#ifndef JWKE_P11_TOKEN_H
#define JWKE_P11_TOKEN_H

#include <pthread.h>
#include <stddef.h>
#include <openssl/evp.h>

#include "alg.h"
#include "error.h"
#include "p11_module.h"
#include "pin_source.h"

#define JWKE_MAX_ID_LEN 128
#define JWKE_POOL_LIMIT 64
#define JWKE_EVENT_QUEUE 16

enum jwke_recovery { JWKE_RECOVER_NONE, JWKE_RECOVER_SESSION, JWKE_RECOVER_LOGIN,
                     JWKE_RECOVER_OBJECT, JWKE_RECOVER_REINIT, JWKE_RECOVER_CLASSES };

typedef struct jwke_p11_stats {
    unsigned long recoveries[JWKE_RECOVER_CLASSES]; /* by class; [0] unused */
    unsigned long failed_recoveries;
    unsigned long sessions_opened;
    unsigned long session_waits;
    int sessions_open;   /* pooled sessions open now (login session excluded) */
    int max_sessions;    /* current limit, possibly learned from the token */
} jwke_p11_stats;

typedef struct jwke_p11_token {
    jwke_p11_module *module;
    CK_SLOT_ID slot;
    char label[33];        /* to find the token again after a re-insertion */
    char serial[17];

    pthread_mutex_t lock;  /* guards everything below */
    pthread_cond_t session_free;
    unsigned fork_generation;
    unsigned epoch;        /* module epoch our sessions and login belong to */
    unsigned object_epoch; /* bumped whenever cached object handles go stale */
    CK_SESSION_HANDLE login_session;
    int have_login_session;
    unsigned login_session_epoch; /* module epoch the login session was opened in */
    CK_SESSION_HANDLE idle[JWKE_POOL_LIMIT];
    int idle_count;
    int open_count;        /* pooled sessions open (idle + borrowed) */
    int max_sessions;
    int session_wait_ms;
    int reinit_interval_ms;
    long long last_reinit_ms;

    unsigned char *pin;    /* locked memory, wiped on free */
    size_t pin_len;
    int pin_refused;       /* the token said CKR_PIN_INCORRECT: never again */

    jwke_p11_stats stats;
    char events[JWKE_EVENT_QUEUE][160];
    int event_count;
    unsigned tracked_generation; /* generation whose login record counts us */
    int closed;
} jwke_p11_token;

enum jwke_key_use { JWKE_USE_SIG = 1, JWKE_USE_ENC = 2 };

/* One key pair of a set, mapped to what a JWK needs. */
typedef struct jwke_p11_key {
    unsigned char id[JWKE_MAX_ID_LEN]; /* CKA_ID: the kid */
    size_t id_len;
    char *label;                       /* CKA_LABEL, to find the key again */
    size_t label_len;
    CK_OBJECT_HANDLE private_handle;
    CK_OBJECT_HANDLE public_handle;
    unsigned object_epoch;             /* token object epoch of the handles */
    const jwke_alg *alg;               /* RS256, ES256, ES384, ES512 or EdDSA */
    enum jwke_key_use use;
    int bits;                          /* RSA modulus size */
    EVP_PKEY *public_key;              /* built from the public half */
} jwke_p11_key;

typedef struct jwke_p11_options {
    /* 0 for the defaults, JWKE_POOL_* in engine_limits.h */
    int max_sessions;        /* pool bound */
    int session_wait_ms;     /* how long a borrower waits */
    int reinit_interval_ms;  /* minimum time between full re-inits */
} jwke_p11_options;

/* Opens the token: takes a module reference, opens the login session.
 * label/serial identify it again after a device reset. */
jwke_p11_token *jwke_p11_token_open(jwke_p11_module *module, CK_SLOT_ID slot, const char *label,
                                    const char *serial, const jwke_p11_options *options,
                                    jwke_error *err);
/* Closes sessions (only those of this process generation) and frees. */
void jwke_p11_token_close(jwke_p11_token *token);

/* CKU_USER login with a PIN (copied into locked memory for re-login). */
int jwke_p11_login(jwke_p11_token *token, const char *pin, size_t pin_len, jwke_error *err);

/* The same with the PIN written by fill straight into the locked buffer
 * (see pin_source.h), so it never needs a copy elsewhere. */
int jwke_p11_login_from(jwke_p11_token *token, jwke_pin_fill fill, const void *ctx,
                        jwke_error *err);

/* The same with the PIN read from a file (one line; a trailing newline is
 * dropped). The PIN never passes through Lua. */
int jwke_p11_login_file(jwke_p11_token *token, const char *path, jwke_error *err);

/* Copies the counters. */
void jwke_p11_token_stats(jwke_p11_token *token, jwke_p11_stats *out);

/* Takes the queued log events (recoveries), oldest first; returns count. */
int jwke_p11_take_events(jwke_p11_token *token, char (*out)[160], int max);

/* The generic runner: borrows a session, calls op, returns the session, and
 * on a recoverable failure repairs and calls op once more. op returns the
 * CK_RV of its first failing call and names it in *function (or
 * JWKE_OP_FAILED with err filled for failures that are not PKCS#11 codes).
 * An op using cached object handles compares token->object_epoch with the
 * epoch of its handles and finds them again when they differ. */
typedef CK_RV (*jwke_p11_op)(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                             const char **function, jwke_error *err);
int jwke_p11_run(jwke_p11_token *token, jwke_p11_op op, void *ctx, jwke_error *err);

/* Every object matching the template, on the given session. A token that
 * reports more handles than asked for fails with JWKE_OP_FAILED, err said. */
CK_RV jwke_p11_find(jwke_p11_token *token, CK_SESSION_HANDLE session, CK_ATTRIBUTE *template,
                    CK_ULONG template_len, CK_OBJECT_HANDLE **found, size_t *count,
                    const char **function, jwke_error *err);

/* Reads every key pair labelled `label` (one object search, one attribute
 * read per object), or only the pair with CKA_ID `id` when id is not NULL. Pairs are matched by CKA_ID; a half without its partner,
 * an unsupported key type or an RSA key under min_rsa_bits fails the whole
 * load with a message naming the kid. *count is 0 when the set is empty.
 * Free with jwke_p11_keys_free. */
int jwke_p11_load_set(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, int min_rsa_bits,
                      jwke_p11_key **keys, size_t *count, jwke_error *err);
void jwke_p11_key_clear(jwke_p11_key *key);
void jwke_p11_keys_free(jwke_p11_key *keys, size_t count);

/* Generates a pair for alg (RS256: RSA 4096, e = 65537; ES256/ES384/ES512;
 * EdDSA: Ed25519), private half sensitive and not extractable, with exactly
 * one of CKA_SIGN / CKA_DECRYPT. Generation is serialized within the
 * process. */
int jwke_p11_generate(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, const jwke_alg *alg,
                      enum jwke_key_use use, int rsa_bits, jwke_error *err);

/* Gives both halves of the pair (label, old_id) the CKA_ID new_id: how a
 * new key gets a kid that depends on its public key (an RFC 7638
 * thumbprint). *changed is how many objects took the new id. */
int jwke_p11_set_id(jwke_p11_token *token, const char *label, size_t label_len,
                    const unsigned char *old_id, size_t old_id_len, const unsigned char *new_id,
                    size_t new_id_len, size_t *changed, jwke_error *err);

/* Destroys every object labelled `label` (and with CKA_ID `id`, when id is
 * not NULL). *destroyed is how many objects went. */
int jwke_p11_delete(jwke_p11_token *token, const char *label, size_t label_len,
                    const unsigned char *id, size_t id_len, size_t *destroyed, jwke_error *err);

/* What C_Sign gets for an algorithm: the mechanism and the data (the
 * host-computed digest, with a DigestInfo prefix for RS*, or the input
 * itself for EdDSA). `data` may point into `buffer` or at the input. */
typedef struct jwke_p11_prepared {
    CK_MECHANISM mechanism;
    CK_RSA_PKCS_PSS_PARAMS pss;
    unsigned char buffer[JWKE_DIGEST_INFO_MAX + JWKE_DIGEST_MAX];
    const unsigned char *data;
    size_t data_len;
} jwke_p11_prepared;

int jwke_p11_prepare_sign(const jwke_alg *alg, const unsigned char *input, size_t input_len,
                          jwke_p11_prepared *out, jwke_error *err);

/* Signs input with the key's private half: hashing happens on the host
 * where the mechanism allows it; the result is in JWS form (raw R || S for
 * ECDSA). The key's handle is found again when stale. *sig_len is the size
 * of sig on the way in, the signature's on the way out; a length the token
 * reports that does not fit sig, or is not the algorithm's size, fails. */
int jwke_p11_sign(jwke_p11_token *token, jwke_p11_key *key, const jwke_alg *alg,
                  const unsigned char *input, size_t input_len, unsigned char *sig,
                  size_t *sig_len, jwke_error *err);

#endif

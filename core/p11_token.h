/* A session with one token: login, object search, key sets, generation,
 * deletion and signing.
 *
 * The engine keeps one read-write session per token for key management and
 * signing, guarded by a mutex so a multi-threaded host cannot interleave two
 * operations on it. */
#ifndef JWKE_P11_TOKEN_H
#define JWKE_P11_TOKEN_H

#include <pthread.h>
#include <stddef.h>
#include <openssl/evp.h>

#include "alg.h"
#include "error.h"
#include "p11_module.h"

typedef struct jwke_p11_token {
    jwke_p11_module *module;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session;
    int open;
    pthread_mutex_t lock;
} jwke_p11_token;

enum jwke_key_use { JWKE_USE_SIG = 1, JWKE_USE_ENC = 2 };

#define JWKE_MAX_ID_LEN 128

/* One key pair of a set, mapped to what a JWK needs. */
typedef struct jwke_p11_key {
    unsigned char id[JWKE_MAX_ID_LEN]; /* CKA_ID: the kid */
    size_t id_len;
    CK_OBJECT_HANDLE private_handle;
    CK_OBJECT_HANDLE public_handle;
    const jwke_alg *alg;               /* RS256, ES256, ES384, ES512 or EdDSA */
    enum jwke_key_use use;
    int bits;                          /* RSA modulus size */
    EVP_PKEY *public_key;              /* built from the public half */
} jwke_p11_key;

/* Opens a read-write session on slot. Takes its own module reference. */
jwke_p11_token *jwke_p11_token_open(jwke_p11_module *module, CK_SLOT_ID slot, jwke_error *err);
void jwke_p11_token_close(jwke_p11_token *token);

/* CKU_USER login; "already logged in" is success. The PIN is only passed
 * to C_Login and never copied or reported. */
int jwke_p11_login(jwke_p11_token *token, const char *pin, size_t pin_len, jwke_error *err);

/* Reads every key pair labelled `label` (one object search, one attribute
 * read per object). Pairs are matched by CKA_ID; a half without its partner,
 * an unsupported key type or an RSA key under min_rsa_bits fails the whole
 * load with a message naming the kid. *count is 0 when the set is empty.
 * Free with jwke_p11_keys_free. */
int jwke_p11_load_set(jwke_p11_token *token, const char *label, size_t label_len,
                      int min_rsa_bits, jwke_p11_key **keys, size_t *count, jwke_error *err);
void jwke_p11_keys_free(jwke_p11_key *keys, size_t count);

/* Generates a pair for alg (RS256: RSA 4096, e = 65537; ES256/ES384/ES512;
 * EdDSA: Ed25519), private half sensitive and not extractable, with exactly
 * one of CKA_SIGN / CKA_DECRYPT. Generation is serialized within the
 * process. */
int jwke_p11_generate(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, const jwke_alg *alg,
                      enum jwke_key_use use, int rsa_bits, jwke_error *err);

/* Destroys every object labelled `label` (and with CKA_ID `id`, when id is
 * not NULL). *destroyed is how many objects went. */
int jwke_p11_delete(jwke_p11_token *token, const char *label, size_t label_len,
                    const unsigned char *id, size_t id_len, size_t *destroyed, jwke_error *err);

/* Signs input with the private key: hashing happens on the host where the
 * mechanism allows it; the result is in JWS form (raw R || S for ECDSA). */
int jwke_p11_sign(jwke_p11_token *token, CK_OBJECT_HANDLE private_handle, const jwke_alg *alg,
                  const unsigned char *input, size_t input_len, unsigned char *sig,
                  size_t *sig_len, jwke_error *err);

/* Internal to the core: every object matching the template (handles
 * malloc'd into *found). The caller holds token->lock. */
int jwke_p11_find(jwke_p11_token *token, CK_ATTRIBUTE *template, CK_ULONG template_len,
                  CK_OBJECT_HANDLE **found, size_t *count, jwke_error *err);

#endif

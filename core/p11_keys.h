/* Key sets on a token: finding objects, reading pairs (mapped to JWK-ready
 * keys by p11_map.c), generating, renaming and deleting them. */
#ifndef JWKE_P11_KEYS_H
#define JWKE_P11_KEYS_H

#include <stddef.h>
#include <openssl/evp.h>

#include "alg.h"
#include "error.h"
#include "p11_token.h"

#define JWKE_MAX_ID_LEN 128

enum jwke_key_use { JWKE_USE_SIG = 1, JWKE_USE_ENC = 2 };

/* One key pair of a set, mapped to what a JWK needs. Opaque: its fields
 * are the core's (p11_key_struct.h); the binding and hosts read it through
 * the functions below. */
typedef struct jwke_p11_key jwke_p11_key;

/* The kid (CKA_ID), len bytes. */
const unsigned char *jwke_p11_key_id(const jwke_p11_key *key, size_t *len);
/* RS256, ES256, ES384, ES512 or EdDSA: the algorithm the pair was made for. */
const jwke_alg *jwke_p11_key_alg(const jwke_p11_key *key);
enum jwke_key_use jwke_p11_key_use(const jwke_p11_key *key);
/* 1 when retired on the key itself as loaded: a signing pair whose private
 * half has CKA_SIGN false (and, RSA, CKA_DECRYPT false). It keeps use sig
 * and is loaded, but never signs and is never published, and the token
 * itself refuses C_SignInit on it (jwke_p11_set_sign). */
int jwke_p11_key_retired(const jwke_p11_key *key);
/* The public half as an EVP_PKEY, owned by the key. */
EVP_PKEY *jwke_p11_key_public(const jwke_p11_key *key);
/* DER of the pair's X.509 certificate (p11_cert.h) or NULL; *problem is
 * why a certificate beside the pair is not used, or NULL. */
const unsigned char *jwke_p11_key_certificate(const jwke_p11_key *key, size_t *len,
                                              const jwke_error **problem);
/* Whether the key signs with alg (NULL: its own, which *alg then names)
 * and *sig_max, the largest signature it makes: 0, or -1 with err
 * (ERR_JWS_SIGN for an encryption key or an alg that does not fit,
 * ERR_KEY_STATE for a key retired on the token). */
int jwke_p11_key_signing(const jwke_p11_key *key, const jwke_alg **alg, size_t *sig_max,
                         jwke_error *err);
/* jwke_p11_set_sign on this key's pair, found again by label and kid (its
 * handles may be stale). */
int jwke_p11_key_set_sign(jwke_p11_token *token, const jwke_p11_key *key, int allowed,
                          size_t *changed, jwke_error *err);
/* Moves key i of a loaded set to a key of its own (NULL when out of
 * memory), which jwke_p11_key_free releases; jwke_p11_keys_free still
 * frees the set. */
jwke_p11_key *jwke_p11_keys_take(jwke_p11_key *keys, size_t i);
void jwke_p11_key_free(jwke_p11_key *key);

/* Every object matching the template, on the given session (inside a
 * jwke_p11_run operation). A token that reports more handles than asked
 * for fails with JWKE_OP_FAILED, err said. */
CK_RV jwke_p11_find(jwke_p11_token *token, CK_SESSION_HANDLE session, CK_ATTRIBUTE *template,
                    CK_ULONG template_len, CK_OBJECT_HANDLE **found, size_t *count,
                    const char **function, jwke_error *err);

/* Why a search on the session may have missed private objects: the token
 * logged out (a token that closed every idle session, as YubiHSM 2 does
 * after 30 s, is logged out when the next one opens, and its searches then
 * answer CKR_OK without the private keys) -- CKR_USER_NOT_LOGGED_IN, which
 * jwke_p11_run repairs by logging in and running the operation again -- or
 * the session closed. CKR_OK when it is logged in, cannot say, or the token
 * keeps no PIN to log in with. */
CK_RV jwke_p11_private_hidden(jwke_p11_token *token, CK_SESSION_HANDLE session);

/* Reads every key pair labelled `label` (one object search, one attribute
 * read per object), or only the pair with CKA_ID `id` when id is not NULL.
 * Pairs are matched by CKA_ID; a half without its partner, an unsupported
 * key type or an RSA key under min_rsa_bits fails the whole load with a
 * message naming the kid. *count is 0 when the set is empty. Free with
 * jwke_p11_keys_free (p11_map.h). */
int jwke_p11_load_set(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, int min_rsa_bits,
                      jwke_p11_key **keys, size_t *count, jwke_error *err);

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

/* Sets CKA_SIGN to `allowed` on the private half of the pair (label, id):
 * how retirement is written on the key itself, so that it holds whatever
 * happens to the set's records (false), and how activation undoes it
 * (true). *changed is how many private objects took it (0: no such pair).
 * A token that will not change the attribute (CKR_ATTRIBUTE_READ_ONLY,
 * CKR_ACTION_PROHIBITED, ...) fails with ERR_KEY_MARK_REFUSED. */
int jwke_p11_set_sign(jwke_p11_token *token, const char *label, size_t label_len,
                      const unsigned char *id, size_t id_len, int allowed, size_t *changed,
                      jwke_error *err);

/* Destroys every object labelled `label` (and with CKA_ID `id`, when id is
 * not NULL). *destroyed is how many objects went. */
int jwke_p11_delete(jwke_p11_token *token, const char *label, size_t label_len,
                    const unsigned char *id, size_t id_len, size_t *destroyed, jwke_error *err);

#endif

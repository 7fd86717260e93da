/* Shared by the Lua binding files: error returns, classes, and the pieces
 * that HSM keys, software keys and public keys have in common. */
#ifndef JWKE_LUA_COMMON_H
#define JWKE_LUA_COMMON_H

#include <openssl/evp.h>

#include "alg.h"
#include "error.h"
#include "jws.h"
#include "lua_compat.h"

#define JWKE_MODULE_CLASS "jwkengine.module"
#define JWKE_TOKEN_CLASS "jwkengine.token"
#define JWKE_KEY_CLASS "jwkengine.key" /* whatever holds it (lua_key.c) */
#define JWKE_PUBLIC_KEY_CLASS "jwkengine.public_key"

/* The one way the binding reports a failure: pushes nil, message, code
 * (err->code, else the CKR name of a PKCS#11 failure, else
 * JWKE_ERR_INTERNAL, which no reachable failure gets). Returns 3. */
int jwke_push_error(lua_State *L, const jwke_error *err);

/* A core call's outcome (rc 0, or -1 with err) as the binding answers it:
 * true | nil, err, code; or the count of what it did | nil, err, code. */
int jwke_push_done(lua_State *L, int rc, const jwke_error *err);
int jwke_push_count(lua_State *L, int rc, size_t count, const jwke_error *err);

/* Arguments that come from data (a set name or kid read from a store or
 * a token, a record's JSON, a sealed row, a file): a missing or mistyped
 * one is answered nil, err, ERR_INVALID_ARGUMENT, never raised, so nothing
 * a store or a token holds can raise out of the binding. Each returns 0
 * when the argument is usable, else pushes that failure and returns
 * JWKE_ARG_REFUSED, the count the caller returns: `if (jwke_arg_string(...))
 * return JWKE_ARG_REFUSED;`. A string argument takes a string or a number
 * (as Lua converts it); an optional one also nil or none (*s NULL, *len 0).
 * `name` is what the message calls it. */
#define JWKE_ARG_REFUSED 3
int jwke_arg_string(lua_State *L, int arg, const char *name, int optional, const char **s,
                    size_t *len);
/* The same for a string C reads up to its NUL (a path, a name): one that
 * holds a NUL byte is refused too. */
int jwke_arg_text(lua_State *L, int arg, const char *name, const char **s);
/* An integer (or an integral float) in [min, max]; nil or none gives
 * `fallback`. */
int jwke_arg_integer(lua_State *L, int arg, const char *name, lua_Integer fallback,
                     lua_Integer min, lua_Integer max, lua_Integer *out);
/* Pushes nil, "<name>: <why>", ERR_INVALID_ARGUMENT; returns JWKE_ARG_REFUSED. */
int jwke_arg_refused(lua_State *L, const char *name, const char *why);

/* Creates a class metatable named `name` whose __index holds methods and
 * whose __gc is gc (every class frees what its objects hold). */
void jwke_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc);

/* The class name's metatable also kept under a light userdata key (id's
 * address), and self (argument 1) checked against it: luaL_checkudata's
 * lookup by name costs ~300 instructions, twice per token (sign_timed,
 * token:events). A wrong self raises as luaL_checkudata does. */
void jwke_class_id(lua_State *L, const char *name, const void *id);
void *jwke_check_self(lua_State *L, const void *id, const char *name);

/* The algorithm named by argument `arg`, or a Lua error for unknown names
 * (a programming error, not an operational failure). */
const jwke_alg *jwke_check_alg(lua_State *L, int arg);

/* Pushes a table with the public JWK members of pkey (kty, n/e or crv/x/y). */
int jwke_push_public_members(lua_State *L, const EVP_PKEY *pkey, jwke_error *err);

/* Adds x5c (one certificate, standard base64) and x5t#S256 of an X.509
 * certificate's DER to the JWK table on top of the stack. */
void jwke_push_certificate_members(lua_State *L, const unsigned char *der, size_t len);

/* key:self_signed_certificate(subject, days) -> DER | nil, err, code for
 * any key class: subject and days are arguments 2 and 3; sign/signer make
 * the signature with alg (jwke_x509_signature_alg, x509_cert.h). */
int jwke_push_self_signed(lua_State *L, const EVP_PKEY *pub, const jwke_alg *alg, jwke_sign_fn sign,
                          void *signer);

/* Pushes a new public-key object sharing pkey (takes its own reference). */
void jwke_push_public_key(lua_State *L, EVP_PKEY *pkey);

/* Pushes "RSA", "EC", "OKP" (or nil for another type). */
int jwke_push_kty(lua_State *L, const EVP_PKEY *pkey);
/* key:fits(alg [, min_rsa_bits]): the key object at 1, alg at 2, the
 * minimum at 3 (default_min_bits when absent). Pushes true | false, why. */
int jwke_push_fits(lua_State *L, const EVP_PKEY *pkey, int default_min_bits);

/* A key class's signing set-up: readies `signer` for the algorithm at
 * alg_arg and sets *sig_max, the largest signature it makes; 0, or -1 with
 * err when the key cannot sign with it. */
typedef int (*jwke_signing_setup)(lua_State *L, int alg_arg, void *signer, size_t *sig_max,
                                  jwke_error *err);

/* key:sign(input, alg): pushes the signature bytes | nil, err, code. */
int jwke_push_signature(lua_State *L, jwke_signing_setup setup, jwke_sign_fn sign, void *signer);

/* key:sign_compact(header_b64, payload, alg): pushes the compact JWS
 * | nil, err, code; timed: the JWS and the seconds signing took
 * (CLOCK_MONOTONIC, the metrics' histogram: no clock call from Lua). */
int jwke_push_compact(lua_State *L, jwke_signing_setup setup, jwke_sign_fn sign, void *signer,
                      int timed);

/* ---- the one key class (lua_key.c) -----------------------------------
 * A key object is the same Lua class whatever holds the key: a token (an
 * HSM key, lua_token.c) or OpenSSL in this process (a software key,
 * lua_swkey.c). The class's methods are written once; what differs is the
 * holder, a table of functions on the holder's state, which lives inside
 * the key object. A method a holder cannot do (no function) answers nil,
 * err, ERR_KEY_USE. */

/* What a key is, as its holder knows it. */
typedef struct jwke_key_facts {
    const unsigned char *kid; /* NULL: bound to none (a software key's row holds it) */
    size_t kid_len;
    const jwke_alg *alg;      /* NULL: signs with any alg that fits */
    const char *use;          /* "sig", "enc" or NULL */
    int is_private;
    EVP_PKEY *public_key;     /* never NULL */
} jwke_key_facts;

/* What sign hands to a holder's sign function: its state and the alg. */
typedef struct jwke_key_signer {
    void *state;
    const jwke_alg *alg;
} jwke_key_signer;

typedef struct jwke_key_holder {
    const char *name;     /* "HSM" or "software", in messages */
    size_t state_size;    /* bytes of state in the key object, zeroed at first */
    int default_min_bits; /* key:fits's minimum RSA size when none is given */
    /* Fills facts: 0, or -1 for an empty or released key (raised). */
    int (*facts)(const void *state, jwke_key_facts *out);
    /* Whether the key signs with *alg (NULL: its own, which *alg then
     * names) and *sig_max: 0, or -1 with err. The hot path: per token. */
    int (*signing)(void *state, const jwke_alg **alg, size_t *sig_max, jwke_error *err);
    /* signer is a jwke_key_signer; the signature is made by whatever holds the key */
    jwke_sign_fn sign;
    void (*clear)(void *state); /* __gc: releases what the state holds */
    /* Optional: NULL when the holder cannot. */
    const unsigned char *(*certificate)(const void *state, size_t *len,
                                        const jwke_error **problem);
    int (*retired)(const void *state);
    int (*set_sign)(void *state, int allowed, size_t *changed, jwke_error *err);
    /* pushes the private JWK, or nil, err, code */
    int (*push_private_jwk)(lua_State *L, void *state);
} jwke_key_holder;

/* Pushes a new key object held by holder, with one user value (nil) for
 * the holder to keep what the key needs alive; returns its state. */
void *jwke_new_key_object(lua_State *L, const jwke_key_holder *holder);
/* The state of the key object at idx when holder holds it, else NULL. */
void *jwke_key_state(lua_State *L, int idx, const jwke_key_holder *holder);
void jwke_open_key(lua_State *L); /* the key class */

/* Pushes a base64url (no padding) string of bytes. */
void jwke_push_b64url(lua_State *L, const unsigned char *bytes, size_t len);

/* For C code that shares the process with the binding (the benchmark's raw
 * baselines, C hosts): the C objects behind Lua key objects, or NULL when
 * the value at idx is something else. */
struct jwke_swkey;
struct jwke_p11_token;
struct jwke_p11_key;
struct jwke_swkey *jwke_lua_software_key(lua_State *L, int idx);
struct jwke_p11_key *jwke_lua_hsm_key(lua_State *L, int idx, struct jwke_p11_token **token);

void jwke_open_module(lua_State *L);     /* adds load_module, slots */
void jwke_open_token(lua_State *L);      /* adds env_is_set and the token class */
/* Pushes a token object (closed until the returned slot is filled). */
struct jwke_p11_token **jwke_new_token_object(lua_State *L);
void jwke_open_public_key(lua_State *L); /* adds public_key */
/* adds generate_software_key, import_jwk, import_pem, aes_gcm_seal, aes_gcm_open,
 * aes_gcm_reseal, open_sealed_key, sealed_key_mark */
void jwke_open_software_key(lua_State *L);
void jwke_open_jose(lua_State *L);
void jwke_open_kept_secret(lua_State *L); /* adds keep_pin, keep_uri_pin, keep_secret, kept_secret, forget_* */
void jwke_open_file_lock(lua_State *L);  /* adds try_lock_file */
void jwke_open_json(lua_State *L);         /* adds json_claims, check_claim_types */

#endif

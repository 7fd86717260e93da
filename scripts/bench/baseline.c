/* The floor the benchmark measures jwkengine against: the raw calls on the
 * same keys, in the same process, with nothing of the engine around them.
 *
 *   require("jwkengine_bench")
 *   p11_sign(hsm_key, alg, input, seconds)       -> operations per second
 *       one C_SignInit + one C_Sign per signature on a session of its own,
 *       over the digest (DigestInfo for RS*, the input itself for EdDSA)
 *   evp_sign(software_key, alg, input, seconds)  -> operations per second
 *   evp_verify(software_key, alg, input, signature, seconds) -> ops/s
 *       EVP_DigestSign / EVP_DigestVerify, contexts set up per operation
 *       exactly as a careful caller would
 *   p11_load(hsm_key, label)                     -> ms, objects
 *       the raw floor of loading a set: one search, one attribute read
 *       per object
 *   rss_kb()                                     -> resident memory
 *   now()                                        -> monotonic seconds
 *
 * The key objects come from the engine (jwke_lua_hsm_key and
 * jwke_lua_software_key, exported by the runner), so both sides use the
 * very same key. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "evp_sig.h"
#include "lua_common.h"
#include "p11_keys.h"
#include "p11_key_struct.h"
#include "p11_sign.h"
#include "p11_token.h"
#include "swkey.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs body until `seconds` have passed; checks the clock every 16 ops. */
#define TIMED_LOOP(seconds, ops, body)                                            \
    do {                                                                         \
        double start_ = now(), elapsed_ = 0;                                     \
        (ops) = 0;                                                               \
        while (elapsed_ < (seconds)) {                                           \
            for (int i_ = 0; i_ < 16; i_++) {                                    \
                body;                                                            \
                (ops)++;                                                         \
            }                                                                    \
            elapsed_ = now() - start_;                                           \
        }                                                                        \
        lua_pushnumber(L, (double)(ops) / elapsed_);                             \
    } while (0)

static int l_p11_sign(lua_State *L)
{
    jwke_p11_token *token;
    jwke_p11_key *key = jwke_lua_hsm_key(L, 1, &token);
    luaL_argcheck(L, key != NULL, 1, "an HSM key");
    const jwke_alg *alg = jwke_check_alg(L, 2);
    size_t input_len;
    const unsigned char *input = (const unsigned char *)luaL_checklstring(L, 3, &input_len);
    double seconds = luaL_checknumber(L, 4);

    /* inside the module, as every caller (a raw floor: once, not per call) */
    jwke_p11_module *module = jwke_p11_token_module(token);
    jwke_p11_module_enter(module);
    CK_FUNCTION_LIST_PTR fn = jwke_p11_token_functions(token);
    CK_SESSION_HANDLE session;
    CK_RV rv = fn->C_OpenSession(jwke_p11_token_slot(token), CKF_SERIAL_SESSION, NULL, NULL, &session);
    if (rv != CKR_OK) {
        jwke_p11_module_leave(module);
        return luaL_error(L, "C_OpenSession failed: 0x%lx", (unsigned long)rv);
    }
    unsigned char sig[1024];
    long ops;
    jwke_error err;
    TIMED_LOOP(seconds, ops, {
        jwke_p11_prepared p;
        CK_ULONG sig_len = sizeof sig;
        if (jwke_p11_prepare_sign(alg, input, input_len, &p, &err) != 0 ||
            fn->C_SignInit(session, &p.mechanism, key->private_handle) != CKR_OK ||
            fn->C_Sign(session, (CK_BYTE_PTR)p.data, (CK_ULONG)p.data_len, sig, &sig_len) != CKR_OK) {
            fn->C_CloseSession(session);
            jwke_p11_module_leave(module);
            return luaL_error(L, "raw signing failed");
        }
    });
    fn->C_CloseSession(session);
    jwke_p11_module_leave(module);
    return 1;
}

/* p11_load(hsm_key, label) -> milliseconds for the raw floor of loading a
 * set: one C_FindObjects search by label and one C_GetAttributeValue per
 * object (with the attributes the engine reads), on a session of its own. */
static int l_p11_load(lua_State *L)
{
    jwke_p11_token *token;
    jwke_p11_key *key = jwke_lua_hsm_key(L, 1, &token);
    luaL_argcheck(L, key != NULL, 1, "an HSM key (for its token)");
    size_t label_len;
    const char *label = luaL_checklstring(L, 2, &label_len);
    jwke_p11_module *module = jwke_p11_token_module(token);
    jwke_p11_module_enter(module);
    CK_FUNCTION_LIST_PTR fn = jwke_p11_token_functions(token);
    CK_SESSION_HANDLE session;
    if (fn->C_OpenSession(jwke_p11_token_slot(token), CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK) {
        jwke_p11_module_leave(module);
        return luaL_error(L, "C_OpenSession failed");
    }
    double start = now();
    CK_ATTRIBUTE search[] = {{CKA_LABEL, (void *)label, (CK_ULONG)label_len}};
    static CK_OBJECT_HANDLE handles[8192];
    CK_ULONG n = 0, got;
    fn->C_FindObjectsInit(session, search, 1);
    while (fn->C_FindObjects(session, handles + n, 8192 - n, &got) == CKR_OK && got > 0 && n < 8192)
        n += got;
    fn->C_FindObjectsFinal(session);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_OBJECT_CLASS cls;
        CK_KEY_TYPE type;
        CK_BBOOL sign, decrypt;
        unsigned char id[128], modulus[2048], exponent[16], params[64], point[160];
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &type, sizeof type},
                            {CKA_ID, id, sizeof id}, {CKA_SIGN, &sign, sizeof sign},
                            {CKA_DECRYPT, &decrypt, sizeof decrypt},
                            {CKA_MODULUS, modulus, sizeof modulus},
                            {CKA_PUBLIC_EXPONENT, exponent, sizeof exponent},
                            {CKA_EC_PARAMS, params, sizeof params},
                            {CKA_EC_POINT, point, sizeof point}};
        fn->C_GetAttributeValue(session, handles[i], t, sizeof t / sizeof t[0]);
    }
    double ms = (now() - start) * 1000;
    fn->C_CloseSession(session);
    jwke_p11_module_leave(module);
    lua_pushnumber(L, ms);
    lua_pushinteger(L, (lua_Integer)n);
    return 2;
}

static jwke_swkey *check_software_key(lua_State *L, int idx)
{
    jwke_swkey *key = jwke_lua_software_key(L, idx);
    luaL_argcheck(L, key != NULL, idx, "a software key");
    return key;
}

static int l_evp_sign(lua_State *L)
{
    jwke_swkey *key = check_software_key(L, 1);
    const jwke_alg *alg = jwke_check_alg(L, 2);
    size_t input_len;
    const unsigned char *input = (const unsigned char *)luaL_checklstring(L, 3, &input_len);
    double seconds = luaL_checknumber(L, 4);
    unsigned char sig[1024];
    long ops;
    jwke_error err;
    TIMED_LOOP(seconds, ops, {
        size_t sig_len = sizeof sig;
        if (jwke_evp_sign(key->pkey, alg, input, input_len, sig, &sig_len, &err) != 0)
            return luaL_error(L, "raw signing failed: %s", err.message);
    });
    return 1;
}

static int l_evp_verify(lua_State *L)
{
    jwke_swkey *key = check_software_key(L, 1);
    const jwke_alg *alg = jwke_check_alg(L, 2);
    size_t input_len, sig_len;
    const unsigned char *input = (const unsigned char *)luaL_checklstring(L, 3, &input_len);
    const unsigned char *sig = (const unsigned char *)luaL_checklstring(L, 4, &sig_len);
    double seconds = luaL_checknumber(L, 5);
    long ops;
    jwke_error err;
    TIMED_LOOP(seconds, ops, {
        if (jwke_evp_verify(key->public_pkey, alg, input, input_len, sig, sig_len, &err) != 1)
            return luaL_error(L, "raw verification failed: %s", err.message);
    });
    return 1;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, now());
    return 1;
}

static int l_rss_kb(lua_State *L)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    lua_pushinteger(L, kb);
    return 1;
}

int luaopen_jwkengine_bench(lua_State *L)
{
    static const luaL_Reg functions[] = {{"p11_sign", l_p11_sign},
                                         {"p11_load", l_p11_load},
                                         {"evp_sign", l_evp_sign},
                                         {"evp_verify", l_evp_verify},
                                         {"rss_kb", l_rss_kb},
                                         {"now", l_now},
                                         {NULL, NULL}};
    luaL_newlib(L, functions);
    return 1;
}

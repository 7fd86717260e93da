/* The Lua module `jwkengine.core`: the thin layer between the C core and
 * the Lua policy. It turns C results into Lua values and nothing more. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/objects.h>
#include <openssl/rand.h>

#include "b64url.h"
#include "ckr_names.h"
#include "evp_sig.h"
#include "lua_common.h"
#include "version.h"

int jwke_push_error(lua_State *L, const jwke_error *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err->message);
    if (err->code) {
        lua_pushstring(L, err->code);
    } else if (err->ckr != CKR_OK) {
        const char *name = jwke_ckr_name(err->ckr);
        char vendor[24]; /* lua_pushfstring has no %x: a vendor's CKR raised instead */
        if (!name) {
            snprintf(vendor, sizeof vendor, "CKR_0x%08lx", (unsigned long)err->ckr);
            name = vendor;
        }
        lua_pushstring(L, name);
    } else {
        lua_pushliteral(L, JWKE_ERR_INTERNAL);
    }
    return 3;
}

int jwke_push_done(lua_State *L, int rc, const jwke_error *err)
{
    if (rc != 0)
        return jwke_push_error(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

int jwke_push_count(lua_State *L, int rc, size_t count, const jwke_error *err)
{
    if (rc != 0)
        return jwke_push_error(L, err);
    lua_pushinteger(L, (lua_Integer)count);
    return 1;
}

int jwke_arg_refused(lua_State *L, const char *name, const char *why)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", name, why);
    lua_pushliteral(L, JWKE_ERR_INVALID_ARGUMENT);
    return JWKE_ARG_REFUSED;
}

int jwke_arg_string(lua_State *L, int arg, const char *name, int optional, const char **s,
                    size_t *len)
{
    int type = lua_type(L, arg);
    if (optional && type <= LUA_TNIL) { /* LUA_TNONE or LUA_TNIL */
        *s = NULL;
        *len = 0;
        return 0;
    }
    if (type != LUA_TSTRING && type != LUA_TNUMBER) {
        char why[64];
        snprintf(why, sizeof why, "must be a string, got %s", lua_typename(L, type));
        return jwke_arg_refused(L, name, why);
    }
    *s = lua_tolstring(L, arg, len);
    return 0;
}

int jwke_arg_text(lua_State *L, int arg, const char *name, const char **s)
{
    size_t len;
    if (jwke_arg_string(L, arg, name, 0, s, &len))
        return JWKE_ARG_REFUSED;
    if (strlen(*s) != len)
        return jwke_arg_refused(L, name, "holds a NUL byte");
    return 0;
}

int jwke_arg_integer(lua_State *L, int arg, const char *name, lua_Integer fallback,
                     lua_Integer min, lua_Integer max, lua_Integer *out)
{
    if (lua_isnoneornil(L, arg)) {
        *out = fallback;
        return 0;
    }
    int whole = 0;
    lua_Integer value = lua_type(L, arg) == LUA_TNUMBER ? lua_tointegerx(L, arg, &whole) : 0;
    if (!whole || value < min || value > max) {
        char why[96];
        snprintf(why, sizeof why, "must be a whole number from %lld to %lld", (long long)min,
                 (long long)max);
        return jwke_arg_refused(L, name, why);
    }
    *out = value;
    return 0;
}

void jwke_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

void jwke_class_id(lua_State *L, const char *name, const void *id)
{
    lua_pushlightuserdata(L, (void *)id);
    luaL_getmetatable(L, name);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

void *jwke_check_self(lua_State *L, const void *id, const char *name)
{
    void *self = lua_touserdata(L, 1);
    if (self && lua_getmetatable(L, 1)) {
        lua_pushlightuserdata(L, (void *)id);
        lua_rawget(L, LUA_REGISTRYINDEX);
        int same = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (same)
            return self;
    }
    return luaL_checkudata(L, 1, name); /* raises luaL_checkudata's message */
}

const jwke_alg *jwke_check_alg(lua_State *L, int arg)
{
    const char *name = luaL_checkstring(L, arg);
    const jwke_alg *alg = jwke_alg_by_name(name);
    if (!alg)
        luaL_argerror(L, arg, lua_pushfstring(L, "unsupported algorithm '%s'", name));
    return alg;
}

static void push_encoded(lua_State *L, const unsigned char *bytes, size_t len,
                         enum jwke_b64_padding pad)
{
    luaL_Buffer b;
    size_t out_len = jwke_b64url_encoded_len(len, pad);
    char *out = jwke_buffer_init(L, &b, out_len);
    if (jwke_b64url_encode(bytes, len, out, out_len, pad) != (long)out_len)
        luaL_error(L, "base64url: %zu bytes do not encode into %zu characters", len, out_len);
    jwke_buffer_push(L, &b, out_len);
}

void jwke_push_b64url(lua_State *L, const unsigned char *bytes, size_t len)
{
    push_encoded(L, bytes, len, JWKE_B64_NOPAD);
}

int jwke_push_compact(lua_State *L, jwke_signing_setup setup, jwke_sign_fn sign, void *signer,
                      int timed)
{
    size_t header_len, payload_len, sig_max;
    const char *header, *payload;
    if (jwke_arg_string(L, 2, "the protected header", 0, &header, &header_len) ||
        jwke_arg_string(L, 3, "the payload", 0, &payload, &payload_len))
        return JWKE_ARG_REFUSED;
    size_t out_len;
    jwke_error err;
    if (setup(L, 4, signer, &sig_max, &err) != 0)
        return jwke_push_error(L, &err);
    /* a token of the usual size is built on the stack: no malloc per token */
    char stack[4096];
    size_t cap = jwke_jws_compact_size(header_len, payload_len, sig_max);
    char *out = cap <= sizeof stack ? stack : malloc(cap);
    if (!out) {
        jwke_fail_code(&err, JWKE_ERR_OUT_OF_MEMORY, "out of memory signing");
        return jwke_push_error(L, &err);
    }
    /* timed here, so metrics need no clock call from Lua either side */
    struct timespec started, ended;
    clock_gettime(CLOCK_MONOTONIC, &started);
    int failed = jwke_jws_compact(header, header_len, (const unsigned char *)payload, payload_len,
                                  sig_max, sign, signer, out, cap, &out_len, &err);
    clock_gettime(CLOCK_MONOTONIC, &ended);
    if (!failed) {
        lua_pushlstring(L, out, out_len);
        if (timed)
            lua_pushnumber(L, (lua_Number)(ended.tv_sec - started.tv_sec) +
                                  (lua_Number)(ended.tv_nsec - started.tv_nsec) / 1e9);
    }
    if (out != stack)
        free(out);
    return failed ? jwke_push_error(L, &err) : 1 + (timed != 0);
}

int jwke_push_signature(lua_State *L, jwke_signing_setup setup, jwke_sign_fn sign, void *signer)
{
    size_t input_len, sig_max;
    const char *input;
    if (jwke_arg_string(L, 2, "the signing input", 0, &input, &input_len))
        return JWKE_ARG_REFUSED;
    unsigned char sig[JWKE_MAX_SIGNATURE];
    jwke_error err;
    if (setup(L, 3, signer, &sig_max, &err) != 0)
        return jwke_push_error(L, &err);
    size_t sig_len = sig_max;
    if (sig_max > sizeof sig) {
        jwke_fail_code(&err, JWKE_ERR_JWS_SIGN, "a signature of %zu bytes is larger than supported",
                       sig_max);
        return jwke_push_error(L, &err);
    }
    if (sign(signer, (const unsigned char *)input, input_len, sig, &sig_len, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushlstring(L, (const char *)sig, sig_len);
    return 1;
}

static int b64_mode(lua_State *L, int arg)
{
    return lua_toboolean(L, arg) ? JWKE_B64_PAD : JWKE_B64_NOPAD;
}

/* b64url_encode(bytes [, padded]) */
static int l_b64url_encode(lua_State *L)
{
    size_t len;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 1, &len);
    push_encoded(L, in, len, b64_mode(L, 2));
    return 1;
}

/* b64url_decode(text [, padded]) -> bytes | nil, err */
static int l_b64url_decode(lua_State *L)
{
    size_t len;
    const char *in = luaL_checklstring(L, 1, &len);
    enum jwke_b64_padding pad = b64_mode(L, 2); /* read before the buffer takes a stack slot */
    luaL_Buffer b;
    size_t room = jwke_b64url_decoded_max(len);
    unsigned char *out = (unsigned char *)jwke_buffer_init(L, &b, room);
    const char *why = NULL;
    long n = jwke_b64url_decode(in, len, out, room, pad, &why);
    if (n < 0) {
        jwke_error err;
        jwke_fail_code(&err, JWKE_ERR_INVALID_ARGUMENT, "invalid base64url: %s", why);
        return jwke_push_error(L, &err);
    }
    jwke_buffer_push(L, &b, (size_t)n);
    return 1;
}

/* nil, message, ERR_RANDOM: OpenSSL's generator failed (its configuration,
 * the system's entropy), an operational failure like any other. */
static int random_failed(lua_State *L)
{
    jwke_error err;
    jwke_fail_openssl(&err, "the random generator failed");
    jwke_fail_in(&err, JWKE_ERR_RANDOM);
    return jwke_push_error(L, &err);
}

static int l_random_bytes(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= 4096, 1, "between 0 and 4096 bytes");
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)jwke_buffer_init(L, &b, (size_t)n);
    if (RAND_bytes(out, (int)n) != 1)
        return random_failed(L);
    jwke_buffer_push(L, &b, (size_t)n);
    return 1;
}

/* A random (version 4) UUID, the kid of keys generated without one. */
static int l_uuid(lua_State *L)
{
    unsigned char u[16];
    if (RAND_bytes(u, sizeof u) != 1)
        return random_failed(L);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    char text[37];
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            text[o++] = '-';
        text[o++] = hex[u[i] >> 4];
        text[o++] = hex[u[i] & 15];
    }
    lua_pushlstring(L, text, o);
    return 1;
}

static int l_versions(lua_State *L)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, JWKENGINE_VERSION);
    lua_setfield(L, -2, "jwkengine");
    lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
    lua_setfield(L, -2, "openssl");
    lua_pushstring(L, LUA_RELEASE);
    lua_setfield(L, -2, "lua");
    return 1;
}

/* ---- the algorithm table and the limits, for the Lua policy ---------- */

static void set_string(lua_State *L, const char *key, const char *value)
{
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

static void set_integer(lua_State *L, const char *key, lua_Integer value)
{
    lua_pushinteger(L, value);
    lua_setfield(L, -2, key);
}

static void set_boolean(lua_State *L, const char *key, int value)
{
    lua_pushboolean(L, value);
    lua_setfield(L, -2, key);
}

/* One row of alg.c as a Lua table: every fact any Lua layer reads. */
static void push_algorithm(lua_State *L, const jwke_alg *alg)
{
    lua_createtable(L, 0, 20);
    set_string(L, "name", alg->name);
    set_string(L, "kty", jwke_kind_name(alg->kind));
    set_string(L, "scheme", jwke_scheme_name(alg->scheme));
    set_string(L, "mechanism", alg->sign_mechanism.name);
    set_string(L, "generate_mechanism", alg->generate_mechanism.name);
    set_boolean(L, "hsm_generates", alg->hsm_generates);
    set_boolean(L, "software_generates", alg->software_generates);
    set_boolean(L, "default", alg->is_default);
    if (alg->signature_size)
        set_integer(L, "signature_size", (lua_Integer)alg->signature_size);
    const jwke_digest *digest = alg->digest;
    if (digest) {
        set_string(L, "digest", digest->name);
        set_integer(L, "digest_size", (lua_Integer)digest->size);
        set_string(L, "digest_mechanism", digest->mechanism.name);
    }
    if (digest && alg->scheme == JWKE_SCHEME_RSA_PKCS1) {
        lua_pushlstring(L, (const char *)digest->digest_info, digest->digest_info_len);
        lua_setfield(L, -2, "digest_info");
    }
    if (digest && alg->scheme == JWKE_SCHEME_RSA_PSS) {
        lua_createtable(L, 0, 3);
        set_string(L, "hash", digest->name);
        set_string(L, "mgf1", digest->name); /* MGF1 with the same hash (RFC 7518 3.5) */
        set_integer(L, "salt_length", (lua_Integer)digest->size);
        lua_setfield(L, -2, "pss");
    }
    if (alg->curve) {
        char dotted[64];
        set_string(L, "crv", alg->curve);
        set_integer(L, "curve_nid", alg->curve_nid);
        if (OBJ_obj2txt(dotted, sizeof dotted, OBJ_nid2obj(alg->curve_nid), 1) > 0)
            set_string(L, "curve_oid", dotted);
        lua_pushlstring(L, (const char *)alg->curve_oid, alg->curve_oid_len);
        lua_setfield(L, -2, "curve_oid_der");
        set_integer(L, alg->kind == JWKE_KIND_EC ? "coordinate_size" : "public_key_size",
                    (lua_Integer)alg->coordinate_size);
    }
}

/* algorithms() -> { RS256 = {...}, ... }: a fresh table, read once by each
 * Lua module when it loads (never per signature). */
static int l_algorithms(lua_State *L)
{
    lua_createtable(L, 0, (int)jwke_alg_count());
    for (size_t i = 0; i < jwke_alg_count(); i++) {
        const jwke_alg *alg = jwke_alg_at(i);
        push_algorithm(L, alg);
        lua_setfield(L, -2, alg->name);
    }
    return 1;
}

/* alg_info("ES256") -> the row algorithms() has for it | nil. Rows come
 * from a table built once (upvalue 1), so a call costs a lookup; treat
 * them as read-only. */
static int l_alg_info(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_pushvalue(L, 1);
    lua_rawget(L, lua_upvalueindex(1));
    return lua_isnil(L, -1) ? 0 : 1;
}

/* limits() -> the limits and defaults of engine_limits.h the Lua policy needs. */
static int l_limits(lua_State *L)
{
    lua_createtable(L, 0, 10);
    set_integer(L, "rsa_min_bits", JWKE_RSA_MIN_BITS);
    set_integer(L, "rsa_max_bits", JWKE_RSA_MAX_BITS);
    set_integer(L, "rsa_absolute_min_bits", JWKE_RSA_ABSOLUTE_MIN_BITS);
    set_integer(L, "rsa_generate_bits", JWKE_RSA_GENERATE_BITS);
    set_integer(L, "hsm_min_rsa_bits", JWKE_HSM_MIN_RSA_BITS);
    set_integer(L, "min_secret_length", JWKE_MIN_SECRET_LENGTH);
    set_integer(L, "max_sessions", JWKE_POOL_MAX_SESSIONS);
    set_integer(L, "session_wait_ms", JWKE_POOL_SESSION_WAIT_MS);
    set_integer(L, "reinit_interval_ms", JWKE_POOL_REINIT_INTERVAL_MS);
    set_integer(L, "reinit_interval_max_ms", JWKE_POOL_REINIT_INTERVAL_MAX_MS);
    set_integer(L, "session_idle_max", JWKE_POOL_SESSION_IDLE_MAX_MS / 1000);
    set_integer(L, "pool_limit", JWKE_POOL_LIMIT);
    return 1;
}

/* monotonic() -> seconds of CLOCK_MONOTONIC as a float: the clock signing
 * latency is measured with (os.clock is CPU time, os.time whole seconds,
 * ngx.now the event loop's cached millisecond) */
static int l_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* pause(seconds) -> nothing: a short blocking wait (at most 1 s) for the
 * policy's rare waits on another process, such as a key-state writer
 * between its destroy and its create; never on the signing path */
static int l_pause(lua_State *L)
{
    lua_Number seconds = luaL_checknumber(L, 1);
    luaL_argcheck(L, seconds >= 0 && seconds <= 1, 1, "a pause is 0 to 1 seconds");
    struct timespec left = {0, (long)(seconds * 1e9)};
    if (seconds >= 1)
        left = (struct timespec){1, 0};
    while (nanosleep(&left, &left) != 0)
        ; /* a signal cut it short: sleep what is left */
    return 0;
}

static const luaL_Reg functions[] = {
    {"b64url_encode", l_b64url_encode},
    {"b64url_decode", l_b64url_decode},
    {"random_bytes", l_random_bytes},
    {"uuid", l_uuid},
    {"versions", l_versions},
    {"algorithms", l_algorithms},
    {"limits", l_limits},
    {"monotonic", l_monotonic},
    {"pause", l_pause},
    {NULL, NULL},
};

/* The Lua states that have the binding open. The digests evp_sig.c keeps
 * are given back when the last one closes: then nothing signs, and the
 * library may be unloaded next. One count per state, whatever the number
 * of requires (busted loads a module afresh for each spec file). */
static int open_states;
static char state_counted; /* its address: the registry key of a state's mark */

static int state_closed(lua_State *L)
{
    (void)L;
    if (__atomic_sub_fetch(&open_states, 1, __ATOMIC_ACQ_REL) == 0)
        jwke_alg_md_release();
    return 0;
}

static void count_state(lua_State *L)
{
    lua_pushlightuserdata(L, &state_counted);
    lua_rawget(L, LUA_REGISTRYINDEX);
    int counted = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (counted)
        return;
    lua_pushlightuserdata(L, &state_counted);
    lua_newuserdatauv(L, 1, 0);
    lua_newtable(L);
    lua_pushcfunction(L, state_closed);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    __atomic_add_fetch(&open_states, 1, __ATOMIC_ACQ_REL);
}

int luaopen_jwkengine_core(lua_State *L)
{
    count_state(L);
    luaL_newlib(L, functions);
    l_algorithms(L);
    lua_pushcclosure(L, l_alg_info, 1);
    lua_setfield(L, -2, "alg_info");
    jwke_open_module(L);
    jwke_open_key(L);
    jwke_open_token(L);
    jwke_open_public_key(L);
    jwke_open_software_key(L);
    jwke_open_jose(L);
    jwke_open_json(L);
    jwke_open_file_lock(L);
    jwke_open_kept_secret(L);
    lua_pushstring(L, JWKENGINE_VERSION);
    lua_setfield(L, -2, "_VERSION");
    return 1;
}

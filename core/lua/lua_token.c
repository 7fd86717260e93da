/* Tokens in Lua (opened by module:open_token, lua_module.c), and the token
 * as the holder of keys (lua_key.c).
 *
 * A token object owns an opened token (its session pool). The key objects
 * load_set returns keep their token object alive (through a user value)
 * and cache the object handle, the algorithm and the public key, so
 * signing never searches the token. */
#include <stdlib.h>
#include <string.h>

#include "lua_common.h"
#include "p11_cert.h"
#include "p11_data.h"
#include "p11_keys.h"
#include "p11_map.h"
#include "p11_sign.h"
#include "p11_token.h"

typedef struct token_object {
    jwke_p11_token *token; /* NULL once closed */
} token_object;

/* A key's state when a token holds it. */
typedef struct hsm_key {
    token_object *owner;
    jwke_p11_key *key; /* NULL until load_set fills it in */
} hsm_key;

static const jwke_key_holder hsm_holder;

struct jwke_p11_key *jwke_lua_hsm_key(lua_State *L, int idx, struct jwke_p11_token **token)
{
    hsm_key *k = jwke_key_state(L, idx, &hsm_holder);
    if (!k || !k->key || !k->owner->token)
        return NULL;
    *token = k->owner->token;
    return k->key;
}

struct jwke_p11_token **jwke_new_token_object(lua_State *L)
{
    token_object *t = lua_newuserdatauv(L, sizeof *t, 0);
    t->token = NULL;
    luaL_setmetatable(L, JWKE_TOKEN_CLASS);
    return &t->token;
}

/* The open token at argument 1; NULL, with nil, err, ERR_CLOSED pushed,
 * once it is closed (the caller returns JWKE_ARG_REFUSED). Self of another
 * class is a programming error, raised. */
static const char token_class_id; /* its address: jwke_check_self's key */

static token_object *open_token(lua_State *L)
{
    token_object *t = jwke_check_self(L, &token_class_id, JWKE_TOKEN_CLASS);
    if (t->token)
        return t;
    lua_pushnil(L);
    lua_pushliteral(L, "the token session is closed");
    lua_pushliteral(L, JWKE_ERR_CLOSED);
    return NULL;
}

/* Shorthands for the methods below: argument checks that answer
 * nil, err, code (lua_common.h) and return from the method. */
#define OPEN_TOKEN(t)                                                                       \
    token_object *t = open_token(L);                                                        \
    if (!t)                                                                                 \
        return JWKE_ARG_REFUSED
#define STRING_ARG(arg, name, s, len)                                                       \
    if (jwke_arg_string(L, arg, name, 0, &s, &len))                                         \
        return JWKE_ARG_REFUSED
#define TEXT_ARG(arg, name, s)                                                              \
    if (jwke_arg_text(L, arg, name, &s))                                                    \
        return JWKE_ARG_REFUSED
#define OPTIONAL_STRING_ARG(arg, name, s, len)                                              \
    if (jwke_arg_string(L, arg, name, 1, &s, &len))                                         \
        return JWKE_ARG_REFUSED

/* token:login(pin) -> true | nil, err */
static int l_login(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t pin_len;
    const char *pin;
    STRING_ARG(2, "the PIN", pin, pin_len);
    jwke_error err;
    int rc = jwke_p11_login(t->token, pin, pin_len, &err);
    return jwke_push_done(L, rc, &err);
}

/* token:login_file(path) -> true | nil, err: the PIN never enters Lua */
static int l_login_file(lua_State *L)
{
    OPEN_TOKEN(t);
    const char *path;
    TEXT_ARG(2, "the PIN file", path);
    jwke_error err;
    int rc = jwke_p11_login_file(t->token, path, &err);
    return jwke_push_done(L, rc, &err);
}

/* token:login_X(where) -> true | nil, err, with the PIN that `fill` reads
 * from `where` straight into locked memory. */
static int login_from(lua_State *L, jwke_pin_fill fill)
{
    OPEN_TOKEN(t);
    const char *where;
    TEXT_ARG(2, "where the PIN is", where);
    jwke_error err;
    int rc = jwke_p11_login_from(t->token, fill, where, &err);
    return jwke_push_done(L, rc, &err);
}

/* token:login_env(name) -> true | nil, err: the PIN goes from the
 * environment to locked memory, never through Lua; the variable is erased
 * (jwke_pin_from_env). */
static int l_login_env(lua_State *L)
{
    return login_from(L, jwke_pin_from_env);
}

/* token:login_uri(uri) -> true | nil, err: the pin-value of a PKCS#11 URI,
 * percent-decoded straight into locked memory. */
static int l_login_uri(lua_State *L)
{
    return login_from(L, jwke_pin_from_uri);
}

/* env_is_set(name) -> set, set_but_empty | nil, err, code: without copying
 * the value into Lua (an empty value is a configuration mistake worth
 * naming) */
static int l_env_is_set(lua_State *L)
{
    const char *name;
    if (jwke_arg_text(L, 1, "the variable's name", &name))
        return JWKE_ARG_REFUSED;
    const char *value = getenv(name);
    lua_pushboolean(L, jwke_env_is_set(name));
    lua_pushboolean(L, value != NULL && *value == '\0');
    return 2;
}

/* token:stats() -> { recoveries = {session=, login=, object=, reinit=}, ... };
 * token_max_sessions / token_sessions only when the token reported them */
static int l_stats(lua_State *L)
{
    OPEN_TOKEN(t);
    jwke_p11_stats st;
    jwke_p11_token_stats(t->token, &st);
    lua_createtable(L, 0, 12);
    lua_createtable(L, 0, 4);
    static const char *const names[JWKE_RECOVER_CLASSES] = {NULL, "session", "login", "object",
                                                            "reinit"};
    for (int i = 1; i < JWKE_RECOVER_CLASSES; i++) {
        lua_pushinteger(L, (lua_Integer)st.recoveries[i]);
        lua_setfield(L, -2, names[i]);
    }
    lua_setfield(L, -2, "recoveries");
    const struct {
        const char *name;
        lua_Integer value;
    } counts[] = {
        {"failed_recoveries", (lua_Integer)st.failed_recoveries},
        {"signature_faults", (lua_Integer)st.signature_faults},
        {"sessions_opened", (lua_Integer)st.pool.sessions_opened},
        {"session_waits", (lua_Integer)st.pool.session_waits},
        {"sessions_open", st.pool.sessions_open},
        {"max_sessions", st.pool.max_sessions},
        {"idle_checks", (lua_Integer)st.pool.idle_checks},
        {"sessions_expired", (lua_Integer)st.pool.sessions_expired},
        {"token_max_sessions", st.pool.token_max_sessions},
        {"token_sessions", st.pool.token_sessions},
    };
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        if (counts[i].value < 0)
            continue; /* not reported by the token */
        lua_pushinteger(L, counts[i].value);
        lua_setfield(L, -2, counts[i].name);
    }
    return 1;
}

/* token:events() -> list of queued log lines (usually nil: nothing queued) */
static int l_events(lua_State *L)
{
    OPEN_TOKEN(t);
    char lines[JWKE_EVENT_QUEUE][JWKE_EVENT_SIZE];
    int n = jwke_p11_take_events(t->token, lines, JWKE_EVENT_QUEUE);
    if (n == 0) /* the common case: nothing queued */
        return 0;
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, lines[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* token:outage() -> nil when the token is not down; during an outage,
 * the milliseconds until the next attempt to come back and its cause */
static int l_outage(lua_State *L)
{
    OPEN_TOKEN(t);
    long long retry_in_ms;
    char cause[128];
    if (!jwke_p11_token_outage(t->token, &retry_in_ms, cause, sizeof cause))
        return 0;
    lua_pushinteger(L, (lua_Integer)retry_in_ms);
    lua_pushstring(L, cause);
    return 2;
}

/* token:load_set(label, min_rsa_bits [, kid]) -> { key, ... } (empty when
 * absent) | nil, err. With kid, only that pair is read. */
static int l_load_set(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len, kid_len;
    const char *label, *kid;
    lua_Integer min_rsa_bits;
    STRING_ARG(2, "the label", label, label_len);
    if (jwke_arg_integer(L, 3, "min_rsa_bits", JWKE_HSM_MIN_RSA_BITS, 0, JWKE_RSA_MAX_BITS,
                         &min_rsa_bits))
        return JWKE_ARG_REFUSED;
    OPTIONAL_STRING_ARG(4, "the kid", kid, kid_len);
    jwke_p11_key *keys;
    size_t count;
    jwke_error err;
    if (jwke_p11_load_set(t->token, label, label_len, (const unsigned char *)kid, kid_len,
                          (int)min_rsa_bits, &keys, &count, &err) != 0)
        return jwke_push_error(L, &err);

    lua_createtable(L, (int)count, 0);
    for (size_t i = 0; i < count; i++) {
        hsm_key *k = jwke_new_key_object(L, &hsm_holder);
        k->owner = t;
        k->key = jwke_p11_keys_take(keys, i);
        if (!k->key) {
            jwke_p11_keys_free(keys, count);
            jwke_fail_code(&err, JWKE_ERR_OUT_OF_MEMORY, "out of memory loading a key set");
            return jwke_push_error(L, &err);
        }
        lua_newtable(L);
        lua_pushvalue(L, 1);
        lua_rawseti(L, -2, 1); /* keeps the token object alive */
        lua_setuservalue(L, -2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    jwke_p11_keys_free(keys, count);
    return 1;
}

/* use at arg: 'sig' (also when absent) or 'enc'; 0, with nil, err, code
 * pushed, for anything else. */
static enum jwke_key_use check_use(lua_State *L, int arg)
{
    size_t len;
    const char *use;
    if (jwke_arg_string(L, arg, "use", 1, &use, &len))
        return 0;
    if (!use || strcmp(use, "sig") == 0)
        return JWKE_USE_SIG;
    if (strcmp(use, "enc") == 0)
        return JWKE_USE_ENC;
    jwke_arg_refused(L, "use", "must be 'sig' or 'enc'");
    return 0;
}

/* token:generate(label, alg, kid, use, rsa_bits) -> true | nil, err */
static int l_generate(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len, kid_len;
    const char *label, *kid;
    lua_Integer rsa_bits;
    STRING_ARG(2, "the label", label, label_len);
    const jwke_alg *alg = jwke_check_alg(L, 3);
    STRING_ARG(4, "the kid", kid, kid_len);
    enum jwke_key_use use = check_use(L, 5);
    if (!use)
        return JWKE_ARG_REFUSED;
    if (jwke_arg_integer(L, 6, "rsa_bits", JWKE_RSA_GENERATE_BITS, 1, JWKE_RSA_MAX_BITS, &rsa_bits))
        return JWKE_ARG_REFUSED;
    jwke_error err;
    int rc = jwke_p11_generate(t->token, label, label_len, (const unsigned char *)kid, kid_len, alg,
                               use, (int)rsa_bits, &err);
    return jwke_push_done(L, rc, &err);
}

/* token:delete(label [, kid]) -> number of objects destroyed | nil, err */
static int l_delete(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len, kid_len;
    const char *label, *kid;
    STRING_ARG(2, "the label", label, label_len);
    OPTIONAL_STRING_ARG(3, "the kid", kid, kid_len);
    size_t destroyed;
    jwke_error err;
    if (jwke_p11_delete(t->token, label, label_len, (const unsigned char *)kid, kid_len,
                        &destroyed, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushinteger(L, (lua_Integer)destroyed);
    return 1;
}

/* token:set_id(label, old_kid, new_kid) -> objects changed | nil, err */
static int l_set_id(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len, old_len, new_len, changed;
    const char *label, *old_id, *new_id;
    STRING_ARG(2, "the label", label, label_len);
    STRING_ARG(3, "the old kid", old_id, old_len);
    STRING_ARG(4, "the new kid", new_id, new_len);
    jwke_error err;
    int rc = jwke_p11_set_id(t->token, label, label_len, (const unsigned char *)old_id, old_len,
                             (const unsigned char *)new_id, new_len, &changed, &err);
    return jwke_push_count(L, rc, changed, &err);
}

/* token:data_objects(application [, label]) -> objects [, unreadable]
 * | nil, err, code: the data objects of an application (of one label, or
 * all), objects = { { label = ..., value = ... }, ... }. An object that
 * could not be read (too large for the bound, a length the token should
 * not report, a sensitive value) does not fail the call: it is left out of
 * `objects` and described in the second list, unreadable = { { error =
 * message, code = code }, ... } (nil when every object was read), for the
 * caller to log and skip. */
static int l_data_objects(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len;
    const char *application, *label;
    TEXT_ARG(2, "the application", application);
    OPTIONAL_STRING_ARG(3, "the label", label, label_len);
    jwke_p11_data *found;
    jwke_error *unreadable;
    size_t count, unreadable_count;
    jwke_error err;
    if (jwke_p11_data_find(t->token, application, label, label_len, &found, &count, &unreadable,
                           &unreadable_count, &err) != 0)
        return jwke_push_error(L, &err);
    lua_createtable(L, (int)count, 0);
    for (size_t i = 0; i < count; i++) {
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, found[i].label, found[i].label_len);
        lua_setfield(L, -2, "label");
        lua_pushlstring(L, (const char *)found[i].value, found[i].value_len);
        lua_setfield(L, -2, "value");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    jwke_p11_data_free(found, count);
    if (unreadable_count == 0)
        return 1;
    lua_createtable(L, (int)unreadable_count, 0);
    for (size_t i = 0; i < unreadable_count; i++) {
        lua_createtable(L, 0, 2);
        jwke_push_error(L, &unreadable[i]); /* nil, message, code */
        lua_setfield(L, -4, "code");
        lua_setfield(L, -3, "error");
        lua_pop(L, 1);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(unreadable);
    return 2;
}

/* token:create_data(application, label, value) -> true | nil, err */
static int l_create_data(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len, value_len;
    const char *application, *label, *value;
    TEXT_ARG(2, "the application", application);
    STRING_ARG(3, "the label", label, label_len);
    STRING_ARG(4, "the value", value, value_len);
    jwke_error err;
    int rc = jwke_p11_data_create(t->token, application, label, label_len,
                                  (const unsigned char *)value, value_len, &err);
    return jwke_push_done(L, rc, &err);
}

/* token:destroy_data(application, label, value) -> objects destroyed
 * | nil, err: only the objects holding exactly `value`. */
static int l_destroy_data(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len, value_len, destroyed;
    const char *application, *label, *value;
    TEXT_ARG(2, "the application", application);
    STRING_ARG(3, "the label", label, label_len);
    STRING_ARG(4, "the value", value, value_len);
    jwke_error err;
    int rc = jwke_p11_data_destroy(t->token, application, label, label_len,
                                   (const unsigned char *)value, value_len, &destroyed, &err);
    return jwke_push_count(L, rc, destroyed, &err);
}

/* token:store_certificate(label, kid, der) -> true | nil, err: beside
 * the pair, replacing its certificates (p11_cert.h) */
static int l_store_certificate(lua_State *L)
{
    OPEN_TOKEN(t);
    size_t label_len, kid_len, der_len;
    const char *label, *kid, *der;
    STRING_ARG(2, "the label", label, label_len);
    STRING_ARG(3, "the kid", kid, kid_len);
    STRING_ARG(4, "the certificate", der, der_len);
    jwke_error err;
    int rc = jwke_p11_store_certificate(t->token, label, label_len, (const unsigned char *)kid,
                                        kid_len, (const unsigned char *)der, der_len, &err);
    return jwke_push_done(L, rc, &err);
}

static int l_token_close(lua_State *L)
{
    token_object *t = luaL_checkudata(L, 1, JWKE_TOKEN_CLASS);
    if (t->token) {
        jwke_p11_token_close(t->token);
        t->token = NULL;
    }
    return 0;
}

/* ---- the token as a key's holder (lua_common.h) ----------------------- */

static int hsm_facts(const void *state, jwke_key_facts *out)
{
    const hsm_key *k = state;
    if (!k->key)
        return -1;
    out->kid = jwke_p11_key_id(k->key, &out->kid_len);
    out->alg = jwke_p11_key_alg(k->key);
    out->use = jwke_p11_key_use(k->key) == JWKE_USE_SIG ? "sig" : "enc";
    out->is_private = 1; /* load_set finds pairs: it signs (or decrypts) on the token */
    out->public_key = jwke_p11_key_public(k->key);
    return 0;
}

static int hsm_signing(void *state, const jwke_alg **alg, size_t *sig_max, jwke_error *err)
{
    hsm_key *k = state;
    if (!k->owner->token)
        return jwke_fail_code(err, JWKE_ERR_JWS_SIGN, "the engine that loaded this key is closed");
    return jwke_p11_key_signing(k->key, alg, sig_max, err);
}

static int hsm_sign(void *signer, const unsigned char *input, size_t input_len,
                    unsigned char *sig, size_t *sig_len, jwke_error *err)
{
    jwke_key_signer *s = signer;
    hsm_key *k = s->state;
    return jwke_p11_sign(k->owner->token, k->key, s->alg, input, input_len, sig, sig_len, err);
}

static void hsm_clear(void *state)
{
    hsm_key *k = state;
    jwke_p11_key_free(k->key);
    k->key = NULL;
}

static const unsigned char *hsm_certificate(const void *state, size_t *len,
                                            const jwke_error **problem)
{
    const hsm_key *k = state;
    return jwke_p11_key_certificate(k->key, len, problem);
}

/* retired on the key itself (its private half's CKA_SIGN false) as it was
 * loaded */
static int hsm_retired(const void *state)
{
    const hsm_key *k = state;
    return jwke_p11_key_retired(k->key);
}

/* writes CKA_SIGN on the pair's private half; ERR_KEY_MARK_REFUSED where
 * the token will not. Load the set again to see the mark. */
static int hsm_set_sign(void *state, int allowed, size_t *changed, jwke_error *err)
{
    hsm_key *k = state;
    if (!k->owner->token)
        return jwke_fail_code(err, JWKE_ERR_CLOSED, "the engine that loaded this key is closed");
    return jwke_p11_key_set_sign(k->owner->token, k->key, allowed, changed, err);
}

static const jwke_key_holder hsm_holder = {
    .name = "HSM",
    .state_size = sizeof(hsm_key),
    .default_min_bits = 0, /* the load held the key to hsm.min_rsa_bits */
    .facts = hsm_facts,
    .signing = hsm_signing,
    .sign = hsm_sign,
    .clear = hsm_clear,
    .certificate = hsm_certificate,
    .retired = hsm_retired,
    .set_sign = hsm_set_sign,
};

static const luaL_Reg token_methods[] = {
    {"login", l_login},
    {"login_file", l_login_file},
    {"login_env", l_login_env},
    {"login_uri", l_login_uri},
    {"stats", l_stats},
    {"events", l_events},
    {"outage", l_outage},
    {"load_set", l_load_set},
    {"generate", l_generate},
    {"delete", l_delete},
    {"set_id", l_set_id},
    {"data_objects", l_data_objects},
    {"create_data", l_create_data},
    {"destroy_data", l_destroy_data},
    {"store_certificate", l_store_certificate},
    {"close", l_token_close},
    {NULL, NULL},
};

void jwke_open_token(lua_State *L)
{
    jwke_new_class(L, JWKE_TOKEN_CLASS, token_methods, l_token_close);
    jwke_class_id(L, JWKE_TOKEN_CLASS, &token_class_id);
    lua_pushcfunction(L, l_env_is_set);
    lua_setfield(L, -2, "env_is_set");
}

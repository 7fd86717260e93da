#include "sealed_key.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "jose_parse.h"

typedef struct opening {
    jwke_jwk_members members;
    char kty[8], crv[16];  /* the only text members the import reads */
    char *public_json;     /* '{' then the public members, comma-separated */
    size_t public_len;
} opening;

static int is_named(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(name, want, len) == 0;
}

/* A JSON string value without escapes into out (kty, crv: short ASCII). */
static int copy_text(const char *name, const char *value, size_t len, char *out, size_t cap,
                     jwke_error *err)
{
    if (len < 2 || value[0] != '"' || len - 2 >= cap || memchr(value, '\\', len))
        return jwke_fail(err, "JWK member '%s' must be a short string", name);
    memcpy(out, value + 1, len - 2);
    out[len - 2] = '\0';
    return 0;
}

/* Adds a member as written to a JSON object being built after its '{'
 * (sized by the caller to hold it). */
static void append_member(char *json, size_t *len, const char *member, size_t member_len)
{
    if (*len > 1)
        json[(*len)++] = ',';
    memcpy(json + *len, member, member_len);
    *len += member_len;
}

static int visit_member(void *ctx, const char *name, size_t name_len, const char *member,
                        size_t member_len, const char *value, size_t value_len, jwke_error *err)
{
    opening *o = ctx;
    if (is_named(name, name_len, "oth"))
        return jwke_fail(err, "multi-prime RSA keys (JWK member 'oth') are not supported");
    if (is_named(name, name_len, "kty") &&
        copy_text("kty", value, value_len, o->kty, sizeof o->kty, err) != 0)
        return -1;
    if (is_named(name, name_len, "crv") &&
        copy_text("crv", value, value_len, o->crv, sizeof o->crv, err) != 0)
        return -1;
    for (size_t i = 0; i < JWKE_JWK_BINARY_MEMBERS; i++) {
        const char *binary = jwke_jwk_binary_members[i];
        if (!is_named(name, name_len, binary))
            continue;
        if (value_len < 2 || value[0] != '"')
            return jwke_fail(err, "JWK member '%s' must be a base64url string", binary);
        if (jwke_jwk_member_decode(binary, value + 1, value_len - 2,
                                   jwke_jwk_member_at(&o->members, i), err) != 0)
            return -1;
    }
    if (jwke_jwk_member_is_private(name, name_len))
        return 0;
    /* public_json was sized to the plaintext: the members it keeps fit */
    append_member(o->public_json, &o->public_len, member, member_len);
    return 0;
}

int jwke_sealed_key_open(const jwke_secret *secrets, size_t count, const char *text,
                         size_t text_len, jwke_swkey *key, char **public_json,
                         size_t *public_len, jwke_error *err)
{
    unsigned char *plaintext;
    size_t plaintext_len, used;
    if (jwke_aesgcm_open(secrets, count, text, text_len, &plaintext, &plaintext_len, &used,
                         err) != 0)
        return jwke_fail_in(err, JWKE_ERR_KEY_DECRYPT);
    opening o;
    memset(&o, 0, sizeof o);
    o.public_json = malloc(plaintext_len + 2); /* '{' members '}' NUL: never longer */
    int rc = -1;
    if (!o.public_json) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory opening a key");
        goto done;
    }
    o.public_json[o.public_len++] = '{';
    /* it decrypted: whatever fails now is a row that is not a usable key */
    if (jwke_json_members((const char *)plaintext, plaintext_len, visit_member, &o, err) != 0) {
        jwke_fail_in(err, JWKE_ERR_KEY_INVALID);
        goto done;
    }
    o.members.kty = o.kty[0] ? o.kty : NULL;
    o.members.crv = o.crv[0] ? o.crv : NULL;
    if (jwke_swkey_from_jwk(&o.members, key, err) != 0) {
        jwke_fail_in(err, JWKE_ERR_KEY_INVALID);
        goto done;
    }
    o.public_json[o.public_len++] = '}';
    o.public_json[o.public_len] = '\0';
    *public_json = o.public_json;
    *public_len = o.public_len;
    o.public_json = NULL;
    rc = 0;
done:
    jwke_jwk_members_clear(&o.members);
    free(o.public_json); /* public members only */
    jwke_aesgcm_free(plaintext, plaintext_len);
    return rc;
}

typedef struct marking {
    char *json; /* '{' then the members kept, comma-separated */
    size_t len;
} marking;

static int keep_member(void *ctx, const char *name, size_t name_len, const char *member,
                       size_t member_len, const char *value, size_t value_len, jwke_error *err)
{
    (void)value, (void)value_len, (void)err;
    marking *m = ctx;
    if (is_named(name, name_len, "key_ops"))
        return 0;
    append_member(m->json, &m->len, member, member_len);
    return 0;
}

int jwke_sealed_key_mark(const jwke_secret *secrets, size_t count, const char *text,
                         size_t text_len, int retired, char **out, size_t *out_len,
                         jwke_error *err)
{
    static const char retired_ops[] = "\"key_ops\":[\"verify\"]";
    unsigned char *plaintext;
    size_t plaintext_len, used;
    if (jwke_aesgcm_open(secrets, count, text, text_len, &plaintext, &plaintext_len, &used,
                         err) != 0)
        return jwke_fail_in(err, JWKE_ERR_KEY_DECRYPT);
    /* '{' members ',' key_ops '}': never longer than the plaintext and these */
    size_t capacity = plaintext_len + sizeof retired_ops + 3;
    marking m = {malloc(capacity), 0};
    int rc = -1;
    if (!m.json) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory marking a key");
        goto done;
    }
    m.json[m.len++] = '{';
    if (jwke_json_members((const char *)plaintext, plaintext_len, keep_member, &m, err) != 0) {
        jwke_fail_in(err, JWKE_ERR_KEY_INVALID);
        goto done;
    }
    if (retired)
        append_member(m.json, &m.len, retired_ops, sizeof retired_ops - 1);
    m.json[m.len++] = '}';
    rc = jwke_aesgcm_seal(secrets[0].data, secrets[0].len, (const unsigned char *)m.json, m.len, out, out_len, err);
    if (rc != 0)
        jwke_fail_in(err, JWKE_ERR_KEY_ENCRYPT);
done:
    if (m.json)
        OPENSSL_clear_free(m.json, capacity);
    jwke_aesgcm_free(plaintext, plaintext_len);
    return rc;
}

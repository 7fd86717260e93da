#include "jose_parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "b64url.h"
#include "utf8.h"

/* ---- strict JSON -------------------------------------------------------- */

/* A member name after unescaping. Names live in one arena sized to the
 * input (unescaping never makes a string longer), so pointers stay valid. */
typedef struct name_ref {
    const unsigned char *ptr;
    size_t len;
} name_ref;

typedef struct json_parser {
    const unsigned char *start, *p, *end;
    int max_depth;
    unsigned char *arena;
    size_t arena_used;
    name_ref *names; /* a stack: the names of every object still open */
    size_t n_names, cap_names;
    jwke_error *err;
} json_parser;

static int fail_at(json_parser *j, const char *what)
{
    return jwke_fail(j->err, "%s at byte %zu", what, (size_t)(j->p - j->start));
}

static void skip_ws(json_parser *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(unsigned char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses a string at j->p (on the opening quote). With `name`, the
 * unescaped bytes are appended to the arena and described there. */
static int parse_string(json_parser *j, name_ref *name)
{
    unsigned char *out = name ? j->arena + j->arena_used : NULL;
    size_t out_len = 0;
    j->p++;
    for (;;) {
        if (j->p >= j->end)
            return fail_at(j, "unterminated string");
        unsigned char c = *j->p;
        if (c == '"') {
            j->p++;
            break;
        }
        if (c < 0x20)
            return fail_at(j, "unescaped control character in a string");
        if (c == '\\') {
            if (j->end - j->p < 2)
                return fail_at(j, "unterminated escape");
            unsigned char e = j->p[1];
            unsigned char simple = 0;
            switch (e) {
            case '"': simple = '"'; break;
            case '\\': simple = '\\'; break;
            case '/': simple = '/'; break;
            case 'b': simple = '\b'; break;
            case 'f': simple = '\f'; break;
            case 'n': simple = '\n'; break;
            case 'r': simple = '\r'; break;
            case 't': simple = '\t'; break;
            case 'u': break;
            default: return fail_at(j, "invalid escape in a string");
            }
            if (simple) {
                if (out) out[out_len++] = simple;
                j->p += 2;
                continue;
            }
            unsigned cp, low;
            if (j->end - j->p < 6 || hex4(j->p + 2, &cp) != 0)
                return fail_at(j, "invalid \\u escape");
            j->p += 6;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return fail_at(j, "lone low surrogate in a \\u escape");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
                    hex4(j->p + 2, &low) != 0 || low < 0xdc00 || low > 0xdfff)
                    return fail_at(j, "high surrogate not followed by a low surrogate");
                j->p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            }
            if (out) out_len += put_utf8(out + out_len, cp);
            continue;
        }
        if (c < 0x80) {
            if (out) out[out_len++] = c;
            j->p++;
            continue;
        }
        size_t n = jwke_utf8_sequence(j->p, j->end);
        if (!n)
            return fail_at(j, "invalid UTF-8 in a string");
        if (out) {
            memcpy(out + out_len, j->p, n);
            out_len += n;
        }
        j->p += n;
    }
    if (name) {
        name->ptr = out;
        name->len = out_len;
        j->arena_used += out_len;
    }
    return 0;
}

static int parse_number(json_parser *j)
{
    const unsigned char *p = j->p, *end = j->end;
    if (p < end && *p == '-') p++;
    if (p >= end) { j->p = p; return fail_at(j, "truncated number"); }
    if (*p == '0') {
        p++;
        if (p < end && *p >= '0' && *p <= '9') {
            j->p = p;
            return fail_at(j, "number with a leading zero");
        }
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        j->p = p;
        return fail_at(j, "invalid number");
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') { j->p = p; return fail_at(j, "invalid fraction"); }
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') { j->p = p; return fail_at(j, "invalid exponent"); }
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    return 0;
}

static int compare_names(const void *a, const void *b)
{
    const name_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->ptr, y->ptr, n) : 0;
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* Reports a duplicate name, shown printable and short: it came from the
 * input, and the message may be logged. */
static int fail_duplicate(json_parser *j, const name_ref *name)
{
    char shown[48];
    size_t n = 0;
    for (size_t i = 0; i < name->len && n < sizeof shown - 4; i++) {
        unsigned char c = name->ptr[i];
        shown[n++] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
    }
    if (n < name->len) {
        memcpy(shown + n, "...", 3);
        n += 3;
    }
    shown[n] = '\0';
    return jwke_fail(j->err, "duplicate member name '%s' in a JSON object", shown);
}

static int parse_value(json_parser *j, int depth);

/* Skips white space, then takes `c` if it comes next. */
static int take(json_parser *j, char c)
{
    skip_ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 1;
    }
    return 0;
}

/* After a member or an element: 1 when a ',' says another follows, 0 when
 * `close` ends the container, -1 (failed with `message`) otherwise. */
static int next_or_close(json_parser *j, char close, const char *message)
{
    if (take(j, ','))
        return 1;
    if (take(j, close))
        return 0;
    return fail_at(j, message);
}

static int parse_object(json_parser *j, int depth)
{
    size_t mark = j->n_names, arena_mark = j->arena_used;
    j->p++; /* '{' */
    if (take(j, '}'))
        return 0;
    for (int more = 1; more;) {
        skip_ws(j);
        if (j->p >= j->end || *j->p != '"')
            return fail_at(j, "expected a member name");
        if (j->n_names == j->cap_names) {
            size_t cap = j->cap_names ? 2 * j->cap_names : 16;
            name_ref *grown = realloc(j->names, cap * sizeof *grown);
            if (!grown)
                return jwke_fail_code(j->err, JWKE_ERR_OUT_OF_MEMORY, "out of memory checking JSON");
            j->names = grown;
            j->cap_names = cap;
        }
        if (parse_string(j, &j->names[j->n_names]) != 0)
            return -1;
        j->n_names++;
        if (!take(j, ':'))
            return fail_at(j, "expected ':' after a member name");
        if (parse_value(j, depth + 1) != 0)
            return -1;
        more = next_or_close(j, '}', "expected ',' or '}' in an object");
        if (more < 0)
            return -1;
    }
    /* Sorting makes the check O(n log n): a flat object of many thousand
     * members must not turn into a quadratic scan. */
    size_t count = j->n_names - mark;
    if (count > 1) {
        name_ref *names = j->names + mark;
        qsort(names, count, sizeof *names, compare_names);
        for (size_t i = 1; i < count; i++)
            if (compare_names(&names[i - 1], &names[i]) == 0)
                return fail_duplicate(j, &names[i]);
    }
    j->n_names = mark;
    j->arena_used = arena_mark;
    return 0;
}

static int parse_array(json_parser *j, int depth)
{
    j->p++; /* '[' */
    if (take(j, ']'))
        return 0;
    for (int more = 1; more;) {
        if (parse_value(j, depth + 1) != 0)
            return -1;
        more = next_or_close(j, ']', "expected ',' or ']' in an array");
        if (more < 0)
            return -1;
    }
    return 0;
}

static int parse_literal(json_parser *j, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return fail_at(j, "invalid literal");
    j->p += n;
    return 0;
}

static int parse_value(json_parser *j, int depth)
{
    skip_ws(j);
    if (j->p >= j->end)
        return fail_at(j, "expected a value");
    switch (*j->p) {
    case '{':
    case '[':
        if (depth >= j->max_depth)
            return jwke_fail(j->err, "JSON is nested more than %d levels deep", j->max_depth);
        return *j->p == '{' ? parse_object(j, depth) : parse_array(j, depth);
    case '"':
        return parse_string(j, NULL);
    case 't':
        return parse_literal(j, "true");
    case 'f':
        return parse_literal(j, "false");
    case 'n':
        return parse_literal(j, "null");
    default:
        if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9'))
            return parse_number(j);
        return fail_at(j, "unexpected character");
    }
}

int jwke_json_check(const char *text, size_t len, int require_object, int max_depth,
                    jwke_error *err)
{
    json_parser j = {0};
    j.start = j.p = (const unsigned char *)text;
    j.end = j.start + len;
    j.max_depth = max_depth > 0 ? max_depth : JWKE_JSON_DEFAULT_DEPTH;
    j.err = err;

    skip_ws(&j);
    if (j.p >= j.end)
        return jwke_fail(err, "empty JSON text");
    if (require_object && *j.p != '{')
        return jwke_fail(err, "JSON text is not an object");
    j.arena = malloc(len ? len : 1);
    if (!j.arena)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory checking JSON");
    int rc = parse_value(&j, 0);
    if (rc == 0) {
        skip_ws(&j);
        if (j.p != j.end)
            rc = fail_at(&j, "unexpected data after the JSON value");
    }
    free(j.arena);
    free(j.names);
    return rc;
}

int jwke_json_members(const char *text, size_t len, jwke_json_member_fn visit, void *ctx,
                      jwke_error *err)
{
    if (jwke_json_check(text, len, 1, 0, err) != 0)
        return -1;
    json_parser j = {0};
    j.start = j.p = (const unsigned char *)text;
    j.end = j.start + len;
    j.max_depth = JWKE_JSON_DEFAULT_DEPTH;
    j.err = err;
    j.arena = malloc(len); /* names only: values are never copied */
    if (!j.arena)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading JSON");
    int rc = 0;
    skip_ws(&j);
    j.p++; /* '{': checked above */
    for (;;) {
        skip_ws(&j);
        if (*j.p == '}')
            break;
        const unsigned char *member = j.p;
        name_ref name;
        j.arena_used = 0;
        if ((rc = parse_string(&j, &name)) != 0)
            break;
        skip_ws(&j);
        j.p++; /* ':' */
        skip_ws(&j);
        const unsigned char *value = j.p;
        if ((rc = parse_value(&j, 1)) != 0)
            break;
        rc = visit(ctx, (const char *)name.ptr, name.len, (const char *)member,
                   (size_t)(j.p - member), (const char *)value, (size_t)(j.p - value), err);
        if (rc != 0)
            break;
        skip_ws(&j);
        if (*j.p == ',')
            j.p++;
    }
    free(j.arena);
    free(j.names);
    return rc;
}

/* ---- compact JWS -------------------------------------------------------- */

static int is_b64url(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

int jwke_jws_split(const char *token, size_t len, const jwke_jws_limits *limits,
                   jwke_jws_segments *out, jwke_error *err)
{
    /* The size goes first: a 10 MB "token" is refused before it is read. */
    if (limits && limits->max_token && len > limits->max_token) {
        jwke_fail_code(err, JWKE_ERR_JWS_TOO_LARGE, "JWS of %zu bytes is larger than the limit of %zu "
                       "bytes", len, limits->max_token);
        return JWKE_JOSE_TOO_LARGE;
    }
    if (len == 0)
        return jwke_fail(err, "JWS is empty");
    if (token[0] == '{')
        return jwke_fail(err, "JWS JSON serialization is not supported (compact serialization only)");

    size_t dots[2] = {0, 0}, n_dots = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)token[i];
        if (c == '.') {
            if (n_dots < 2)
                dots[n_dots] = i;
            n_dots++;
            continue;
        }
        /* Still in the header and already past its limit: stop reading. */
        if (n_dots == 0 && limits && limits->max_header && i >= limits->max_header) {
            jwke_fail_code(err, JWKE_ERR_JWS_TOO_LARGE,
                           "JWS header segment is larger than the limit of %zu characters",
                           limits->max_header);
            return JWKE_JOSE_TOO_LARGE;
        }
        if (!is_b64url(c)) {
            if (c == '=')
                return jwke_fail(err, "JWS contains '=' at byte %zu: base64url padding is not "
                                      "allowed in a JWS (RFC 7515 section 2)", i);
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
                return jwke_fail(err, "JWS contains whitespace at byte %zu", i);
            return jwke_fail(err, "JWS contains a character that is not base64url or '.' at "
                                  "byte %zu", i);
        }
    }
    if (n_dots == 4)
        return jwke_fail(err, "token has five segments: that is a JWE, and only JWS is supported");
    if (n_dots != 2)
        return jwke_fail(err, "JWS must have exactly three dot-separated segments, got %zu",
                         n_dots + 1);

    out->header = token;
    out->header_len = dots[0];
    out->payload = token + dots[0] + 1;
    out->payload_len = dots[1] - dots[0] - 1;
    out->signature = token + dots[1] + 1;
    out->signature_len = len - dots[1] - 1;
    if (out->header_len == 0)
        return jwke_fail(err, "JWS header segment is empty");
    if (out->payload_len == 0)
        return jwke_fail(err, "JWS payload segment is empty (detached payloads are not supported)");
    if (out->signature_len == 0)
        return jwke_fail(err, "JWS signature segment is empty (unsecured JWS are never accepted)");
    return 0;
}

static int decode_segment(const char *what, const char *text, size_t len, unsigned char **out,
                          size_t *out_len, jwke_error *err)
{
    size_t room = jwke_b64url_decoded_max(len);
    *out = malloc(room);
    if (!*out)
        return jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory decoding the JWS %s", what);
    const char *why = NULL;
    long n = jwke_b64url_decode(text, len, *out, room, JWKE_B64_NOPAD, &why);
    if (n < 0)
        return jwke_fail(err, "JWS %s is not valid base64url: %s", what, why);
    *out_len = (size_t)n;
    return 0;
}

int jwke_jws_decode(const char *token, size_t len, const jwke_jws_limits *limits,
                    jwke_jws_decoded *out, jwke_error *err)
{
    memset(out, 0, sizeof *out);
    jwke_jws_segments s;
    int rc = jwke_jws_split(token, len, limits, &s, err);
    if (rc != 0) {
        jwke_fail_in(err, JWKE_ERR_JWS_INVALID);
        return rc;
    }
    if (decode_segment("header", s.header, s.header_len, &out->header, &out->header_len, err) ||
        decode_segment("payload", s.payload, s.payload_len, &out->payload, &out->payload_len,
                       err) ||
        decode_segment("signature", s.signature, s.signature_len, &out->signature,
                       &out->signature_len, err)) {
        jwke_jws_decoded_free(out);
        return jwke_fail_in(err, JWKE_ERR_JWS_INVALID);
    }
    jwke_error why;
    if (jwke_json_check((const char *)out->header, out->header_len, 1,
                        limits ? limits->max_depth : 0, &why) != 0) {
        jwke_fail_code(err, JWKE_ERR_JWS_INVALID, "JWS header: %s", why.message);
        jwke_jws_decoded_free(out);
        return -1;
    }
    out->signing_input_len = s.header_len + 1 + s.payload_len;
    return 0;
}

void jwke_jws_decoded_free(jwke_jws_decoded *decoded)
{
    free(decoded->header);
    free(decoded->payload);
    free(decoded->signature);
    memset(decoded, 0, sizeof *decoded);
}

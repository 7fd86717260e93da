/* A JSON encoder for JWT claims: core.json_claims(claims [, iat [, exp]]).
 *
 * Why not lua-cjson: Debian's writes every number with 14 significant
 * digits (a longer integer or a precise double is rounded without a word),
 * escapes "/" and formats integers through the floating-point path. Claims
 * are encoded once per token on the signing path, so this encoder is also
 * about speed. Numbers come out exactly: integers as integers, other
 * doubles in the shortest form that reads back to the same value.
 *
 * Tables are objects (string keys) or arrays (keys 1..n); cjson.null (a
 * NULL light userdata) is null; an empty table is {}. iat and exp, when
 * given and absent from the claims, are written first. Errors name the
 * claim by its path (a.b[0], indexes from 0 as in the JSON): a non-finite
 * number, a key that is not a string, a value that has no JSON form, a
 * string or name that is not valid UTF-8 (JSON text is UTF-8, RFC 8259; a
 * verifier refuses anything else, so signing it would make a token nobody
 * accepts), nesting deeper than 32. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_common.h"
#include "utf8.h"

#define MAX_DEPTH 32

static const char NOT_UTF8[] = "is not valid UTF-8";

typedef struct json_buffer {
    char *data;
    size_t len, cap;
    char inline_data[512];
    const char *error; /* static text, set on failure */
    /* The path of the claim that failed, built right to left while the
     * failure unwinds: path[path_start..] up to the terminating NUL. */
    char path[160];
    size_t path_start;
    int path_cut;
} json_buffer;

static int reserve(json_buffer *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 1;
    size_t cap = b->cap * 2;
    while (cap < b->len + more)
        cap *= 2;
    char *grown = b->data == b->inline_data ? malloc(cap) : realloc(b->data, cap);
    if (!grown) {
        b->error = "out of memory";
        return 0;
    }
    if (b->data == b->inline_data)
        memcpy(grown, b->data, b->len);
    b->data = grown;
    b->cap = cap;
    return 1;
}

static int put(json_buffer *b, const char *s, size_t n)
{
    if (!reserve(b, n))
        return 0;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 1;
}

/* 1 for the bytes a JSON string holds as they are: printable ASCII but
 * '"' and '\\' */
static const unsigned char plain_ascii[256] = {
    [0x20] = 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x22 '"' */
    [0x30] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    [0x40] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    [0x50] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x5c '\\' */
    [0x60] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    [0x70] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

static int put_string(json_buffer *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* room for the worst case (every byte as \u00XX) once, not per byte */
    if (!reserve(b, 6 * n + 2))
        return 0;
    char *o = b->data + b->len;
    *o++ = '"';
    const unsigned char *end = (const unsigned char *)s + n;
    for (size_t i = 0; i < n; i++) {
        /* a run of bytes written as they are, copied at once (a claim's
         * text is mostly that): a lookup per byte rather than the tests */
        size_t run = i;
        while (run < n && plain_ascii[(unsigned char)s[run]])
            run++;
        if (run > i) {
            memcpy(o, s + i, run - i);
            o += run - i;
            i = run;
            if (i == n)
                break;
        }
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            size_t seq = jwke_utf8_sequence((const unsigned char *)s + i, end);
            if (seq == 0) {
                b->error = NOT_UTF8;
                return 0;
            }
            memcpy(o, s + i, seq);
            o += seq;
            i += seq - 1;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 1;
}

/* Decimal digits of an integer, without printf's machinery. */
static int put_integer(json_buffer *b, long long v)
{
    char text[24], *p = text + sizeof text;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return put(b, p, (size_t)(text + sizeof text - p));
}

static int put_number(json_buffer *b, lua_State *L, int idx)
{
    char text[32];
    int n;
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx))
        return put_integer(b, (long long)lua_tointeger(L, idx));
#endif
    double d = (double)lua_tonumber(L, idx);
    if (!isfinite(d)) {
        b->error = "is not a finite number";
        return 0;
    }
    if (d == floor(d) && fabs(d) < 9007199254740992.0) /* an integer a double holds exactly */
        return put_integer(b, (long long)d);
    {
        /* the shortest of 15..17 significant digits that reads back exactly */
        n = snprintf(text, sizeof text, "%.15g", d);
        if (strtod(text, NULL) != d)
            n = snprintf(text, sizeof text, "%.16g", d);
        if (strtod(text, NULL) != d)
            n = snprintf(text, sizeof text, "%.17g", d);
    }
    return put(b, text, (size_t)n);
}

#define PATH_EMPTY(b) ((b)->path_start == sizeof (b)->path - 1)

/* Marks the path as cut: "..." stands for the outer names left out (the
 * innermost ones, nearest the fault, stay). */
static void cut_path(json_buffer *b)
{
    if (b->path_cut)
        return;
    b->path_start = b->path_start >= 3 ? b->path_start - 3 : 0;
    memcpy(b->path + b->path_start, "...", 3);
    b->path_cut = 1;
}

/* Puts text in front of the path, or cuts it there when it does not fit. */
static void prepend_path(json_buffer *b, const char *text, size_t n)
{
    if (b->path_cut)
        return;
    if (n + 3 > b->path_start) {
        cut_path(b);
        return;
    }
    b->path_start -= n;
    memcpy(b->path + b->path_start, text, n);
}

/* A member name as messages may show it: printable ASCII and well-formed
 * UTF-8 as they are; control characters, stray bytes and the backslash as
 * \xNN, so that a hostile name can neither split a log line nor make the
 * message invalid UTF-8. Returns the length written, or 0 when the name
 * does not fit in cap. */
static size_t shown_name(char *out, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    size_t len = 0;
    while (p < end) {
        size_t seq = *p >= 0x80 ? jwke_utf8_sequence(p, end) : (*p >= 0x20 && *p < 0x7f && *p != '\\');
        if (len + (seq ? seq : 4) > cap)
            return 0;
        if (seq) {
            memcpy(out + len, p, seq);
            len += seq;
            p += seq;
        } else {
            out[len++] = '\\';
            out[len++] = 'x';
            out[len++] = hex[*p >> 4];
            out[len++] = hex[*p & 15];
            p++;
        }
    }
    return len;
}

static void note_member(json_buffer *b, const char *name, size_t n)
{
    char shown[sizeof b->path];
    size_t len = shown_name(shown, sizeof shown, name, n);
    size_t dot = !PATH_EMPTY(b) && b->path[b->path_start] != '[';
    if ((len == 0 && n > 0) || len + dot + 3 > b->path_start) {
        cut_path(b);
        return;
    }
    if (dot)
        prepend_path(b, ".", 1);
    prepend_path(b, shown, len);
}

static void note_index(json_buffer *b, size_t index)
{
    char text[24];
    int n = snprintf(text, sizeof text, "[%zu]", index);
    prepend_path(b, text, (size_t)n);
}

static int put_value(json_buffer *b, lua_State *L, int idx, int depth);
static int registered_claim_ok(lua_State *L, const char *name, size_t n, int idx);
/* A registered claim of the wrong type met while encoding: json_claims
 * reports it as check_claim_types words it. */
static const char WRONG_TYPE[] = "has a registered claim of the wrong type";

/* A table with exactly the keys 1..n (n > 0) is an array. */
static size_t array_length(lua_State *L, int idx)
{
    size_t n = (size_t)lua_rawlen(L, idx);
    if (n == 0)
        return 0;
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        count++;
    }
    return count == n ? n : 0;
}

static int put_table(json_buffer *b, lua_State *L, int idx, int depth)
{
    if (depth > MAX_DEPTH) {
        b->error = "is nested deeper than 32 levels";
        return 0;
    }
    luaL_checkstack(L, 4, "claims too deep");
    size_t n = array_length(L, idx);
    if (n > 0) {
        if (!put(b, "[", 1))
            return 0;
        for (size_t i = 1; i <= n; i++) {
            if (i > 1 && !put(b, ",", 1))
                return 0;
            lua_rawgeti(L, idx, (int)i);
            int ok = put_value(b, L, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
            if (!ok) {
                note_index(b, i - 1);
                return 0;
            }
        }
        return put(b, "]", 1);
    }
    if (!put(b, "{", 1))
        return 0;
    int first = 1;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        int key = lua_gettop(L) - 1;
        if (lua_type(L, key) != LUA_TSTRING) {
            b->error = "has a member name that is not a string";
            lua_pop(L, 2);
            return 0;
        }
        size_t klen;
        const char *k = lua_tolstring(L, key, &klen);
        int ok = (first || put(b, ",", 1)) && put_string(b, k, klen);
        if (!ok && b->error == NOT_UTF8)
            b->error = "has a name that is not valid UTF-8";
        if (ok && depth == 1 && !registered_claim_ok(L, k, klen, key + 1)) {
            b->error = WRONG_TYPE;
            ok = 0;
        }
        ok = ok && put(b, ":", 1) && put_value(b, L, key + 1, depth + 1);
        if (!ok) {
            note_member(b, k, klen);
            lua_pop(L, 2);
            return 0;
        }
        first = 0;
        lua_pop(L, 1);
    }
    return put(b, "}", 1);
}

static int put_value(json_buffer *b, lua_State *L, int idx, int depth)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return put_string(b, s, n);
    }
    case LUA_TNUMBER:
        return put_number(b, L, idx);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? put(b, "true", 4) : put(b, "false", 5);
    case LUA_TTABLE:
        return put_table(b, L, idx, depth);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) /* cjson.null */
            return put(b, "null", 4);
        /* fall through */
    default:
        b->error = "has no JSON form";
        return 0;
    }
}

/* The registered claims' types (RFC 7519 section 4.1), on the signing path
 * of every token and on every verified one: exp, nbf and iat NumericDates
 * (finite numbers: cjson reads 1e999 as infinity, a token that never
 * expires), iss, sub and jti strings, aud a string or a non-empty list of
 * strings. Written in C, and checked while the claims are encoded: in Lua
 * it cost more than the encoding. */
enum claim_kind { NOT_REGISTERED, DATE_CLAIM, STRING_CLAIM, AUDIENCE };

static enum claim_kind claim_kind(const char *name, size_t n)
{
    if (n != 3)
        return NOT_REGISTERED;
    if (!memcmp(name, "exp", 3) || !memcmp(name, "nbf", 3) || !memcmp(name, "iat", 3))
        return DATE_CLAIM;
    if (!memcmp(name, "iss", 3) || !memcmp(name, "sub", 3) || !memcmp(name, "jti", 3))
        return STRING_CLAIM;
    return memcmp(name, "aud", 3) == 0 ? AUDIENCE : NOT_REGISTERED;
}

/* Whether the value at idx (absolute, not nil) has the claim's type. */
static int claim_type_ok(lua_State *L, enum claim_kind kind, int idx)
{
    int t = lua_type(L, idx);
    switch (kind) {
    case DATE_CLAIM:
        return t == LUA_TNUMBER && isfinite(lua_tonumber(L, idx));
    case STRING_CLAIM:
        return t == LUA_TSTRING;
    case AUDIENCE:
        break;
    default:
        return 1;
    }
    if (t != LUA_TTABLE)
        return t == LUA_TSTRING;
    /* a list: keys exactly 1..n, n > 0, every value a string */
    size_t n = (size_t)lua_rawlen(L, idx), count = 0;
    int ok = n > 0;
    lua_pushnil(L);
    while (ok && lua_next(L, idx) != 0) {
        ok = lua_type(L, -2) == LUA_TNUMBER && lua_type(L, -1) == LUA_TSTRING;
        if (ok) {
            lua_Number k = lua_tonumber(L, -2);
            ok = k >= 1 && k <= (lua_Number)n && k == floor(k);
            count++;
        }
        lua_pop(L, ok ? 1 : 2);
    }
    return ok && count == n;
}

/* The first registered claim of the wrong type, in the order exp, nbf,
 * iat, iss, sub, jti, aud (whatever order a table iterates in), as a
 * failure. idx is absolute. */
static int check_claim_types(lua_State *L, int idx, jwke_error *err)
{
    static const char *const names[7] = {"exp", "nbf", "iat", "iss", "sub", "jti", "aud"};
    for (int i = 0; i < 7; i++) {
        lua_getfield(L, idx, names[i]);
        enum claim_kind kind = claim_kind(names[i], 3);
        int t = lua_type(L, -1);
        if (t == LUA_TNIL || claim_type_ok(L, kind, lua_gettop(L))) {
            lua_pop(L, 1);
            continue;
        }
        const char *got = t == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL
                              ? "null" /* cjson.null */
                              : lua_typename(L, t);
        lua_pop(L, 1);
        if (kind == DATE_CLAIM)
            return jwke_fail_code(err, JWKE_ERR_JWT_CLAIM_INVALID,
                                  "claim '%s' must be a NumericDate (a finite number of seconds), got %s",
                                  names[i], got);
        if (kind == STRING_CLAIM)
            return jwke_fail_code(err, JWKE_ERR_JWT_CLAIM_INVALID, "claim '%s' must be a string", names[i]);
        return jwke_fail_code(err, JWKE_ERR_JWT_CLAIM_INVALID,
                              "claim 'aud' must be a string or a non-empty list of strings");
    }
    return 0;
}

static int registered_claim_ok(lua_State *L, const char *name, size_t n, int idx)
{
    return claim_type_ok(L, claim_kind(name, n), idx);
}

/* check_claim_types(claims) -> true | nil, message, ERR_JWT_CLAIM_INVALID */
static int l_check_claim_types(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    jwke_error err;
    if (check_claim_types(L, 1, &err) != 0)
        return jwke_push_error(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* json_claims(claims [, iat [, exp]]) -> JSON text | nil, message, code:
 * ERR_JWT_CLAIM_INVALID for a registered claim of the wrong type (as
 * check_claim_types says it), else ERR_JWT_CLAIMS */
static int l_json_claims(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    json_buffer b;
    b.data = b.inline_data;
    b.len = 0;
    b.cap = sizeof b.inline_data;
    b.error = NULL;
    b.path_start = sizeof b.path - 1;
    b.path_cut = 0;
    b.path[b.path_start] = '\0';

    jwke_error err;
    if (lua_getmetatable(L, 1)) {
        /* an __index could answer for a registered claim the encoding's
         * raw pass does not see: checked by name first, as always */
        lua_pop(L, 1);
        if (check_claim_types(L, 1, &err) != 0)
            return jwke_push_error(L, &err);
    }
    int ok = 1;
    if (array_length(L, 1) > 0) {
        ok = 0;
        b.error = "must be an object, not a list";
    }
    /* iat and exp, when given and missing, lead the object */
    int extra = 0;
    static const char *const names[2] = {"iat", "exp"};
    for (int i = 0; i < 2 && ok; i++) {
        if (lua_isnoneornil(L, 2 + i))
            continue;
        lua_getfield(L, 1, names[i]);
        int present = !lua_isnil(L, -1);
        lua_pop(L, 1);
        if (present)
            continue;
        ok = put(&b, extra ? "," : "{", 1) && put_string(&b, names[i], 3) && put(&b, ":", 1) &&
             put_number(&b, L, 2 + i);
        extra = 1;
    }
    if (ok) {
        size_t mark = b.len;
        ok = put_table(&b, L, 1, 1);
        if (ok && extra) {
            /* splice: drop the object's own "{" (or turn "{}" into "}") */
            if (b.len - mark == 2) {
                b.len = mark;
                ok = put(&b, "}", 1);
            } else {
                b.data[mark] = ',';
            }
        }
    }
    if (!ok) {
        if (b.data != b.inline_data)
            free(b.data);
        /* a registered claim's type is checked before the encoding (the
         * encoding stops at its first fault, which may come first) */
        if (check_claim_types(L, 1, &err) != 0)
            return jwke_push_error(L, &err);
        if (!PATH_EMPTY(&b))
            jwke_fail_code(&err, JWKE_ERR_JWT_CLAIMS, "claim '%s' %s", b.path + b.path_start, b.error);
        else
            jwke_fail_code(&err, JWKE_ERR_JWT_CLAIMS, "claims %s", b.error);
        return jwke_push_error(L, &err);
    }
    lua_pushlstring(L, b.data, b.len);
    if (b.data != b.inline_data)
        free(b.data);
    return 1;
}

void jwke_open_json(lua_State *L)
{
    lua_pushcfunction(L, l_json_claims);
    lua_setfield(L, -2, "json_claims");
    lua_pushcfunction(L, l_check_claim_types);
    lua_setfield(L, -2, "check_claim_types");
}

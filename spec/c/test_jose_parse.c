/* Strict JSON checking and compact JWS splitting/decoding. */
#include <stdlib.h>

#include "check.h"
#include "jose_parse.h"

static int json_ok(const char *text, int require_object)
{
    jwke_error err;
    return jwke_json_check(text, strlen(text), require_object, 0, &err) == 0;
}

/* 1 when a call failed (rc != 0) with a message holding fragment. */
static int failed_with(int rc, const jwke_error *err, const char *fragment)
{
    if (rc == 0)
        return 0;
    if (!strstr(err->message, fragment)) {
        fprintf(stderr, "message '%s' lacks '%s'\n", err->message, fragment);
        return 0;
    }
    return 1;
}

static int json_fails_with(const char *text, const char *fragment)
{
    jwke_error err;
    return failed_with(jwke_json_check(text, strlen(text), 1, 0, &err), &err, fragment);
}

static void test_json(void)
{
    CHECK(json_ok("{}", 1));
    CHECK(json_ok(" {\"alg\":\"ES256\",\"kid\":\"k1\",\"n\":[1,2.5,-0.5e+3,true,false,null]} ", 1));
    CHECK(json_ok("{\"a\":{\"a\":{\"a\":1}}}", 1)); /* same name in different objects */
    CHECK(json_ok("{\"\\u00e9\":\"\xc3\xa9\",\"\\ud83d\\ude00\":\"\xf0\x9f\x98\x80\"}", 1));
    CHECK(json_ok("[1]", 0));
    CHECK(json_ok("\"x\"", 0));

    CHECK(json_fails_with("{\"alg\":\"ES256\",\"alg\":\"none\"}", "duplicate member name 'alg'"));
    CHECK(json_fails_with("{\"alg\":1,\"\\u0061lg\":2}", "duplicate member name 'alg'"));
    CHECK(json_fails_with("{\"x\":{\"k\":1,\"k\":2}}", "duplicate"));
    CHECK(json_fails_with("[]", "not an object"));
    CHECK(json_fails_with("\"alg\"", "not an object"));
    CHECK(json_fails_with("", "empty"));
    CHECK(json_fails_with("   ", "empty"));
    CHECK(json_fails_with("{\"a\":1} x", "after the JSON value"));
    CHECK(json_fails_with("{\"a\":1}{}", "after the JSON value"));
    CHECK(json_fails_with("{\"a\":1,}", "member name"));
    CHECK(json_fails_with("{\"a\" 1}", "':'"));
    CHECK(json_fails_with("{\"a\":NaN}", "unexpected character"));
    CHECK(json_fails_with("{\"a\":Infinity}", "unexpected character"));
    CHECK(json_fails_with("{\"a\":0x10}", "expected ','"));
    CHECK(json_fails_with("{\"a\":01}", "leading zero"));
    CHECK(json_fails_with("{\"a\":1.}", "fraction"));
    CHECK(json_fails_with("{\"a\":1e}", "exponent"));
    CHECK(json_fails_with("{\"a\":-}", "number"));
    CHECK(json_fails_with("{\"a\":tru}", "literal"));
    CHECK(json_fails_with("{'a':1}", "member name"));
    CHECK(json_fails_with("{\"a\":\"\x01\"}", "control character"));
    CHECK(json_fails_with("{\"a\":\"\\x\"}", "invalid escape"));
    CHECK(json_fails_with("{\"a\":\"\\u12\"}", "\\u escape"));
    CHECK(json_fails_with("{\"a\":\"\\ud800\"}", "surrogate"));
    CHECK(json_fails_with("{\"a\":\"\\udc00\"}", "surrogate"));
    CHECK(json_fails_with("{\"a\":\"\xff\"}", "UTF-8"));
    CHECK(json_fails_with("{\"a\":\"\xc0\xaf\"}", "UTF-8"));        /* overlong '/' */
    CHECK(json_fails_with("{\"a\":\"\xed\xa0\x80\"}", "UTF-8"));    /* encoded surrogate */
    CHECK(json_fails_with("{\"a\":\"\xf4\x90\x80\x80\"}", "UTF-8")); /* above U+10FFFF */
    CHECK(json_fails_with("{\"a\":\"abc", "unterminated"));
    CHECK(json_fails_with("{\"a\":1", "expected ','"));

    /* Nesting is bounded. */
    char deep[200];
    size_t n = 0;
    deep[n++] = '{';
    deep[n++] = '"';
    deep[n++] = 'a';
    deep[n++] = '"';
    deep[n++] = ':';
    for (int i = 0; i < 40; i++)
        deep[n++] = '[';
    for (int i = 0; i < 40; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = '\0';
    CHECK(json_fails_with(deep, "nested more than 32"));
    jwke_error err;
    CHECK(jwke_json_check(deep, n, 1, 64, &err) == 0);

    /* Many members: the duplicate check stays fast and still finds one. */
    size_t members = 20000;
    char *big = malloc(members * 16 + 16);
    n = 0;
    big[n++] = '{';
    for (size_t i = 0; i < members; i++)
        n += (size_t)sprintf(big + n, "%s\"m%zu\":1", i ? "," : "", i);
    big[n++] = '}';
    big[n] = '\0';
    CHECK(jwke_json_check(big, n, 1, 0, &err) == 0);
    n += (size_t)sprintf(big + n - 1, ",\"m7\":2}") - 1;
    CHECK(jwke_json_check(big, n, 1, 0, &err) == -1 && strstr(err.message, "'m7'"));
    free(big);
}

static int split_fails_with(const char *token, const char *fragment)
{
    jwke_jws_limits limits = {1000, 100, 0};
    jwke_jws_decoded d;
    jwke_error err;
    int rc = jwke_jws_decode(token, strlen(token), &limits, &d, &err);
    if (rc == 0)
        jwke_jws_decoded_free(&d);
    return failed_with(rc, &err, fragment);
}

static void test_jws(void)
{
    /* {"alg":"ES256"} . "hello" . 3 bytes */
    const char *good = "eyJhbGciOiJFUzI1NiJ9.aGVsbG8.AQID";
    jwke_jws_limits limits = {1000, 100, 0};
    jwke_jws_decoded d;
    jwke_error err;
    CHECK(jwke_jws_decode(good, strlen(good), &limits, &d, &err) == 0);
    CHECK(d.header_len == 15 && memcmp(d.header, "{\"alg\":\"ES256\"}", 15) == 0);
    CHECK(d.payload_len == 5 && memcmp(d.payload, "hello", 5) == 0);
    CHECK(d.signature_len == 3 && d.signature[2] == 3);
    CHECK(d.signing_input_len == strlen("eyJhbGciOiJFUzI1NiJ9.aGVsbG8"));
    jwke_jws_decoded_free(&d);

    CHECK(split_fails_with("", "empty"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVsbG8", "exactly three"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVsbG8.AQID.AQID", "exactly three"));
    CHECK(split_fails_with("a.b.c.d.e", "JWE"));
    CHECK(split_fails_with(".aGVsbG8.AQID", "header segment is empty"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9..AQID", "payload segment is empty"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVsbG8.", "signature segment is empty"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVsbG8=.AQID", "padding"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVsbG8.AQID\n", "whitespace"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVs+G8.AQID", "not base64url"));
    CHECK(split_fails_with("{\"payload\":\"x\"}", "JSON serialization"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVsbG9.AQID", "payload is not valid base64url"));
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiJ9.aGVsbG8.A", "signature is not valid base64url"));
    CHECK(split_fails_with("WzFd.aGVsbG8.AQID", "not an object"));      /* [1] */
    CHECK(split_fails_with("bm9wZQ.aGVsbG8.AQID", "not an object"));    /* nope */
    /* {"alg":"ES256","alg":"none"} */
    CHECK(split_fails_with("eyJhbGciOiJFUzI1NiIsImFsZyI6Im5vbmUifQ.aGVsbG8.AQID", "duplicate"));

    /* Limits come first, and say so. */
    char *huge = malloc(5000);
    memset(huge, 'A', 4999);
    huge[4999] = '\0';
    CHECK(jwke_jws_decode(huge, 4999, &limits, &d, &err) == JWKE_JOSE_TOO_LARGE);
    huge[150] = '.';
    huge[160] = '.';
    jwke_jws_limits header_only = {0, 100, 0};
    CHECK(jwke_jws_decode(huge, 4999, &header_only, &d, &err) == JWKE_JOSE_TOO_LARGE);
    CHECK(strstr(err.message, "header segment is larger") != NULL);
    free(huge);
}

int main(void)
{
    test_json();
    test_jws();
    return check_summary();
}

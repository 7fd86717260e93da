/* Strict parsing of untrusted JOSE input: compact JWS splitting and
 * decoding, and a strict JSON checker.
 *
 * lua-cjson is lenient where JOSE must not be: of two members with the
 * same name it silently keeps the last (a verifier and another party that
 * keeps the first then disagree about "alg" or "kid"), and it accepts NaN,
 * Infinity, hexadecimal numbers and invalid UTF-8. Every JWS header, JWT
 * claims set and JWK Set text therefore passes jwke_json_check before cjson
 * sees it. The checker only validates; it builds nothing. */
#ifndef JWKE_JOSE_PARSE_H
#define JWKE_JOSE_PARSE_H

#include <stddef.h>

#include "error.h"

/* Return value of the functions below when an input is over a size limit
 * (callers report it apart from malformed input); -1 is malformed. */
#define JWKE_JOSE_TOO_LARGE (-2)

/* Nesting allowed when the caller gives no limit: headers and claims are
 * shallow; deep nesting only ever comes from an attacker. */
#define JWKE_JSON_DEFAULT_DEPTH 32

/* 0 when text is exactly one RFC 8259 JSON value (an object when
 * require_object), in valid UTF-8 without lone surrogates, nested at most
 * max_depth deep, with no object holding two members of the same name
 * (names compared after unescaping, so "a" and "\u0061" collide). Else -1
 * with a message giving the reason and the byte offset. */
int jwke_json_check(const char *text, size_t len, int require_object, int max_depth,
                    jwke_error *err);

/* Called for each member of a top-level object: the unescaped name, the
 * member as written ("name": value) and the value as written. */
typedef int (*jwke_json_member_fn)(void *ctx, const char *name, size_t name_len,
                                   const char *member, size_t member_len, const char *value,
                                   size_t value_len, jwke_error *err);

/* jwke_json_check (an object, default depth), then visit for each member in
 * order; stops at the first non-zero return. Copies no value. */
int jwke_json_members(const char *text, size_t len, jwke_json_member_fn visit, void *ctx,
                      jwke_error *err);

/* Size limits for a compact JWS; 0 means "no limit". */
typedef struct jwke_jws_limits {
    size_t max_token;  /* whole token, in characters */
    size_t max_header; /* encoded header segment, in characters */
    int max_depth;     /* header JSON nesting; 0 for JWKE_JSON_DEFAULT_DEPTH */
} jwke_jws_limits;

/* The three segments of a compact JWS, pointing into the token. */
typedef struct jwke_jws_segments {
    const char *header, *payload, *signature;
    size_t header_len, payload_len, signature_len;
} jwke_jws_segments;

/* Splits a compact JWS: exactly two dots, only base64url characters, no
 * empty segment (an empty signature is an unsecured JWS; an empty payload
 * is a detached one, which jwkengine does not support). Size limits are
 * checked before anything else is looked at. */
int jwke_jws_split(const char *token, size_t len, const jwke_jws_limits *limits,
                   jwke_jws_segments *out, jwke_error *err);

/* A split and decoded compact JWS. The buffers are malloc'd. */
typedef struct jwke_jws_decoded {
    unsigned char *header;    /* JSON text, already through jwke_json_check */
    size_t header_len;
    unsigned char *payload;
    size_t payload_len;
    unsigned char *signature;
    size_t signature_len;
    size_t signing_input_len; /* characters before the second dot */
} jwke_jws_decoded;

/* Splits, decodes each segment (strict base64url, no padding) and checks
 * that the header is a strict JSON object. */
int jwke_jws_decode(const char *token, size_t len, const jwke_jws_limits *limits,
                    jwke_jws_decoded *out, jwke_error *err);
void jwke_jws_decoded_free(jwke_jws_decoded *decoded);

#endif

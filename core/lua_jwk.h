/* JWK tables from Lua as jwke_jwk_members (swkey.h), and the binary
 * members by index for code that writes a table back. */
#ifndef JWKE_LUA_JWK_H
#define JWKE_LUA_JWK_H

#include <stddef.h>

#include "lua_common.h"
#include "swkey.h"

/* Reads the JWK table at idx into m with raw access (metamethods never
 * run). kty and crv point to static names; binary members are decoded
 * copies. with_private: also d, p, q, dp, dq, qi (and refuse 'oth').
 * Release m with jwke_jwk_members_clear, also after a failure. */
int jwke_read_jwk(lua_State *L, int idx, int with_private, jwke_jwk_members *m,
                  jwke_error *err);

/* The binary members (n, e, d, ... x, y): how many, each one's JWK name,
 * and where member i lives in m. */
size_t jwke_jwk_member_count(void);
const char *jwke_jwk_member_name(size_t i);
jwke_bytes *jwke_jwk_member(jwke_jwk_members *m, size_t i);

#endif

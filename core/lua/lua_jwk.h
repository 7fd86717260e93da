/* JWK tables from Lua as jwke_jwk_members (swkey.h, which also holds the
 * one table of binary members). */
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

#endif

-- The development rock: `luarocks make` from a checkout builds this one or
-- the released version's (same build; only the source differs).
rockspec_format = "3.0"
package = "jwkengine"
version = "scm-1"
source = {
   url = "git+https://github.com/jwkengine/jwkengine.git",
}
description = {
   summary = "JWT signing keys in an HSM over PKCS#11, published as JWK Sets",
   detailed = [[
An embedded, Lua-scriptable key engine: it keeps JWT-signing keys in an HSM
reached over PKCS#11, maps token objects to JWKs and JWK Sets and signs with
them; keys the HSM lacks come from a software store sealed with AES-256-GCM
in Ory Hydra's format. Builds for Lua 5.4 and for LuaJIT (OpenResty).
]],
   homepage = "https://github.com/jwkengine/jwkengine",
   -- No licence has been chosen yet (there is no LICENSE file): choose one
   -- before a release is uploaded; luarocks lint needs the field set.
   license = "not chosen yet",
}
dependencies = {
   "lua >= 5.1, < 5.5",
   "lua-cjson",
}
external_dependencies = {
   OPENSSL = { header = "openssl/evp.h" },
   P11KIT = { header = "p11-kit-1/p11-kit/pkcs11.h" },
}
build = {
   type = "cmake",
   variables = {
      JWKE_ROCK = "ON",
      CMAKE_BUILD_TYPE = "Release",
      LUA_INCDIR = "$(LUA_INCDIR)",
      JWKE_ROCK_LIBDIR = "$(LIBDIR)",
      JWKE_ROCK_LUADIR = "$(LUADIR)",
   },
}

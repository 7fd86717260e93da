-- What reaches the software store from outside is checked: set names and
-- kids (a NUL must not alias another set, control characters are refused)
-- and the stored rows themselves (a sealed JWK is held to the rules of an
-- imported one). On a real SQLite file and a real PostgreSQL server.
local cjson = require("cjson")
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local store_module = require("jwkengine.store")
local stores = require("helpers.stores")
local hydra_aead = require("helpers.hydra_aead").run
local refused = require("helpers.refusal").refused

local SECRET = "input-secret-0123456789"

local function open(dsn, secrets) return stores.open_engine(dsn, secrets or SECRET) end


stores.describe_each("store input", function(database)
  it("refuses a set name or kid with a NUL or control character, and the set it would alias is untouched", function()
    local engine = assert(open(database.dsn))
    assert(engine:generate("victim", "ES256", { kid = "k" }))
    local before = assert(engine:key_set_json("victim"))
    local bad_set = "victim\0x"
    local other = assert(core.generate_software_key("ES256")):private_jwk()
    local bad = "ERR_INVALID_ARGUMENT"
    local set_message = "set must not contain control characters (byte 0x00 at position 7)"
    refused(bad, set_message, engine:sign(bad_set, "x"))
    refused(bad, set_message, engine:sign_jwt(bad_set, { sub = "x" }))
    refused(bad, set_message, engine:delete(bad_set))
    refused(bad, set_message, engine:delete(bad_set, "k"))
    refused(bad, set_message, engine:generate(bad_set, "ES256", { kid = "k2" }))
    refused(bad, set_message, engine:import(bad_set, other, { kid = "k3" }))
    refused(bad, set_message, engine:update(bad_set, other, { kid = "k" }))
    refused(bad, set_message, engine:key(bad_set, "k"))
    refused(bad, set_message, engine:key_set(bad_set))
    refused(bad, set_message, engine:key_set_json(bad_set))
    refused(bad, set_message, engine:verify(bad_set, assert(engine:sign("victim", "x"))))
    refused(bad, "set must not contain control characters (byte 0x00 at position 2)",
      engine:generate("a\0b", "ES256"))
    refused(bad, "set must not contain control characters (byte 0x0a at position 5)",
      engine:generate("line\nbreak", "ES256"))
    -- the kid, however it is passed
    refused(bad, "kid must not contain control characters", engine:key("victim", "k\0x"))
    refused(bad, "kid must not contain control characters", engine:delete("victim", "k\0x"))
    refused(bad, "options.kid must not contain control characters",
      engine:sign("victim", "x", { kid = "k\0x" }))
    refused(bad, "options.kid must not contain control characters",
      engine:generate("victim", "ES256", { kid = "k\0x" }))
    local with_kid = assert(core.generate_software_key("ES256")):private_jwk()
    with_kid.kid = "k\0x"
    refused(bad, "kid must not contain control characters", engine:import("victim", with_kid))
    -- a kid of the wrong type inside a JWK is bad input, not a programming error
    with_kid.kid = { "k" }
    refused("ERR_KEY_IMPORT", "kid must be a string, got table", engine:import("victim", with_kid))
    refused("ERR_KEY_IMPORT", "kid must be a string, got number",
      engine:import("victim", '{"kty":"EC","crv":"P-256","x":"' .. with_kid.x .. '","y":"' .. with_kid.y
        .. '","d":"' .. with_kid.d .. '","kid":5}'))
    assert.has_error(function() engine:sign({}, "x") end, "set must be a string, got table")

    engine:refresh("victim")
    assert.equals(before, assert(engine:key_set_json("victim")))
    local s = assert(store_module.open(database.dsn))
    assert.equals(1, #assert(s:rows("victim")))
    assert.same({}, assert(s:rows("a")))
    s:close()
    engine:close()
  end)

  it("never acts on a shortened name when the store is called directly", function()
    local engine = assert(open(database.dsn))
    assert(engine:generate("victim", "ES256", { kid = "k" }))
    engine:close()
    local s = assert(store_module.open(database.dsn))
    local bad = "ERR_INVALID_ARGUMENT"
    refused(bad, "set name: an SQL value cannot hold a NUL byte", s:rows("victim\0x"))
    refused(bad, "set name: an SQL value cannot hold a NUL byte", s:set_exists("victim\0x"))
    refused(bad, "set name: an SQL value cannot hold a NUL byte", s:delete("victim\0x"))
    refused(bad, "kid: an SQL value cannot hold a NUL byte", s:delete("victim", "k\0x"))
    refused(bad, "set name: an SQL value cannot hold a NUL byte", s:insert("a\0b", "k", "data"))
    refused(bad, "kid: an SQL value cannot hold a NUL byte", s:insert("a", "k\0b", "data"))
    refused(bad, "kid: an SQL value must be a string, got table", s:insert("a", {}, "data"))
    assert.equals(1, #assert(s:rows("victim")))
    assert.same({}, assert(s:rows("a")))
    s:close()
  end)

  it("holds a decrypted row to the rules of an import: a bad alg, use or curve is ERR_KEY_INVALID, never published", function()
    local good = assert(core.generate_software_key("ES256"))
    local s = assert(store_module.open(database.dsn))
    local function stored_row(set, members)
      local jwk = good:private_jwk()
      jwk.kid, jwk.use = "k", "sig"
      for name, value in pairs(members) do jwk[name] = value end
      assert(s:insert(set, "k", hydra_aead("seal", SECRET, cjson.encode(jwk))))
    end
    local cases = {
      { set = "alg-none", members = { alg = "none" }, fragment = "alg must be one of the algorithms jwkengine signs with, got 'none'" },
      { set = "alg-hs256", members = { alg = "HS256" }, fragment = "got 'HS256'" },
      { set = "alg-table", members = { alg = { "ES256" } }, fragment = "got table" },
      { set = "alg-null", members = { alg = cjson.null }, fragment = "got null" },
      { set = "alg-number", members = { alg = 5 }, fragment = "got number" },
      { set = "alg-misfit", members = { alg = "ES384" }, fragment = "needs curve P-384" },
      { set = "alg-rsa", members = { alg = "RS256" }, fragment = "does not fit" },
      { set = "use-table", members = { alg = "ES256", use = { "sig" } }, fragment = "use must be 'sig' or 'enc', got table" },
      { set = "use-other", members = { alg = "ES256", use = "wrap" }, fragment = "got 'wrap'" },
      { set = "crv-misfit", members = { crv = "P-384" }, fragment = "P-384" },
    }
    for _, case in ipairs(cases) do stored_row(case.set, case.members) end
    s:close()

    local engine = assert(open(database.dsn))
    assert(engine:generate("fine", "ES256", { kid = "k" }))
    local token = assert(engine:sign("fine", "x"))
    local jwt = assert(engine:sign_jwt("fine", { sub = "x" }, { lifetime = 60 }))
    for _, case in ipairs(cases) do
      local where = "key set '" .. case.set .. "' key 'k': "
      local function bad(value, err, code)
        refused("ERR_KEY_INVALID", where, value, err, code)
        assert.matches(case.fragment, err, 1, true)
      end
      bad(engine:key_set(case.set))
      bad(engine:key_set_json(case.set))
      bad(engine:key(case.set, "k"))
      bad(engine:sign(case.set, "x"))
      bad(engine:sign(case.set, "x", { kid = "k" }))
      bad(engine:sign_jwt(case.set, { sub = "x" }))
      bad(engine:verify(case.set, token))
      bad(engine:verify_jwt(case.set, jwt))
      bad(engine:thumbprint(case.set, "k"))
    end
    engine:close()
  end)

  it("returns ERR_KEY_DECRYPT from verify when no row of the set decrypts", function()
    local engine = assert(open(database.dsn, "another-secret-0123456789"))
    assert(engine:generate("sealed-elsewhere", "ES256", { kid = "k1" }))
    assert(engine:generate("sealed-elsewhere", "ES256", { kid = "k2" }))
    local token = assert(engine:sign("sealed-elsewhere", "x"))
    local jwt = assert(engine:sign_jwt("sealed-elsewhere", { sub = "x" }, { lifetime = 60 }))
    engine:close()
    engine = assert(open(database.dsn))
    refused("ERR_KEY_DECRYPT", "key set 'sealed-elsewhere' key 'k2'", engine:verify("sealed-elsewhere", token))
    refused("ERR_KEY_DECRYPT", "key set 'sealed-elsewhere' key 'k2'", engine:verify_jwt("sealed-elsewhere", jwt))
    engine:close()
  end)

  it("refuses an import whose alg is not one jwkengine signs with, or does not fit, without raising", function()
    local engine = assert(open(database.dsn))
    local jwk = assert(core.generate_software_key("ES256")):private_jwk()
    refused("ERR_KEY_IMPORT", "got 'HS256'", engine:import("imp", jwk, { alg = "HS256" }))
    refused("ERR_KEY_IMPORT", "got 'none'", engine:import("imp", jwk, { alg = "none" }))
    refused("ERR_KEY_IMPORT", "does not fit", engine:import("imp", jwk, { alg = "RS256" }))
    jwk.alg = 5
    refused("ERR_KEY_IMPORT", "got number", engine:import("imp", cjson.encode(jwk)))
    jwk.alg = { "ES256" }
    refused("ERR_KEY_IMPORT", "got table", engine:import("imp", jwk))
    refused("ERR_KEY_SET_NOT_FOUND", "'imp'", engine:key_set("imp"))
    engine:close()
  end)

  it("answers a sign alg jwkengine does not sign with, or one that does not fit the key, with a code", function()
    local engine = assert(open(database.dsn))
    assert(engine:generate("s", "ES256", { kid = "k" }))
    for _, alg in ipairs({ "HS256", "none", "RSA-OAEP" }) do
      refused("ERR_UNSUPPORTED_ALG", "cannot sign with algorithm '" .. alg .. "'",
        engine:sign("s", "x", { alg = alg }))
      refused("ERR_UNSUPPORTED_ALG", "cannot sign with algorithm '" .. alg .. "'",
        engine:sign_jwt("s", { sub = "x" }, { alg = alg }))
    end
    -- a key signs only with its own alg (key_rules.signing_alg)
    refused("ERR_KEY_USE", "is for alg ES256 and does not sign with RS256", engine:sign("s", "x", { alg = "RS256" }))
    assert.has_error(function() engine:sign("s", "x", { alg = 5 }) end, "options.alg must be a string, got number")
    assert.has_error(function() engine:sign("s", "x", { typ = {} }) end, "options.typ must be a string, got table")
    engine:close()
  end)
end)

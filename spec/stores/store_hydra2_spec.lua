-- Ory Hydra 2.x's key table, both ways: the exact `hydra_jwk` and `networks`
-- DDL of Hydra 2.x's SQLite and PostgreSQL dumps, rows sealed by an
-- independent implementation of Hydra's format, rows jwkengine writes opened
-- by it; and Hydra 1.x's table (the one jwkengine creates) beside it.
local cjson = require("cjson")
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local store_module = require("jwkengine.store")
local luasql = require("jwkengine.store.luasql")
local hydra2_schema = require("helpers.hydra2_schema")
local hydra_aead = require("helpers.hydra_aead").run
local stores = require("helpers.stores")
local verifier = require("helpers.verifier")

local SECRET = "first-secret-0123456789"
local OLD_SECRET = "older-secret-0123456789"
local NETWORK = "5d8a2e0c-3b7f-4c1e-9a6d-2f4b8c0e1a37"
local OTHER_NETWORK = "9e1f4a6b-7c2d-4e8f-b3a5-6d0c1e2f3a4b"
local UUID_PATTERN = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

-- Hydra's side of the database: the test's own SQL over a plain connection.
local function connect(dsn)
  local settings = assert(store_module.parse_dsn(dsn))
  if settings.kind == "sqlite" then return assert(luasql.sqlite(settings.path)) end
  return assert(luasql.postgres(settings))
end

local function add_network(db, id)
  assert(db:exec("INSERT INTO networks (id, created_at, updated_at) VALUES ("
    .. db:quote(id) .. ", CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
end

local function create_hydra2_tables(db, networks)
  for _, statement in ipairs(hydra2_schema[db.dialect]) do assert(db:exec(statement)) end
  for _, id in ipairs(networks) do add_network(db, id) end
end

-- A private JWK sealed by the independent implementation, stored as Hydra
-- 2.x stores it: under a network, with a UUID pk. Returns the key.
local function hydra_writes(db, network, secret, set, kid)
  local key = assert(core.generate_software_key("ES256"))
  local jwk = key:private_jwk()
  jwk.kid, jwk.alg, jwk.use = kid, "ES256", "sig"
  local sealed = hydra_aead("seal", secret, cjson.encode(jwk))
  assert(db:exec(string.format("INSERT INTO hydra_jwk (pk, nid, sid, kid, version, keydata) VALUES (%s, %s, %s, %s, 0, %s)",
    db:quote(core.uuid()), db:quote(network), db:quote(set), db:quote(kid), db:quote(sealed))))
  return key
end

local function rows_of(db, set)
  local has_nid = false
  for _, column in ipairs(assert(db:query(db.dialect == "sqlite" and "PRAGMA table_info(hydra_jwk)"
    or "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'hydra_jwk'"))) do
    if column.name == "nid" then has_nid = true end
  end
  return assert(db:query(string.format("SELECT pk, %s AS nid, sid, kid, keydata FROM hydra_jwk WHERE sid = %s ORDER BY kid",
    has_nid and "nid" or "NULL", db:quote(set))))
end

local function open(dsn, secrets, options) return stores.open_engine(dsn, secrets or SECRET, options) end

-- The two shapes of hydra_jwk. `prepare` readies a fresh database; `network`
-- is what rows jwkengine writes must carry; `pk` checks a written pk.
local SCHEMAS = {
  {
    name = "Hydra 1.x table",
    prepare = function() end,
    network = nil,
    pk = function(pk) assert.matches("^%d+$", pk) end,
  },
  {
    name = "Hydra 2.x table",
    prepare = function(db) create_hydra2_tables(db, { NETWORK }) end,
    network = NETWORK,
    pk = function(pk) assert.matches(UUID_PATTERN, pk) end,
  },
}

stores.describe_each("Hydra's key tables", function(database)
  local db

  before_each(function() db = connect(database.dsn) end)
  after_each(function() db:close() end)

  for _, schema in ipairs(SCHEMAS) do
    it(schema.name .. ": rows jwkengine writes (generate, startup sets, import) are what Hydra reads", function()
      schema.prepare(db)
      local engine = assert(open(database.dsn, SECRET, { startup = true,
        startup_sets = { { set = "startup", alg = "ES256" } } }))
      assert(engine:generate("generated", "ES256", { kid = "g" }))
      local imported = assert(core.generate_software_key("ES256")):private_jwk()
      assert(engine:import("imported", imported, { kid = "i" }))
      for _, set in ipairs({ "startup", "generated", "imported" }) do
        local rows = rows_of(db, set)
        assert.equals(1, #rows)
        local row = rows[1]
        assert.equals(schema.network, row.nid)
        schema.pk(row.pk)
        local plain = cjson.decode(hydra_aead("open", SECRET, row.keydata))
        assert.equals(row.kid, plain.kid)
        assert.is_string(plain.d)
        local token = assert(engine:sign_jwt(set, { sub = set }))
        assert.is_true((verifier.jwcrypto({ keys = { plain } }, token)))
      end
      engine:close()
    end)

    it(schema.name .. ": rotate_secrets re-seals every row, and Hydra opens them with the new secret", function()
      schema.prepare(db)
      local engine = assert(open(database.dsn, OLD_SECRET))
      for i = 1, 3 do assert(engine:generate("r", "ES256", { kid = "k" .. i })) end
      engine:close()
      engine = assert(open(database.dsn, SECRET .. "," .. OLD_SECRET))
      assert.equals(3, (assert(engine:rotate_secrets())))
      engine:close()
      for _, row in ipairs(rows_of(db, "r")) do
        assert.equals(row.kid, cjson.decode(hydra_aead("open", SECRET, row.keydata)).kid)
      end
      engine = assert(open(database.dsn, SECRET))
      for i = 1, 3 do assert.truthy(engine:key("r", "k" .. i)) end
      engine:close()
    end)
  end

  it("Hydra 2.x table: signs with rows Hydra sealed under its network, newest first", function()
    create_hydra2_tables(db, { NETWORK })
    hydra_writes(db, NETWORK, SECRET, "hydra.openid.id-token", "older")
    -- created_at ties within a second: the row written last is the newest
    local newest = hydra_writes(db, NETWORK, SECRET, "hydra.openid.id-token", "newer")
    -- startup finds the set Hydra made and generates nothing
    local engine = assert(open(database.dsn, SECRET, { startup = true,
      startup_sets = { { set = "hydra.openid.id-token", alg = "ES256" } } }))
    local jwks = assert(engine:key_set("hydra.openid.id-token"))
    assert.same({ "newer", "older" }, { jwks.keys[1].kid, jwks.keys[2].kid })
    assert.equals(newest:public_jwk().x, jwks.keys[1].x)
    local token = assert(engine:sign_jwt("hydra.openid.id-token", { sub = "a" }))
    local _, header = assert(engine:verify("hydra.openid.id-token", token))
    assert.equals("newer", header.kid)
    assert.is_true((verifier.jwcrypto({ keys = { newest:public_jwk() } }, token)))
    engine:close()
  end)

  it("Hydra 2.x table: rows of another network are not read, changed or deleted", function()
    create_hydra2_tables(db, { NETWORK, OTHER_NETWORK })
    hydra_writes(db, OTHER_NETWORK, OLD_SECRET, "shared", "theirs")
    hydra_writes(db, OTHER_NETWORK, OLD_SECRET, "only-theirs", "theirs")
    hydra_writes(db, NETWORK, OLD_SECRET, "shared", "ours")
    local engine = assert(open(database.dsn, SECRET .. "," .. OLD_SECRET, { store = { network_id = NETWORK } }))
    local jwks = assert(engine:key_set("shared"))
    assert.equals(1, #jwks.keys)
    assert.equals("ours", jwks.keys[1].kid)
    local _, _, code = engine:key_set("only-theirs")
    assert.equals("ERR_KEY_SET_NOT_FOUND", code)
    -- the same kid may exist once per network (Hydra's unique (sid, kid, nid))
    assert(engine:generate("only-theirs", "ES256", { kid = "theirs" }))
    -- ours: the row Hydra wrote and the one just generated
    assert.equals(2, (assert(engine:rotate_secrets())))
    assert(engine:delete("shared"))
    assert(engine:delete("only-theirs"))
    engine:close()
    local left = {}
    for _, set in ipairs({ "shared", "only-theirs" }) do
      for _, row in ipairs(rows_of(db, set)) do
        assert.equals(OTHER_NETWORK, row.nid)
        -- untouched by the rotation: still sealed with the old secret
        assert.equals("theirs", cjson.decode(hydra_aead("open", OLD_SECRET, row.keydata)).kid)
        left[#left + 1] = set
      end
    end
    assert.same({ "shared", "only-theirs" }, left)
  end)

  it("Hydra 2.x table: the network must be unambiguous, and a wrong choice is named", function()
    create_hydra2_tables(db, {})
    local engine, err, code = open(database.dsn)
    assert.is_nil(engine)
    assert.equals("ERR_CONFIG", code)
    assert.matches("networks table is empty", err, 1, true)
    assert.matches("store.network_id", err, 1, true)

    add_network(db, NETWORK)
    add_network(db, OTHER_NETWORK)
    engine, err, code = open(database.dsn)
    assert.is_nil(engine)
    assert.equals("ERR_CONFIG", code)
    assert.matches("holds 2 networks", err, 1, true)
    assert.matches(NETWORK, err, 1, true)
    assert.matches(OTHER_NETWORK, err, 1, true)
    assert.matches("store.network_id", err, 1, true)

    local unknown = "0b6c3f1e-2d4a-4f5b-8c7d-9e0a1b2c3d4e"
    engine, err, code = open(database.dsn, SECRET, { store = { network_id = unknown } })
    assert.is_nil(engine)
    assert.equals("ERR_CONFIG", code)
    assert.matches("store.network_id '" .. unknown .. "' is not in Hydra's networks table", err, 1, true)

    engine = assert(open(database.dsn, SECRET, { store = { network_id = OTHER_NETWORK:upper() } }))
    assert(engine:generate("s", "ES256", { kid = "k" }))
    engine:close()
    assert.equals(OTHER_NETWORK, rows_of(db, "s")[1].nid)
  end)

  it("Hydra 1.x table: a network id is refused rather than ignored", function()
    local engine, err, code = open(database.dsn, SECRET, { store = { network_id = NETWORK } })
    assert.is_nil(engine)
    assert.equals("ERR_CONFIG", code)
    assert.matches("store.network_id is set but hydra_jwk is Hydra 1.x's", err, 1, true)
    engine, err, code = open(database.dsn, SECRET, { store = { network_id = 7 } })
    assert.is_nil(engine)
    assert.equals("ERR_CONFIG", code)
    assert.matches("store.network_id must be a non-empty string", err, 1, true)
  end)
end)

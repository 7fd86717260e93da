-- The key store: rows shaped like Ory Hydra's `hydra_jwk` table, over SQL.
--
--   pk, sid (set), kid, version, keydata (AES-GCM sealed JWK), created_at;
--   unique (sid, kid); reads newest first. On a Hydra 2.x table (see
--   store.hydra_schema) rows also carry the network `nid` and a UUID pk.
--
-- The DSN picks the database as in Hydra: `sqlite://PATH` (the embedded
-- default), `postgres://USER:PASS@HOST:PORT/DB?sslmode=disable` for
-- instances on several machines that share keys, and `memory`. The table is
-- created and upgraded by versioned migrations run when the store opens.
local core = require("jwkengine.core")
local hydra_schema = require("jwkengine.store.hydra_schema")
local key_state = require("jwkengine.lifecycle.sql_backend")
local luasql = require("jwkengine.store.luasql")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}
local Store = {}
Store.__index = Store

M.DEFAULT_DSN = "sqlite://jwkengine.sqlite"

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Parses a DSN into { kind = "sqlite", path } | { kind = "postgres", ... }.
function M.parse_dsn(dsn)
  if type(dsn) ~= "string" or dsn == "" then
    return util.fail(E.ERR_CONFIG, "DSN must be a non-empty string")
  end
  if dsn == "memory" then return { kind = "sqlite", path = ":memory:" } end
  local path = dsn:match("^sqlite3?://(.+)$")
  if path then
    path = path:gsub("%?.*$", "") -- Hydra's DSNs carry driver options such as ?_fk=true
    if path == "" then return util.fail(E.ERR_CONFIG, "sqlite DSN has no file path") end
    return { kind = "sqlite", path = percent_decode(path) }
  end
  local rest = dsn:match("^postgres://(.+)$") or dsn:match("^postgresql://(.+)$")
  if rest then
    local query = rest:match("%?(.*)$") or ""
    rest = rest:gsub("%?.*$", "")
    local userinfo, hostpart = rest:match("^(.*)@([^@]*)$")
    if not userinfo then hostpart = rest end
    local hostport, database = hostpart:match("^([^/]*)/(.+)$")
    if not database then
      return util.fail(E.ERR_CONFIG, "postgres DSN must name a database: postgres://USER:PASS@HOST:PORT/DB")
    end
    local host, port = hostport:match("^(.*):(%d+)$")
    if not host then host = hostport end
    local settings = { kind = "postgres", database = percent_decode(database),
      host = host ~= "" and host or nil, port = port, options = {} }
    if userinfo then
      local user, password = userinfo:match("^([^:]*):(.*)$")
      settings.user = percent_decode(user or userinfo)
      settings.password = password and percent_decode(password) or nil
    end
    for pair in query:gmatch("[^&]+") do
      local name, value = pair:match("^([^=]+)=(.*)$")
      if not name then return util.fail(E.ERR_CONFIG, "postgres DSN option '%s' has no value", pair) end
      settings.options[percent_decode(name)] = percent_decode(value)
    end
    return settings
  end
  return util.fail(E.ERR_CONFIG,
    "unsupported DSN (use sqlite://PATH, postgres://USER:PASS@HOST:PORT/DB or memory)")
end

-- Versioned migrations; each runs once, in order, inside one transaction.
local MIGRATIONS = {
  {
    version = 1,
    sqlite = [[CREATE TABLE IF NOT EXISTS hydra_jwk (
      pk INTEGER PRIMARY KEY AUTOINCREMENT,
      sid VARCHAR(255) NOT NULL,
      kid VARCHAR(255) NOT NULL,
      version INTEGER NOT NULL DEFAULT 0,
      keydata TEXT NOT NULL,
      created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
      UNIQUE (sid, kid))]],
    postgres = [[CREATE TABLE IF NOT EXISTS hydra_jwk (
      pk SERIAL PRIMARY KEY,
      sid VARCHAR(255) NOT NULL,
      kid VARCHAR(255) NOT NULL,
      version INTEGER NOT NULL DEFAULT 0,
      keydata TEXT NOT NULL,
      created_at TIMESTAMP NOT NULL DEFAULT NOW(),
      UNIQUE (sid, kid))]],
  },
  {
    version = 2,
    -- newest-first reads of one set; Hydra 2.x's table has its own index
    -- on (nid, sid, created_at) and stays as Hydra made it
    skip_on = "hydra2",
    sqlite = "CREATE INDEX IF NOT EXISTS hydra_jwk_sid_created_idx ON hydra_jwk (sid, created_at, pk)",
    postgres = "CREATE INDEX IF NOT EXISTS hydra_jwk_sid_created_idx ON hydra_jwk (sid, created_at, pk)",
  },
  -- key states (next, current, ...) in a table of jwkengine's own
  { version = 3, sqlite = key_state.MIGRATION.sqlite, postgres = key_state.MIGRATION.postgres },
}
M.SCHEMA_VERSION = #MIGRATIONS

-- Opens a store from a DSN, or wraps a driver a host hands in.
--   options.network_id  the Hydra 2.x network to use (store.network_id)
function M.open(dsn_or_driver, options)
  options = options or {}
  local driver, err, code
  if type(dsn_or_driver) == "table" then
    driver = dsn_or_driver
  else
    local settings
    settings, err, code = M.parse_dsn(dsn_or_driver or M.DEFAULT_DSN)
    if not settings then return nil, err, code end
    if settings.kind == "sqlite" then
      driver, err, code = luasql.sqlite(settings.path)
    else
      driver, err, code = luasql.postgres(settings)
    end
    if not driver then return nil, err, code end
  end
  local store = setmetatable({ driver = driver, dialect = driver.dialect }, Store)
  local ok
  ok, err, code = store:migrate()
  if ok then ok, err, code = store:adopt_schema(options.network_id) end
  if not ok then
    store:close()
    return nil, err, code
  end
  return store
end

local function store_error(what, err)
  return util.fail(E.ERR_STORE, "key store: %s: %s", what, tostring(err))
end

-- Runs fn(store) in one transaction that holds the store's write lock
-- (BEGIN IMMEDIATE on SQLite; an advisory lock on PostgreSQL), so
-- check-then-insert sequences cannot interleave between processes.
function Store:transaction(fn)
  local driver = self.driver
  local ok, err = driver:exec(self.dialect == "sqlite" and "BEGIN IMMEDIATE" or "BEGIN")
  if not ok then return store_error("cannot begin a transaction", err) end
  if self.dialect == "postgres" then
    ok, err = driver:exec("SELECT pg_advisory_xact_lock(7273820613)")
    if not ok then
      driver:exec("ROLLBACK")
      return store_error("cannot take the store lock", err)
    end
  end
  local results = { pcall(fn, self) }
  if not results[1] or results[2] == nil then
    driver:exec("ROLLBACK")
    if not results[1] then error(results[2], 0) end
    return util.unpack(results, 2, 4)
  end
  ok, err = driver:exec("COMMIT")
  if not ok then
    driver:exec("ROLLBACK")
    return store_error("cannot commit", err)
  end
  return util.unpack(results, 2, 4)
end

function Store:migrate()
  return self:transaction(function(store)
    local driver = store.driver
    local ok, err = driver:exec([[CREATE TABLE IF NOT EXISTS jwkengine_migrations (
      version INTEGER PRIMARY KEY,
      applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)]])
    if not ok then return store_error("cannot create the migrations table", err) end
    local rows
    rows, err = driver:query("SELECT MAX(version) AS version FROM jwkengine_migrations")
    if not rows then return store_error("cannot read the schema version", err) end
    local current = tonumber(rows[1] and rows[1].version) or 0
    if current > M.SCHEMA_VERSION then
      return util.fail(E.ERR_STORE, "key store schema version %d is newer than this jwkengine (%d)",
        current, M.SCHEMA_VERSION)
    end
    local schema, serr, scode = hydra_schema.detect(driver)
    if not schema then return nil, serr, scode end
    for _, migration in ipairs(MIGRATIONS) do
      if migration.version > current then
        if migration.skip_on ~= schema then
          ok, err = driver:exec(migration[store.dialect])
          if not ok then return store_error("migration " .. migration.version .. " failed", err) end
        end
        ok, err = driver:exec("INSERT INTO jwkengine_migrations (version) VALUES (" .. migration.version .. ")")
        if not ok then return store_error("cannot record migration " .. migration.version, err) end
      end
    end
    return true
  end)
end

function Store:schema_version()
  local rows, err = self.driver:query("SELECT MAX(version) AS version FROM jwkengine_migrations")
  if not rows then return store_error("cannot read the schema version", err) end
  return tonumber(rows[1].version)
end

-- Learns which Hydra schema hydra_jwk has, and on Hydra 2.x the network
-- every read and write is scoped to.
function Store:adopt_schema(network_id)
  local schema, err, code = hydra_schema.detect(self.driver)
  if not schema then return nil, err, code end
  self.schema = schema
  if schema == "hydra1" then
    if network_id then
      return util.fail(E.ERR_CONFIG, "store.network_id is set but hydra_jwk is Hydra 1.x's (it has no nid column)")
    end
    -- the integer pk grows with each insert and breaks ties within a second
    self.insertion_order = "pk"
    return true
  end
  self.network, err, code = hydra_schema.network(self.driver, network_id)
  if not self.network then return nil, err, code end
  -- the UUID pk is random: ties go to the order rows were written in
  self.insertion_order = self.dialect == "sqlite" and "rowid" or "pk_deprecated"
  return true
end

-- " WHERE ..." from conditions, scoped to the store's network on Hydra 2.x
-- so rows of another network are never read, changed or deleted.
function Store:where(...)
  local conditions = { ... }
  if self.network then conditions[#conditions + 1] = "nid = " .. self.driver:quote(self.network) end
  if #conditions == 0 then return "" end
  return " WHERE " .. table.concat(conditions, " AND ")
end

function Store:pk_literal(pk)
  if self.schema == "hydra2" then return self.driver:quote(tostring(pk)) end
  return string.format("%d", tonumber(pk))
end

local COLUMNS = "pk, sid, kid, version, keydata, created_at"

-- The SQL literal of a value (what names it in the message), or
-- ERR_INVALID_ARGUMENT when the driver cannot write it exactly: the store
-- must never act on a shortened name, whoever called it.
local function literal(store, what, value)
  local sql, err = store.driver:quote(value)
  if not sql then
    return util.fail(E.ERR_INVALID_ARGUMENT, "key store: %s: %s", what, tostring(err))
  end
  return sql
end

function Store:literal(what, value)
  return literal(self, what, value)
end

-- Every row of a set, newest first.
function Store:rows(sid)
  local sid_sql, err, code = literal(self, "set name", sid)
  if not sid_sql then return nil, err, code end
  local rows
  rows, err = self.driver:query(string.format("SELECT %s FROM hydra_jwk%s ORDER BY created_at DESC, %s DESC",
    COLUMNS, self:where("sid = " .. sid_sql), self.insertion_order))
  if not rows then return store_error("cannot read key set '" .. sid .. "'", err) end
  return rows
end

-- Every row of every set (rotation), oldest first.
function Store:all_rows()
  local rows, err = self.driver:query(string.format("SELECT %s FROM hydra_jwk%s ORDER BY %s",
    COLUMNS, self:where(), self.insertion_order))
  if not rows then return store_error("cannot read the keys", err) end
  return rows
end

function Store:set_exists(sid)
  local sid_sql, err, code = literal(self, "set name", sid)
  if not sid_sql then return nil, err, code end
  local rows
  rows, err = self.driver:query(string.format(
    "SELECT 1 AS found FROM hydra_jwk%s LIMIT 1", self:where("sid = " .. sid_sql)))
  if not rows then return store_error("cannot read key set '" .. sid .. "'", err) end
  return #rows > 0
end

-- Adds a row; a kid already in the set is ERR_KEY_EXISTS.
function Store:insert(sid, kid, keydata)
  local sid_sql, kid_sql, keydata_sql, err, code
  sid_sql, err, code = literal(self, "set name", sid)
  if sid_sql then kid_sql, err, code = literal(self, "kid", kid) end
  if kid_sql then keydata_sql, err, code = literal(self, "key data", keydata) end
  if not keydata_sql then return nil, err, code end
  local rows
  rows, err = self.driver:query(string.format(
    "SELECT 1 AS found FROM hydra_jwk%s", self:where("sid = " .. sid_sql, "kid = " .. kid_sql)))
  if not rows then return store_error("cannot read key set '" .. sid .. "'", err) end
  if #rows > 0 then
    return util.fail(E.ERR_KEY_EXISTS, "key '%s' already exists in key set '%s'", kid, sid)
  end
  local sql = string.format("INSERT INTO hydra_jwk (sid, kid, version, keydata) VALUES (%s, %s, 0, %s)",
    sid_sql, kid_sql, keydata_sql)
  if self.network then
    -- what Hydra 2.x writes: its network and a random UUID primary key
    local q = function(v) return self.driver:quote(v) end
    local pk
    pk, err, code = core.uuid()
    if not pk then return nil, err, code end
    sql = string.format("INSERT INTO hydra_jwk (pk, nid, sid, kid, version, keydata) VALUES (%s, %s, %s, %s, 0, %s)",
      q(pk), q(self.network), sid_sql, kid_sql, keydata_sql)
  end
  local ok
  ok, err = self.driver:exec(sql)
  if not ok then return store_error("cannot store key '" .. kid .. "' in set '" .. sid .. "'", err) end
  return true
end

-- Replaces a row's key data (updates and rotation).
function Store:update_keydata(pk, keydata)
  local keydata_sql, err, code = literal(self, "key data", keydata)
  if not keydata_sql then return nil, err, code end
  local ok
  ok, err = self.driver:exec(string.format("UPDATE hydra_jwk SET keydata = %s%s",
    keydata_sql, self:where("pk = " .. self:pk_literal(pk))))
  if not ok then return store_error("cannot update key row " .. tostring(pk), err) end
  return true
end

-- Deletes one key or a whole set; returns how many rows went.
function Store:delete(sid, kid)
  local sid_sql, kid_sql, err, code
  sid_sql, err, code = literal(self, "set name", sid)
  if not sid_sql then return nil, err, code end
  if kid then
    kid_sql, err, code = literal(self, "kid", kid)
    if not kid_sql then return nil, err, code end
  end
  local sql = "DELETE FROM hydra_jwk" .. self:where("sid = " .. sid_sql, kid_sql and "kid = " .. kid_sql or nil)
  local count
  count, err = self.driver:exec(sql)
  if not count then return store_error("cannot delete from key set '" .. sid .. "'", err) end
  return type(count) == "number" and math.floor(count) or 0
end

function Store:close()
  if self.driver then self.driver:close() end
  self.driver = nil
end

return M

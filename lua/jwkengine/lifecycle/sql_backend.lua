-- The software store's state backend (the contract: jwkengine.lifecycle):
-- one row per set in a table of jwkengine's own, so Hydra's hydra_jwk stays
-- exactly as Hydra has it and rows still move both ways.
--
--   jwkengine_key_state: nid ('' outside Hydra 2.x), sid, version, records,
--   updated_at; primary key (nid, sid). `records` is JSON
--   { "format": 2, "records": { kid -> { state, times } }, "policy": {...} }
--   (written before the policy was recorded: the kid map alone, still read).
--
-- A row is checked as every read is (jwkengine.lifecycle.records): a row it
-- cannot read is ERR_KEY_STATES_CORRUPT, never "no records", and is never
-- written over except by the repair (keys repair).
--
-- A write is a compare-and-swap on version: an UPDATE ... WHERE version = v
-- (or, for a set never written, an INSERT that does nothing on conflict)
-- changes one row for exactly one of two racing writers, on SQLite and on
-- PostgreSQL alike, without holding the store's write lock.
local cjson = require("cjson.safe")
local records_module = require("jwkengine.lifecycle.records")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local FORMAT = 2

local M = {}
local Backend = {}
Backend.__index = Backend

-- The migration that creates the table (jwkengine.store runs it once).
M.MIGRATION = {
  sqlite = [[CREATE TABLE IF NOT EXISTS jwkengine_key_state (
    nid VARCHAR(36) NOT NULL DEFAULT '',
    sid VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    records TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (nid, sid))]],
  postgres = [[CREATE TABLE IF NOT EXISTS jwkengine_key_state (
    nid VARCHAR(36) NOT NULL DEFAULT '',
    sid VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    records TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
    PRIMARY KEY (nid, sid))]],
}

local function store_error(what, err)
  return util.fail(E.ERR_STORE, "key store: %s: %s", what, tostring(err))
end

-- store: an open jwkengine.store (its driver and Hydra 2.x network).
function M.new(store)
  return setmetatable({ store = store }, Backend)
end

function Backend:scope(sid_sql)
  local driver = self.store.driver
  return string.format("nid = %s AND sid = %s", driver:quote(self.store.network or ""), sid_sql)
end

function Backend:read(set)
  local sid_sql, err, code = self.store:literal("set name", set)
  if not sid_sql then return nil, err, code end
  local rows
  rows, err = self.store.driver:query("SELECT version, records FROM jwkengine_key_state WHERE " .. self:scope(sid_sql))
  if not rows then return store_error("cannot read the key states of set '" .. set .. "'", err) end
  if #rows == 0 then return { version = 0, records = {} } end
  local value
  value, err = M.value_of(rows[1])
  if not value then
    return util.fail(E.ERR_KEY_STATES_CORRUPT, "key set '%s': its key states in jwkengine_key_state cannot be "
      .. "read (%s): refusing to sign from it rather than guess; repair with `jwkengine keys repair %s "
      .. "--current KID` (README: Rotating keys)", set, err, set)
  end
  return { version = value.version, records = value.records, policy = value.policy }
end

-- A row's value ({ version, records, policy }) checked, or nil, err.
function M.value_of(row)
  local version = row.version
  if type(version) == "string" and version:find("^%d+$") then version = tonumber(version) end
  local decoded, err = records_module.decode(row.records)
  if not decoded then return nil, err end
  local value
  if decoded.format ~= nil then
    if decoded.format ~= FORMAT then
      return nil, string.format("format %s, not one this version reads (%d)", tostring(decoded.format), FORMAT)
    end
    value = { version = version, records = decoded.records, policy = decoded.policy }
  else
    value = { version = version, records = decoded } -- written before format 2
  end
  return records_module.validate(value)
end

-- The column's JSON, checked as a reader checks it, or nil, err, code.
local function column(version, records, policy)
  local ok, err, code = records_module.validate({ version = version, records = records, policy = policy })
  if not ok then return nil, err, code end
  local json = cjson.encode({ format = FORMAT, records = records, policy = policy })
  if not json then return util.fail(E.ERR_KEY_STATES_CORRUPT, "key states: the value cannot be encoded") end
  return json
end

function Backend:write(set, version, records, policy)
  local sid_sql, err, code = self.store:literal("set name", set)
  if not sid_sql then return nil, err, code end
  local json
  json, err, code = column(version + 1, records, policy)
  if not json then return nil, err, code end
  local records_sql
  records_sql, err, code = self.store:literal("key states", json)
  if not records_sql then return nil, err, code end
  local driver, sql = self.store.driver, nil
  if version == 0 then
    sql = string.format("INSERT INTO jwkengine_key_state (nid, sid, version, records) VALUES (%s, %s, 1, %s) "
      .. "ON CONFLICT (nid, sid) DO NOTHING", driver:quote(self.store.network or ""), sid_sql, records_sql)
  else
    sql = string.format("UPDATE jwkengine_key_state SET version = %d, records = %s, updated_at = CURRENT_TIMESTAMP "
      .. "WHERE %s AND version = %d", version + 1, records_sql, self:scope(sid_sql), version)
  end
  local count
  count, err = driver:exec(sql)
  if not count then return store_error("cannot write the key states of set '" .. set .. "'", err) end
  return count == 1
end

-- Rewrites a set's row whatever it holds now (keys repair, after the
-- operator confirmed which key signs), at a version above the one there
-- when that one is readable as a number, and at least the Unix time (as on
-- the token: above any version a running process may have read). Returns
-- the new version.
function Backend:repair(set, records, policy)
  local sid_sql, err, code = self.store:literal("set name", set)
  if not sid_sql then return nil, err, code end
  return self.store:transaction(function(store)
    local driver = store.driver
    local rows, qerr = driver:query("SELECT version FROM jwkengine_key_state WHERE " .. self:scope(sid_sql))
    if not rows then return store_error("cannot read the key states of set '" .. set .. "'", qerr) end
    local top = rows[1] and tonumber(rows[1].version) or 0
    if not records_module.valid_version(top) or top >= records_module.MAX_VERSION then top = 0 end
    top = math.max(top, os.time() - 1)
    local json, jerr, jcode = column(top + 1, records, policy)
    if not json then return nil, jerr, jcode end
    local records_sql
    records_sql, jerr, jcode = store:literal("key states", json)
    if not records_sql then return nil, jerr, jcode end
    local ok
    ok, qerr = driver:exec("DELETE FROM jwkengine_key_state WHERE " .. self:scope(sid_sql))
    if ok then
      ok, qerr = driver:exec(string.format("INSERT INTO jwkengine_key_state (nid, sid, version, records) "
        .. "VALUES (%s, %s, %d, %s)", driver:quote(store.network or ""), sid_sql, top + 1, records_sql))
    end
    if not ok then return store_error("cannot rewrite the key states of set '" .. set .. "'", qerr) end
    return top + 1
  end)
end

function Backend:sets()
  local rows, err = self.store.driver:query(string.format(
    "SELECT sid FROM jwkengine_key_state WHERE nid = %s ORDER BY sid", self.store.driver:quote(self.store.network or "")))
  if not rows then return store_error("cannot list the sets with key states", err) end
  local sets = {}
  for i, row in ipairs(rows) do sets[i] = row.sid end
  return sets
end

return M

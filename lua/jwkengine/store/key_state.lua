-- The software store's state backend (see jwkengine.key_states): one row per
-- set in a table of jwkengine's own, so Hydra's hydra_jwk stays exactly as
-- Hydra has it and rows still move both ways.
--
--   jwkengine_key_state: nid ('' outside Hydra 2.x), sid, version, records
--   (JSON: kid -> { state, times }), updated_at; primary key (nid, sid).
--
-- A write is a compare-and-swap on version: an UPDATE ... WHERE version = v
-- (or, for a set never written, an INSERT that does nothing on conflict)
-- changes one row for exactly one of two racing writers, on SQLite and on
-- PostgreSQL alike, without holding the store's write lock.
local cjson = require("cjson.safe")
local util = require("jwkengine.util")

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
  return util.fail("ERR_STORE", "key store: %s: %s", what, tostring(err))
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
  local records = cjson.decode(rows[1].records)
  if type(records) ~= "table" then
    return util.fail("ERR_STORE", "key store: the key states of set '%s' are not a JSON object", set)
  end
  return { version = tonumber(rows[1].version), records = records }
end

function Backend:write(set, version, records)
  local sid_sql, err, code = self.store:literal("set name", set)
  if not sid_sql then return nil, err, code end
  local json = cjson.encode(records)
  -- cjson writes an empty table as {}: records are always an object
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

function Backend:sets()
  local rows, err = self.store.driver:query(string.format(
    "SELECT sid FROM jwkengine_key_state WHERE nid = %s ORDER BY sid", self.store.driver:quote(self.store.network or "")))
  if not rows then return store_error("cannot list the sets with key states", err) end
  local sets = {}
  for i, row in ipairs(rows) do sets[i] = row.sid end
  return sets
end

return M

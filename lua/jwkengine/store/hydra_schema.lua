-- Which of Ory Hydra's `hydra_jwk` shapes a database holds, and, for Hydra
-- 2.x, which network the store works in.
--
--   Hydra 1.x (and the table jwkengine creates): an integer `pk`, no network.
--   Hydra 2.x: a UUID `pk`, `pk_deprecated`, and `nid`, the network a row
--   belongs to (Hydra's `networks` table). Hydra reads only the rows of its
--   network, so rows written without it would be invisible to Hydra, and
--   rows of another network are not ours to read or re-seal.
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

local COLUMNS_SQL = {
  sqlite = "PRAGMA table_info(hydra_jwk)",
  postgres = [[SELECT column_name AS name FROM information_schema.columns
    WHERE table_name = 'hydra_jwk' AND table_schema = current_schema()]],
}

local function store_error(what, err)
  return util.fail(E.ERR_STORE, "key store: %s: %s", what, tostring(err))
end

-- "hydra2" when hydra_jwk has Hydra 2.x's network column, else "hydra1"
-- (also when the table does not exist yet: jwkengine then creates 1.x's).
function M.detect(driver)
  local rows, err = driver:query(COLUMNS_SQL[driver.dialect])
  if not rows then return store_error("cannot read the columns of hydra_jwk", err) end
  for _, row in ipairs(rows) do
    if row.name == "nid" then return "hydra2" end
  end
  return "hydra1"
end

-- The network to read and write in: the one `networks` holds, or the one
-- configured (store.network_id) among several. Anything else would be a
-- guess, so it is an error that names the choice.
function M.network(driver, wanted)
  local rows, err = driver:query("SELECT id FROM networks ORDER BY created_at, id")
  if not rows then
    return store_error("hydra_jwk is Hydra 2.x's (it has a nid column) but its networks table cannot be read", err)
  end
  local ids = {}
  for _, row in ipairs(rows) do ids[#ids + 1] = tostring(row.id) end
  if wanted then
    for _, id in ipairs(ids) do
      if id:lower() == wanted:lower() then return id end
    end
    return util.fail(E.ERR_CONFIG, "store.network_id '%s' is not in Hydra's networks table (it holds: %s)",
      wanted, #ids > 0 and table.concat(ids, ", ") or "none")
  end
  if #ids == 1 then return ids[1] end
  if #ids == 0 then
    return util.fail(E.ERR_CONFIG,
      "Hydra's networks table is empty: start Hydra once (it creates its network) or set store.network_id")
  end
  return util.fail(E.ERR_CONFIG, "Hydra's networks table holds %d networks (%s): set store.network_id to the one to use",
    #ids, table.concat(ids, ", "))
end

return M

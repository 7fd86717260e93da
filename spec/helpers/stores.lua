-- The databases the store behaviour suite runs on: a real SQLite file and
-- the throwaway PostgreSQL cluster scripts/test.sh starts on loopback.
local busted = require("busted")
local softhsm = require("helpers.softhsm")

local M = {}

local counter = 0

-- Each call gives an empty database: a new SQLite file, or a new schema...
-- PostgreSQL gets a fresh database per call, created by the admin client.
function M.backends()
  return {
    {
      name = "SQLite",
      fresh = function()
        counter = counter + 1
        local path = os.tmpname() .. "-" .. counter .. ".sqlite"
        return "sqlite://" .. path, function() os.remove(path) end
      end,
    },
    {
      name = "PostgreSQL",
      fresh = function()
        local dsn = os.getenv("JWKE_TEST_POSTGRES_DSN")
        local admin = os.getenv("JWKE_TEST_POSTGRES_ADMIN")
        assert(dsn and admin, "JWKE_TEST_POSTGRES_DSN is not set: run the specs through scripts/test.sh")
        counter = counter + 1
        -- the shard too: scripts/test.sh runs spec files side by side on one cluster
        local name = string.format("spec_%s_%d_%d", os.getenv("JWKE_SHARD") or "0", os.time() % 100000, counter)
        local out, ok = softhsm.run(admin .. " -q -c 'CREATE DATABASE " .. name .. " OWNER jwke'")
        assert(ok, out)
        local fresh = dsn:gsub("/jwkengine%?", "/" .. name .. "?")
        return fresh, function() softhsm.run(admin .. " -q -c 'DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)'") end
      end,
    },
  }
end

-- An engine on the store at `dsn` that seals with `secrets` (SECRETS_SYSTEM,
-- comma-separated), opened as softhsm.open_engine opens one; the
-- environment of `options` adds to (or replaces) those two variables.
function M.open_engine(dsn, secrets, options)
  local environment = { SECRETS_SYSTEM = secrets, DSN = dsn }
  for k, v in pairs(options and options.environment or {}) do environment[k] = v end
  return softhsm.open_engine(environment, options)
end

-- describe(title .. " on " .. backend name) once per backend, each test on
-- a fresh, empty database: body(database, backend) reads database.dsn in
-- its tests.
-- The database is dropped after the body's own after_each hooks, which may
-- still use it (close a connection to it).
function M.describe_each(title, body)
  for _, backend in ipairs(M.backends()) do
    busted.describe(title .. " on " .. backend.name, function()
      local database, drop = {}, nil
      busted.before_each(function() database.dsn, drop = backend.fresh() end)
      body(database, backend)
      busted.after_each(function() drop() end)
    end)
  end
end

return M

-- The databases the store behaviour suite runs on: a real SQLite file and
-- the throwaway PostgreSQL cluster scripts/test.sh starts on loopback.
local softhsm = require "helpers.softhsm"

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
        local name = string.format("spec_%d_%d", os.time() % 100000, counter)
        local out, ok = softhsm.run(admin .. " -q -c 'CREATE DATABASE " .. name .. " OWNER jwke'")
        assert(ok, out)
        local fresh = dsn:gsub("/jwkengine%?", "/" .. name .. "?")
        return fresh, function() softhsm.run(admin .. " -q -c 'DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)'") end
      end,
    },
  }
end

-- Ory Hydra's row sealing done independently (spec/helpers/hydra_aead.py,
-- python3-cryptography): mode "seal" or "open".
function M.hydra_aead(mode, secret, input)
  local path = os.tmpname()
  softhsm.write_file(path, input)
  local out, ok = softhsm.run(string.format("/usr/bin/python3 spec/helpers/hydra_aead.py %s %s < %s",
    mode, softhsm.quote(secret), path))
  os.remove(path)
  assert(ok, out)
  return out
end

return M

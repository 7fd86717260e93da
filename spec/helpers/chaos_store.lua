-- Chaos on a software set's key states under real nginx (issue 19, the
-- first test, for the store), shared by
-- spec/nginx/nginx_chaos_store*_spec.lua: 4 workers over SQLite running the
-- key schedule, a strict caching client verifying every token with
-- jwcrypto, one emergency rotation (`keys rotate SET --now`: the retired
-- key's sealed row then says key_ops ["verify"], read back by Hydra's AEAD
-- done independently, spec/helpers/hydra_aead.py), then another program on
-- the database damages the set's jwkengine_key_state row in each way the
-- issue lists. Running and freshly started workers never publish nor sign
-- with the retired kid and never answer 500; after `keys repair` every
-- worker signs and the client verifies every token. (PostgreSQL's rows are
-- damaged the same ways at the engine level:
-- spec/lifecycle/lifecycle_store_spec.lua.)
--
-- The damages are dealt to three spec files (GROUPS) so that the suite's
-- shards can run them side by side: each file has its own nginx, database,
-- port and set, and needs only a key retired by rotate --now. The first
-- file proves the emergency rotation itself under the client; the others
-- retire a key with the same command in their setup.
local cjson = require("cjson")
local chaos = require("helpers.chaos")
local cli = require("helpers.cli")
local hydra_aead = require("helpers.hydra_aead").run
local nginx = require("helpers.nginx")
local store_module = require("jwkengine.store")

local M = {}

local SECRET = "a-chaos-spec-secret-of-forty-characters!"
local MAX_AGE, REFRESH, CACHE_TTL, LIFETIME = 2, 1, 1, 3
local PREPUBLISH, RETAIN = 4, 5
local PERIOD = 3600 -- the schedule runs every second; no rotation falls due
local SET = "chaos-store"

local CONFIG_TAIL = nginx.rotation_config({ { set = SET, period = PERIOD, prepublish = PREPUBLISH, retain = RETAIN } },
  { max_age = MAX_AGE, refresh = REFRESH, lifetime = LIFETIME, cache_ttl = CACHE_TTL })

-- Runs SQL on the store as another program would.
local function sql(dsn, statement, query)
  local s = assert(store_module.open(dsn))
  local result, err = (query and s.driver.query or s.driver.exec)(s.driver, statement)
  s:close()
  assert(result, err)
  return result
end

local WHERE = " WHERE sid = '" .. SET .. "'"

-- The row's records column rewritten by change(value) (value: its JSON).
local function rewrite(dsn, change)
  local row = sql(dsn, "SELECT version, records FROM jwkengine_key_state" .. WHERE, true)[1]
  local value = cjson.decode(row.records)
  local version = change(value, tonumber(row.version)) or tonumber(row.version)
  sql(dsn, string.format("UPDATE jwkengine_key_state SET version = %d, records = '%s'", version,
    cjson.encode(value):gsub("'", "''")) .. WHERE)
end

local function set_records(v) return function(dsn)
  sql(dsn, "UPDATE jwkengine_key_state SET records = '" .. v .. "'" .. WHERE)
end end

-- What issue 19 found another process or a fault doing, on a SQL row, by
-- spec file.
M.GROUPS = {
  encoding = {
    { "version-string", function(dsn) sql(dsn, "UPDATE jwkengine_key_state SET version = 'two'" .. WHERE) end },
    { "records-not-object", set_records('{"format":2,"records":7}') },
    { "truncated", function(dsn)
      sql(dsn, "UPDATE jwkengine_key_state SET records = substr(records, 1, length(records) / 2)" .. WHERE)
    end },
  },
  schema = {
    { "version-inf", function(dsn) sql(dsn, "UPDATE jwkengine_key_state SET version = 1e999" .. WHERE) end },
    { "record-without-times", function(dsn)
      rewrite(dsn, function(value) for _, r in pairs(value.records) do r.times = nil end end)
    end },
    { "records-list", set_records('{"format":2,"records":[{"kid":"x","state":"current"}]}') },
  },
  rivals = {
    { "rival-all-current", function(dsn)
      rewrite(dsn, function(value, version)
        for _, r in pairs(value.records) do r.state, r.times = "current", { current = 1 } end
        return version + 5
      end)
    end },
    { "row-deleted", function(dsn) sql(dsn, "DELETE FROM jwkengine_key_state" .. WHERE) end },
  },
}

-- The describe block of one spec file (busted: the spec's _ENV): the damages of GROUPS[group], after
-- the emergency rotation under the client when `emergency` is true (else
-- after a plain `keys rotate SET --now` in the setup).
function M.describe(group, busted, emergency)
  -- busted's functions live in the spec's environment (as hsm_suite.define)
  local describe, it, setup, teardown, assert = busted.describe, busted.it, busted.setup, busted.teardown,
    busted.assert
  local corruptions = assert(M.GROUPS[group], "no such group of damages: " .. tostring(group))
  describe("nginx over the software store: damaged key-state rows never bring back a key retired by rotate --now",
    function()
      local server, environment, cli_environment, retired, current

      local function keys(args)
        local out, err, status = cli.keys(cli_environment, args)
        assert.equals(0, status, "keys " .. args .. ": " .. err)
        return out
      end

      setup(function()
        server = nginx.new({ workers = 4, refresh = REFRESH, sets = { SET }, startup_sets = CONFIG_TAIL,
          render = function(opts)
            return nginx.render_rotation(opts, { max_age = MAX_AGE, set = SET, lifetime = LIFETIME })
          end })
        environment = { HSM_ENABLED = "false", HSM_LIBRARY = false, HSM_TOKEN_LABEL = false, HSM_PIN = false,
          DSN = "sqlite://" .. server.prefix .. "/keys.sqlite", SECRETS_SYSTEM = SECRET,
          JWKENGINE_CONFIG = server.prefix .. "/jwkengine.yaml" }
        server.environment = environment
        cli_environment = {}
        for name, value in pairs(environment) do cli_environment[name] = value or nil end
        server:start(60)
        chaos.wait_signing(server, 16)
        if not emergency then
          current, retired = chaos.retire_now(server, function() return keys("rotate " .. SET .. " --now") end)
        end
      end)

      teardown(function()
        if server then server:dispose() end
      end)

      if emergency then
        it("rotates at once: the old key never signs again and leaves every JWK Set within refresh", function()
          current, retired = chaos.emergency(server, { sign = CACHE_TTL + 1, publish = REFRESH + 1 }, function()
            return keys("rotate " .. SET .. " --now")
          end, function(kid)
            -- the retired key's own row says so, read by an independent AEAD
            local row = sql(environment.DSN, "SELECT keydata FROM hydra_jwk" .. WHERE .. " AND kid = '" .. kid
              .. "'", true)[1]
            assert.same({ "verify" }, cjson.decode(hydra_aead("open", SECRET, row.keydata)).key_ops)
          end)
        end)
      end

      for _, case in ipairs(corruptions) do
        local kind, corrupt = case[1], case[2]
        it("survives '" .. kind .. "' from another program, running and freshly started, and signs after keys repair",
          function()
            assert.is_string(retired, "the emergency rotation did not run")
            chaos.survive(server, kind, retired, function() corrupt(environment.DSN) end, function()
              local out, _, status = cli.keys(cli_environment, "keys " .. SET)
              current = status == 0 and chaos.current_in(out) or current
              keys("repair " .. SET .. " --current " .. current)
            end)
          end)
      end
    end)
end

return M

-- Chaos on an HSM set's key states under real nginx (issue 19, the first
-- test), shared by spec/nginx/nginx_chaos_hsm*_spec.lua: 4 workers running
-- the key schedule, a strict caching client verifying every token with
-- jwcrypto (spec/nginx/client.py), one emergency rotation (`keys rotate
-- SET --now`), then another process on the token (PyKCS11,
-- spec/helpers/p11_other.py) applies corruptions of the issue's table in
-- turn. For each: the running workers and freshly started ones (nginx
-- reloaded) never publish the retired kid, never sign with it, never
-- answer 500; after the documented repair (`keys repair SET --current
-- KID`) every worker signs again and the client verifies every token.
--
-- The corruptions are dealt to three spec files (GROUPS) so that the
-- suite's shards can run them side by side: each file has its own nginx,
-- token, port and set, and needs only a key retired by rotate --now. The
-- first file proves the emergency rotation itself under the client; the
-- others retire a key with the same command in their setup.
local chaos = require("helpers.chaos")
local cli = require("helpers.cli")
local jose = require("helpers.jose")
local nginx = require("helpers.nginx")
local softhsm = require("helpers.softhsm")
local token_backend = require("jwkengine.lifecycle.token_backend")

local M = {}

local MAX_AGE, REFRESH, CACHE_TTL, LIFETIME = 2, 1, 1, 3
local PREPUBLISH, RETAIN = 4, 5
-- the schedule runs every second; no rotation falls due during the spec
local PERIOD = 3600
local SET = "chaos-hsm"

-- Every corruption of the issue's table, by spec file.
M.GROUPS = {
  encoding = { "version-string", "records-not-object", "truncated" },
  schema = { "oversized-beside", "version-inf", "record-without-times" },
  rivals = { "records-list", "rival-all-current", "delete-all" },
}

local function config_tail()
  return nginx.rotation_config({ { set = SET, period = PERIOD, prepublish = PREPUBLISH, retain = RETAIN } },
    { max_age = MAX_AGE, refresh = REFRESH, lifetime = LIFETIME, cache_ttl = CACHE_TTL })
end

local retried = nginx.retried

local function other_process(token, args)
  return retried(function()
    local out, ok = softhsm.run(string.format("%s spec/helpers/p11_other.py %s %s %s %s", jose.PYTHON,
      softhsm.LIBRARY, softhsm.quote(token.label), token.pin, args))
    if ok then return out end
    return nil, "p11_other.py " .. args .. ": " .. out
  end)
end

-- The CLI on the token with the workers' configuration; its output lines.
local function keys(server, token, args)
  local env = softhsm.environment(token, { JWKENGINE_CONFIG = server.prefix .. "/jwkengine.yaml" })
  return retried(function()
    local out, err, status = cli.keys(env, args)
    if status == 0 then return out end
    return nil, "keys " .. args .. ": " .. err
  end)
end

-- The describe block of one spec file (busted: the spec's _ENV): the corruptions of GROUPS[group],
-- after the emergency rotation under the client when `emergency` is true
-- (else after a plain `keys rotate SET --now` in the setup).
function M.describe(group, busted, emergency)
  -- busted's functions live in the spec's environment (as hsm_suite.define)
  local describe, it, setup, teardown, assert = busted.describe, busted.it, busted.setup, busted.teardown,
    busted.assert
  local corruptions = assert(M.GROUPS[group], "no such group of corruptions: " .. tostring(group))
  describe("nginx over an HSM: corrupted key states never bring back a key retired by rotate --now", function()
    local token, server, retired, current

    setup(function()
      token = softhsm.new_token("nginx-chaos")
      server = nginx.new({ token = token, workers = 4, refresh = REFRESH, sets = { SET },
        startup_sets = config_tail(),
        render = function(opts)
          return nginx.render_rotation(opts, { max_age = MAX_AGE, set = SET, lifetime = LIFETIME })
        end })
      server:start(60)
      chaos.wait_signing(server, 16)
      if not emergency then
        current, retired = chaos.retire_now(server, function()
          return keys(server, token, "rotate " .. SET .. " --now")
        end)
      end
    end)

    teardown(function()
      if server then server:dispose() end
    end)

    if emergency then
      it("rotates at once: the old key never signs again and leaves every JWK Set within refresh", function()
        current, retired = chaos.emergency(server, { sign = 0, publish = REFRESH + 1 }, function()
          return keys(server, token, "rotate " .. SET .. " --now")
        end, function(kid)
          -- the token itself refuses the retired key now, whatever any record says
          assert.equals("False", (other_process(token, "sign-allowed " .. SET .. " " .. kid):gsub("%s+$", "")))
          assert.equals("CKR_KEY_FUNCTION_NOT_PERMITTED",
            (other_process(token, "sign " .. SET .. " " .. kid):gsub("%s+$", "")))
        end)
      end)
    end

    for _, kind in ipairs(corruptions) do
      it("survives '" .. kind .. "' from another process, running and freshly started, and signs after keys repair",
        function()
          assert.is_string(retired, "the emergency rotation did not run")
          chaos.survive(server, kind, retired, function()
            other_process(token, string.format("corrupt %s %s %s %s", kind, softhsm.quote(token_backend.APPLICATION),
              softhsm.quote(token_backend.MARKER_APPLICATION), SET))
          end, function()
            -- the documented repair: the operator names the key that signs
            local env = softhsm.environment(token, { JWKENGINE_CONFIG = server.prefix .. "/jwkengine.yaml" })
            local out, _, status = cli.keys(env, "keys " .. SET)
            current = status == 0 and chaos.current_in(out) or current
            keys(server, token, "repair " .. SET .. " --current " .. current)
          end)
        end)
    end
  end)
end

return M

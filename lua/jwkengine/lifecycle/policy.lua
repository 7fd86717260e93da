-- The rotation policy: its schema, its defaults and its safety minimums,
-- in one place (the configuration's checks, the CLI's `keys policy` and the
-- records' validation all come here).
--
-- A policy is { period, prepublish, retain, destroy_after } in seconds:
--   period        how long a key is current before the next one is due
--                 (nil: no scheduled rotation)
--   prepublish    how long a next key is published before it signs
--   retain        how long a previous key stays published after it signed
--   destroy_after how long a retired key is kept before it is destroyed
--                 (nil: kept)
--
-- Whose policy rules: the one recorded with the set's states (see
-- jwkengine.lifecycle), so every process agrees on which key signs whatever
-- its own configuration says; a process's configured policy is only used
-- for a set with none recorded, and recorded by the first write of such a
-- set. `keys policy SET --period ...` rewrites a recorded policy.
local settings = require("jwkengine.config_settings")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

M.FIELDS = { "period", "prepublish", "retain", "destroy_after" }
local FIELD = {}
for _, name in ipairs(M.FIELDS) do FIELD[name] = true end
M.FIELD = FIELD

-- Where each limit the safety rules read comes from in the configuration;
-- their defaults are the schema's (jwkengine.config_settings).
local SECTIONS = {
  publication = { "max_age", "refresh" },
  tokens = { "max_lifetime", "clock_tolerance" },
  store = { "cache_ttl" },
}
M.DEFAULT_LIMITS = {}
for section, names in pairs(SECTIONS) do
  for _, name in ipairs(names) do M.DEFAULT_LIMITS[name] = settings.default(section .. "." .. name) end
end

-- How long a next key must be published before it signs, and how long a
-- previous key must stay published, for no client to meet an unknown kid.
--   limits: max_age, refresh (publication), cache_ttl (store),
--           max_lifetime, clock_tolerance (tokens)
function M.minimums(limits)
  return {
    prepublish = limits.max_age + limits.refresh + limits.cache_ttl,
    retain = limits.max_lifetime + limits.clock_tolerance + limits.max_age,
  }
end

local PREPUBLISH_RULE = "publication.max_age + publication.refresh + store.cache_ttl"
local RETAIN_RULE = "tokens.max_lifetime + tokens.clock_tolerance + publication.max_age"

-- A policy from a `rotation` table (nil: none), checked against the safety
-- rules. Returns { period, prepublish, retain, destroy_after } with the
-- minimums as the defaults of prepublish and retain; period and
-- destroy_after stay nil (off) unless given. where: how the error names it.
function M.make(rotation, limits, where)
  local minimum = M.minimums(limits)
  rotation = rotation or {}
  where = where or "rotation."
  for name, value in pairs(rotation) do
    if not FIELD[name] then return util.fail(E.ERR_CONFIG, "%s%s is not a rotation setting", where, tostring(name)) end
    local ok, err = settings.check({ name = where .. name, type = "seconds" }, value)
    if ok == nil then return util.fail(E.ERR_CONFIG, "%s", err) end
  end
  local policy = {
    period = rotation.period,
    prepublish = rotation.prepublish or minimum.prepublish,
    retain = rotation.retain or minimum.retain,
    destroy_after = rotation.destroy_after,
  }
  if policy.prepublish < minimum.prepublish then
    return util.fail(E.ERR_CONFIG,
      "%sprepublish (%d s) is shorter than %s (%d s): a client could meet the new key before its cached JWK Set has it",
      where, policy.prepublish, PREPUBLISH_RULE, minimum.prepublish)
  end
  if policy.retain < minimum.retain then
    return util.fail(E.ERR_CONFIG,
      "%sretain (%d s) is shorter than %s (%d s): tokens it signed would outlive the key in the JWK Set",
      where, policy.retain, RETAIN_RULE, minimum.retain)
  end
  if policy.period and policy.period <= policy.prepublish then
    return util.fail(E.ERR_CONFIG, "%speriod (%d s) must be longer than rotation.prepublish (%d s)",
      where, policy.period, policy.prepublish)
  end
  return policy
end

-- Whether two policies say the same.
function M.same(a, b)
  if a == nil or b == nil then return a == b end
  for _, name in ipairs(M.FIELDS) do
    if a[name] ~= b[name] then return false end
  end
  return true
end

-- One line naming a policy's settings, for logs and the CLI.
function M.describe(policy)
  local parts = {}
  for _, name in ipairs(M.FIELDS) do
    parts[#parts + 1] = string.format("%s=%s", name, policy[name] == nil and "off" or tostring(policy[name]))
  end
  return table.concat(parts, " ")
end

-- The policies of a loaded configuration: { limits, by_set = set -> policy,
-- scheduled = { set, ... } (sets with a rotation table), algs = set -> alg,
-- default = the policy of every other set }. Unsafe policies are errors.
function M.policies(cfg)
  -- the values were checked when the configuration was loaded (config.load)
  local limits = {}
  for section, names in pairs(SECTIONS) do
    for _, name in ipairs(names) do
      local value = cfg[section] and cfg[section][name]
      if value == nil then value = M.DEFAULT_LIMITS[name] end
      limits[name] = value
    end
  end
  local default, err, code = M.make(nil, limits)
  if not default then return nil, err, code end
  local policies = { limits = limits, by_set = {}, scheduled = {}, algs = {}, default = default }
  for _, entry in ipairs(cfg.startup_sets or {}) do
    policies.algs[entry.set] = entry.alg
    if entry.rotation ~= nil then
      local where = string.format("startup set '%s': rotation.", entry.set)
      if type(entry.rotation) ~= "table" then
        return util.fail(E.ERR_CONFIG, "startup set '%s': rotation must be a mapping of seconds", entry.set)
      end
      local policy
      policy, err, code = M.make(entry.rotation, limits, where)
      if not policy then return nil, err, code end
      policies.by_set[entry.set] = policy
      policies.scheduled[#policies.scheduled + 1] = entry.set
    end
  end
  return policies
end

return M

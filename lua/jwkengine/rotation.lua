-- Rotation: the writes of the key lifecycle (jwkengine.lifecycle decides,
-- this module records). Policies per set from the configuration, and the
-- engine methods that run the schedule (maintain) or act by hand (rotate,
-- retire, activate, key_states).
--
-- Every write is read -> evaluate -> compare-and-swap on the set's state
-- version (jwkengine.key_states), retried on a lost race from a fresh read:
-- of processes running the same schedule at once, exactly one records each
-- change. A scheduled key is claimed in the records (state next) before it
-- is generated, so a second process sees the claim and generates nothing.
local core = require("jwkengine.core")
local key_states = require("jwkengine.key_states")
local lifecycle = require("jwkengine.lifecycle")
local util = require("jwkengine.util")

local M = {}

local SECTIONS = {
  publication = { "max_age", "refresh" },
  tokens = { "max_lifetime", "clock_tolerance" },
}
local ROTATION_KEYS = { "period", "prepublish", "retain", "destroy_after" }

local function seconds(value, origin, name)
  if type(value) ~= "number" or value < 0 or value ~= value or value == math.huge then
    return util.fail("ERR_CONFIG", "%s: %s must be a non-negative number of seconds, got %s", origin, name,
      type(value) == "number" and tostring(value) or type(value))
  end
  return value
end

-- The policies of a loaded configuration: { limits, by_set = set -> policy,
-- scheduled = { set, ... } (sets with a rotation table), algs = set -> alg,
-- default = the policy of every other set }. Unsafe policies are errors.
function M.policies(cfg)
  local limits = {}
  for name, value in pairs(lifecycle.DEFAULT_LIMITS) do limits[name] = value end
  for section, names in pairs(SECTIONS) do
    for _, name in ipairs(names) do
      local value = cfg[section] and cfg[section][name]
      if value ~= nil then
        local ok, err, code = seconds(value, "configuration", section .. "." .. name)
        if not ok then return nil, err, code end
        limits[name] = value
      end
    end
  end
  limits.cache_ttl = cfg.store and cfg.store.cache_ttl or limits.cache_ttl
  local default, err, code = lifecycle.policy("*", nil, limits)
  if not default then return nil, err, code end
  local policies = { limits = limits, by_set = {}, scheduled = {}, algs = {}, default = default }
  for _, entry in ipairs(cfg.startup_sets or {}) do
    policies.algs[entry.set] = entry.alg
    if entry.rotation ~= nil then
      local origin = string.format("startup set '%s'", entry.set)
      if type(entry.rotation) ~= "table" then
        return util.fail("ERR_CONFIG", "%s: rotation must be a mapping of seconds", origin)
      end
      for _, name in ipairs(ROTATION_KEYS) do
        if entry.rotation[name] ~= nil then
          local ok
          ok, err, code = seconds(entry.rotation[name], origin, "rotation." .. name)
          if not ok then return nil, err, code end
        end
      end
      local policy
      policy, err, code = lifecycle.policy(entry.set, entry.rotation, limits)
      if not policy then return nil, err, code end
      policies.by_set[entry.set] = policy
      policies.scheduled[#policies.scheduled + 1] = entry.set
    end
  end
  return policies
end

-- What a key manager needs to give its sets states: states:attach(entry,
-- set, where, previous) when it has loaded one (see key_states.attach). A
-- manager may put its own backend in front (setmetatable({ backend = ... },
-- { __index = states })): attach is a method, so it reads that backend.
function M.states(backend, policies, now, log)
  return {
    backend = backend,
    policy_for = function(set) return policies.by_set[set] or policies.default end,
    now = now or os.time,
    log = log or function() end,
    attach = function(self, entry, set, where, previous)
      return key_states.attach(entry, set, where, self, previous)
    end,
  }
end

-- The manager holding a set (the HSM first, as signing looks), freshly loaded.
local function holder(engine, set)
  return engine.keys:holder(set) -- the engine's fallback manager (init.lua hands it in)
end

-- After a write: the manager reads the set again on its next use (see
-- hsm.lua's outdate: a failed read there keeps the keys it had).
local function forget(manager, set)
  if manager.outdate then manager:outdate(set)
  elseif manager.forget then manager:forget(set)
  else manager.sets[set] = nil end
end

-- What differs between two record tables, as changes { set, kid, from, to, at }.
local function differences(set, before, after)
  local changes = {}
  for _, kid in ipairs(util.sorted_keys(after)) do
    local old, new = before[kid], after[kid]
    if not old or old.state ~= new.state then
      changes[#changes + 1] = { set = set, kid = kid, from = old and old.state or nil, to = new.state,
        at = new.times[new.state] }
    end
  end
  return changes
end

local NOTHING = {}

-- Reads, evaluates and writes a set's records until the write wins.
--   modify(records, evaluation, now, entry, policy) -> new records, extra
--          | NOTHING | nil, err, code
-- Returns changes, extra, manager.
local function update(engine, set, modify)
  for _ = 1, 8 do
    local manager, entry, code = holder(engine, set)
    if not manager then return nil, entry, code end
    local states = manager.states
    local state, err
    state, err, code = states.backend:read(set)
    if not state then return nil, err, code end
    local now = states.now()
    local evaluation = lifecycle.evaluate(state.records, key_states.present(entry), states.policy_for(set), now)
    local records, extra, ecode = modify(state.records, evaluation, now, entry, states.policy_for(set))
    if not records then return nil, extra, ecode end
    if records == NOTHING then return {}, nil, manager end
    local won
    won, err, code = states.backend:write(set, state.version, records)
    forget(manager, set)
    if won then return differences(set, state.records, records), extra, manager end
    if won == nil then return nil, err, code end
  end
  return util.fail("ERR_STORE", "key set '%s': the key states kept changing under this write: try again", set)
end

local function record(records, kid, state, now)
  local old = records[kid]
  local times = {}
  for name, t in pairs(old and old.times or {}) do times[name] = t end
  times[state] = now
  records[kid] = { state = state, times = times }
end

-- The alg of a set's new keys: the caller's, the configured one, or the
-- current key's.
local function new_key_alg(engine, set, entry, alg)
  if alg then return alg end
  local policies = engine.policies
  if policies and policies.algs[set] then return policies.algs[set] end
  return entry.signer and entry.signer.alg or "RS256"
end

-- A key claimed as next in the records that is not on the token or in the
-- store yet: another process is still generating it.
local function claimed_next(records, evaluation, policy, now)
  for _, kid in ipairs(util.sorted_keys(records)) do
    local r = records[kid]
    if r.state == "next" and not evaluation.keys[kid] and r.times.next + policy.prepublish > now then
      return kid
    end
  end
end

-- A claimed key is published only once it exists, so its prepublish time
-- runs from then, not from the claim: generating can take seconds (RSA on
-- a network HSM), and a client that cached the JWK Set meanwhile has not
-- seen the key. Records the key's next time again, now that it exists:
-- on the records alone (loading the set at this moment could meet a pair
-- another process is still making).
local function next_from_now(manager, set, kid)
  local states = manager.states
  for _ = 1, 8 do
    local state, err, code = states.backend:read(set)
    if not state then return nil, err, code end
    if not state.records[kid] or state.records[kid].state ~= "next" then return true end
    local records = {}
    for k, r in pairs(state.records) do records[k] = r end
    record(records, kid, "next", states.now())
    local won
    won, err, code = states.backend:write(set, state.version, records)
    if won then
      forget(manager, set)
      return true
    end
    if won == nil then return nil, err, code end
  end
  return util.fail("ERR_STORE", "key set '%s': the key states kept changing under this write: try again", set)
end

-- Generates a key claimed in the records, then starts its prepublish time.
local function generate_claimed(manager, set, alg, kid)
  local jwk, err, code = manager:generate(set, alg, { kid = kid })
  if not jwk then return nil, string.format("key set '%s': generating the next key: %s", set, err), code end
  local ok
  ok, err, code = next_from_now(manager, set, kid)
  if not ok then return nil, string.format("key set '%s': recording the next key: %s", set, err), code end
  return true
end

-- One set's schedule: record what the rule says happened, claim and make a
-- next key when the period says so, destroy what destroy_after says.
local function maintain_set(engine, set)
  local changes, plan, manager = update(engine, set, function(records, evaluation, now, entry, policy)
    local generate = evaluation.generate and not claimed_next(records, evaluation, policy, now)
    if not evaluation.changed and not generate and #evaluation.destroy == 0 then return NOTHING end
    local out = lifecycle.records_after(records, evaluation)
    local kid
    if generate then
      kid = core.uuid()
      record(out, kid, "next", now)
    end
    for _, destroyed in ipairs(evaluation.destroy) do record(out, destroyed, "destroyed", now) end
    return out, { kid = kid, alg = new_key_alg(engine, set, entry), destroy = evaluation.destroy }
  end)
  if not changes then return nil, plan, manager end
  if plan and plan.kid then
    local ok, err, code = generate_claimed(manager, set, plan.alg, plan.kid)
    if not ok then return nil, err, code end
  end
  for _, kid in ipairs(plan and plan.destroy or {}) do
    local ok, err, code = manager:delete(set, kid)
    if not ok and code ~= "ERR_KEY_NOT_FOUND" then return nil, err, code end
  end
  return changes
end

-- The engine's lifecycle operations. `self` is what init.lua hands in:
-- { keys = the engine's fallback manager, policies = its rotation policies }.

-- Runs the schedule of every set with a rotation policy. Returns the
-- list of changes { set, kid, from, to, at } (from nil: a new key).
-- options.sets: only these sets.
function M.maintain(self, options)
  local sets = (options and options.sets) or (self.policies and self.policies.scheduled) or {}
  local all = {}
  for _, set in ipairs(sets) do
    local changes, err, code = maintain_set(self, set)
    if not changes then return nil, err, code end
    for _, change in ipairs(changes) do all[#all + 1] = change end
  end
  return all
end

-- Every key of a set with its state and times: { kid, alg, use, state,
-- times, error }. state "published" for keys outside the lifecycle
-- (public-only or encryption keys: always published, never sign).
function M.key_states(self, set)
  local manager, entry, code = holder(self, set)
  if not manager then return nil, entry, code end
  local evaluation = entry.lifecycle and entry.lifecycle.evaluation
  local list = {}
  for _, key in ipairs(entry.keys) do
    local state = evaluation and evaluation.keys[key.kid]
    list[#list + 1] = { kid = key.kid, alg = key.alg, use = key.use, error = key.broken,
      state = state and state.state or "published", times = state and state.times or {} }
  end
  return list
end

-- A next key now, claimed in the records before it is generated, so that
-- of processes rotating at once only one makes a key; refused while the set
-- has a next key (present or claimed).
local function rotate_next(self, set, alg)
  local kid = core.uuid()
  local changes, plan, manager = update(self, set, function(records, evaluation, now, entry, policy)
    local waiting = claimed_next(records, evaluation, policy, now)
    for _, present in ipairs(evaluation.published) do
      if evaluation.keys[present].state == "next" then waiting = present end
    end
    if waiting then
      return util.fail("ERR_KEY_STATE",
        "key set '%s' already has a next key '%s', which signs after prepublish (rotate --now replaces the current key at once)",
        set, waiting)
    end
    local out = lifecycle.records_after(records, evaluation)
    record(out, kid, "next", now)
    return out, { alg = new_key_alg(self, set, entry, alg) }
  end)
  if not changes then return nil, plan, manager end
  local ok, err, code = generate_claimed(manager, set, plan.alg, kid)
  if not ok then return nil, err, code end
  return changes
end

-- A new key now: next (signs after prepublish; rotate_next), or with
-- options.now the current key at once, the old current one retired at
-- once (emergency). options.alg: the new key's algorithm. Returns the
-- changes.
function M.rotate(self, set, options)
  options = options or {}
  if not options.now then return rotate_next(self, set, options.alg) end
  local manager, entry, code = holder(self, set)
  if not manager then return nil, entry, code end
  local kid = core.uuid()
  -- made before it is recorded: a load in between sees it as next, which
  -- the write below then overrides
  local jwk, err
  jwk, err, code = manager:generate(set, new_key_alg(self, set, entry, options.alg), { kid = kid })
  if not jwk then return nil, err, code end
  local changes
  changes, err, code = update(self, set, function(records, evaluation, now)
    if not evaluation.keys[kid] then
      return util.fail("ERR_KEY_NOT_FOUND", "key '%s' of set '%s' vanished after it was generated", kid, set)
    end
    local out = lifecycle.records_after(records, evaluation)
    if evaluation.signer and evaluation.signer ~= kid then record(out, evaluation.signer, "retired", now) end
    record(out, kid, "current", now)
    return out
  end)
  if not changes then return nil, err, code end
  return changes
end

-- Takes a key out of the JWK Set (kept; activate brings it back). The
-- current key is refused: the set would have no key to sign with.
function M.retire(self, set, kid)
  return update(self, set, function(records, evaluation, now)
    local key = evaluation.keys[kid]
    if not key then
      return util.fail("ERR_KEY_NOT_FOUND", "key set '%s' has no signing key '%s'", set, kid)
    end
    if evaluation.signer == kid then
      return util.fail("ERR_KEY_STATE",
        "key '%s' is the current key of set '%s': retiring it would leave no key to sign with (rotate --now replaces it)",
        kid, set)
    end
    if key.state == "retired" then return NOTHING end
    local out = lifecycle.records_after(records, evaluation)
    record(out, kid, "retired", now)
    return out
  end)
end

-- Makes a key current at once; the current key becomes previous.
function M.activate(self, set, kid)
  return update(self, set, function(records, evaluation, now, entry)
    local key = evaluation.keys[kid]
    if not key then
      local held = entry.by_kid[kid]
      if held then
        return util.fail("ERR_KEY_USE", "key '%s' of set '%s' cannot sign (public-only or an encryption key)",
          kid, set)
      end
      return util.fail("ERR_KEY_NOT_FOUND", "key set '%s' has no key '%s'", set, kid)
    end
    if entry.by_kid[kid].broken then
      return nil, entry.by_kid[kid].broken, entry.by_kid[kid].code
    end
    if evaluation.signer == kid then return NOTHING end
    local out = lifecycle.records_after(records, evaluation)
    if evaluation.signer then record(out, evaluation.signer, "previous", now) end
    record(out, kid, "current", now)
    return out
  end)
end

return M

-- The writes of the key lifecycle (jwkengine.lifecycle.rule decides, this
-- module records): the engine methods that run the schedule (maintain) or
-- act by hand (rotate, retire, activate, policy, repair_states), and the
-- guard of a key's deletion.
--
-- Every write is read -> evaluate -> compare-and-swap on the set's state
-- version (jwkengine.lifecycle), retried on a lost race from a fresh read:
-- of processes running the same schedule at once, exactly one records each
-- change. A scheduled key is claimed in the records (state next) before it
-- is generated, so a second process sees the claim and generates nothing.
-- A write starts from a read that succeeded: records it could not read are
-- never written over (only repair_states does, on the operator's word).
--
-- A manager is reached through two methods only: manager:lifecycle() (its
-- states object) and manager:outdate(set) (read the set again).
local core = require("jwkengine.core")
local lifecycle = require("jwkengine.lifecycle")
local policy_module = require("jwkengine.lifecycle.policy")
local rule = require("jwkengine.lifecycle.rule")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

-- The manager holding a set (the HSM first, as signing looks), freshly loaded.
local function holder(engine, set)
  return engine.keys:holder(set) -- the engine's fallback manager (init.lua hands it in)
end

-- The manager's states, or an error for a manager that keeps none.
local function states_of(manager, set)
  local states = manager:lifecycle()
  if not states then
    return util.fail(E.ERR_CONFIG, "key set '%s': its key manager keeps no key states", set)
  end
  return states
end

-- The manager holding a set, its entry and its states: manager, entry,
-- states | nil, nil, nil, err, code.
local function held_states(engine, set)
  local manager, entry, code = holder(engine, set)
  if not manager then return nil, nil, nil, entry, code end
  local states, err
  states, err, code = states_of(manager, set)
  if not states then return nil, nil, nil, err, code end
  return manager, entry, states
end

-- The changes of an update, without what it returns for its callers here.
local function changes_only(changes, err, code)
  if not changes then return nil, err, code end
  return changes
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

-- Marks a key retired on the key itself (retired true) or clears the mark
-- (false), through the manager's mark_retired. A failure is logged here,
-- but a token that cannot change the key (ERR_KEY_MARK_REFUSED), which
-- the manager logs itself.
local function mark(manager, set, kid, retired)
  if not manager.mark_retired then return true end
  local ok, err, code = manager:mark_retired(set, kid, retired)
  if not ok then
    local states = manager:lifecycle()
    if states and code ~= E.ERR_KEY_MARK_REFUSED then
      states.log("error", string.format(
        "key set '%s': key '%s' %s on the key: %s (%s)", set, kid,
        retired and "cannot be marked retired" or "keeps its retired mark", tostring(err), tostring(code)))
    end
    return nil, err, code
  end
  return true
end

-- What a retirement returns once it is recorded, given how its mark went:
-- the changes; where the token cannot mark at all (ERR_KEY_MARK_REFUSED),
-- the changes with the retired key's change saying marked = false and why;
-- any other failure to mark, the error, saying that the records do retire
-- the key and how to mark it again.
local function after_mark(set, changes, kid, marked, mark_err, mark_code)
  if marked then return changes end
  if mark_code ~= E.ERR_KEY_MARK_REFUSED then
    return nil, string.format("key set '%s': key '%s' is retired in the records but not on the key (%s): "
      .. "run `jwkengine keys retire %s %s` to mark it", set, kid, tostring(mark_err), set, kid), mark_code
  end
  for _, change in ipairs(changes) do
    if change.kid == kid and change.to == "retired" then
      change.marked, change.mark_error = false, mark_err
    end
  end
  return changes
end

-- Reads, evaluates and writes a set's records until the write wins.
--   modify(records, evaluation, now, entry, policy, value, states)
--          -> new records, extra | NOTHING | nil, err, code
--          (value: what was read, { version, records, policy })
-- Returns changes, extra, manager.
--   policy_to_write: nil (keep the recorded one, or record the configured
--          one for a set with none) or the policy to record
--   baseline: the records the changes are counted from (nil: the ones this
--          write replaces; rotate --now counts from before its key existed)
local function update(engine, set, modify, policy_to_write, baseline)
  for _ = 1, 8 do
    local manager, entry, states, err, code = held_states(engine, set)
    if not states then return nil, err, code end
    local state
    state, err, code = states:read(set)
    if not state then return nil, err, code end
    local now = states.now()
    local policy = states:policy_of(set, state)
    local evaluation = states:evaluate(entry, state.records, policy, now)
    local records, extra, ecode = modify(state.records, evaluation, now, entry, policy, state, states)
    if not records then return nil, extra, ecode end
    if records == NOTHING then return {}, extra, manager end
    local won
    won, err, code = states:write(set, state.version, records, policy_to_write or states:policy_to_record(set, state))
    manager:outdate(set)
    if won then return differences(set, baseline or state.records, records), extra, manager end
    if won == nil then return nil, err, code end
  end
  return util.fail(E.ERR_STORE, "key set '%s': the key states kept changing under this write: try again", set)
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
  local states, serr, scode = states_of(manager, set)
  if not states then return nil, serr, scode end
  for _ = 1, 8 do
    local state, err, code = states:read(set)
    if not state then return nil, err, code end
    if not state.records[kid] or state.records[kid].state ~= "next" then return true end
    local records = {}
    for k, r in pairs(state.records) do records[k] = r end
    record(records, kid, "next", states.now())
    local won
    won, err, code = states:write(set, state.version, records, states:policy_to_record(set, state))
    if won then
      manager:outdate(set)
      return true
    end
    if won == nil then return nil, err, code end
  end
  return util.fail(E.ERR_STORE, "key set '%s': the key states kept changing under this write: try again", set)
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

-- Marks on the key every key the records retire that is not marked yet: a
-- scheduled retirement (previous -> retired when retain ends), a retire
-- recorded by a process whose mark failed, a set retired before marks.
-- The order is the records first, then the mark: a scheduled retirement
-- takes effect by the rule at the second it falls due, in every process,
-- with no write at all; the mark, written at the schedule's next run,
-- makes it hold should the records be lost. A failure is logged and
-- returned (the next run tries again), except a token that cannot mark.
local function mark_retired_keys(engine, set)
  local manager, entry, code = holder(engine, set)
  if not manager then return nil, entry, code end
  local lc = entry.lifecycle
  if not lc or lc.refused or not manager.mark_retired then return true end
  for _, key in ipairs(entry.keys) do
    local state = lc.evaluation.keys[key.kid]
    if state and state.state == "retired" and not key.retired_mark and not key.broken then
      local ok, err
      ok, err, code = mark(manager, set, key.kid, true)
      if not ok and code ~= E.ERR_KEY_MARK_REFUSED then return nil, err, code end
    end
  end
  return true
end

-- One set's schedule: record what the rule says happened, claim and make a
-- next key when the period says so, destroy what destroy_after says.
local function maintain_set(engine, set)
  local changes, plan, manager = update(engine, set, function(records, evaluation, now, entry, policy, state, states)
    local generate = evaluation.generate and not claimed_next(records, evaluation, policy, now)
    -- a configured set whose records carry no policy yet gets this
    -- process's: from then on every process evaluates with it
    local unrecorded_policy = not state.policy and states:configured(set) ~= nil
    if not evaluation.changed and not generate and #evaluation.destroy == 0 and not unrecorded_policy then
      return NOTHING
    end
    local out = rule.records_after(records, evaluation)
    local kid
    if generate then
      local err, code
      kid, err, code = core.uuid()
      if not kid then return nil, err, code end
      record(out, kid, "next", now)
    end
    for _, destroyed in ipairs(evaluation.destroy) do record(out, destroyed, "destroyed", now) end
    rule.prune_destroyed(out)
    return out, { kid = kid, alg = new_key_alg(engine, set, entry), destroy = evaluation.destroy }
  end)
  if not changes then return nil, plan, manager end
  if plan and plan.kid then
    local ok, err, code = generate_claimed(manager, set, plan.alg, plan.kid)
    if not ok then return nil, err, code end
  end
  for _, kid in ipairs(plan and plan.destroy or {}) do
    local ok, err, code = manager:delete(set, kid)
    if not ok and code ~= E.ERR_KEY_NOT_FOUND then return nil, err, code end
  end
  local ok, err, code = mark_retired_keys(engine, set)
  if not ok then return nil, err, code end
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
  local lc = entry.lifecycle
  if lc and lc.refused then return nil, lc.refused[1], lc.refused[2] end
  local evaluation = lc and lc.evaluation
  local list = {}
  for _, key in ipairs(entry.keys) do
    local state = evaluation and evaluation.keys[key.kid]
    list[#list + 1] = { kid = key.kid, alg = key.alg, use = key.use, error = key.broken,
      state = state and state.state or "published", times = state and state.times or {},
      retired_mark = key.retired_mark or nil }
  end
  return list
end

-- A next key now, claimed in the records before it is generated, so that
-- of processes rotating at once only one makes a key; refused while the set
-- has a next key (present or claimed).
local function rotate_next(self, set, alg)
  local kid, kerr, kcode = core.uuid()
  if not kid then return nil, kerr, kcode end
  local changes, plan, manager = update(self, set, function(records, evaluation, now, entry, policy)
    local waiting = claimed_next(records, evaluation, policy, now)
    for _, present in ipairs(evaluation.published) do
      if evaluation.keys[present].state == "next" then waiting = present end
    end
    if waiting then
      return util.fail(E.ERR_KEY_STATE,
        "key set '%s' already has a next key '%s', which signs after prepublish (rotate --now replaces the current key at once)",
        set, waiting)
    end
    local out = rule.records_after(records, evaluation)
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
-- A token known to keep no key states (ERR_KEY_STATES_UNSUPPORTED): a
-- rotation is refused before it makes a key it could never record (the
-- set would then hold two keys and refuse to sign).
local function states_unsupported(self, set)
  local manager, entry = holder(self, set)
  local lc = manager and entry.lifecycle
  if lc and lc.unsupported then
    local _, err, code = lc.unsupported()
    if code then return err, code end
  end
end

function M.rotate(self, set, options)
  options = options or {}
  local unsupported, ucode = states_unsupported(self, set)
  if unsupported then return nil, string.format("key set '%s': %s", set, unsupported), ucode end
  if not options.now then return rotate_next(self, set, options.alg) end
  local manager, entry, code = holder(self, set)
  if not manager then return nil, entry, code end
  local lc = entry.lifecycle
  if lc and lc.refused then return nil, lc.refused[1], lc.refused[2] end
  local old = lc and lc.evaluation.signer
  local kid, kerr, kcode = core.uuid()
  if not kid then return nil, kerr, kcode end
  -- made before it is recorded: a load in between sees it as next, which
  -- the write below then overrides
  local jwk, err
  jwk, err, code = manager:generate(set, new_key_alg(self, set, entry, options.alg), { kid = kid })
  if not jwk then return nil, err, code end
  -- The order is security first: the old key is marked retired on the key
  -- before the records say so. Should this process die between the two,
  -- the old key already cannot sign (the rule and the token both refuse
  -- it) and the new one, the only key that may sign, signs; the other
  -- order would leave a window in which losing the records brings the old
  -- key back. A mark that fails is logged and returned, never skipped;
  -- the records still retire the key (see after_mark).
  local marked, mark_err, mark_code = true, nil, nil
  if old then marked, mark_err, mark_code = mark(manager, set, old, true) end
  local changes
  changes, err, code = update(self, set, function(records, _, now, current_entry, policy, _, states)
    -- evaluated as the records stand, the old key not yet taken for
    -- retired by its mark: it is the key this rotation replaces
    local evaluation = states:evaluate(current_entry, records, policy, now, { except = old })
    if not evaluation.keys[kid] then
      return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' of set '%s' vanished after it was generated", kid, set)
    end
    local out = rule.records_after(records, evaluation)
    for _, retiring in ipairs({ old, evaluation.signer }) do
      if retiring ~= kid and out[retiring] and out[retiring].state ~= "retired" then
        record(out, retiring, "retired", now)
      end
    end
    record(out, kid, "current", now)
    return out
  end, nil, lc and lc.records)
  if not changes then return nil, err, code end
  return after_mark(set, changes, old, marked, mark_err, mark_code)
end

-- Takes a key out of the JWK Set (kept; activate brings it back). The
-- current key is refused: the set would have no key to sign with. Marked
-- retired on the key first, then recorded (security first, as rotate
-- --now); a mark that fails is returned once the records retire the key
-- (see after_mark). Retiring a retired key again marks it if it is not.
function M.retire(self, set, kid)
  local manager, entry, code = holder(self, set)
  if not manager then return nil, entry, code end
  local lc = entry.lifecycle
  if lc and lc.refused then return nil, lc.refused[1], lc.refused[2] end
  local key = lc and lc.evaluation.keys[kid]
  if not key then
    return util.fail(E.ERR_KEY_NOT_FOUND, "key set '%s' has no signing key '%s'", set, kid)
  end
  if lc.evaluation.signer == kid then
    return util.fail(E.ERR_KEY_STATE,
      "key '%s' is the current key of set '%s': retiring it would leave no key to sign with (rotate --now replaces it)",
      kid, set)
  end
  local marked, mark_err, mark_code = true, nil, nil
  if not entry.by_kid[kid].retired_mark then marked, mark_err, mark_code = mark(manager, set, kid, true) end
  local changes, err
  changes, err, code = update(self, set, function(records, evaluation, now)
    if not evaluation.keys[kid] then
      return util.fail(E.ERR_KEY_NOT_FOUND, "key set '%s' has no signing key '%s'", set, kid)
    end
    if records[kid] and records[kid].state == "retired" then return NOTHING end
    local out = rule.records_after(records, evaluation)
    if not out[kid] or out[kid].state ~= "retired" then record(out, kid, "retired", now) end
    return out
  end)
  if not changes then return nil, err, code end
  return after_mark(set, changes, kid, marked, mark_err, mark_code)
end

-- Makes a key current at once; the current key becomes previous. A key
-- marked retired on the key has its mark cleared first: when that fails,
-- nothing is recorded (the key could not sign anyway).
function M.activate(self, set, kid)
  local manager, entry, code = holder(self, set)
  if not manager then return nil, entry, code end
  local marked = entry.by_kid[kid]
  if marked and marked.retired_mark then
    local ok, err
    ok, err, code = mark(manager, set, kid, false)
    if not ok then return nil, err, code end
  end
  return changes_only(update(self, set, function(records, evaluation, now, current_entry)
    local key = evaluation.keys[kid]
    if not key then
      local held = current_entry.by_kid[kid]
      if held then
        return util.fail(E.ERR_KEY_USE, "key '%s' of set '%s' cannot sign (public-only or an encryption key)",
          kid, set)
      end
      return util.fail(E.ERR_KEY_NOT_FOUND, "key set '%s' has no key '%s'", set, kid)
    end
    local held = current_entry.by_kid[kid]
    if held.broken then return nil, held.broken, held.code end
    if evaluation.signer == kid then return NOTHING end
    local out = rule.records_after(records, evaluation)
    if evaluation.signer then record(out, evaluation.signer, "previous", now) end
    record(out, kid, "current", now)
    return out
  end))
end

-- A set's rotation policy: { recorded = the policy recorded with its states
-- (nil: none yet), configured = this process's (nil: the set is not
-- configured), effective = the one every process evaluates with }. With
-- `settings` (any of period, prepublish, retain, destroy_after; false turns
-- period or destroy_after off), records the effective policy changed by
-- them, checked against the safety minimums of this process's
-- configuration, and returns the same table after the write.
function M.policy(self, set, settings)
  local _, _, states, err, code = held_states(self, set)
  if not states then return nil, err, code end
  local state
  state, err, code = states:read(set)
  if not state then return nil, err, code end
  if settings then
    local wanted = {}
    for name, value in pairs(states:policy_of(set, state)) do wanted[name] = value end
    for _, name in ipairs(policy_module.FIELDS) do
      if settings[name] == false then wanted[name] = nil
      elseif settings[name] ~= nil then wanted[name] = settings[name] end
    end
    local limits = self.policies and self.policies.limits or policy_module.DEFAULT_LIMITS
    local policy
    policy, err, code = policy_module.make(wanted, limits, string.format("key set '%s': ", set))
    if not policy then return nil, err, code end
    local changes
    changes, err, code = update(self, set, function(records, evaluation)
      return rule.records_after(records, evaluation)
    end, policy)
    if not changes then return nil, err, code end
    state, err, code = states:read(set)
    if not state then return nil, err, code end
  end
  return { recorded = state.policy, configured = states:configured(set), effective = states:policy_of(set, state) }
end

-- Rewrites a set's records whatever they hold now, on the operator's word:
-- the repair of a set whose records cannot be read (ERR_KEY_STATES_CORRUPT).
--   options.current  the kid that signs from now on (required)
--   options.retire   kids to record as retired (unpublished)
-- Every other key that may sign is recorded previous as of now (published,
-- verifying the tokens it signed, unpublished after retain); keys marked
-- retired on the key itself stay retired. Returns the records written as
-- changes.
function M.repair(self, set, options)
  local manager, entry, states, err, code = held_states(self, set)
  if not states then return nil, err, code end
  local current = options.current
  local present, rule_options = lifecycle.present(entry)
  local key = entry.by_kid[current]
  if not key or not util.contains(present, current) then
    return util.fail(E.ERR_KEY_NOT_FOUND, "key set '%s' has no signing key '%s' to make current", set, tostring(current))
  end
  if key.broken then return nil, key.broken, key.code end
  if rule_options.marked[current] then
    return util.fail(E.ERR_KEY_STATE, "key '%s' of set '%s' is marked retired on the key: it is not made current by a repair",
      current, set)
  end
  local retire = {}
  for _, kid in ipairs(options.retire or {}) do
    if kid == current then
      return util.fail(E.ERR_INVALID_ARGUMENT, "key '%s' cannot be both the current key and retired", kid)
    end
    retire[kid] = true
  end
  -- the recorded policy when the records are readable, else the configured one
  local state = states:read(set)
  local policy = state and state.policy or states:configured(set)
  local now = states.now()
  local records = {}
  for _, kid in ipairs(present) do
    local name = kid == current and "current" or ((retire[kid] or rule_options.marked[kid]) and "retired" or "previous")
    records[kid] = { state = name, times = { [name] = now } }
  end
  local version
  version, err, code = states:repair(set, records, policy)
  manager:outdate(set)
  if not version then return nil, err, code end
  states.log("warn", string.format("key set '%s': key states rewritten by a repair (version %d), current key '%s'",
    set, version, current))
  return differences(set, {}, records)
end

-- Records a key this process just made (generate, startup generation) at
-- once, so the first reader never guesses: in a set with no key that may
-- sign it is the current key (any other unrecorded key, one another
-- program added meanwhile, is next); otherwise it is next. kid nil: the
-- set's only key (startup generation).
function M.record_created(self, set, kid)
  return changes_only(update(self, set, function(records, evaluation, now, entry, policy, _, states)
    if kid and records[kid] then return NOTHING end
    if kid and not evaluation.keys[kid] then return NOTHING end -- not a signing key
    if not evaluation.must_record and not evaluation.undecided then return NOTHING end
    local seeded = {}
    for k, r in pairs(records) do seeded[k] = r end
    if kid then
      local signs = false
      for k in pairs(records) do
        local key = evaluation.keys[k]
        if key and (key.state == "current" or key.state == "next" or key.state == "previous") then signs = true end
      end
      if not signs then seeded[kid] = { state = "current", times = { current = now } } end
    end
    return rule.records_after(seeded, states:evaluate(entry, seeded, policy, now))
  end))
end

-- What deleting a key would break, checked before `delete` (without force):
-- the current key (the set's signer), a previous key still inside retain
-- (tokens it signed would fail to verify) and a next key (the key clients
-- are learning before it signs) are refused with ERR_KEY_STATE.
function M.check_delete(self, set, kid)
  local manager, entry, code = holder(self, set)
  if not manager then return nil, entry, code end
  local lc = entry.lifecycle
  if not lc then return true end
  if lc.refused then
    return nil, string.format("%s; deleting a key is refused while the set's states cannot be read (force: --force)",
      lc.refused[1]), lc.refused[2]
  end
  local key = lc.evaluation.keys[kid]
  if not key then return true end
  local now = lc.now()
  local why
  -- the set's only key goes as the whole set would (an unguarded delete)
  local alone = #lifecycle.present(entry) == 1
  if key.state == "current" and not alone then
    why = "it is the current key: the set's tokens are signed with it, and deleting it makes another key sign "
      .. "at once, before clients may have cached it (rotate, or rotate --now, first)"
  elseif key.state == "previous" and now < key.times.previous + lc.policy.retain then
    why = string.format("it is a previous key inside retain: tokens it signed stay valid until %d and would "
      .. "fail to verify (retire it after that, or wait)", math.floor(key.times.previous + lc.policy.retain))
  elseif key.state == "next" then
    why = "it is the next key, published for clients to learn before it signs: the set's next rotation "
      .. "would lose its key (it signs at the end of prepublish)"
  end
  if why then
    return util.fail(E.ERR_KEY_STATE, "key '%s' of set '%s' is not deleted: %s; pass --force (force = true) to "
      .. "delete it anyway", kid, set, why)
  end
  return true
end

return M

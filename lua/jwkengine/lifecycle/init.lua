-- The key lifecycle, as the key managers and the engine see it.
--
-- The package: rule (which key signs: a pure function of records, keys,
-- policy and a clock), records (the one definition of a valid record set),
-- policy (the rotation policy's schema and safety minimums), token_backend
-- and sql_backend (where records live), writes (maintain, rotate, retire,
-- activate, policy, repair, the delete guard). This file is the narrow
-- interface: whoever composes the engine makes a `states` object (new,
-- with_backend) and puts a manager under it with govern(manager, states);
-- from then on every set the manager loads gets its states before use. The
-- manager never calls into the lifecycle by name. The writes reach a
-- manager's states through manager:lifecycle() and tell it a set changed
-- through manager:outdate(set).
--
-- A backend keeps, per set, one value { version, records, policy } (see
-- jwkengine.lifecycle.records) and has these methods:
--
--   backend:read(set)    -> { version = n, records = { kid -> record },
--                           policy = nil | {...} } (version 0 and no
--                           records for a set never written; a value that
--                           fails validation is ERR_KEY_STATES_CORRUPT,
--                           never "nothing recorded") | nil, err, code
--   backend:write(set, version, records, policy)
--                        -> true, or false when the set's version is no
--                           longer `version` (another writer won: read
--                           again) | nil, err, code. Compare-and-swap: of
--                           two writers that read the same version, at most
--                           one wins, whatever process or machine they run
--                           in (on the HSM both may lose: read again). A
--                           failed write leaves what it found.
--   backend:repair(set, records, policy) -> new version | nil, err, code:
--                           writes whatever the set holds now (the
--                           operator's repair, keys repair)
--   backend:sets()       -> { set, ... } that have records | nil, err, code
--
-- Reads fail closed. A process that has read a valid version of a set
-- keeps it as the last known good one while later reads fail (said once
-- per change in the log); one that has none refuses to sign from the set,
-- and reads again every RETRY seconds. Nothing is written from a read that
-- failed, and a set whose records exist is never decided from its keys.
local keyset = require("jwkengine.keyset")
local policy_module = require("jwkengine.lifecycle.policy")
local rule = require("jwkengine.lifecycle.rule")
local E = require("jwkengine.errors").E

local M = {}

-- How long a set that refuses waits before its records are read again
-- (on its next use): its callers are refused meanwhile, not slowed.
M.RETRY = 5

-- The kids that take part in the lifecycle: keys that can sign, and broken
-- rows (they may be the key that should sign: their error is then the
-- signer's). Public-only and encryption keys are always published and
-- never sign. The second value is the rule's options: the keys marked
-- retired on the key itself, and whether the order is the keys' age.
-- except: a kid whose mark is not counted (rotate --now evaluates the
-- records as they stood before it marked the key it replaces).
function M.present(entry, except)
  local kids, marked = {}, {}
  for _, key in ipairs(entry.keys) do
    if key.broken or (key.private and key.use == "sig") then
      kids[#kids + 1] = key.kid
      if key.retired_mark and key.kid ~= except then marked[key.kid] = true end
    end
  end
  return kids, { marked = marked, newest_first = entry.newest_first }
end

local States = {}
States.__index = States

-- policies: jwkengine.lifecycle.policy.policies(cfg); now() -> seconds;
-- log(level, message). backend: see above (nil: a manager gives its own
-- through with_backend).
function M.new(backend, policies, now, log)
  return setmetatable({ backend = backend, policies = policies, now = now or os.time,
    log = log or function() end, good = {}, failing = {}, differs = {} }, States)
end

-- The same policies and clock over another backend (the HSM's token).
function States:with_backend(backend)
  return M.new(backend, self.policies, self.now, self.log)
end

-- The policy this process's configuration gives a set (nil: the set is not
-- configured, so this process records none).
function States:configured(set)
  return self.policies and self.policies.by_set[set]
end

-- The policy to evaluate a set with: the recorded one (every process then
-- agrees, whatever its configuration), else the configured one, else the
-- default. A configured policy that differs from the recorded one is said
-- once per difference.
function States:policy_of(set, value)
  local configured = self:configured(set)
  local recorded = value and value.policy
  if recorded then
    local limits = self.policies and self.policies.limits
    local minimum = limits and policy_module.minimums(limits)
    if minimum and (recorded.prepublish < minimum.prepublish or recorded.retain < minimum.retain) then
      local said = "unsafe " .. policy_module.describe(recorded)
      if self.differs[set .. "\0unsafe"] ~= said then
        self.differs[set .. "\0unsafe"] = said
        self.log("warn", string.format("key set '%s': the rotation policy recorded with its states (%s) is "
          .. "below this process's safety minimums (prepublish %d s, retain %d s: its publication and tokens "
          .. "settings); it rules all the same, so every process agrees: raise it with `jwkengine keys policy "
          .. "%s --prepublish N --retain N`", set, policy_module.describe(recorded), minimum.prepublish,
          minimum.retain, set))
      end
    end
    if configured and not policy_module.same(configured, recorded) then
      local said = policy_module.describe(configured) .. " | " .. policy_module.describe(recorded)
      if self.differs[set] ~= said then
        self.differs[set] = said
        self.log("warn", string.format("key set '%s': the configured rotation policy (%s) differs from the "
          .. "one recorded with its states (%s), which rules; `jwkengine keys policy %s --period N ...` "
          .. "records another", set, policy_module.describe(configured), policy_module.describe(recorded), set))
      end
    end
    return recorded
  end
  return configured or (self.policies and self.policies.default) or policy_module.make(nil, policy_module.DEFAULT_LIMITS)
end

-- The policy a write records with the states: the recorded one, or this
-- process's configured one for a set that has none.
function States:policy_to_record(set, value)
  return value.policy or self:configured(set)
end

-- Forgets what this process read of a set (its last good version, what it
-- said about it): the set is gone (deleted here, or found with no key), so
-- one made again under its name starts its versions afresh.
function States:forget(set)
  self.good[set], self.failing[set], self.differs[set] = nil, nil, nil
  if self.backend and self.backend.forget then self.backend:forget(set) end
end

-- The set's value, from the backend; a version below the last good one
-- this process read is an error (see value), for writes as for reads.
function States:read(set)
  local value, err, code = self.backend:read(set)
  local good = self.good[set]
  if value and good and value.version < good.version then
    return nil, string.format("key set '%s': its key states went back from version %d to %d (records lost "
      .. "or rolled back): repair with `jwkengine keys repair %s --current KID` (README: Rotating keys)",
      set, good.version, value.version, set), E.ERR_KEY_STATES_CORRUPT
  end
  return value, err, code
end
-- nil, or nil, why, ERR_KEY_STATES_UNSUPPORTED once the backend is known
-- to keep no states (a token without data objects).
function States:unsupported()
  if self.backend.unsupported then return self.backend:unsupported() end
  return nil
end
function States:write(set, version, records, policy) return self.backend:write(set, version, records, policy) end
function States:repair(set, records, policy) return self.backend:repair(set, records, policy) end

-- The rule over a loaded entry and a value. options.except: see present.
function States:evaluate(entry, records, policy, now, options)
  local present, rule_options = M.present(entry, options and options.except)
  return rule.evaluate(records, present, policy, now, rule_options)
end

-- Reads a set's value, or the last good one when the read fails; nil, err,
-- code when there is none. The second value says whether it was read now.
-- A version below the last good one is a failed read too: versions only
-- grow (a repair writes above them all), so the records were lost or
-- rolled back (a row deleted by hand), and deciding from what is left
-- could bring back a key the set moved past.
function States:value(set)
  local value, err, code = self:read(set)
  local good = self.good[set]
  if value then
    if self.failing[set] then
      self.log("warn", string.format("key set '%s': its key states are readable again (version %d)", set,
        value.version))
      self.failing[set] = nil
    end
    if value.version >= 1 then self.good[set] = value end
    return value, true
  end
  if self.failing[set] ~= err then
    self.failing[set] = err
    self.log(good and "warn" or "error", string.format("key set '%s': %s (%s); %s", set, tostring(err),
      tostring(code), good and string.format("the last good version read (%d) stands", good.version)
      or "no good version was read before: signing from the set is refused"))
  end
  if good then return good, false end
  return nil, err, code
end

-- Evaluates the rule for a loaded entry against its records and re-prepares
-- it (signer, JWK Set, candidates). A refusing entry reads its records
-- again instead (at most every RETRY seconds: only it pays).
local function apply(entry, set, where, states, now)
  local lc = entry.lifecycle
  if lc.refused then return M.read_into(entry, set, where, states, now) end
  lc.evaluation = states:evaluate(entry, lc.records, lc.policy, now)
  lc.valid_until = lc.evaluation.next_change
  return keyset.prepare(entry, set, where)
end

-- Reads the set's records into the entry and evaluates; records first-seen
-- keys (compare-and-swap; whoever loses reads the winner's records).
function M.read_into(entry, set, where, states, now)
  local value, read_now, code = states:value(set)
  local lc = { present = M.present(entry), now = states.now, unsupported = function() return states:unsupported() end,
    reevaluate = function(e) return apply(e, set, where, states, states.now()) end }
  entry.lifecycle = lc
  if not value then
    lc.refused = { read_now, code }
    lc.valid_until = now + M.RETRY
    return keyset.prepare(entry, set, where)
  end
  lc.records, lc.policy = value.records, states:policy_of(set, value)
  apply(entry, set, where, states, now)
  -- First-seen times must be the same for every process: write them, once.
  -- Never from the last good version: the set holds something newer.
  local evaluation = lc.evaluation
  if read_now and evaluation.must_record then
    local records = rule.records_after(value.records, evaluation)
    local written, werr, wcode = states:write(set, value.version, records, states:policy_to_record(set, value))
    if written == false then
      local again = states:value(set)
      if again then
        lc.records, lc.policy = again.records, states:policy_of(set, again)
        apply(entry, set, where, states, now)
      end
    elseif written then
      lc.records = records
    elseif wcode ~= E.ERR_KEY_STATES_UNSUPPORTED then -- that one is said once
      states.log("warn", string.format("key set '%s': first-seen key states cannot be recorded (%s)",
        set, tostring(werr)))
    end
  end
  return entry
end

-- Puts a key manager (a jwkengine.keyset.Manager) under states: its loads
-- attach them, a set it finds gone is forgotten, and the writes find them
-- through manager:lifecycle(). Returns the manager.
function M.govern(manager, states)
  function manager.on_load(m, entry, set) states:attach(entry, set, m.where) end
  function manager.on_gone(_, set) states:forget(set) end
  function manager.lifecycle() return states end
  return manager
end

-- Gives a freshly loaded entry its states: reads the set's records once
-- (the signing path never reads them again until the set is reloaded, or
-- while it refuses), and installs the re-evaluation the signing path runs
-- when the clock passes the next state change.
function States:attach(entry, set, where)
  return M.read_into(entry, set, where, self, self.now())
end

return M

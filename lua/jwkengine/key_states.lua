-- Where key states live, and the hook that gives a loaded set its states.
--
-- A state backend keeps, per set, the records jwkengine.lifecycle reads
-- (kid -> { state, times }) under a version number. It is three methods:
--
--   backend:read(set)    -> { version = n, records = { kid -> record } }
--                           (version 0 and no records for a set never
--                           written) | nil, err, code
--   backend:write(set, version, records)
--                        -> true, or false when the set's version is no
--                           longer `version` (another writer won: read
--                           again) | nil, err, code. Compare-and-swap: of
--                           two writers that read the same version, at most
--                           one wins, whatever process or machine they run
--                           in (on the HSM both may lose: read again).
--   backend:sets()       -> { set, ... } that have records | nil, err, code
--
-- Records are plain tables of strings and numbers (JSON-able). The software
-- store keeps them in its own table (jwkengine.store.key_state); the HSM
-- keeps them on the token, as CKO_DATA objects under the set's label
-- (jwkengine.hsm_states), so instances sharing a partition agree without a
-- database.
local keyset = require("jwkengine.keyset")
local lifecycle = require("jwkengine.lifecycle")

local M = {}

-- The kids that take part in the lifecycle: keys that can sign, and broken
-- rows (they may be the key that should sign: their error is then the
-- signer's). Public-only and encryption keys are always published and
-- never sign.
function M.present(entry)
  local kids = {}
  for _, key in ipairs(entry.keys) do
    if key.broken or (key.private and key.use == "sig") then kids[#kids + 1] = key.kid end
  end
  return kids
end

-- Evaluates the rule for a loaded entry against its records and re-prepares
-- it (signer, JWK Set, candidates).
local function apply(entry, set, where, now)
  local lc = entry.lifecycle
  lc.evaluation = lifecycle.evaluate(lc.records, lc.present, lc.policy, now)
  lc.valid_until = lc.evaluation.next_change
  return keyset.prepare(entry, set, where)
end

-- Gives a freshly loaded entry its states: reads the set's records once
-- (the signing path never reads them again until the set is reloaded),
-- records keys seen for the first time, and installs the re-evaluation the
-- signing path runs when the clock passes the next state change.
--   states: { backend, policy_for(set) -> policy, now() -> seconds, log }
--   previous: the entry this one replaces, if any
-- When the records cannot be read, the ones read before (previous's) stand:
-- deciding from the keys alone could make a key that left the JWK Set
-- long ago sign again. Only a set never read before is decided from its
-- keys, and nothing is written from a read that failed.
function M.attach(entry, set, where, states, previous)
  local now = states.now()
  local state, err = states.backend:read(set)
  local readable = state ~= nil
  if not state then
    local known = previous and previous.lifecycle and previous.lifecycle.records
    states.log("warn", string.format("key set '%s': key states cannot be read (%s): %s", set, tostring(err),
      known and "the states read before stand" or "deciding from the keys alone"))
    state = { version = 0, records = known or {} }
  end
  entry.lifecycle = { records = state.records, present = M.present(entry), policy = states.policy_for(set),
    now = states.now, reevaluate = function(e) return apply(e, set, where, states.now()) end }
  apply(entry, set, where, now)
  -- First-seen times must be the same for every process: write them, once
  -- (compare-and-swap); whoever loses reads the winner's records.
  local evaluation = entry.lifecycle.evaluation
  if readable and evaluation.must_record then
    local written, werr = states.backend:write(set, state.version,
      lifecycle.records_after(state.records, evaluation))
    if written == false then
      local again = states.backend:read(set)
      if again then
        entry.lifecycle.records = again.records
        apply(entry, set, where, now)
      end
    elseif written then
      entry.lifecycle.records = lifecycle.records_after(state.records, evaluation)
    else
      states.log("warn", string.format("key set '%s': first-seen key states cannot be recorded (%s)",
        set, tostring(werr)))
    end
  end
  return entry
end

return M

-- The key lifecycle as pure policy: no I/O, no clock of its own. Given a
-- set's recorded states, the keys present and the time, one rule decides
-- which key signs, which keys are published and when the answer changes
-- next. Every process (and nginx worker) that reads the same records and
-- the same clock computes the same answer, so only writes need a lock.
--
-- States, in the only order a key moves through them:
--   next      published, never signs (clients' caches learn it first)
--   current   signs; exactly one per set
--   previous  published, verifies the tokens it signed, no longer signs
--   retired   not published, not used, still held (activate brings it back)
--   destroyed deleted from the store or token; only its record remains
--
-- A record is { state = NAME, times = { next = t, current = t, ... } }: the
-- time the key entered each state it went through (seconds).
local records_module = require("jwkengine.lifecycle.records")

local M = {}

M.STATES = records_module.STATES
local KNOWN_STATE = records_module.KNOWN_STATE
M.KNOWN_STATE = KNOWN_STATE

-- States in the JWK Set, and states a caller may name by kid to sign with:
-- a previous key is still in every client's cache; a next key may not be
-- yet (that is what prepublish waits for), a retired one is in none.
M.PUBLISHED = { next = true, current = true, previous = true }
M.SIGNS_BY_KID = { current = true, previous = true }
-- States of a key that signs now or may sign later without an operator.
local MAY_SIGN = { next = true, current = true, previous = true }

local function copy_times(times)
  local copy = {}
  for state, t in pairs(times or {}) do copy[state] = t end
  return copy
end

local function enter(key, state, t)
  key.state = state
  key.times[state] = t
end

-- Of several keys in `state`, the one that `comes_first` (a comparison of
-- the times they entered it; ties go the same way by kid), so the choice
-- never depends on table order.
local function first_in(keys, state, order, comes_first)
  local best
  for _, kid in ipairs(order) do
    local key = keys[kid]
    if key and key.state == state and not key.undecided then
      local t, bt = key.times[state] or 0, best and (keys[best].times[state] or 0)
      if not best or comes_first(t, bt) or (t == bt and comes_first(kid, best)) then best = kid end
    end
  end
  return best
end

local function after(a, b) return a > b end
local function before(a, b) return a < b end

-- The key that entered `state` last (ties: the greater kid).
local function latest(keys, state, order) return first_in(keys, state, order, after) end

-- The key that entered `state` first (ties: the smaller kid).
local function earliest(keys, state, order) return first_in(keys, state, order, before) end

-- The next scheduled change of the rule's outcome at or before `limit`:
-- a next key's promotion or a previous key's retirement, earliest first.
local function next_event(keys, order, policy, limit)
  local when, kid, action
  for _, k in ipairs(order) do
    local key = keys[k]
    local t, a
    if key.undecided then -- luacheck: ignore 542 (never promoted by the clock)
    elseif key.state == "next" then
      t, a = key.times.next + policy.prepublish, "promote"
    elseif key.state == "previous" then
      t, a = key.times.previous + policy.retain, "retire"
    end
    -- ties: promotions first (a promotion may make another previous key),
    -- then by kid
    if t and t <= limit and (not when or t < when
        or (t == when and (a < action or (a == action and k < kid)))) then
      when, kid, action = t, k, a
    end
  end
  return when, kid, action
end

-- The one rule.
--   records  kid -> recorded { state, times } (checked by
--            jwkengine.lifecycle.records)
--   present  the kids of the keys that may sign, in the set's order
--            (newest first where the store knows it)
--   policy   { period, prepublish, retain, destroy_after }
--            (jwkengine.lifecycle.policy)
--   now      seconds: the caller's clock (the rule never reads one)
--   options  nil or
--            marked       kid -> true for keys marked retired on the key
--                         itself (retired_mark): retired, whatever their
--                         record says
--            newest_first true when `present` is in the order the keys
--                         were made, newest first (the software store's
--                         rows); false for a token, whose listing order
--                         means nothing
-- Returns {
--   keys        kid -> { state, times } for every present key, as of now
--   signer      the current key's kid (nil when no key may sign)
--   published   the kids in the JWK Set (next, current, previous), in order
--   next_change the earliest time after now at which anything here changes
--               (a promotion, a retirement, a due generation or destruction)
--   changed     true when `keys` differs from what is recorded: a write of
--               `keys` records it (first-seen keys, replayed promotions)
--   must_record true when `keys` holds times taken from `now` (first-seen
--               keys, a signer chosen because the current key is gone):
--               processes agree on them only once they are written
--   undecided   true when no key may sign and several unrecorded keys are
--               present in no known order (a token's legacy set): none
--               signs until an operator names one (keys activate SET KID)
--   generate    true when the period says a next key is due
--   destroy     kids whose destroy_after has passed
-- }
function M.evaluate(records, present, policy, now, options)
  local marked = options and options.marked or {}
  local newest_first = options and options.newest_first
  local keys, unrecorded, changed, must_record = {}, {}, false, false
  for _, kid in ipairs(present) do
    local record = records[kid]
    if record and KNOWN_STATE[record.state] and record.state ~= "destroyed" then
      keys[kid] = { state = record.state, times = copy_times(record.times) }
      if marked[kid] and record.state ~= "retired" then
        -- the mark on the key outranks its record: a retired key never
        -- signs again, whatever a record (lost, rolled back, forged) says
        enter(keys[kid], "retired", record.times.retired or now)
        changed = true
      end
    elseif marked[kid] then
      keys[kid] = { times = {} }
      enter(keys[kid], "retired", now)
      changed = true
    else
      unrecorded[#unrecorded + 1] = kid
    end
  end
  -- Two current keys can only come from hand-edited records: the one that
  -- became current last keeps signing.
  local current = latest(keys, "current", present)
  for _, kid in ipairs(present) do
    local key = keys[kid]
    if key and key.state == "current" and kid ~= current then
      enter(key, "previous", keys[current].times.current)
      changed = true
    end
  end
  -- Keys with no record are next from now on, whatever their kid, as
  -- pkcs11-tool's pairs are: a key nobody has seen yet is in no client's
  -- cache. The one exception is a set with no key that may sign (a legacy
  -- set, or one whose every key is new): one unrecorded key signs; of
  -- several, the newest where the store knows the order (its first), and
  -- the others are previous; in no known order (a token), none signs until
  -- an operator names one: kid order would let whoever picks a kid choose.
  local has_signer = false
  for _, kid in ipairs(present) do
    local key = keys[kid]
    if key and MAY_SIGN[key.state] then has_signer = true end
  end
  local undecided = not has_signer and #unrecorded > 1 and not newest_first
  for i, kid in ipairs(unrecorded) do
    keys[kid] = { times = {} }
    if undecided then
      -- published (clients learn it), recorded by nobody until it is named
      keys[kid].state, keys[kid].undecided = "next", true
    else
      enter(keys[kid], has_signer and "next" or (i == 1 and "current" or "previous"), now)
      changed, must_record = true, true
    end
  end
  -- Replay the schedule up to now, event by event, at the times the events
  -- fell due (not at now), so every process records the same times.
  while true do
    local t, kid, action = next_event(keys, present, policy, now)
    if not t then break end
    if action == "promote" then
      for _, other in ipairs(present) do
        if keys[other] and keys[other].state == "current" then enter(keys[other], "previous", t) end
      end
      enter(keys[kid], "current", t)
    else
      enter(keys[kid], "retired", t)
    end
    changed = true
  end
  -- No current key (it was deleted, or marked retired): the next key
  -- published longest signs, else the previous key that signed last,
  -- rather than nothing. Marked keys are retired: never chosen here.
  current = latest(keys, "current", present)
  if not current then
    current = earliest(keys, "next", present) or latest(keys, "previous", present)
    if current then
      enter(keys[current], "current", now)
      changed, must_record = true, true
    end
  end

  local result = { keys = keys, signer = current, published = {}, changed = changed, destroy = {},
    must_record = must_record, undecided = undecided or nil }
  local upcoming = {}
  for _, kid in ipairs(present) do
    local key = keys[kid]
    if M.PUBLISHED[key.state] then result.published[#result.published + 1] = kid end
    if key.state == "next" and not key.undecided then upcoming[#upcoming + 1] = key.times.next + policy.prepublish end
    if key.state == "previous" then upcoming[#upcoming + 1] = key.times.previous + policy.retain end
    if key.state == "retired" and policy.destroy_after then
      local due = key.times.retired + policy.destroy_after
      if due <= now then result.destroy[#result.destroy + 1] = kid else upcoming[#upcoming + 1] = due end
    end
  end
  if policy.period and current and not earliest(keys, "next", present) then
    local due = keys[current].times.current + policy.period - policy.prepublish
    if due <= now then result.generate = true else upcoming[#upcoming + 1] = due end
  end
  for _, t in ipairs(upcoming) do
    if t > now and (not result.next_change or t < result.next_change) then result.next_change = t end
  end
  return result
end

-- How many records of destroyed keys a set keeps. A destroyed record
-- decides nothing: the rule passes over it, and a destroyed key that came
-- back (a token restored from a backup) is kept from signing by the mark
-- its retirement left on the key, not by its record. It is history, and
-- history without a bound would fill the set's records (records.lua allows
-- MAX_RECORDS): an hourly rotation with destroy_after set would refuse
-- every write after about 16 days. The oldest go first.
M.KEEP_DESTROYED = 64

local function destroyed_at(record) return record.times.destroyed or 0 end

-- Drops the oldest destroyed records beyond KEEP_DESTROYED (ties by kid,
-- so every process drops the same ones), in place.
function M.prune_destroyed(records)
  local destroyed = {}
  for kid, record in pairs(records) do
    if record.state == "destroyed" then destroyed[#destroyed + 1] = kid end
  end
  if #destroyed <= M.KEEP_DESTROYED then return end
  table.sort(destroyed, function(a, b)
    local ta, tb = destroyed_at(records[a]), destroyed_at(records[b])
    if ta ~= tb then return ta < tb end
    return a < b
  end)
  for i = 1, #destroyed - M.KEEP_DESTROYED do records[destroyed[i]] = nil end
end

-- The records to write after an evaluation: the evaluated keys, plus the
-- records of keys no longer present (the newest KEEP_DESTROYED destroyed
-- keys keep theirs). Keys the rule left undecided stay unrecorded.
function M.records_after(records, evaluation)
  local out = {}
  for kid, record in pairs(records) do out[kid] = record end
  for kid, key in pairs(evaluation.keys) do
    if not key.undecided then out[kid] = { state = key.state, times = key.times } end
  end
  M.prune_destroyed(out)
  return out
end

return M

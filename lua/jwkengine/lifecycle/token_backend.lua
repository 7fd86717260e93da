-- The HSM's state backend (the contract: jwkengine.lifecycle): a set's key
-- states live on the token, next to its keys, as PKCS#11 data objects
-- (CKO_DATA, CKA_APPLICATION = APPLICATION, CKA_LABEL = the set's prefixed
-- label, CKA_VALUE = JSON { version, writer, records, policy }, token and
-- private). Every instance sharing the HSM partition reads the same
-- objects, so they agree without a database. Readers take the newest
-- version that jwkengine.lifecycle.records accepts.
--
-- What a reader does with an object it cannot read (not JSON, a version
-- that is no integer, a record without its time, a future format, an
-- object the token cannot hand over): beside a readable one of a higher
-- version, it is logged once and skipped (garbage a fault or another
-- program left); when it claims a version at least as high as the newest
-- readable one, or is alone, the read fails with ERR_KEY_STATES_CORRUPT: it
-- may be a newer format, and the records it replaced must not be
-- believed. A writer never destroys what it could not read.
--
-- The compare-and-swap. PKCS#11 has no atomic update and tokens do not
-- keep labels unique; what a token does do atomically is destroy an
-- object: of two sessions destroying the same object, one succeeds and the
-- other is told the handle is invalid (SoftHSM's file store unlinks the
-- object's file: the second unlink fails). So a writer moving a set from
-- version N to N+1 destroys the version-N object first, and only the one
-- whose destroy succeeded creates version N+1; the others report a lost
-- race (false) and read again. Both writers found the version-N object
-- before they raced, so the arbiter is an object every contender knows.
--
-- Why not "create N+1, then look for rivals": SoftHSM's file store (2.6)
-- shows a process the objects other processes made only when its view is
-- refreshed, and its own create marks the view fresh: a process that
-- creates an object just after another did does not see the other's until
-- a third change. A destroy goes to the file itself, so the arbiter above
-- holds there too; so does a network HSM's.
--
-- The gap. Between the winner's destroy and its create the set has no
-- state object for a moment (as long as a loaded machine holds the winner
-- up). Whoever reads then must not believe "never written": a process
-- that did would record the keys' states afresh from the keys alone (a
-- rival version 1, which its own view may then show it as the newest) and
-- act on them. So every written set also has a marker: a data object under
-- MARKER_APPLICATION and the set's label, created before the set's first
-- state object (or, for a set written before markers, before the next
-- destroy) and never changed. A reader that finds no state object but a
-- marker, or an older version than this process has seen, reads again
-- (REREADS times) and then returns ERR_STORE rather than the older view;
-- only a set with neither is new. A writer that dies inside the gap
-- leaves its set refusing until the marker is removed by hand (README:
-- key states on the HSM).
--
-- A set never written has nothing to destroy: its first writers create
-- the marker, then version 1, and keep it unless a rival version 1 that
-- readers would pick instead is in sight (on a token that hides recent
-- objects, two first writers may both keep theirs: they differ only in
-- the first-seen times they recorded, readers settle on the same one, and
-- the next write replaces both). A first writer whose version 1 cannot be
-- created takes back the marker it made.
local core = require("jwkengine.core")
local records_module = require("jwkengine.lifecycle.records")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

M.APPLICATION = "jwkengine key states"
-- the marker of a set whose states are on the token (the gap, above); its
-- value is only there because a data object needs one
M.MARKER_APPLICATION = "jwkengine key states written"
local MARKER_VALUE = "1"

-- How often a view older than one this process has seen is read again
-- before it is believed (the winner of a write is between its destroy and
-- its create; a set deleted and made again really is older), and the
-- pauses between the reads: the first few back to back (a gap is usually
-- a few calls long), then doubling from 1 ms to 32 ms, about 0.4 s in all,
-- so that a writer a loaded machine holds up is waited for rather than
-- reported.
local REREADS = 20
local function pause_before(backend, read)
  if read > 4 then backend.pause(math.min(0.001 * 2 ^ (read - 5), 0.032)) end
end

local Backend = {}
Backend.__index = Backend

--   token:  an open token object (core)
--   prefix: hsm.key_set_prefix
--   log(level, message)
--   pause(seconds): how it waits between re-reads (core.pause; a spec
--     passes its own to act as the other writer at a known moment)
function M.new(token, prefix, log, pause)
  return setmetatable({ token = token, prefix = prefix or "", log = log or function() end, seen = {}, marked = {},
    skipped = {}, pause = pause or core.pause }, Backend)
end

-- A data object's value as { version, writer, records, policy, raw }, or
-- nil, err for one this version cannot read (left alone: it may be a newer
-- format).
local function parse(raw)
  return records_module.parse(raw)
end

-- Of two states of one version (two first writers on a token that hid
-- them from each other), every reader picks the same one.
local function newer(a, b)
  return a.version > b.version or (a.version == b.version and a.raw < b.raw)
end

-- The set's data objects of one application (its states, or its marker):
-- the ones read, and those the token could not hand over ({ error, code }:
-- a value too large, a length no buffer holds), nil when none.
function Backend:find(application, set)
  local found, unreadable, code = self.token:data_objects(application, self.prefix .. set)
  if not found then
    return nil, string.format("key set '%s': reading its key states from the token: %s", set, unreadable), code
  end
  return found, unreadable
end

local function corrupt(set, why)
  return util.fail(E.ERR_KEY_STATES_CORRUPT, "key set '%s': its key states on the token cannot be read (%s): "
    .. "refusing to sign from it rather than guess; repair with `jwkengine keys repair %s --current KID` "
    .. "(README: Rotating keys)", set, why, set)
end

-- The set's readable state objects and the newest of them; an error when
-- an unreadable one may be newer (see the top of this file).
function Backend:objects(set)
  local found, missed, code = self:find(M.APPLICATION, set)
  if not found then return nil, missed, code end
  local objects, newest, unreadable = {}, nil, {}
  for _, object in ipairs(missed or {}) do
    unreadable[#unreadable + 1] = { why = string.format("%s (%s)", tostring(object.error), tostring(object.code)) }
  end
  for _, object in ipairs(found) do
    local value, why
    if type(object.value) == "string" then
      value, why = parse(object.value)
    else
      why = object.error or "the token did not hand over its value"
    end
    if value then
      objects[#objects + 1] = value
      if not newest or newer(value, newest) then newest = value end
    else
      unreadable[#unreadable + 1] = { raw = object.value, why = why,
        claimed = records_module.claimed_version(object.value) }
    end
  end
  for _, bad in ipairs(unreadable) do
    if not newest then return corrupt(set, bad.why) end
    if bad.claimed and bad.claimed >= newest.version then
      return corrupt(set, string.format("an object claiming version %s, not below the newest readable "
        .. "version %d, is unreadable: %s", tostring(bad.claimed), newest.version, bad.why))
    end
    local key = set .. "\0" .. tostring(bad.raw)
    if not self.skipped[key] then
      self.skipped[key] = true
      self.log("warn", string.format("key set '%s': an unreadable key state object beside version %d is "
        .. "skipped (%s)", set, newest.version, bad.why))
    end
  end
  return objects, newest
end

-- Whether the set has a marker on the token.
function Backend:is_marked(set)
  local found, err, code = self:find(M.MARKER_APPLICATION, set)
  if not found then return nil, err, code end
  return #found > 0
end

-- A token that refuses the one-byte marker with one of these keeps no
-- data objects at all (NSS softokn: C_CreateObject of any CKO_DATA,
-- CKR_ATTRIBUTE_VALUE_INVALID): key states cannot live there.
local NO_DATA_OBJECTS = { CKR_ATTRIBUTE_VALUE_INVALID = true, CKR_TEMPLATE_INCONSISTENT = true,
  CKR_ATTRIBUTE_TYPE_INVALID = true }

-- nil, the refusal and ERR_KEY_STATES_UNSUPPORTED once the token is known
-- to keep no data objects; said once per process, not per set.
function Backend:unsupported(cause)
  if cause and not self.no_data_objects then
    self.no_data_objects = string.format("the token keeps no data objects (%s), so key states cannot be "
      .. "recorded on it: a set with one signing key signs with it; a set of several keys, rotation and "
      .. "`keys activate` refuse (README: What was verified on which implementation)", cause)
    self.log("error", self.no_data_objects .. " (" .. E.ERR_KEY_STATES_UNSUPPORTED .. ")")
  end
  if self.no_data_objects then return nil, self.no_data_objects, E.ERR_KEY_STATES_UNSUPPORTED end
  return nil
end

-- Gives the set its marker before a write can open the gap. Remembered
-- for later writes, but looked up again by a first write (deleting a set
-- takes its marker). The second value says whether this call made it.
function Backend:mark(set, first)
  if self.marked[set] and not first then return true, false end
  local marked, err, code = self:is_marked(set)
  if marked == nil then return nil, err, code end
  if not marked then
    local ok
    ok, err, code = self.token:create_data(M.MARKER_APPLICATION, self.prefix .. set, MARKER_VALUE)
    if not ok and (NO_DATA_OBJECTS[code] or NO_DATA_OBJECTS[tostring(err):match("C_CreateObject: (CKR_[%u_]+)")]) then
      return self:unsupported(tostring(err))
    end
    if not ok then return nil, err, code end
  end
  self.marked[set] = true
  return true, not marked
end

-- Takes back the marker a first write made when its version 1 could not
-- be created: a marker with no state object would leave the set refusing
-- every reader and writer (the gap that never closes), where a set with
-- neither is simply written again. Kept when a rival's state object is in
-- sight (it made its version under this marker).
function Backend:unmark(set)
  self.marked[set] = nil
  local objects = self:objects(set)
  if objects and #objects == 0 then
    self.token:destroy_data(M.MARKER_APPLICATION, self.prefix .. set, MARKER_VALUE)
  end
end

-- objects(), read again while it is older than what this process has seen
-- (or shows no state object for a marked set: at least version 1).
-- Still older after REREADS (a writer held up between its destroy and its
-- create, as a loaded machine can do): an error, never the older view —
-- believing it would let a process sign with a key the set has moved past.
function Backend:current(set)
  local seen, version = self.seen[set] or 0, 0
  for read = 1, REREADS do
    pause_before(self, read)
    local objects, newest, code = self:objects(set)
    if not objects then return nil, newest, code end
    version = newest and newest.version or 0
    if version == 0 and seen == 0 then
      local marked, err
      marked, err, code = self:is_marked(set)
      if marked == nil then return nil, err, code end
      if marked then seen = 1 end
    end
    if version >= seen then
      self.seen[set] = version
      return objects, newest
    end
  end
  return nil, string.format("key set '%s': its key states are being rewritten by another process "
    .. "(this process knows of version %d, the token shows %s): read again later; if it stays so, a writer "
    .. "died there: `jwkengine keys repair %s --current KID` (README: Rotating keys)", set, seen,
    version == 0 and "no state object" or "version " .. version, set), E.ERR_STORE
end

function Backend:read(set)
  local objects, newest, code = self:current(set)
  if not objects then return nil, newest, code end
  if not newest then return { version = 0, records = {} } end
  return { version = newest.version, records = newest.records, policy = newest.policy }
end

local function write_error(set, err, code)
  if code == E.ERR_KEY_STATES_UNSUPPORTED then return nil, err, code end
  return nil, string.format("key set '%s': writing its key states to the token: %s", set, err), code
end

-- Destroys one state object of the set by its value; a failure only
-- leaves garbage that readers skip (older versions), so it is logged.
function Backend:discard(set, raw)
  local destroyed, err = self.token:destroy_data(M.APPLICATION, self.prefix .. set, raw)
  if not destroyed then
    self.log("warn", string.format("key set '%s': a superseded key state object stays on the token (%s)",
      set, tostring(err)))
  end
end

-- Destroys superseded objects (see discard).
function Backend:clean(set, objects, below)
  for _, object in ipairs(objects) do
    if object.version < below then self:discard(set, object.raw) end
  end
end

-- Creates the object of `text`, a raise from the binding taken as an error.
local function create(token, label, text)
  local ran, ok, err, code = pcall(token.create_data, token, M.APPLICATION, label, text)
  if not ran then return nil, tostring(ok), E.ERR_STORE end
  return ok, err, code
end

-- The first write of a set: nothing to destroy, so keep version 1 unless
-- a rival readers would pick instead (newer) is in sight. Backing off for
-- any rival would let two first writers that see each other's objects both
-- destroy theirs, leaving the marker alone: a set refused for good.
function Backend:first_write(set, state)
  local label = self.prefix .. set
  local marked, made, code = self:mark(set, true) -- made: or the error, when not marked
  if not marked then return write_error(set, made, code) end
  local ok, err
  ok, err, code = create(self.token, label, state)
  if not ok then
    if made then self:unmark(set) end
    return write_error(set, err, code)
  end
  local objects, newest
  objects, newest, code = self:objects(set)
  if not objects then return nil, newest, code end
  local mine = parse(state)
  for _, object in ipairs(objects) do
    if object.raw ~= state and newer(object, mine) then
      ok, err, code = self.token:destroy_data(M.APPLICATION, label, state)
      if not ok then return write_error(set, err, code) end
      return false
    end
  end
  self.seen[set] = 1
  return true
end

-- Lost (false) unless the token shows exactly `version`: a set between
-- another writer's destroy and create shows none, which is not version 0
-- when the set has its marker. policy: the set's rotation policy, recorded
-- with its states (nil: none).
--
-- Nothing between the destroy and the create can raise or fail before the
-- create: the new value is encoded and checked as a reader will check it
-- first, and when the create fails (or raises) the replaced object is put
-- back, so a write never leaves the set with less than it found.
function Backend:write(set, version, records, policy)
  if self.no_data_objects then return self:unsupported() end
  local objects, newest, code = self:objects(set)
  if not objects then return nil, newest, code end
  if (newest and newest.version or 0) ~= version then return false end
  if version == 0 then
    local marked, err
    marked, err, code = self:is_marked(set)
    if marked == nil then return nil, err, code end
    if marked then return false end
  end
  -- the writer id makes every object's bytes unique, so a destroy by value
  -- takes exactly this object
  local writer, state, err
  writer, err, code = core.uuid()
  if writer then
    state, err, code = records_module.encode({ version = version + 1, writer = writer, records = records,
      policy = policy })
  end
  if not state then return write_error(set, err, code) end
  if version == 0 then return self:first_write(set, state) end
  local label = self.prefix .. set
  local marked
  marked, err, code = self:mark(set) -- a set written before markers
  if not marked then return write_error(set, err, code) end
  local destroyed
  destroyed, err, code = self.token:destroy_data(M.APPLICATION, label, newest.raw)
  if not destroyed then
    -- a token may report the loser of two destroys as a failure: it lost
    -- if the object is gone
    local again = self:objects(set)
    for _, object in ipairs(again or {}) do
      if object.raw == newest.raw then return write_error(set, err, code) end
    end
    if not again then return write_error(set, err, code) end
    return false
  end
  if destroyed == 0 then return false end -- another writer destroyed it first
  local ok
  ok, err, code = create(self.token, label, state)
  if not ok then
    -- put the replaced state back rather than leave the set with none
    local back, berr = create(self.token, label, newest.raw)
    if not back then
      self.log("error", string.format("key set '%s': the key states replaced by a failed write cannot be "
        .. "put back (%s): the set refuses until `jwkengine keys repair %s` (README: Rotating keys)",
        set, tostring(berr), set))
    end
    return write_error(set, err, code)
  end
  self.seen[set] = version + 1
  self:clean(set, objects, version + 1)
  return true
end

-- Rewrites a set's states whatever the token holds now, unreadable objects
-- included: the repair an operator runs (keys repair) after confirming
-- which key signs. The new object is made first, at a version above every
-- version in sight (readable or claimed) and at least the Unix time: the
-- corrupt object may have hidden the version a running process last read,
-- and a process that reads a lower version than it has seen takes it for
-- a write in progress (above) and refuses. Writers count one a write, so
-- no set reaches the time's value by writing. Readers move to the new
-- object at once; then every other state object it can name goes. An object the token cannot
-- hand over stays (it claims no version: readers skip it beside this one).
function Backend:repair(set, records, policy)
  if self.no_data_objects then return self:unsupported() end
  local found, err, code = self:find(M.APPLICATION, set)
  if not found then return nil, err, code end
  local top = self.seen[set] or 0
  for _, object in ipairs(found) do
    local claimed = records_module.claimed_version(object.value)
    -- a version no writer could have written (1e999, 2^60) is no version
    -- anybody has seen: stepping over it is not needed
    if claimed and records_module.valid_version(claimed) and claimed < records_module.MAX_VERSION
        and claimed > top then
      top = claimed
    end
  end
  top = math.max(top, os.time() - 1)
  local writer, state
  writer, err, code = core.uuid()
  if writer then
    state, err, code = records_module.encode({ version = top + 1, writer = writer, records = records,
      policy = policy })
  end
  if not state then return nil, err, code end
  local label = self.prefix .. set
  local marked
  marked, err, code = self:mark(set, true)
  if not marked then return write_error(set, err, code) end
  local ok
  ok, err, code = create(self.token, label, state)
  if not ok then return write_error(set, err, code) end
  for _, object in ipairs(found) do
    if type(object.value) == "string" then self:discard(set, object.value) end
  end
  self.seen[set] = top + 1
  return top + 1
end

-- Forgets the version this process saw of a set and its marker: the set
-- was deleted (its data objects go with its keys), so a set made again
-- under the name starts at version 1 without being taken for a rewrite.
function Backend:forget(set)
  self.seen[set], self.marked[set] = nil, nil
end

function Backend:sets()
  local found, err, code = self.token:data_objects(M.APPLICATION)
  if not found then return nil, "reading key states from the token: " .. tostring(err), code end
  local seen, sets = {}, {}
  for _, object in ipairs(found) do
    local prefixed = object.label:sub(1, #self.prefix) == self.prefix
    if prefixed and parse(object.value) then
      local set = object.label:sub(#self.prefix + 1)
      if not seen[set] then
        seen[set] = true
        sets[#sets + 1] = set
      end
    end
  end
  table.sort(sets)
  return sets
end

return M

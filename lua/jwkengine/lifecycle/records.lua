-- The one definition of a valid record set. Every read of key states, from
-- the token or the SQL store, goes through here before the rule sees it:
-- the records are shared with other processes, other versions of jwkengine
-- and faults, and a value the rule would misread (a version that is not a
-- number, a record without the time its state needs) must be refused as a
-- whole, never half-used. Nothing here raises on what it is given.
--
-- A value is
--   { version = integer from 1 to MAX_VERSION,
--     records = { kid -> { state = one of STATES,
--                          times = { state name -> finite seconds, ... } } },
--     policy  = nil | { period, prepublish, retain, destroy_after } }
-- where each record's times hold at least the time it entered its state.
local jwk = require("jwkengine.jwk")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

M.STATES = { "next", "current", "previous", "retired", "destroyed" }
local KNOWN_STATE = {}
for _, state in ipairs(M.STATES) do KNOWN_STATE[state] = true end
M.KNOWN_STATE = KNOWN_STATE
M.STATES_TEXT = table.concat(M.STATES, ", ")

-- Bounds: a set's value is read on every load, so it stays small, and a
-- token hands back at most 64 KiB of a data object's value (the binding's
-- JWKE_DATA_VALUE_MAX): a value a reader could not read back is never
-- written. 400 records of about 150 bytes (a UUID kid, five times) fit.
M.MAX_BYTES = 64 * 1024
M.MAX_RECORDS = 400
M.MAX_KID_BYTES = 1024
-- The largest version written back exactly: lua-cjson writes numbers with
-- 14 significant digits (Debian's refuses more), so a version of 15 digits
-- would come back as another (fuzz_records found it).
M.MAX_VERSION = 10 ^ 14 - 1

local POLICY_FIELDS = { "period", "prepublish", "retain", "destroy_after" }
M.POLICY_FIELDS = POLICY_FIELDS

local function finite(v)
  return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge
end
M.finite = finite

local function bad(why, ...)
  return util.fail(E.ERR_KEY_STATES_CORRUPT, "key states: " .. why, ...)
end

-- Whether `version` is one a writer may have written.
function M.valid_version(version)
  return finite(version) and version % 1 == 0 and version >= 1 and version <= M.MAX_VERSION
end

local function check_record(kid, record)
  -- a token's CKA_ID may be empty or any bytes: only the length is bounded
  if type(kid) ~= "string" or #kid > M.MAX_KID_BYTES then
    return bad("a record's kid is not a string of at most %d bytes", M.MAX_KID_BYTES)
  end
  local shown = jwk.shown(kid)
  if type(record) ~= "table" then return bad("the record of '%s' is not an object", shown) end
  if type(record.state) ~= "string" or not KNOWN_STATE[record.state] then
    return bad("the record of '%s' has no known state (%s)", shown, M.STATES_TEXT)
  end
  if type(record.times) ~= "table" then return bad("the record of '%s' has no times", shown) end
  for name, t in pairs(record.times) do
    if type(name) ~= "string" or not KNOWN_STATE[name] or not finite(t) then
      return bad("the record of '%s' has a time that is not a known state's finite number of seconds", shown)
    end
  end
  if record.times[record.state] == nil then
    return bad("the record of '%s' is %s but has no time it became %s", shown, record.state, record.state)
  end
  return true
end

-- Checks a policy table (recorded, or about to be). nil is no policy.
function M.validate_policy(policy)
  if policy == nil then return true end
  if type(policy) ~= "table" then return bad("the policy is not an object") end
  for name in pairs(policy) do
    local known = false
    for _, field in ipairs(POLICY_FIELDS) do known = known or field == name end
    if not known then return bad("the policy has an unknown member") end
  end
  for _, name in ipairs(POLICY_FIELDS) do
    local v = policy[name]
    if v ~= nil and (not finite(v) or v < 0) then
      return bad("the policy's %s is not a non-negative finite number of seconds", name)
    end
  end
  if type(policy.prepublish) ~= "number" or type(policy.retain) ~= "number" then
    return bad("the policy has no prepublish or retain")
  end
  if policy.period and policy.period <= policy.prepublish then
    return bad("the policy's period is not longer than its prepublish")
  end
  return true
end

-- Checks a value (see above). Returns the value, or nil, err,
-- ERR_KEY_STATES_CORRUPT.
function M.validate(value)
  if type(value) ~= "table" then return bad("the value is not an object") end
  if not M.valid_version(value.version) then
    return bad("the version is not an integer from 1 to 10^14-1")
  end
  local records = value.records
  if type(records) ~= "table" then return bad("'records' is not an object") end
  local count = 0
  for kid, record in pairs(records) do
    count = count + 1
    if count > M.MAX_RECORDS then return bad("more than %d records", M.MAX_RECORDS) end
    local ok, err, code = check_record(kid, record)
    if not ok then return nil, err, code end
  end
  local ok, err, code = M.validate_policy(value.policy)
  if not ok then return nil, err, code end
  if value.writer ~= nil and type(value.writer) ~= "string" then return bad("'writer' is not a string") end
  return value
end

-- Decodes strict JSON text (no duplicate members, no NaN/Infinity) of
-- bounded size and depth into a table, or nil, err, code.
function M.decode(text)
  if type(text) ~= "string" then return bad("the value is not text") end
  if #text > M.MAX_BYTES then return bad("the value is over %d bytes", M.MAX_BYTES) end
  local value, err = jwk.decode_json(text, 8)
  if not value then return bad("the value is not a JSON object (%s)", tostring(err)) end
  -- cjson reads [] and {} alike: an empty list where records stand is a
  -- format this version does not know, not an empty set of records
  if text:find('[^\\]"records"%s*:%s*%[') then return bad("'records' is a list, not an object") end
  return value
end

-- A token's value: JSON { version, writer, records, policy }. Returns the
-- checked value (with raw = text) or nil, err, ERR_KEY_STATES_CORRUPT.
function M.parse(text)
  local value, err, code = M.decode(text)
  if not value then return nil, err, code end
  value, err, code = M.validate(value)
  if not value then return nil, err, code end
  value.raw = text
  return value
end

-- The version a value claims, whether or not it is valid: a number (or a
-- numeric string) at `version`, as far as the text shows one; nil when it
-- shows none. A reader that meets an unreadable value claiming a version at
-- least as high as the newest it can read stops: it may be a newer format.
function M.claimed_version(text)
  if type(text) ~= "string" then return nil end
  local value = jwk.decode_json(text, 8)
  local v = type(value) == "table" and value.version or
    text:match('"version"%s*:%s*"?([-+%deE.]+)')
  if type(v) == "string" then v = tonumber(v) end
  if type(v) ~= "number" or v ~= v then return nil end
  return v
end

-- The JSON of a value to write, checked as a reader will check it, so a
-- write never puts down what no reader accepts. Returns text or nil, err, code.
function M.encode(value)
  local ok, err, code = M.validate(value)
  if not ok then return nil, err, code end
  local out = { version = value.version, writer = value.writer, records = value.records, policy = value.policy }
  local text = require("cjson.safe").encode(out)
  if not text then return bad("the value cannot be encoded") end
  -- cjson writes an empty table as {}: records are always an object
  if #text > M.MAX_BYTES then return bad("the value is over %d bytes", M.MAX_BYTES) end
  return text
end

return M

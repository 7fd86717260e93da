-- Which slot the engine uses: policy over the C core's slot list, so a
-- deployment can script another choice (pass `select_slot` to
-- jwkengine.open). Hydra's rule: a token label wins over the slot, and the
-- first slot holding a token with that label is used; otherwise the slot
-- (a CK_SLOT_ID, as pkcs11-tool's --slot) is used, default 0. A serial,
-- manufacturer or model (from the configuration or a PKCS#11 URI) narrows
-- the choice further; a URI's slot-id with no label must match too.
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

local function describe_tokens(slots)
  local seen = {}
  for _, slot in ipairs(slots) do
    if slot.token_present then
      seen[#seen + 1] = string.format("'%s' in slot %d", slot.label, slot.id)
    end
  end
  return #seen > 0 and table.concat(seen, ", ") or "none"
end

-- This process's effective user as "name (uid N)", from /proc and
-- /etc/passwd (Linux), or nil: nginx's workers run as the `user` of
-- nginx.conf, not as whoever started nginx.
function M.process_user()
  local status = util.read_file("/proc/self/status")
  local uid = status and status:match("\nUid:%s+%d+%s+(%d+)")
  if not uid then return nil end
  local passwd = util.read_file("/etc/passwd") or ""
  for line in passwd:gmatch("[^\n]+") do
    local name, id = line:match("^([^:]*):[^:]*:(%d+):")
    if id == uid then return string.format("%s (uid %s)", name, uid) end
  end
  return "uid " .. uid
end

-- A wanted token that is not found while a slot shows a token with no
-- label or not initialized: that is how SoftHSM (and other file-backed
-- modules) show a token whose files this process may not read, so the
-- likely cause and its fix are named (nil when no slot looks like that).
local function unreadable_hint(slots)
  for _, slot in ipairs(slots) do
    if slot.token_present and (slot.label == "" or slot.initialized == false) then
      return string.format("; slot %d shows an empty, uninitialized token: if the token exists, this " ..
        "process's user (%s) probably cannot read its files: give that user read and write access to " ..
        "them (SoftHSM: the token's folder under directories.tokendir of SOFTHSM2_CONF; Debian: add the " ..
        "user to the softhsm group, or chown the folder to it; nginx: the `user` of nginx.conf) or run " ..
        "as the user that owns them", slot.id, M.process_user() or "unknown")
    end
  end
  return ""
end

-- Token fields a configuration (or a PKCS#11 URI) may pin down.
local FILTERS = { { "token_label", "label", "label" }, { "token_serial", "serial", "serial" },
  { "token_manufacturer", "manufacturer", "manufacturer" }, { "token_model", "model", "model" } }

function M.select(slots, hsm)
  local wanted, described = {}, {}
  for _, f in ipairs(FILTERS) do
    local value = hsm[f[1]]
    if value and value ~= "" then
      wanted[#wanted + 1] = { field = f[2], value = value }
      described[#described + 1] = string.format("%s '%s'", f[3], value)
    end
  end
  if #wanted > 0 then
    for _, slot in ipairs(slots) do
      local match = slot.token_present
      for _, w in ipairs(wanted) do
        if slot[w.field] ~= w.value then match = false end
      end
      if match and (hsm.slot == nil or hsm.token_label or slot.id == hsm.slot) then return slot end
    end
    return util.fail(E.ERR_TOKEN_NOT_FOUND, "no token with %s (tokens present: %s)%s",
      table.concat(described, " and "), describe_tokens(slots), unreadable_hint(slots))
  end
  local wanted_slot = hsm.slot or 0
  for _, slot in ipairs(slots) do
    if slot.id == wanted_slot then
      if not slot.token_present then
        return util.fail(E.ERR_TOKEN_NOT_FOUND, "slot %d has no token", wanted_slot)
      end
      return slot
    end
  end
  return util.fail(E.ERR_TOKEN_NOT_FOUND, "there is no slot %d (tokens present: %s)", wanted_slot,
    describe_tokens(slots))
end

-- The hsm settings a select_slot policy sees: everything but the PIN (a
-- script's policy has no need of it, and could log it).
local function without_pin(hsm)
  local copy = {}
  for key, value in pairs(hsm) do copy[key] = value end
  copy.pin = nil
  if copy.uri then copy.uri = require("jwkengine.pkcs11_uri").redact(copy.uri) end
  return copy
end

-- Runs the slot policy (a caller's select_slot, else M.select) and checks
-- that what it chose is one of the slot tables it was given.
function M.choose(slot_list, hsm, select_slot)
  if not select_slot then return M.select(slot_list, hsm) end
  local slot, err, code = select_slot(slot_list, without_pin(hsm))
  if slot == nil then
    if err == nil then
      return util.fail(E.ERR_TOKEN_NOT_FOUND, "select_slot chose no slot (and gave no reason)")
    end
    return nil, err, code or E.ERR_TOKEN_NOT_FOUND
  end
  for _, candidate in ipairs(slot_list) do
    if candidate == slot then return slot end
  end
  return util.fail(E.ERR_INVALID_ARGUMENT,
    "select_slot must return one of the slot tables it was given, got %s %s", type(slot), tostring(slot))
end

return M

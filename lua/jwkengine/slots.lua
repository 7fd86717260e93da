-- Which slot the engine uses: policy over the C core's slot list, so a
-- deployment can script another choice (pass `select_slot` to
-- jwkengine.open). Hydra's rule: a token label wins over the slot, and the
-- first slot holding a token with that label is used; otherwise the slot
-- (a CK_SLOT_ID, as pkcs11-tool's --slot) is used, default 0.
local util = require "jwkengine.util"

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

function M.select(slots, hsm)
  if hsm.token_label and hsm.token_label ~= "" then
    for _, slot in ipairs(slots) do
      if slot.token_present and slot.label == hsm.token_label then return slot end
    end
    return util.fail("ERR_TOKEN_NOT_FOUND", "no token with label '%s' (tokens present: %s)",
      hsm.token_label, describe_tokens(slots))
  end
  local wanted = hsm.slot or 0
  for _, slot in ipairs(slots) do
    if slot.id == wanted then
      if not slot.token_present then
        return util.fail("ERR_TOKEN_NOT_FOUND", "slot %d has no token", wanted)
      end
      return slot
    end
  end
  return util.fail("ERR_TOKEN_NOT_FOUND", "there is no slot %d (tokens present: %s)", wanted,
    describe_tokens(slots))
end

return M

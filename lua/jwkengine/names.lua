-- Set names and kids as callers may give them to the engine.
--
-- They end up in SQL literals, PKCS#11 labels and ids, log lines and JSON.
-- A NUL byte cuts a C string short (LuaSQL's escape stops there, so
-- "victim\0x" would act on set "victim"), and other control characters
-- split log lines: both are refused before anything is looked up.
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

-- value: the set name or kid; what: the argument as the caller wrote it
-- ("set", "kid", "options.kid"); optional: nil is allowed.
-- A value of the wrong type is a programming error and raises (level is the
-- caller's caller, as error() counts); control characters are bad input and
-- return nil, message, ERR_INVALID_ARGUMENT.
-- Names already found clean: a signature names its set every time, and the
-- scan would be paid per token. Bounded: forgotten all at once when full.
local clean, clean_count = {}, 0
local CLEAN_MAX = 1024

function M.check(value, what, optional, level)
  if clean[value] then return true end
  if value == nil and optional then return true end
  if type(value) ~= "string" then
    error(string.format("%s must be a string, got %s", what, type(value)), (level or 2) + 1)
  end
  local at = value:find("%c")
  if at then
    return util.fail(E.ERR_INVALID_ARGUMENT,
      "%s must not contain control characters (byte 0x%02x at position %d)", what, value:byte(at), at)
  end
  if clean_count >= CLEAN_MAX then clean, clean_count = {}, 0 end
  clean[value], clean_count = true, clean_count + 1
  return true
end

return M

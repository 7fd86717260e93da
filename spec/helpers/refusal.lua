-- The Lua API's failure convention, asserted in one place: an operation
-- that fails returns nil, a message and a code registered in
-- jwkengine.errors (or a PKCS#11 CKR_ name).
local assert = require("luassert")
local errors = require("jwkengine.errors")

local M = {}

-- Asserts that value, message, got is a refusal with code `code` whose
-- message holds `fragment` (plain text; nil: any message). Returns the
-- message, for the checks only one test makes.
function M.refused(code, fragment, value, message, got)
  assert.is_nil(value, "expected a refusal, got a value")
  assert.is_string(message, "a refusal without a message")
  assert.equals(code, got, message)
  if fragment then assert.matches(fragment, message, 1, true) end
  assert.is_true(errors.codes[got] ~= nil or got:find("^CKR_") ~= nil, got .. " is not a registered code")
  return message
end

-- The same for a failure whose input held a secret (a PIN, a key): its
-- message must not show that secret.
function M.refused_keeping(secret, code, fragment, value, message, got)
  M.refused(code, fragment, value, message, got)
  assert.is_nil(message:find(secret, 1, true), "the refusal shows the secret")
  return message
end

return M

-- What the lifecycle specs share: the kid that signs a set, the kids its
-- JWK Set publishes, and a token object of the spec's own process (another
-- program on the token).
local core = require("helpers.binding")
local softhsm = require("helpers.softhsm")

local M = {}

-- The kid of a fresh signature of `set`, checked by the engine's own
-- verification; nil, err, code when signing fails.
function M.signer(engine, set)
  local jws, err, code = engine:sign(set, "x")
  if not jws then return nil, err, code end
  local _, header = assert(engine:verify(set, jws))
  return header.kid
end

-- The kids the set's JWK Set holds, sorted; nil, err, code on a failure.
function M.published(engine, set)
  local jwks, err, code = engine:key_set(set)
  if not jwks then return nil, err, code end
  local kids = {}
  for _, key in ipairs(jwks.keys) do kids[#kids + 1] = key.kid end
  table.sort(kids)
  return kids
end

-- A token object of this process, logged in, for reading and writing the
-- data objects themselves.
function M.raw_token(token, library)
  local module = assert(core.load_module(library or softhsm.LIBRARY))
  for _, slot in ipairs(assert(module:slots())) do
    if slot.label == token.label then
      local t = assert(module:open_token(slot.id, { label = slot.label, serial = slot.serial }))
      assert(t:login(token.pin))
      return t
    end
  end
  error("token not found: " .. token.label)
end

return M

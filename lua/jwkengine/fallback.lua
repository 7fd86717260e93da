-- The fallback manager: Ory Hydra's rules between the HSM and the software
-- store.
--
--   generate           the HSM when it is enabled, else software
--   get, sign, delete  the HSM first; software only when the HSM says
--                      "not found" (any other HSM error is returned as is)
--   import / update    always software (the HSM refuses added keys)
--
-- Either side may be absent: with no HSM everything is software; with no
-- store (no secrets configured) nothing falls back.
local util = require "jwkengine.util"

local M = {}
local Manager = {}
Manager.__index = Manager

local function not_found(code)
  return code == "ERR_KEY_SET_NOT_FOUND" or code == "ERR_KEY_NOT_FOUND"
end

function M.new(hsm, software)
  return setmetatable({ hsm = hsm, software = software }, Manager)
end

-- The answer after the HSM said "not found": the store's, unless the store
-- lacks the whole set while the HSM has it (and only lacks the kid): "key
-- set not found" would name a set that exists.
local function after_miss(hsm_err, hsm_code, a, b, c)
  if a == nil and c == "ERR_KEY_SET_NOT_FOUND" and hsm_code == "ERR_KEY_NOT_FOUND" then
    return nil, hsm_err, hsm_code
  end
  return a, b, c
end

-- Calls method on the HSM, then on software when the HSM does not have it.
function Manager:lookup(method, set, ...)
  local hsm_err, hsm_code
  if self.hsm and not (self.software and self.hsm:known_missing(set)) then
    local a, b, c = self.hsm[method](self.hsm, set, ...)
    if a ~= nil or not not_found(c) or not self.software then return a, b, c end
    hsm_err, hsm_code = b, c
  end
  if self.software then
    return after_miss(hsm_err, hsm_code, self.software[method](self.software, set, ...))
  end
  return util.fail("ERR_CONFIG", "no key store is configured")
end

function Manager:key_set(set) return self:lookup("key_set", set) end
function Manager:key(set, kid) return self:lookup("key", set, kid) end
function Manager:delete(set, kid) return self:lookup("delete", set, kid) end
function Manager:verification_keys(set) return self:lookup("verification_keys", set) end

-- The signing path, written out: no varargs, no method-name lookups.
function Manager:sign(set, payload, options)
  local hsm, software = self.hsm, self.software
  local hsm_err, hsm_code
  if hsm and not (software and hsm:known_missing(set)) then
    local jws, err, code = hsm:sign(set, payload, options)
    if jws or not software or not not_found(code) then return jws, err, code end
    hsm_err, hsm_code = err, code
  end
  return after_miss(hsm_err, hsm_code, software:sign(set, payload, options))
end

-- Where new keys go.
function Manager:generator()
  return self.hsm or self.software
end

function Manager:generate(set, alg, options)
  return self:generator():generate(set, alg, options)
end

function Manager:software_store()
  if not self.software then
    return util.fail("ERR_CONFIG",
      "adding or updating keys needs the software store: set SECRETS_SYSTEM (secrets.system)")
  end
  return self.software
end

function Manager:import(set, input, options)
  local software, err, code = self:software_store()
  if not software then return nil, err, code end
  return software:import(set, input, options)
end

function Manager:rotate_secrets()
  local software, err, code = self:software_store()
  if not software then return nil, err, code end
  return software:rotate_secrets()
end

function Manager:close()
  if self.hsm then self.hsm:close() end
  if self.software then self.software:close() end
end

return M

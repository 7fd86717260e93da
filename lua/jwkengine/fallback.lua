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
--
-- The HSM's "set not found" is remembered for negative_ttl seconds (or
-- until this engine generates, deletes, refreshes or reloads the set):
-- every software set is asked of the HSM first, and a token search per
-- signature would cost more than the signature.
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}
local Manager = {}
Manager.__index = Manager

local function not_found(code)
  return code == E.ERR_KEY_SET_NOT_FOUND or code == E.ERR_KEY_NOT_FOUND
end

-- options.negative_ttl: seconds the HSM's "not found" is trusted (30);
-- options.now() -> seconds: its clock (os.time); options.metrics: a
-- jwkengine.metrics recorder, handed to both sides too (signatures are
-- counted where a key signs, failures and fallbacks here)
function M.new(hsm, software, options)
  options = options or {}
  if hsm then hsm.metrics = options.metrics end
  if software then software.metrics = options.metrics end
  return setmetatable({ hsm = hsm, software = software, missing = {}, metrics = options.metrics,
    negative_ttl = options.negative_ttl or 30, now = options.now or os.time }, Manager)
end

-- The HSM's cached "not found" for a set, while it is fresh.
function Manager:known_missing(set)
  local missing = self.missing[set]
  if missing and self.now() < missing.expires then return missing end
  self.missing[set] = nil
  return nil
end

-- Passes an HSM answer through, remembering a "set not found".
function Manager:remember(set, a, b, c)
  if a == nil and c == E.ERR_KEY_SET_NOT_FOUND then
    self.missing[set] = { expires = self.now() + self.negative_ttl, message = b }
  end
  return a, b, c
end

-- The answer after the HSM said "not found": the store's, unless the store
-- lacks the whole set while the HSM has it (and only lacks the kid): "key
-- set not found" would name a set that exists.
local function after_miss(hsm_err, hsm_code, a, b, c)
  if a == nil and c == E.ERR_KEY_SET_NOT_FOUND and hsm_code == E.ERR_KEY_NOT_FOUND then
    return nil, hsm_err, hsm_code
  end
  return a, b, c
end

-- Asks the HSM (unless it is known not to hold the set), then software when
-- the HSM does not have it. With no software store, a remembered "not found"
-- is the answer.
function Manager:lookup(method, set, ...)
  local hsm, software = self.hsm, self.software
  local hsm_err, hsm_code
  if hsm then
    local missing = self:known_missing(set)
    if not missing then
      local a, b, c = self:remember(set, hsm[method](hsm, set, ...))
      if a ~= nil or not not_found(c) or not software then return a, b, c end
      hsm_err, hsm_code = b, c
    elseif not software then
      return nil, missing.message, E.ERR_KEY_SET_NOT_FOUND
    end
  end
  if software then return after_miss(hsm_err, hsm_code, software[method](software, set, ...)) end
  return util.fail(E.ERR_CONFIG, "no key store is configured")
end

function Manager:key_set(set) return self:lookup("key_set", set) end
function Manager:certify(set, kid, options) return self:lookup("certify", set, kid, options) end
function Manager:publication(set) return self:lookup("publication", set) end
function Manager:key(set, kid) return self:lookup("key", set, kid) end
function Manager:verification_keys(set) return self:lookup("verification_keys", set) end
function Manager:signing_key(set, kid) return self:lookup("signing_key", set, kid) end

-- With no software store, the token itself answers (a set an operator
-- made meanwhile is deleted, not reported missing).
function Manager:delete(set, kid)
  if not self.software then self.missing[set] = nil end
  local a, b, c = self:lookup("delete", set, kid)
  self.missing[set] = nil
  return a, b, c
end

-- A signing failure, counted by its code when the engine counts
-- (self.metrics, a jwkengine.metrics recorder). Only failures come here:
-- a signature returns straight from sign, with no extra call.
local function sign_failed(self, err, code)
  if self.metrics then self.metrics:failed(code) end
  return nil, err, code
end

-- The signing path, written out: no varargs, no method-name lookups.
function Manager:sign(set, payload, options)
  local hsm, software = self.hsm, self.software
  local hsm_err, hsm_code
  if hsm then
    local missing = self.missing[set]
    if not missing or self.now() >= missing.expires then
      local jws, err, code = hsm:sign(set, payload, options)
      if jws then return jws end
      self:remember(set, jws, err, code)
      if not software or not not_found(code) then return sign_failed(self, err, code) end
      hsm_err, hsm_code = err, code
    elseif not software then
      return sign_failed(self, missing.message, E.ERR_KEY_SET_NOT_FOUND)
    end
    if self.metrics then self.metrics:fell_back(set) end
  end
  local jws, err, code = software:sign(set, payload, options)
  if jws then return jws end
  local _, message, failure_code = after_miss(hsm_err, hsm_code, nil, err, code)
  return sign_failed(self, message, failure_code)
end

-- Re-reads a set now from the side that holds it (the cached copy stays on
-- an error). Returns its public JWK Set.
function Manager:reload(set)
  self.missing[set] = nil
  return self:lookup("reload", set)
end

-- The manager holding a set and its entry, freshly loaded, HSM first (as
-- signing looks): what the key lifecycle's writes work on. A closed
-- engine has neither side.
function Manager:holder(set)
  local hsm, software = self.hsm, self.software
  if not hsm and not software then return util.fail(E.ERR_CLOSED, "the engine is closed") end
  if hsm then
    local entry, err, code = hsm:load(set, true)
    if entry then return hsm, entry end
    if code ~= E.ERR_KEY_SET_NOT_FOUND or not software then return nil, err, code end
  end
  local entry, err, code = software:load(set, true)
  if not entry then return nil, err, code end
  return software, entry
end

-- Forgets what is cached of a set on both sides, the HSM's "not found" too.
function Manager:forget(set)
  self.missing[set] = nil
  if self.hsm then self.hsm:forget(set) end
  if self.software then self.software:forget(set) end
end

-- Where new keys go.
function Manager:generator()
  return self.hsm or self.software
end

function Manager:generate(set, alg, options)
  self.missing[set] = nil
  return self:generator():generate(set, alg, options)
end

-- Startup generation: "generated", or "exists" when the set appeared meanwhile.
function Manager:generate_if_missing(set, alg)
  self.missing[set] = nil
  return self:generator():generate_if_missing(set, alg)
end

function Manager:software_store()
  if not self.software then
    return util.fail(E.ERR_CONFIG,
      "adding or updating keys needs the software store: set SECRETS_SYSTEM (secrets.system)")
  end
  return self.software
end

function Manager:import(set, input, options)
  local software, err, code = self:software_store()
  if not software then return nil, err, code end
  return software:import(set, input, options)
end

function Manager:update(set, input, options)
  local software, err, code = self:software_store()
  if not software then return nil, err, code end
  return software:update(set, input, options)
end

function Manager:rotate_secrets()
  local software, err, code = self:software_store()
  if not software then return nil, err, code end
  return software:rotate_secrets()
end

-- The HSM's pool and recovery counters.
function Manager:stats()
  if not self.hsm then return util.fail(E.ERR_CONFIG, "the HSM is not enabled: there are no HSM stats") end
  return self.hsm:stats()
end

-- The HSM's outage (see Engine:hsm_outage), or nil.
function Manager:hsm_outage()
  return self.hsm and self.hsm:outage()
end

-- The slot the HSM's token was found in, or nil when the HSM is not enabled.
function Manager:slot()
  return self.hsm and self.hsm.slot
end

function Manager:close()
  self.missing = {}
  if self.hsm then self.hsm:close() end
  if self.software then self.software:close() end
end

return M

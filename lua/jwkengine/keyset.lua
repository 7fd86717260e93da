-- What HSM and software key sets share once loaded: choosing the signing
-- key, cached protected headers, signing, and verification candidates.
--
-- A loaded set (an "entry") is { keys = { key, ... } } with each key
--   { kid, alg, use, private = bool, object = <C key with sign_timed and
--     public_key>, jwk = public JWK } or { kid, broken = message, code }.
-- Everything the signing path needs is computed once per load, so signing a
-- token costs one table lookup and one C call on top of the signature.
local jws = require("jwkengine.jws")
local lifecycle = require("jwkengine.lifecycle.rule")
local key_rules = require("jwkengine.key_rules")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

local HEADER_COUNT = {} -- a table key: never equal to a caller's typ

-- With key states (see jwkengine.lifecycle): the rule's current key signs,
-- and each key carries its state; keys outside the lifecycle (public-only,
-- encryption) have none and are always published. A set whose records
-- cannot be read (and none were read before) neither signs, publishes nor
-- verifies: entry.refused is the error of all three.
local function prepare_by_state(entry, set, where)
  local lc = entry.lifecycle
  entry.refused = lc.refused
  if lc.refused then
    entry.signer, entry.signer_problem = nil, lc.refused
    return entry
  end
  local evaluation = lc.evaluation
  for _, key in ipairs(entry.keys) do
    local state = evaluation.keys[key.kid]
    key.state = state and state.state or nil
  end
  local signer = evaluation.signer and entry.by_kid[evaluation.signer]
  entry.signer, entry.signer_problem = nil, nil
  if signer and signer.broken then
    entry.signer_problem = { signer.broken, signer.code }
  elseif signer and signer.retired_mark then
    entry.signer_problem = { M.retired_on_key(signer, set), E.ERR_KEY_STATE }
  elseif signer then
    entry.signer = signer
  elseif evaluation.undecided and lc.unsupported and select(3, lc.unsupported()) then
    local _, why, code = lc.unsupported()
    entry.signer_problem = { string.format("%s key set '%s' has several keys and no record of which signs: %s",
      where, set, why), code }
  elseif evaluation.undecided then
    entry.signer_problem = { string.format("%s key set '%s' has several keys and no record of which signs "
      .. "(the token gives no order to choose by): name the signer with `jwkengine keys activate %s KID`",
      where, set, set), E.ERR_KEY_STATE }
  else
    entry.signer_problem = { string.format("%s key set '%s' has no private signing key", where, set),
      E.ERR_NO_SIGNING_KEY }
  end
  return entry
end

-- Retirement written on the key itself (CKA_SIGN false on the token, a row
-- whose key_ops lacks sign: the managers set retired_mark) outranks any
-- record: such a key never signs and is never published.
function M.retired_on_key(key, set)
  return string.format("key '%s' of key set '%s' is retired on the key itself and never signs "
    .. "again (undo only with activate)", key.kid, set)
end

-- Whether a key is in the JWK Set and verifies: not when retired.
local function published(key)
  return not key.retired_mark and (key.state == nil or lifecycle.PUBLISHED[key.state])
end

-- Re-evaluates the states once the clock passes the set's next state change:
-- a clock read and a comparison per call, no store or token lookup.
local function current(entry)
  local lc = entry.lifecycle
  if lc and lc.valid_until and lc.now() >= lc.valid_until then lc.reevaluate(entry) end
  return entry
end
M.current = current

-- Prepares an entry: kid index and the default signer.
--   choose: "newest" (the first private sig key, stopping at a broken row:
--   it might be the newest) or "only" (exactly one sig key, else an error)
function M.prepare(entry, set, where, choose)
  entry.by_kid = {}
  entry.headers = {}
  entry.jwks, entry.candidates = nil, nil
  for _, key in ipairs(entry.keys) do entry.by_kid[key.kid] = key end
  if entry.lifecycle then return prepare_by_state(entry, set, where) end
  local signer, problem
  for _, key in ipairs(entry.keys) do
    if key.broken then
      if choose == "newest" and not signer then problem = { key.broken, key.code } end
    elseif key.private and key.use == "sig" and not key.retired_mark then
      if choose == "newest" then
        if not signer and not problem then signer = key end
      elseif signer then
        problem = { string.format("%s key set '%s' has several signing keys: pass a kid to choose one",
          where, set), E.ERR_JWKS_MULTIPLE_MATCHING_KEYS }
      else
        signer = key
      end
    end
  end
  if not signer and not problem then
    -- not ERR_KEY_NOT_FOUND: the set exists, so the fallback must not go
    -- looking for a same-named set elsewhere
    problem = { string.format("%s key set '%s' has no private signing key", where, set), E.ERR_NO_SIGNING_KEY }
  end
  entry.signer = problem == nil and signer or nil
  entry.signer_problem = problem
  return entry
end

-- The key that signs: by kid, or the entry's default signer.
function M.signing_key(entry, set, kid, where)
  current(entry)
  if kid == nil then
    -- a refusing entry has no signer: its problem is the refusal
    if entry.signer then return entry.signer end
    return nil, entry.signer_problem[1], entry.signer_problem[2]
  end
  if entry.refused then return nil, entry.refused[1], entry.refused[2] end
  local key = entry.by_kid[kid]
  if not key then
    return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' not found in %s key set '%s'", kid, where, set)
  end
  if key.broken then return nil, key.broken, key.code end
  if not key.private then
    return util.fail(E.ERR_KEY_NOT_PRIVATE, "key '%s' in key set '%s' is public only", kid, set)
  end
  if key.use ~= "sig" then
    return util.fail(E.ERR_KEY_USE, "key '%s' is an encryption key (use 'enc') and cannot sign", kid)
  end
  if key.retired_mark then return nil, M.retired_on_key(key, set), E.ERR_KEY_STATE end
  if key.state and not lifecycle.SIGNS_BY_KID[key.state] then
    return util.fail(E.ERR_KEY_STATE, "key '%s' of key set '%s' is %s: only the current and previous keys sign",
      kid, set, key.state)
  end
  return key
end

-- Signs payload with the entry's keys. options: kid, alg, typ. metrics:
-- the engine's jwkengine.metrics recorder (nil: nothing counted).
function M.sign(entry, set, payload, options, where, metrics)
  local kid, alg, typ
  if options then kid, alg, typ = options.kid, options.alg, options.typ end
  local key, err, code
  if kid == nil then
    -- signing_key's common case in this frame: two calls fewer per token
    local lc = entry.lifecycle
    if lc and lc.valid_until and lc.now() >= lc.valid_until then lc.reevaluate(entry) end
    key = entry.signer
    if not key then return nil, entry.signer_problem[1], entry.signer_problem[2] end
  else
    key, err, code = M.signing_key(entry, set, kid, where)
    if not key then return nil, err, code end
  end
  if alg == nil then
    alg = key.alg -- the common case, without a call
  else
    alg, err, code = key_rules.signing_alg(key.alg, alg, key.kid)
    if not alg then return nil, err, code end
  end
  -- headers[key][alg][typ]: nested tables, no string building per call
  local by_key = entry.headers[key]
  if not by_key then by_key = {}; entry.headers[key] = by_key end
  local by_alg = by_key[alg]
  if not by_alg then by_alg = {}; by_key[alg] = by_alg end
  local header = by_alg[typ or false]
  if not header then
    header = jws.encode_header(alg, key.kid, typ)
    -- callers choose typ: a bounded number of headers is kept per key and
    -- alg (counted under a key no typ string can be)
    local count = (by_alg[HEADER_COUNT] or 0) + 1
    by_alg[HEADER_COUNT] = count
    if count <= 32 then by_alg[typ or false] = header end
  end
  -- sign_compact and the seconds it took, timed in C
  local token, seconds
  token, seconds, code = key.object:sign_timed(header, payload, alg)
  if not token then return nil, seconds, code end
  if metrics then metrics:signed(where, set, key.kid, alg, seconds) end
  return token
end

-- Verification candidates (public halves), built once per load. A set with
-- no usable key is the error of its first broken one: an empty list of
-- algorithms would otherwise reach jws.verify, which raises on it.
function M.candidates(entry, set, where)
  local candidates = current(entry).candidates
  if entry.refused then return nil, entry.refused[1], entry.refused[2] end
  if not candidates then
    candidates = { algorithms = {} }
    local seen, first_broken = {}, nil
    for _, key in ipairs(entry.keys) do
      if key.broken then
        first_broken = first_broken or key
      elseif published(key) then
        candidates[#candidates + 1] = { kid = key.kid, alg = key.alg, use = key.use,
          public_key = key.object:public_key() }
        if not seen[key.alg] then
          seen[key.alg] = true
          candidates.algorithms[#candidates.algorithms + 1] = key.alg
        end
      end
    end
    if #candidates == 0 then
      if first_broken then return nil, first_broken.broken, first_broken.code end
      return util.fail(E.ERR_KEY_SET_NOT_FOUND, "%s key set '%s' holds no key", where, set)
    end
    entry.candidates = candidates
  end
  return candidates
end

-- The public JWK Set, built once per load; broken rows make it an error.
function M.jwks(entry)
  current(entry)
  if entry.refused then return nil, entry.refused[1], entry.refused[2] end
  for _, key in ipairs(entry.keys) do
    if key.broken then return nil, key.broken, key.code end
  end
  if not entry.jwks then
    entry.jwks = { keys = {} }
    for _, key in ipairs(entry.keys) do
      if published(key) then entry.jwks.keys[#entry.jwks.keys + 1] = key.jwk end
    end
  end
  return entry.jwks
end

-- The base class of the HSM and software managers: the lookups they share.
-- A manager class names it as its base (setmetatable(Manager, { __index =
-- keyset.Manager })) and provides load(set [, refresh]) -> entry (ending
-- with self:loaded), `where` ("HSM" or "software", for messages) and `sets`
-- (set -> entry). A manager knows no policy: what governs its sets (the key
-- lifecycle) is installed over it by whoever composes the engine
-- (jwkengine.lifecycle.govern replaces the hooks on_load, on_gone and
-- lifecycle below on the manager object).
local Manager = {}
M.Manager = Manager

function Manager:key_set(set)
  local entry, err, code = self:load(set)
  if not entry then return nil, err, code end
  return M.jwks(entry)
end

-- One key's entry ({ kid, alg, use, object, jwk }); a key that cannot be
-- opened is its error.
function Manager:key_entry(set, kid)
  local entry, err, code = self:load(set)
  if not entry then return nil, err, code end
  local key = entry.by_kid[kid]
  if not key then
    return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' not found in %s key set '%s'", kid, self.where, set)
  end
  if key.broken then return nil, key.broken, key.code end
  return key
end

function Manager:key(set, kid)
  local key, err, code = self:key_entry(set, kid)
  if not key then return nil, err, code end
  return key.jwk
end

-- The key entry that signs ({ kid, alg, object, ... }) and the set entry.
function Manager:signing_key(set, kid)
  local entry, err, code = self:load(set)
  if not entry then return nil, err, code end
  local key
  key, err, code = M.signing_key(entry, set, kid, self.where)
  if not key then return nil, err, code end
  return key, entry
end

-- What the set's JWK Set endpoint serves, as of now: { keys = the public
-- JWKs, states = kid -> state of each published key in the lifecycle,
-- next_change = when the answer changes next without a write (a promotion,
-- a retirement; nil when nothing is scheduled) }.
function Manager:publication(set)
  local entry, err, code = self:load(set)
  if not entry then return nil, err, code end
  local jwks
  jwks, err, code = M.jwks(entry)
  if not jwks then return nil, err, code end
  local states = {}
  for _, key in ipairs(entry.keys) do
    if key.state and published(key) then states[key.kid] = key.state end
  end
  return { keys = jwks.keys, states = states, next_change = entry.lifecycle and entry.lifecycle.valid_until }
end

function Manager:verification_keys(set)
  local entry, err, code = self:load(set)
  if not entry then return nil, err, code end
  return M.candidates(entry, set, self.where)
end

-- Finishes loading a set: its kid index and signer (prepare; choose as
-- there), what governs the set makes of it (on_load), and the cache. Only
-- a load runs this: signing from a cached entry does not.
function Manager:loaded(set, entry, choose)
  M.prepare(entry, set, self.where, choose)
  self:on_load(entry, set)
  self.sets[set] = entry
  return entry
end

-- Hooks for what governs a manager's sets, nothing by default: on_load(entry,
-- set) before a freshly loaded entry is cached and used; on_gone(set) when
-- the set no longer exists (a set made again starts afresh).
function Manager.on_load() end
function Manager.on_gone() end

-- The set's public JWK Set read again now; on an error the cached set stays.
-- The lifecycle's way into a manager (jwkengine.lifecycle.writes): the
-- states object governing it (nil: none; set by jwkengine.lifecycle.govern),
-- and outdate(set) after a write. Nothing else of a manager is the
-- lifecycle's business.
function Manager.lifecycle() return nil end

-- After this process changed a set: the next use reads it again.
function Manager:outdate(set)
  self.sets[set] = nil
end

function Manager:reload(set)
  local entry, err, code = self:load(set, true)
  if not entry then return nil, err, code end
  return M.jwks(entry)
end

return M

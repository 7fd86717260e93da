-- Several tokens holding the same key sets (hsm.tokens; README "Several
-- HSMs"), behind the interface of one token's manager (jwkengine.hsm), so
-- jwkengine.fallback sees one HSM.
--
-- Each token is a jwkengine.hsm manager of its own: its own keys, its own
-- key states on that token. Keys never leave a token; what makes the
-- tokens interchangeable is publication: a set's JWK Set is the union of
-- what every token publishes, so a token's keys verify before it signs.
--
-- Signing: the signing token (the primary, the first entry, unless it
-- failed) signs; when it cannot (down, login refused, the set or key
-- missing there) the next token that can signs in the same call. A token
-- that failed is not asked per request: the signing token stays where it
-- moved, and the primary is probed at most once a second (a probe
-- signature, out of the metrics); signing returns to it once it has
-- answered for hsm.failback_after seconds, so an HSM that comes and goes
-- does not make the kid flap, and never before its keys can be in every
-- client's JWK Set again (options.publish_window). While a token is down its module's outage
-- backoff (core/p11_outage.c) answers at once; a token that never opened
-- is opened again when its open backoff (jwkengine.hsm) says.
local hsm = require("jwkengine.hsm")
local keyset = require("jwkengine.keyset")
local jws = require("jwkengine.jws")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}
local Group = {}

-- Errors that are the caller's: asking another token would answer the same.
local CALLERS = {
  [E.ERR_INVALID_ARGUMENT] = true, [E.ERR_UNSUPPORTED_ALG] = true, [E.ERR_KEY_USE] = true,
  [E.ERR_KEY_NOT_PRIVATE] = true, [E.ERR_JWS_SIGN] = true, [E.ERR_CLOSED] = true,
}

-- Errors that say the token itself is gone (rather than one set on it):
-- signing moves off it until it has answered for failback_after.
local DOWN = {
  [E.ERR_HSM_UNAVAILABLE] = true, [E.ERR_LOGIN_REFUSED] = true, [E.ERR_TOKEN_NOT_FOUND] = true,
  CKR_DEVICE_REMOVED = true, CKR_DEVICE_ERROR = true, CKR_TOKEN_NOT_PRESENT = true,
  CKR_CRYPTOKI_NOT_INITIALIZED = true, CKR_USER_NOT_LOGGED_IN = true, CKR_PIN_INCORRECT = true,
  CKR_PIN_LOCKED = true, CKR_PIN_EXPIRED = true,
}
M.DOWN = DOWN

-- How often, at most, the primary is probed while another token signs.
M.PROBE_INTERVAL = 1

M.PROBE_PAYLOAD = "jwkengine failback probe"

-- Opens every token of hsm_config.tokens (see jwkengine.config); options
-- as jwkengine.hsm.open's, plus
--   options.retain(set, entry) -> seconds a down token's keys stay
--     published (its keys' retain; default tokens.max_lifetime + tolerance)
--   options.reached(member): called when a token that had not opened opens
--     later (the engine generates its startup sets there)
--   options.publish_window: seconds a returning token's keys need to be
--     in every process's JWK Set and every client's cache before they sign
--     again: failback waits at least that long, whatever failback_after
--     says (a down token's keys may have left the union, and a next key
--     made just before the outage may never have been read by some
--     processes; once back, the schedule makes it current at once)
--   options.govern(manager): puts a token's freshly opened manager under
--     its key states (jwkengine.lifecycle.govern; the records on that token)
-- A token that cannot be opened is logged and tried again later; the
-- group opens when at least one token does (else the primary's error).
function M.open(hsm_config, options)
  options = options or {}
  local log = options.logger or function() end
  local group = setmetatable({
    members = {}, log = log, now = options.now or os.time, options = options,
    -- how long the primary must answer before it signs again
    failback_wait = math.max(hsm_config.failback_after or 30, options.publish_window or 0),
    by_set = {}, next_probe = 0, failovers = 0,
    unions = {}, where = "HSM",
  }, Group)
  local first_err
  for i, token_config in ipairs(hsm_config.tokens) do
    -- a copy: the engine drops the PINs from its configuration after open,
    -- and a token that did not open needs its PIN to open later (dropped
    -- here too once it opens: the token keeps it in locked memory)
    local own = {}
    for k, v in pairs(token_config) do own[k] = v end
    local member = { index = i, config = own, failovers = 0, seen = {}, next_open = 0,
      label = token_config.token_label or (token_config.slot and ("slot " .. token_config.slot)) or "",
      library = token_config.library }
    group.members[i] = member
    local ok, err, code, retry_in = group:open_member(member)
    if not ok and not first_err then first_err = { err, code, retry_in } end
  end
  group.signer = group:first_open()
  if not group.signer then
    group:close()
    return nil, first_err[1], first_err[2], first_err[3]
  end
  group.failed_over = group.signer.index ~= 1
  group.slot = group.signer.manager.slot
  return group
end

-- Opens a member's token; logs a failure and when it is tried again.
function Group:open_member(member)
  local manager, err, code, retry_in = hsm.open(member.config, self.options)
  if manager and self.options.govern then self.options.govern(manager) end
  local now = self.now()
  if not manager then
    local wait = retry_in or member.config.reinit_interval_max_ms / 1000
    member.next_open = now + math.max(wait, 1)
    member.open_error = { err, code }
    self.log("error", string.format("HSM token %d (%s): %s (%s); tried again in %d s; the other tokens sign",
      member.index, member.label, tostring(err), tostring(code), math.ceil(math.max(wait, 1))))
    return nil, err, code, retry_in
  end
  member.manager, member.open_error = manager, nil
  member.config.pin = nil
  if member.config.uri then member.config.uri = require("jwkengine.pkcs11_uri").redact(member.config.uri) end
  member.label = manager.slot and manager.slot.label or member.label
  manager.metrics = self.metrics
  member.down, member.up_since = false, nil
  return manager
end

function Group:first_open()
  for _, member in ipairs(self.members) do
    if member.manager then return member end
  end
end

-- A member's manager, opening the token when it never opened and its
-- backoff has passed; nil while it cannot be asked.
function Group:usable(member)
  local manager = member.manager
  if manager then return manager end
  if self.now() < member.next_open then return nil end
  manager = self:open_member(member)
  if manager and self.options.reached then self.options.reached(member) end
  return manager
end

-- The metrics recorder jwkengine.fallback hands in, passed to each token.
function Group:set_metrics(recorder)
  rawset(self, "metrics", recorder)
  for _, member in ipairs(self.members) do
    if member.manager then member.manager.metrics = recorder end
  end
end
Group.__index = Group
Group.__newindex = function(self, key, value)
  if key == "metrics" then return self:set_metrics(value) end
  rawset(self, key, value)
end

function Group:mark_down(member, err, code)
  if not member.down then
    member.down, member.down_since = true, self.now()
    self.log("warn", string.format("HSM token %d (%s) is down: %s (%s)", member.index, member.label,
      tostring(err), tostring(code)))
  end
  member.up_since = nil
end

function Group:mark_up(member)
  if member.down then
    member.down, member.down_since = false, nil
    self.log("info", string.format("HSM token %d (%s) answers again", member.index, member.label))
  end
end

function Group:switch_to(member, why)
  if self.signer == member then return end
  self.log("warn", string.format("HSM token %d (%s) signs now, in place of token %d (%s): %s", member.index,
    member.label, self.signer.index, self.signer.label, why))
  self.signer = member
  self.slot = member.manager.slot
  self.failed_over = member.index ~= 1 or next(self.by_set) ~= nil
end

-- Whether a member signs the set now: a probe signature with its signing
-- key (not counted as a signature), verified on the host.
function Group:probe(member, set)
  local manager = self:usable(member)
  if not manager then return false end
  local key, err, code = manager:signing_key(set)
  local token
  if key then
    local alg = key.alg
    token, err, code = key.object:sign_compact(jws.encode_header(alg, key.kid), M.PROBE_PAYLOAD, alg)
  end
  if not token then
    if DOWN[code] then self:mark_down(member, err, code) end
    return false
  end
  self:mark_up(member)
  return true
end

-- While another token signs: at most once per PROBE_INTERVAL, asks the
-- tokens before it (the primary first) and returns signing to the first
-- that has answered for failback_wait; sets the primary lacked are
-- asked of it again once their time is up.
function Group:try_failback(set)
  local now = self.now()
  if now < self.next_probe then return end
  self.next_probe = now + M.PROBE_INTERVAL
  for missing_set, entry in pairs(self.by_set) do
    if now >= entry.until_time then self.by_set[missing_set] = nil end
  end
  for _, member in ipairs(self.members) do
    if member == self.signer then break end
    if self:probe(member, set) then
      member.up_since = member.up_since or now
      if now - member.up_since >= self.failback_wait then
        self:switch_to(member, string.format("it has answered for %d s", now - member.up_since))
        break
      end
    else
      member.up_since = nil
    end
  end
  self.failed_over = self.signer.index ~= 1 or next(self.by_set) ~= nil
end

-- The member that signs a set: the one the set moved to when the signing
-- token lacked it, else the signing token.
function Group:signer_of(set)
  local moved = self.by_set[set]
  return moved and moved.member or self.signer
end

-- After `failed` could not sign (err, code): the next token that can, in
-- the same call. sign_with(manager) -> value, err, code.
function Group:failover(failed, set, err, code, explicit_kid, sign_with)
  if CALLERS[code] then return nil, err, code end
  local down = DOWN[code]
  if down then self:mark_down(failed, err, code) end
  for _, other in ipairs(self.members) do
    if other ~= failed then
      local manager = self:usable(other)
      if manager then
        local value, oerr, ocode = sign_with(manager)
        if value then
          self:mark_up(other)
          -- a kid of another token is not a failover: it is where that key is
          if not (explicit_kid and code == E.ERR_KEY_NOT_FOUND) then
            failed.failovers = failed.failovers + 1
            self.failovers = self.failovers + 1
            if down then
              if failed == self.signer then
                self:switch_to(other, string.format("token %d failed: %s", failed.index, tostring(code)))
              end
            elseif not explicit_kid then
              -- the set (or its signing key) is missing there: this set
              -- signs elsewhere until the negative cache's time is up
              self.by_set[set] = { member = other, until_time = self.now() + (self.options.negative_ttl or 30) }
              self.failed_over = true
            end
          end
          return value, oerr, ocode
        end
        if DOWN[ocode] then self:mark_down(other, oerr, ocode) end
      end
    end
  end
  return nil, err, code
end

function Group:sign(set, payload, options)
  if self.failed_over then self:try_failback(set) end
  local member = self:signer_of(set)
  local token, err, code = member.manager:sign(set, payload, options)
  if token then return token end
  return self:failover(member, set, err, code, options and options.kid, function(manager)
    return manager:sign(set, payload, options)
  end)
end

-- The key that signs (by kid, or the set's current key), on the token
-- that signs: what engine:signing_key and health probes use.
function Group:signing_key(set, kid)
  if self.failed_over then self:try_failback(set) end
  local member = self:signer_of(set)
  local key, entry_or_err, code = member.manager:signing_key(set, kid)
  if key then return key, entry_or_err end
  return self:failover(member, set, entry_or_err, code, kid, function(manager)
    return manager:signing_key(set, kid)
  end)
end

-- How long a down token's keys stay published: its keys' retain (the
-- set's recorded policy), else the host's default (options.retain).
function Group:retain(member, set)
  local entry = member.manager and (member.manager.sets[set] or member.manager.outdated[set])
  local policy = entry and entry.lifecycle and entry.lifecycle.policy
  if policy and policy.retain then return policy.retain end
  return self.options.retain or 3660
end

-- Whether a member is down now: marked by a failed call, or in its
-- module's outage.
function Group:is_down(member)
  if not member.manager then return true end
  return member.down or member.manager:outage() ~= nil
end

-- What each member contributes to a set's publication: read(manager) is
-- the member's answer (a JWK Set, candidates, a publication). A token that
-- is down contributes what it last published until that key's retain
-- would have ended since it went down; a token never reached, nothing.
-- Returns the parts (member, value, until) and the first error.
function Group:parts(set, kind, read)
  local parts, first_err, first_code = {}, nil, nil
  local now = self.now()
  for _, member in ipairs(self.members) do
    local manager = member.manager
    if manager then
      local value, err, code = read(manager)
      local seen = member.seen[kind .. "\0" .. set]
      if value then
        member.seen[kind .. "\0" .. set] = value
        seen = value
      end
      local down = self:is_down(member)
      local until_time
      if down then
        member.down_since = member.down_since or now
        until_time = member.down_since + self:retain(member, set)
      else
        member.down_since = nil -- back: the next outage counts retain from its own start
      end
      if (value or (down and seen)) and (not until_time or now < until_time) then
        parts[#parts + 1] = { member = member, value = value or seen, until_time = until_time }
      elseif not value and (not first_err or first_code == E.ERR_KEY_SET_NOT_FOUND) then
        first_err, first_code = err, code -- a token's failure says more than another's "not found"
      end
    end
  end
  return parts, first_err, first_code
end

-- A union of parts, kept while every part is the same table as before (so
-- callers that cache by the table, engine:key_set_json, keep their cache).
function Group:union(set, kind, parts, merge)
  local key = kind .. "\0" .. set
  local cached = self.unions[key]
  if cached and #cached.parts == #parts then
    local same = true
    for i, part in ipairs(parts) do
      if cached.parts[i] ~= part.value then same = false; break end
    end
    if same then return cached.value end
  end
  local values = {}
  for i, part in ipairs(parts) do values[i] = part.value end
  local value = merge(parts)
  self.unions[key] = { parts = values, value = value }
  return value
end

function Group:key_set(set)
  local parts, err, code = self:parts(set, "jwks", function(manager) return manager:key_set(set) end)
  if #parts == 0 then return nil, err, code end
  return self:union(set, "jwks", parts, function(list)
    local union = { keys = {} }
    for _, part in ipairs(list) do
      for _, key in ipairs(part.value.keys) do union.keys[#union.keys + 1] = key end
    end
    return union
  end)
end

-- { keys, states, next_change }: next_change also when a down token's
-- keys leave the union.
function Group:publication(set)
  local parts, err, code = self:parts(set, "publication", function(manager) return manager:publication(set) end)
  if #parts == 0 then return nil, err, code end
  local union = { keys = {}, states = {} }
  for _, part in ipairs(parts) do
    for _, key in ipairs(part.value.keys) do union.keys[#union.keys + 1] = key end
    for kid, state in pairs(part.value.states) do union.states[kid] = state end
    for _, at in ipairs({ part.value.next_change or false, part.until_time or false }) do
      if at and (not union.next_change or at < union.next_change) then union.next_change = at end
    end
  end
  return union
end

function Group:verification_keys(set)
  local parts, err, code = self:parts(set, "candidates", function(manager) return manager:verification_keys(set) end)
  if #parts == 0 then return nil, err, code end
  return self:union(set, "candidates", parts, function(list)
    local union, seen = { algorithms = {} }, {}
    for _, part in ipairs(list) do
      for _, candidate in ipairs(part.value) do union[#union + 1] = candidate end
      for _, alg in ipairs(part.value.algorithms) do
        if not seen[alg] then
          seen[alg] = true
          union.algorithms[#union.algorithms + 1] = alg
        end
      end
    end
    return union
  end)
end

-- The member holding a kid of a set (kids are one token's), else the
-- first error.
function Group:holder_of(set, kid)
  local first_err, first_code
  for _, member in ipairs(self.members) do
    local manager = self:usable(member)
    if manager then
      local key, err, code = manager:key_entry(set, kid)
      if key then return member end
      if not first_err or first_code == E.ERR_KEY_SET_NOT_FOUND then first_err, first_code = err, code end
    end
  end
  return nil, first_err or string.format("key '%s' not found in HSM key set '%s'", kid, set),
    first_code or E.ERR_KEY_NOT_FOUND
end

-- What acts on one kid goes to the token holding it.
for _, method in ipairs({ "key", "key_entry", "certify", "mark_retired" }) do
  Group[method] = function(self, set, kid, ...)
    local member, err, code = self:holder_of(set, kid)
    if not member then return nil, err, code end
    local manager = member.manager
    return manager[method](manager, set, kid, ...)
  end
end

-- The members an operation acts on: every token that can be asked, or
-- only token `index` (an error when it cannot be asked).
function Group:targets(index)
  if index ~= nil then
    local member = self.members[index]
    if not member then
      return util.fail(E.ERR_INVALID_ARGUMENT, "there is no HSM token %s (hsm.tokens has %d)", tostring(index),
        #self.members)
    end
    if not self:usable(member) then
      local why = member.open_error and member.open_error[1] or "it has not been reached"
      return nil, string.format("HSM token %d (%s) cannot be reached: %s", index, member.label, why),
        member.open_error and member.open_error[2] or E.ERR_HSM_UNAVAILABLE
    end
    return { member }
  end
  local list = {}
  for _, member in ipairs(self.members) do
    if self:usable(member) then list[#list + 1] = member end
  end
  return list
end

-- The first member that holds a set (the signing one first), with its
-- entry: what lifecycle writes on "the" holder use.
function Group:load(set, refresh)
  local first_err, first_code
  local order = { self:signer_of(set) }
  for _, member in ipairs(self.members) do
    if member ~= order[1] then order[#order + 1] = member end
  end
  for _, member in ipairs(order) do
    local manager = self:usable(member)
    if manager then
      local entry, err, code = manager:load(set, refresh)
      if entry then return entry end
      if not first_err or first_code == E.ERR_KEY_SET_NOT_FOUND then first_err, first_code = err, code end
    end
  end
  return nil, first_err or string.format("key set '%s' not found in the HSM", set),
    first_code or E.ERR_KEY_SET_NOT_FOUND
end

-- Generates on every token that can be asked (options.token: on that one
-- only): returns the first token's JWK and the list { { token, jwk } }.
function Group:generate(set, alg, options)
  local targets, err, code = self:targets(options and options.token)
  if not targets then return nil, err, code end
  local made, first = {}, nil
  for _, member in ipairs(targets) do
    local jwk
    jwk, err, code = member.manager:generate(set, alg, options)
    if not jwk then
      return nil, string.format("HSM token %d (%s): %s", member.index, member.label, tostring(err)), code
    end
    made[#made + 1] = { token = member.index, jwk = jwk }
    first = first or jwk
  end
  self.by_set[set] = nil
  if #made == 0 then return util.fail(E.ERR_HSM_UNAVAILABLE, "no HSM token can be reached") end
  return first, made
end

function Group:generate_if_missing(set, alg)
  local result = "exists"
  for _, member in ipairs(self:targets()) do
    local r, err, code = member.manager:generate_if_missing(set, alg)
    if not r then return nil, err, code end
    if r == "generated" then result = "generated" end
  end
  return result
end

-- Deletes a key (on the token holding it) or the set on every token
-- (token: on that one only).
function Group:delete(set, kid, token)
  local targets, err, code = self:targets(token)
  if not targets then return nil, err, code end
  local first_err, first_code
  local deleted = false
  for _, member in ipairs(targets) do
    local ok, err, code = member.manager:delete(set, kid)
    if ok then deleted = true
    elseif not first_err or first_code == E.ERR_KEY_SET_NOT_FOUND then first_err, first_code = err, code end
  end
  self:forget(set)
  if deleted then return true end
  return nil, first_err or string.format("key set '%s' not found in the HSM", set),
    first_code or E.ERR_KEY_SET_NOT_FOUND
end

function Group:import(...)
  return self.signer.manager:import(...)
end

function Group:reload(set)
  for _, member in ipairs(self.members) do
    if member.manager then member.manager:reload(set) end
  end
  return self:key_set(set)
end

function Group:forget(set)
  self.by_set[set] = nil
  for _, member in ipairs(self.members) do
    if member.manager then member.manager:forget(set) end
  end
end

function Group:outdate(set)
  for _, member in ipairs(self.members) do
    if member.manager then member.manager:outdate(set) end
  end
end

-- Each token's state: { index, label, library, state = "up" | "down" |
-- "unreached", signing, failovers }.
function Group:tokens()
  local list = {}
  for _, member in ipairs(self.members) do
    local state = not member.manager and "unreached" or (self:is_down(member) and "down" or "up")
    list[#list + 1] = { index = member.index, label = member.label, library = member.library, state = state,
      signing = member == self.signer and state == "up", failovers = member.failovers }
  end
  return list, self.failovers
end

-- The members' pool and recovery counters, added up (numbers, and the
-- numbers of tables one level down): the pool gauges and counters of
-- /metrics stand for every token of this process.
function Group:stats()
  local sum
  for _, member in ipairs(self.members) do
    local stats = member.manager and member.manager:stats()
    if stats then
      if not sum then
        sum = {}
        for k, v in pairs(stats) do
          if type(v) == "table" then
            sum[k] = {}
            for k2, v2 in pairs(v) do sum[k][k2] = v2 end
          else
            sum[k] = v
          end
        end
      else
        for k, v in pairs(stats) do
          if type(v) == "number" and type(sum[k]) == "number" then sum[k] = sum[k] + v
          elseif type(v) == "table" and type(sum[k]) == "table" then
            for k2, v2 in pairs(v) do
              if type(v2) == "number" and type(sum[k][k2]) == "number" then sum[k][k2] = sum[k][k2] + v2 end
            end
          end
        end
      end
    end
  end
  return sum or {}
end

-- An outage only when no token signs: the signing token's, else the
-- soonest retry among the others.
function Group:outage()
  local soonest
  for _, member in ipairs(self.members) do
    if member.manager then
      local outage = member.manager:outage()
      if not outage and not member.down then return nil end
      if outage and (not soonest or outage.retry_in < soonest.retry_in) then soonest = outage end
    else
      local wait = member.next_open - self.now()
      if not soonest or wait < soonest.retry_in then
        soonest = { retry_in = math.max(wait, 0), cause = member.open_error and member.open_error[1] }
      end
    end
  end
  return soonest
end

function Group:lifecycle()
  return self.signer.manager:lifecycle()
end

function Group:close()
  for _, member in ipairs(self.members) do
    if member.manager then member.manager:close() end
    member.manager = nil
  end
end

-- The members, for what acts on each token in turn (the engine's
-- lifecycle writes, startup generation): index -> { manager, config, ... }.
function Group:each(index)
  return self:targets(index)
end

return M

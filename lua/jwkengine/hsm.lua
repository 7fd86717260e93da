-- The HSM key manager: key sets on a PKCS#11 token.
--
-- A set name maps to CKA_LABEL = key_set_prefix .. set on both halves of each
-- pair; the prefix never shows outside this file. Loaded sets are cached with
-- their key objects (object handles and public keys) and their key states
-- (a data object under the same label, jwkengine.lifecycle.token_backend), so signing
-- never searches the token; generate and delete refresh the set they touch.
local settings = require("jwkengine.config_settings")
local core = require("jwkengine.core")
local jwk_module = require("jwkengine.jwk")
local token_backend = require("jwkengine.lifecycle.token_backend")
local keyset = require("jwkengine.keyset")
local key_rules = require("jwkengine.key_rules")
local slots = require("jwkengine.slots")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}
-- key_set, key, signing_key, verification_keys and reload come from the
-- base, keyset.Manager; load and what only a token does are below.
local Manager = setmetatable({ where = "HSM" }, { __index = keyset.Manager })
Manager.__index = Manager

-- What a module answers when it cannot reach its device (or its server):
-- the codes the C layer's recovery re-initializes for (core/p11_token.c).
local UNREACHABLE = { CKR_DEVICE_REMOVED = true, CKR_DEVICE_ERROR = true, CKR_TOKEN_NOT_PRESENT = true,
  CKR_CRYPTOKI_NOT_INITIALIZED = true }

-- Whether a slot list says the module reaches no device: no slot at all
-- (p11-kit's client with no server), or no token in any slot (every token
-- pulled). A token missing beside others is the configuration's fault.
local function reaches_nothing(list)
  for _, slot in ipairs(list) do
    if slot.token_present then return false end
  end
  return true
end

-- The backoff of opens that found the HSM unreachable, per library: as a
-- token's outage, doubled from hsm.reinit_interval_ms up to
-- hsm.reinit_interval_max_ms after each failed open, each wait drawn
-- between half and all of it (workers that start together spread out);
-- forgotten after an open that reached it.
local open_backoff_ms = {}

local function jittered(backoff)
  local half = math.floor(backoff / 2)
  if half == 0 then return backoff end
  local bytes = core.random_bytes(3)
  if not bytes then return backoff end -- no jitter without randomness: the wait is still bounded
  local b1, b2, b3 = bytes:byte(1, 3)
  return backoff - half + (b1 * 65536 + b2 * 256 + b3) % (half + 1)
end

-- nil, a message naming the cause and the next attempt, ERR_HSM_UNAVAILABLE
-- and the seconds until that attempt (the 4th value, as a signing call's
-- retry_in), so a host answers 503 with Retry-After at startup too.
local function unavailable(hsm_config, cause)
  local interval, max = hsm_config.reinit_interval_ms, hsm_config.reinit_interval_max_ms
  local previous = open_backoff_ms[hsm_config.library]
  local backoff = previous and (previous < math.floor(max / 2) and previous * 2 or max) or interval
  open_backoff_ms[hsm_config.library] = backoff
  local wait = jittered(backoff)
  return nil, string.format("HSM unavailable: %s; next attempt in %d ms", cause, wait),
    E.ERR_HSM_UNAVAILABLE, wait / 1000
end

-- Opens the token the configuration names and logs in.
--   hsm_config: the `hsm` table of jwkengine.config
--   options.select_slot(slot_list, hsm_config) -> slot | nil, err: slot policy
--   options.logger(level, message): where recoveries are logged
function M.open(hsm_config, options)
  options = options or {}
  local err, code
  -- One module object for listing and opening: the module is loaded and
  -- initialized once per open (the token keeps it after `module` goes).
  local module
  -- init_args: CK_C_INITIALIZE_ARGS.pReserved, for modules that need it
  -- (NSS softokn's configdir=...), as p11-kit's x-init-reserved
  module, err, code = core.load_module(hsm_config.library, hsm_config.init_args)
  if not module then
    if UNREACHABLE[code] then return unavailable(hsm_config, err) end
    if code == "CKR_GENERAL_ERROR" and tostring(err):find("^C_Initialize") then
      -- what SoftHSM answers when this process's user cannot read its
      -- configuration or enter its token folder (nginx's worker user)
      err = string.format("%s (a module answers so when it cannot read its own configuration or files, " ..
        "SoftHSM among them: check that this process's user (%s) can read the file SOFTHSM2_CONF names " ..
        "and enter and read its directories.tokendir)", tostring(err), slots.process_user() or "unknown")
    end
    return nil, err, code
  end
  local list
  list, err, code = module:slots()
  if not list then
    if UNREACHABLE[code] then return unavailable(hsm_config, err) end
    return nil, err, code
  end
  if reaches_nothing(list) then
    return unavailable(hsm_config, #list == 0 and "the module reports no slot (is its server or device reachable?)"
      or "no slot holds a token")
  end
  open_backoff_ms[hsm_config.library] = nil
  local slot
  slot, err, code = slots.choose(list, hsm_config, options.select_slot)
  if not slot then return nil, err, code end

  local token
  -- the token's settings, by the names and in the units of the schema
  -- (config.load checked them; the binding takes them as they are)
  local token_options = { label = slot.label, serial = slot.serial }
  for key, setting in pairs(settings.section("hsm")) do
    if setting.token then token_options[key] = hsm_config[key] end
  end
  token, err, code = module:open_token(slot.id, token_options)
  if not token then return nil, err, code end
  local ok
  if hsm_config.pin_file then
    ok, err, code = token:login_file(hsm_config.pin_file)
  elseif hsm_config.pin_env then
    ok, err, code = token:login_env(hsm_config.pin_env)
  elseif hsm_config.pin_in_uri then
    ok, err, code = token:login_uri(hsm_config.uri)
  else
    ok, err, code = token:login(hsm_config.pin)
  end
  if not ok then
    token:close()
    return nil, err, code
  end
  local log = options.logger or function() end
  -- what opening queued (a pool cut to the token's session limit) is said
  -- now, at open, not with the first signature's events
  for _, line in ipairs(token:events() or {}) do log("warn", line) end
  local prefix = hsm_config.key_set_prefix or ""
  return setmetatable({
    token = token,
    slot = slot,
    log = log,
    now = options.now or os.time,
    warned_kids = {},
    prefix = prefix,
    min_rsa_bits = hsm_config.min_rsa_bits,
    sets = {},
    outdated = {}, -- set -> the entry outdate took out of sets (see outdate)
  }, Manager)
end

-- Logs what the C layer queued (recoveries, a learned session limit).
function Manager:log_events(events)
  if events then
    for _, line in ipairs(events) do self.log("warn", line) end
  end
end

-- Logs queued events, then returns its arguments, so calls can be wrapped.
function Manager:drain(...)
  self:log_events(self.token:events())
  return ...
end

function Manager:stats()
  return self.token:stats()
end

-- nil, or { retry_in = seconds until the next attempt to come back,
-- cause = the failure that started the outage }
function Manager:outage()
  local retry_in_ms, cause = self.token:outage()
  if retry_in_ms then return { retry_in = retry_in_ms / 1000, cause = cause } end
  return nil
end

-- How long a load waits for the other half of a lone half, in seconds:
-- C_GenerateKeyPair of another process writes one half, then the other,
-- and a set read between the two has a public half alone for a moment.
M.LONE_HALF_WAIT = 0.5
local LONE_HALF = "half but no %a+ half with the same CKA_ID"

-- The set's keys as the token holds them; a lone half is read again for
-- up to LONE_HALF_WAIT before the set fails with it (ERR_KEY_INVALID: a
-- lone private half never signs, a lone public half is never published).
function Manager:read_keys(set)
  local deadline
  while true do
    local keys, err, code = self:drain(self.token:load_set(self.prefix .. set, self.min_rsa_bits))
    if keys or code ~= E.ERR_KEY_INVALID or not tostring(err):find(LONE_HALF) then return keys, err, code end
    deadline = deadline or core.monotonic() + M.LONE_HALF_WAIT
    if core.monotonic() >= deadline then
      return nil, err .. string.format(" (still after %g s: if no process is making this pair, delete the lone "
        .. "half or import its other half)", M.LONE_HALF_WAIT), code
    end
    core.pause(0.05)
  end
end

-- Loads a set (from the cache unless refresh). An empty set is "not found"
-- (remembered for a while by jwkengine.fallback, which asks here first).
function Manager:load(set, refresh)
  local entry = self.sets[set]
  if entry and not refresh then return entry end
  local keys, err, code = self:read_keys(set)
  if not keys then
    err = string.format("key set '%s': %s", set, err)
    local stale = self.outdated[set]
    if stale and not refresh then
      -- read again on the next change or refresh, not per signature
      self.outdated[set] = nil
      self.sets[set] = stale
      self.log("warn", err .. " (" .. tostring(code) .. "); the keys read before go on signing")
      return stale
    end
    return nil, err, code
  end
  self.outdated[set] = nil
  if #keys == 0 then
    self.sets[set] = nil
    self:on_gone(set)
    return util.fail(E.ERR_KEY_SET_NOT_FOUND, "key set '%s' not found in the HSM", set)
  end
  entry = { keys = {} }
  for i, object in ipairs(keys) do
    entry.keys[i] = { kid = object:kid(), alg = object:alg(), use = object:use(),
      private = object:is_private(), object = object, jwk = object:public_jwk(),
      retired_mark = object:retired() or nil }
    self:warn_unprintable_kid(set, entry.keys[i].kid)
    self:report_certificate(set, object)
  end
  return self:loaded(set, entry, "only")
end

-- The kid is the CKA_ID's bytes as they are (Hydra's rule), so `--id 02`
-- publishes "kid":"\u0002". Kept, but said once per key: clients compare
-- kids as strings and an operator rarely means a control character.
function Manager:warn_unprintable_kid(set, kid)
  if not kid:find("[^\32-\126]") then return end
  local key = set .. "\0" .. kid
  if self.warned_kids[key] then return end
  self.warned_kids[key] = true
  self.log("warn", string.format("key set '%s': a kid is not printable ASCII (CKA_ID %s); it is "
    .. "published as these bytes: give the pair a printable CKA_ID", set,
    (kid:gsub(".", function(c) return string.format("%02x", c:byte()) end))))
end

-- A certificate beside a pair that cannot be published (its public key is
-- another's, it is not X.509, ...) leaves the key signing without x5c: an
-- operator would rather keep signing and be told, on every load.
function Manager:report_certificate(set, object)
  local _, problem, code = object:certificate()
  if problem then
    self.log("error", string.format("key set '%s': %s (%s); the key is published without x5c",
      set, problem, code))
  end
end

-- Makes a self-signed certificate for a pair, signed by the pair itself on
-- the token, and stores it beside the pair (replacing one there), then
-- returns the pair's public JWK, now with x5c.
--   options.subject: "CN=..., O=..."; options.days: validity
function Manager:certify(set, kid, options)
  local key, err, code = self:key_entry(set, kid)
  if not key then return nil, err, code end
  local der
  der, err, code = self:drain(key.object:self_signed_certificate(options.subject, options.days))
  if der then
    der, err, code = self:drain(self.token:store_certificate(self.prefix .. set, kid, der))
  end
  if not der then return nil, string.format("key set '%s': %s", set, err), code end
  self:forget(set)
  return self:key(set, kid)
end

function Manager:forget(set)
  self.sets[set] = nil
  self.outdated[set] = nil
end

-- After this process changed a set (generated a key, recorded key states),
-- its cached keys are out of date but still good: the next use reads the
-- token again, and when that read fails (another process making or
-- renaming a pair shows one half of it for a moment) signs with the keys it
-- had instead of failing the request. Engine:refresh forgets outright.
-- The entry waits in `outdated` rather than `sets`, so the signing path's
-- one lookup (sets[set]) finds nothing and loads.
function Manager:outdate(set)
  local entry = self.sets[set]
  if entry then
    self.outdated[set] = entry
    self.sets[set] = nil
  end
end

-- The public JWK of one pair, read by label and CKA_ID: a generation costs
-- the same however large its set already is.
function Manager:pair_jwk(set, kid)
  local keys, err, code = self:drain(self.token:load_set(self.prefix .. set, self.min_rsa_bits, kid))
  if not keys then return nil, string.format("key set '%s': %s", set, err), code end
  return keys[1] and keys[1]:public_jwk()
end

function Manager:generate(set, alg, options)
  options = options or {}
  if not key_rules.generates("hsm", alg) then
    return util.fail(E.ERR_UNSUPPORTED_ALG, "the HSM cannot generate keys for algorithm '%s' (%s)",
      tostring(alg), key_rules.generated_list("hsm"))
  end
  local use = options.use or "sig"
  local usable, uerr, ucode = key_rules.check_use(alg, use)
  if not usable then return nil, uerr, ucode end
  -- a key the engine would then refuse to load is never made
  if core.alg_info(alg).kty == "RSA" and options.rsa_bits and options.rsa_bits < self.min_rsa_bits then
    return util.fail(E.ERR_INVALID_ARGUMENT, "an RSA key of %d bits is below hsm.min_rsa_bits (%d)",
      options.rsa_bits, self.min_rsa_bits)
  end
  local hash = options.thumbprint_kid
  if hash and options.kid ~= nil then error("pass kid or thumbprint_kid, not both", 2) end
  local label = self.prefix .. set
  local function exists(kid)
    local jwk, err, code = self:pair_jwk(set, kid)
    if jwk == nil and err then return nil, err, code end
    if jwk then
      return util.fail(E.ERR_KEY_EXISTS, "key '%s' already exists in HSM key set '%s'", kid, set)
    end
    return true
  end
  if options.kid ~= nil then
    -- a second pair with the same CKA_ID would make the whole set unusable
    local ok, err, code = exists(options.kid)
    if not ok then return nil, err, code end
  end
  local kid = options.kid
  if not kid then
    local err, code
    kid, err, code = core.uuid()
    if not kid then return nil, err, code end
  end
  local ok, err, code = self:drain(self.token:generate(label, alg, kid, use, options.rsa_bits))
  self:outdate(set) -- read again, once, when next used
  if not ok then return nil, err, code end
  local jwk
  jwk, err, code = self:pair_jwk(set, kid)
  if not jwk then return nil, err or "the generated key cannot be read back", code end
  if not hash then return jwk end

  -- The kid is the key's RFC 7638 thumbprint: only known once the token has
  -- made the key, so the pair is generated under a temporary id and renamed.
  local thumbprint
  thumbprint, err, code = jwk_module.thumbprint(jwk, hash == true and "SHA-256" or hash)
  if thumbprint then
    ok, err, code = exists(thumbprint)
    if ok then ok, err, code = self:drain(self.token:set_id(label, kid, thumbprint)) end
  end
  self:outdate(set)
  if not thumbprint or not ok then
    self.token:delete(label, kid) -- never leave a key under the temporary id
    return nil, err, code
  end
  return self:pair_jwk(set, thumbprint)
end

-- Where this token keeps its sets' key states (data objects beside the
-- keys): the backend the engine's lifecycle governs this manager with.
function Manager:key_state_backend()
  return token_backend.new(self.token, self.prefix, self.log)
end

function Manager:delete(set, kid)
  local destroyed, err, code = self:drain(self.token:delete(self.prefix .. set, kid))
  self:forget(set)
  if not destroyed then return nil, err, code end
  -- the whole set went, its key-state objects with it
  if not kid then self:on_gone(set) end
  if destroyed == 0 then
    if kid then
      return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' not found in HSM key set '%s'", kid, set)
    end
    return util.fail(E.ERR_KEY_SET_NOT_FOUND, "key set '%s' not found in the HSM", set)
  end
  return true
end

-- Writes retirement on the key itself (retired true: the private half's
-- CKA_SIGN false, so the token refuses to sign with it whatever the set's
-- records say) or undoes it (false). ERR_KEY_MARK_REFUSED where the token
-- will not change the attribute (logged: the records are all there is).
function Manager:mark_retired(set, kid, retired)
  if type(retired) ~= "boolean" then error("mark_retired takes a boolean", 2) end
  local key, err, code = self:key_entry(set, kid)
  if not key then return nil, err, code end
  if key.use ~= "sig" then
    return util.fail(E.ERR_KEY_USE, "key '%s' of HSM key set '%s' is an encryption key: it has no "
      .. "signing state to mark", kid, set)
  end
  local changed
  changed, err, code = self:drain(key.object:set_sign(not retired))
  self:forget(set)
  if not changed then
    err = string.format("key set '%s' key '%s': %s", set, kid, err)
    if code == E.ERR_KEY_MARK_REFUSED then self.log("warn", err) end
    return nil, err, code
  end
  if changed == 0 then
    return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' not found in HSM key set '%s'", kid, set)
  end
  return true
end

-- Signs payload bytes as a compact JWS. options: kid, typ, alg.
function Manager:sign(set, payload, options)
  local entry = self.sets[set]
  if not entry then
    local err, code
    entry, err, code = self:load(set)
    if not entry then return nil, err, code end
  end
  local jws, err, code = keyset.sign(entry, set, payload, options, "HSM", self.metrics)
  -- The token refused a key the set's entry still lets sign: another
  -- process retired it on the token (CKA_SIGN false, rotate --now) since
  -- this one loaded the set. Read the set again and sign once more; only
  -- on that failure, so signing costs nothing more.
  if code == E.ERR_KEY_STATE and keyset.signing_key(entry, set, options and options.kid, "HSM") then
    entry = self:load(set, true)
    if entry then jws, err, code = keyset.sign(entry, set, payload, options, "HSM", self.metrics) end
  end
  local events = self.token:events() -- nil unless a recovery happened
  if events then self:log_events(events) end
  return jws, err, code
end

-- Keys cannot be added to an HSM from outside (Hydra's rule): adding and
-- updating go to the software store.
function Manager:import()
  return util.fail(E.ERR_HSM_IMPORT_UNSUPPORTED,
    "the HSM does not accept imported keys: adding and updating keys go to the software store")
end

-- Startup generation: only when the set is missing.
function Manager:generate_if_missing(set, alg)
  local entry, err, code = self:load(set)
  if entry then return "exists" end
  if code ~= E.ERR_KEY_SET_NOT_FOUND then return nil, err, code end
  local jwk
  jwk, err, code = self:generate(set, alg, { use = "sig" })
  if not jwk then return nil, err, code end
  return "generated"
end

function Manager:close()
  self.sets, self.outdated = {}, {}
  if self.token then self.token:close() end
end

return M

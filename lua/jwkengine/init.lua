-- jwkengine: JSON Web Keys kept in an HSM over PKCS#11, as a Lua module.
--
--   local jwkengine = require("jwkengine")
--   local engine, err = jwkengine.open()            -- config file + environment
--   print(engine:key_set_json("hydra.openid.id-token"))
--   local token = engine:sign_jwt("hydra.openid.id-token", { sub = "alice" }, { lifetime = 300 })
--
-- Every operation returns `value` or `nil, message, code`; only programming
-- errors (wrong argument types, a missing algorithm list) raise.
local core = require("jwkengine.core")
local config = require("jwkengine.config")
local fallback = require("jwkengine.fallback")
local errors = require("jwkengine.errors")
local hsm = require("jwkengine.hsm")
local jwk = require("jwkengine.jwk")
local jws = require("jwkengine.jws")
local jwt = require("jwkengine.jwt")
local health = require("jwkengine.health")
local log = require("jwkengine.log")
local metrics = require("jwkengine.metrics")
local lifecycle = require("jwkengine.lifecycle")
local lifecycle_policy = require("jwkengine.lifecycle.policy")
local lifecycle_writes = require("jwkengine.lifecycle.writes")
local sql_backend = require("jwkengine.lifecycle.sql_backend")
local names = require("jwkengine.names")
local software = require("jwkengine.software")
local startup = require("jwkengine.startup")
local store = require("jwkengine.store")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

-- What hosts (nginx, the CLI, an application) may use: these names and
-- the engine's methods, as the README's Lua API lists them (facade_spec
-- holds the two lists equal). The binding, jwkengine.core, is not among
-- them: it is the library's own, required by its modules directly.
local M = {
  _VERSION = core._VERSION,
  config = config,
  jws = jws,
  jwt = jwt,
  jwk = jwk,
  errors = errors,
  metrics = metrics,
}

-- A digest (hash "SHA-256", "SHA-384", "SHA-512") of bytes, and base64url
-- without padding: what a host needs for ETags and to read a token's parts.
M.digest = core.digest
M.b64url_encode = core.b64url_encode
M.b64url_decode = core.b64url_decode

-- Secrets kept in C, in locked memory, under a name, for a host that reads
-- them once (nginx's master) and opens engines later (its workers): a PIN
-- kept under a variable's name is what a login that would read that
-- variable finds (keep_uri_pin: the pin-value of a PKCS#11 URI).
M.kept_secrets = {
  keep_pin = core.keep_pin,
  keep_uri_pin = core.keep_uri_pin,
  forget_pin = core.forget_pin,
  keep_secret = core.keep_secret,
  kept_secret = core.kept_secret,
  forget_secret = core.forget_secret,
}

local Engine = {}
Engine.__index = Engine

-- Each engine's key managers (jwkengine.fallback over the HSM and software
-- managers), out of callers' reach: the methods below are the way in.
-- Weak keys: an engine dropped without close is still collected.
local keys_of = setmetatable({}, { __mode = "k" })
-- With hsm.tokens, the engine's token group (jwkengine.hsm_group): what
-- acts on each token in turn (lifecycle writes, startup generation) asks it.
local group_of = setmetatable({}, { __mode = "k" })

local DEFAULT_JWT_OPTIONS = { typ = "JWT" }

-- The key lifecycle's writes (jwkengine.lifecycle.writes) get the managers
-- from here, and from nowhere else.
local function lifecycle_of(engine)
  return { keys = keys_of[engine], policies = engine.policies }
end

-- The lifecycle writes of each HSM token in turn (fn(lifecycle context) ->
-- value, err, code), or once when the engine has one token. A context's
-- holder is that token's manager: each token's keys have their own
-- records. token: only that token (an index of hsm.tokens). A token that
-- lacks the set (or the kid) is passed over; a token that is down is
-- passed over and logged unless it was named; when no token holds the
-- set, the software store's holder (lifecycle_of) answers. Returns the
-- list { { token = index, value = value } } or nil, err, code; with one
-- token, fn's own answer.
local function lifecycle_each(engine, token, fn)
  local group = group_of[engine]
  if not group then
    if token ~= nil and token ~= 1 then
      return util.fail(E.ERR_INVALID_ARGUMENT, "there is no HSM token %s: hsm.tokens is not configured", tostring(token))
    end
    return fn(lifecycle_of(engine))
  end
  local targets, err, code = group:each(token)
  if not targets then return nil, err, code end
  local results, failures = {}, {}
  local missing_err, missing_code
  for _, member in ipairs(targets) do
    local manager = member.manager
    local context = { policies = engine.policies, keys = { holder = function(_, set)
      local entry, lerr, lcode = manager:load(set, true)
      if not entry then return nil, lerr, lcode end
      return manager, entry
    end } }
    local value, ferr, fcode = fn(context)
    if value then
      results[#results + 1] = { token = member.index, value = value }
    elseif fcode == E.ERR_KEY_SET_NOT_FOUND or (fcode == E.ERR_KEY_NOT_FOUND and token == nil) then
      if not missing_err or missing_code == E.ERR_KEY_SET_NOT_FOUND then missing_err, missing_code = ferr, fcode end
    elseif require("jwkengine.hsm_group").DOWN[fcode] and token == nil then
      engine.log("warn", string.format("HSM token %d (%s) is passed over: %s (%s)", member.index, member.label,
        tostring(ferr), tostring(fcode)))
    else
      failures[#failures + 1] = { member = member, err = ferr, code = fcode }
    end
  end
  if #failures > 0 then
    local parts = {}
    for _, f in ipairs(failures) do
      parts[#parts + 1] = string.format("HSM token %d (%s): %s", f.member.index, f.member.label, tostring(f.err))
    end
    for _, r in ipairs(results) do parts[#parts + 1] = string.format("HSM token %d: done", r.token) end
    return nil, table.concat(parts, "; "), failures[1].code
  end
  if #results == 0 then
    if missing_code == E.ERR_KEY_SET_NOT_FOUND and token == nil then return fn(lifecycle_of(engine)) end
    return nil, missing_err or "no HSM token can be reached", missing_code or E.ERR_HSM_UNAVAILABLE
  end
  return results
end

-- options.token: the one HSM token an operation acts on (nil: every token).
local function token_option(options)
  return type(options) == "table" and options.token or nil
end

-- Lists from each token (changes, key states) as one list, each item
-- with its token's index.
local function joined(results, err, code)
  if not results then return nil, err, code end
  if not results[1] or results[1].token == nil then return results end -- one token: as it is
  local list = {}
  for _, result in ipairs(results) do
    for _, item in ipairs(result.value) do
      item.token = result.token
      list[#list + 1] = item
    end
  end
  return list
end

-- Every method that takes a set name or a kid checks them here first (see
-- jwkengine.names): a wrong type raises, control characters are
-- ERR_INVALID_ARGUMENT. kid_name is how the caller passed the kid ("kid",
-- "options.kid"); kid_required: the method needs one.
local function check_names(set, kid, kid_name, kid_required)
  local ok, err, code = names.check(set, "set", false, 4)
  -- an absent optional kid passes: no call for it on the signing path
  if ok and kid_name and (kid ~= nil or kid_required) then
    ok, err, code = names.check(kid, kid_name, not kid_required, 4)
  end
  return ok, err, code
end

local function option_kid(options)
  return type(options) == "table" and options.kid or nil
end

-- Where a method's kid stands among the arguments after the set.
local function kid_argument(kid) return kid end
local function kid_in_options(_, options) return option_kid(options) end

-- A method that checks the set name (and the kid that kid_of finds, when
-- given) and hands the call on to the key managers unchanged.
local function checked_call(method, kid_of, kid_name, kid_required)
  return function(self, set, ...)
    local ok, err, code = check_names(set, kid_of and kid_of(...), kid_name, kid_required)
    if not ok then return nil, err, code end
    local keys = keys_of[self]
    return keys[method](keys, set, ...)
  end
end

-- The rest of what sign and sign_jwt take: typ a string (false: none), alg
-- one jwkengine signs with. An alg it does not know is ERR_UNSUPPORTED_ALG,
-- as generate says it, rather than a raise from the C signer.
local function check_sign_options(options)
  if type(options) ~= "table" then return true end
  local alg, typ = options.alg, options.typ
  if typ ~= nil and typ ~= false and type(typ) ~= "string" then
    error("options.typ must be a string, got " .. type(typ), 3)
  end
  if alg ~= nil then
    if type(alg) ~= "string" then error("options.alg must be a string, got " .. type(alg), 3) end
    if not core.alg_info(alg) then
      return util.fail(E.ERR_UNSUPPORTED_ALG, "cannot sign with algorithm '%s'", jwk.shown(alg))
    end
  end
  return true
end

-- Every slot of a PKCS#11 module, with its token's label, serial and flags.
function M.slots(library)
  return core.slots(library)
end

-- The configuration open would use, checked as open checks it but without
-- loading the PKCS#11 module or touching a store: a host that checks before
-- it starts (nginx's master) calls this. Returns cfg, policies (the
-- rotation policies of jwkengine.lifecycle.policy) or nil, err, code.
function M.check_config(options)
  local cfg, err, code = config.load(options)
  if not cfg then return nil, err, code end
  local usable
  usable, err, code = config.check_stores(cfg, options)
  if not usable then return nil, err, code end
  local policies
  policies, err, code = lifecycle_policy.policies(cfg)
  if not policies then return nil, err, code end
  return cfg, policies
end

-- Opens the key stores the configuration names: the HSM (logged in) when
-- enabled, the AES-GCM software store when secrets are set (its DSN, or a
-- driver handed in as options.store_driver), with Hydra's fallback rules
-- between them; then generates the startup sets that are missing. Returns
-- the engine, or nil, err, code; when the HSM cannot be reached (its module
-- answers CKR_DEVICE_ERROR and the like, reports no slot, or no slot holds
-- a token) the code is ERR_HSM_UNAVAILABLE and a 4th value gives the
-- seconds until the next attempt is due (a backoff across opens, as an
-- open engine's during an outage).
--   options: see jwkengine.config.load, plus
--     logger        function(level, message), or false for silence
--     select_slot   function(slots, hsm_config) -> slot: slot policy
--     startup       false to skip generation on startup
--     store_driver  a SQL driver (see jwkengine.store.luasql) instead of the DSN
--     now           function() -> seconds: the clock of the key caches
--                   (hsm.negative_cache_ttl, store.cache_ttl) and of the key
--                   lifecycle (which key signs); os.time
--     metrics       the jwkengine.metrics recorder to count in (a new one;
--                   nginx's worker threads give a metrics.last_call())
function M.open(options)
  options = options or {}
  if options.now ~= nil and type(options.now) ~= "function" then
    error("options.now must be a function returning seconds", 2)
  end
  if options.metrics ~= nil and type(options.metrics) ~= "table" then
    error("options.metrics must be a jwkengine.metrics recorder", 2)
  end
  local cfg, policies_or_err, code = M.check_config(options)
  if not cfg then return nil, policies_or_err, code end
  local policies, err = policies_or_err, nil
  local logger = log.new(options.logger)

  local hsm_keys, software_keys
  local engine -- the engine below, for a token of the group reached after open
  if cfg.hsm.enabled then
    -- an unreachable HSM: ERR_HSM_UNAVAILABLE and, 4th, the seconds until
    -- the next attempt is due (jwkengine.hsm's backoff of opens); with
    -- several tokens, only when none opens
    local retry_in
    -- the lifecycle governs each token's keys; their records live on that token
    local function govern(manager)
      return lifecycle.govern(manager, lifecycle.new(manager:key_state_backend(), policies, options.now, logger))
    end
    local hsm_options = { select_slot = options.select_slot, logger = logger, now = options.now }
    if cfg.hsm.tokens then
      -- loaded only here: an engine of one token carries none of it
      local hsm_group = require("jwkengine.hsm_group")
      hsm_options.negative_ttl = cfg.hsm.negative_cache_ttl
      hsm_options.retain = policies.default.retain or policies.limits.max_lifetime + policies.limits.clock_tolerance
      hsm_options.govern = govern
      -- a returning token's keys are published again (every process reads
      -- the token within refresh, clients refetch within max_age) before
      -- it signs: the prepublish minimum, plus the spread of processes
      -- seeing it back (the slowest module backoff, one probe interval)
      local backoff_ms = 0
      for _, token in ipairs(cfg.hsm.tokens) do backoff_ms = math.max(backoff_ms, token.reinit_interval_max_ms or 0) end
      hsm_options.publish_window = lifecycle_policy.minimums(policies.limits).prepublish + math.ceil(backoff_ms / 1000) +
        hsm_group.PROBE_INTERVAL
      hsm_options.reached = function(member)
        -- whatever options.startup said: a host that generates after open
        -- (nginx's workers, under their lock) has done so for the tokens
        -- open reached; the startup lock on the token keeps it once
        if not engine then return end
        local ok, serr, scode = engine:ensure_startup_sets(nil, { token = member.index })
        if not ok then
          logger("error", string.format("HSM token %d: startup key sets: %s (%s)", member.index, tostring(serr),
            tostring(scode)))
        end
      end
      hsm_keys, err, code, retry_in = hsm_group.open(cfg.hsm, hsm_options)
    else
      hsm_keys, err, code, retry_in = hsm.open(cfg.hsm, hsm_options)
      if hsm_keys then govern(hsm_keys) end
    end
    if not hsm_keys then return nil, err, code, retry_in end
    logger("info", "Hardware Security Module is configured.")
  end
  -- the token keeps the PIN in locked memory; no copy stays in the config,
  -- whether the HSM is enabled or not
  for _, token in ipairs(cfg.hsm.tokens or {}) do
    token.pin = nil
    if token.uri then token.uri = require("jwkengine.pkcs11_uri").redact(token.uri) end
  end
  cfg.hsm.pin = nil
  if cfg.hsm.uri then cfg.hsm.uri = require("jwkengine.pkcs11_uri").redact(cfg.hsm.uri) end
  if #cfg.secrets.system > 0 then
    local key_store
    key_store, err, code = store.open(options.store_driver or cfg.dsn, { network_id = cfg.store.network_id })
    if not key_store then
      if hsm_keys then hsm_keys:close() end
      return nil, err, code
    end
    software_keys = software.new(key_store, cfg.secrets.system, { cache_ttl = cfg.store.cache_ttl,
      now = options.now, logger = logger })
    lifecycle.govern(software_keys, lifecycle.new(sql_backend.new(key_store), policies, options.now, logger))
    cfg.secrets = nil -- the software manager holds them; engine.config does not
  end

  engine = setmetatable({ config = cfg, log = logger, policies = policies,
    json_cache = setmetatable({}, { __mode = "k" }), metrics_recorder = options.metrics or metrics.new() }, Engine)
  if cfg.hsm.tokens and hsm_keys then group_of[engine] = hsm_keys end
  keys_of[engine] = fallback.new(hsm_keys, software_keys, { negative_ttl = cfg.hsm.negative_cache_ttl,
    now = options.now, metrics = engine.metrics_recorder })
  if options.startup ~= false then
    local ok
    ok, err, code = engine:ensure_startup_sets()
    if not ok then
      engine:close()
      return nil, err, code
    end
  end
  return engine
end

-- The public JWK Set of a set, as a table { keys = { ... } }.
Engine.key_set = checked_call("key_set")

-- What a JWK Set endpoint serves for a set, as of now: { keys = public
-- JWKs, states = kid -> state (next, current, previous) of each published
-- key in the lifecycle, next_change = seconds when this answer changes
-- without a write (a promotion or retirement falls due), nil when nothing
-- is scheduled }. A cache of the set must not outlive next_change.
function Engine:publication(set)
  local ok, err, code = check_names(set)
  if not ok then return nil, err, code end
  return keys_of[self]:publication(set)
end

-- The same, as JSON; serialized once per loaded set.
function Engine:key_set_json(set)
  local jwks, err, code = self:key_set(set)
  if not jwks then return nil, err, code end
  local json = self.json_cache[jwks]
  if not json then
    json = jwk.encode(jwks)
    self.json_cache[jwks] = json
  end
  return json
end

-- Forgets what the engine cached of a set (keys, JWK Set, the HSM's "not
-- found"), so the next use reads it again: for keys added or removed by
-- another process (pkcs11-tool, another instance sharing the store).
function Engine:refresh(set)
  local ok, err, code = check_names(set)
  if not ok then return nil, err, code end
  keys_of[self]:forget(set)
  return true
end

-- Reads a set again now, from the HSM or the software store (whichever
-- holds it), and returns its public JWK Set. Unlike refresh, an error keeps
-- the cached set, so signing goes on with it.
Engine.reload = checked_call("reload")

-- Generates the startup sets that are missing (by default the configured
-- ones, engine:configuration().startup_sets): { { set =, alg = }, ... }, once across
-- the processes generating into the same token or store (jwkengine.startup's
-- lock file). open does
-- this unless options.startup is false; so does `keys maintain`. Returns
-- true, the names of the sets it generated.
function Engine:ensure_startup_sets(sets, options)
  sets = sets or self.config.startup_sets
  if type(sets) ~= "table" then error("sets must be a list of { set =, alg = }", 2) end
  for i, entry in ipairs(sets) do
    if type(entry) ~= "table" then error("sets[" .. i .. "] must be a table { set =, alg = }", 2) end
    local ok, err, code = check_names(entry.set)
    if not ok then return nil, err, code end
  end
  local engine = self
  local function created(token)
    return function(set)
      -- recorded at creation: the first reader never guesses
      local ok, err, code = lifecycle_each(engine, token, function(context)
        return lifecycle_writes.record_created(context, set)
      end)
      if not ok and code ~= E.ERR_KEY_STATES_UNSUPPORTED then -- that one is said once
        engine.log("warn", string.format("key set '%s': its first key is not recorded yet (%s: %s)", set,
          tostring(code), tostring(err)))
      end
    end
  end
  local group = group_of[self]
  if not group then
    return startup.ensure_sets(keys_of[self], sets, self.log, { identity = startup.identity(self.config),
      created = created(nil) })
  end
  -- several tokens: each its own first keys, under its own lock; a set
  -- the software store holds counts as present (Hydra's rule)
  local software = keys_of[self].software
  local targets, err, code = group:each(options and options.token)
  if not targets then return nil, err, code end
  local generated = {}
  for _, member in ipairs(targets) do
    local manager = member.manager
    local view = {
      key_set = function(_, set)
        local jwks, kerr, kcode = manager:key_set(set)
        if not jwks and kcode == E.ERR_KEY_SET_NOT_FOUND and software and software:key_set(set) then
          return software:key_set(set)
        end
        return jwks, kerr, kcode
      end,
      generate_if_missing = function(_, set, alg) return manager:generate_if_missing(set, alg) end,
    }
    local ok, made
    ok, made, code = startup.ensure_sets(view, sets, self.log, { identity = startup.identity({ hsm = member.config }),
      created = created(member.index) })
    if not ok then return nil, string.format("HSM token %d (%s): %s", member.index, member.label, tostring(made)), code end
    for _, set in ipairs(made) do generated[#generated + 1] = set end
  end
  return true, generated
end

-- The key object that signs for a set (by kid, or the set's default
-- signer): the same methods for HSM and software keys (kid, alg, use, kty,
-- bits, is_private, public_jwk, public_key, fits, sign), for jws.sign.
function Engine:signing_key(set, kid)
  local ok, err, code = check_names(set, kid, "kid")
  if not ok then return nil, err, code end
  local key
  key, err, code = keys_of[self]:signing_key(set, kid)
  if not key then return nil, err, code end
  return key.object
end

-- The HSM's session pool and recovery counters (added up over the tokens
-- of hsm.tokens), with hsm_tokens = { { index, label, library, state =
-- "up" | "down" | "unreached", signing, failovers }, ... } and
-- hsm_failovers (calls another token signed because the signing one could
-- not); ERR_CONFIG without an HSM.
function Engine:stats()
  local stats, err, code = keys_of[self]:stats()
  if not stats then return nil, err, code end
  local group = group_of[self]
  if group then
    stats.hsm_tokens, stats.hsm_failovers = group:tokens()
  else
    local slot = self:slot()
    local down = self:hsm_outage() ~= nil
    stats.hsm_tokens = { { index = 1, label = slot and slot.label or "", library = self.config.hsm.library,
      state = down and "down" or "up", signing = not down, failovers = 0 } }
    stats.hsm_failovers = 0
  end
  return stats
end

-- While the HSM is down (calls fail with ERR_HSM_UNAVAILABLE): { retry_in
-- = seconds until the engine next tries to come back, cause = the failure
-- that started the outage }; nil otherwise, and without an HSM.
function Engine:hsm_outage()
  return keys_of[self]:hsm_outage()
end

-- Prometheus metrics of this engine as text (exposition format 0.0.4, see
-- jwkengine.metrics): signatures, failures, fallbacks, signing latency,
-- the HSM's recoveries and sessions, and the state of each published key
-- of options.sets (default: the startup sets and every set signed with).
function Engine:metrics(options)
  local sets = options and options.sets
  if sets ~= nil and type(sets) ~= "table" then error("options.sets must be a list of set names", 2) end
  if not sets then
    local seen = self.metrics_recorder:signed_sets({})
    for _, entry in ipairs(self.config.startup_sets) do seen[entry.set] = true end
    sets = util.sorted_keys(seen)
  end
  local stats = self.config.hsm.enabled and self:stats() or nil
  local values = self.metrics_recorder:counters(stats)
  return metrics.text(metrics.gauges(self, stats, sets, values))
end

-- A copy of the configuration the engine was opened with, as
-- jwkengine.check_config returns it: no PIN, no store secrets, a PKCS#11
-- URI masked. Changing the copy changes nothing.
local function copy_of(value)
  if type(value) ~= "table" then return value end
  local c = {}
  for k, v in pairs(value) do c[k] = copy_of(v) end
  return c
end
function Engine:configuration()
  return copy_of(self.config)
end

-- "ok" when the HSM's token (its label and serial: slot ids may move after
-- a re-initialization) is present in some slot of the engine's module,
-- "not used" without an HSM; else nil, why. Asks the module the engine
-- already holds (loading it again is no new C_Initialize).
function Engine:token_check()
  local hsm_config = self.config.hsm
  if not hsm_config.enabled then return "not used" end
  local group = group_of[self]
  if group then
    -- several tokens: the signing one (health says which are down)
    hsm_config = group.signer.config
  end
  local slot = self:slot()
  local module, err, code = core.load_module(hsm_config.library, hsm_config.init_args)
  if not module then return nil, string.format("token not present (%s)", tostring(code or err)) end
  local list
  list, err, code = module:slots()
  module:close()
  if not list then return nil, string.format("token not present (%s)", tostring(code or err)) end
  for _, s in ipairs(list) do
    if s.token_present and s.serial == slot.serial and s.label == slot.label then return "ok" end
  end
  return nil, "token not present"
end

-- Whether the engine can sign now (see jwkengine.health): the token is
-- present and a probe signature with each set's current key verifies
-- within options.budget seconds (default 1). options.sets: the sets to
-- probe (default: the startup sets). Each call signs once per set.
function Engine:health(options)
  options = options or {}
  local sets = options.sets or {}
  if not options.sets then
    for i, entry in ipairs(self.config.startup_sets) do sets[i] = entry.set end
  end
  if type(sets) ~= "table" then error("options.sets must be a list of set names", 2) end
  local budget = options.budget or 1
  if type(budget) ~= "number" or budget <= 0 then error("options.budget must be a positive number of seconds", 2) end
  return health.check(self, sets, budget)
end

-- The slot of the HSM's token ({ id, label, serial, ... }), or nil when the
-- HSM is not enabled.
function Engine:slot()
  return keys_of[self]:slot()
end

-- One public JWK.
Engine.key = checked_call("key", kid_argument, "kid", true)

-- Generates a key pair; options: kid, use ("sig" | "enc"), rsa_bits, and
-- thumbprint_kid (true, or "SHA-256" / "SHA-384" / "SHA-512"): the new
-- key's kid is its RFC 7638 thumbprint. Returns the public JWK. The key is
-- recorded in the set's states at once (current in a set with no key that
-- may sign, else next), so no reader has to guess its state.
local generate = checked_call("generate", kid_in_options, "options.kid")
function Engine:generate(set, alg, options)
  local jwk_made, made, code = generate(self, set, alg, options)
  if not jwk_made then return nil, made, code end
  -- with several tokens, each made its own key (made: { { token, jwk } })
  for _, one in ipairs(type(made) == "table" and made or { { jwk = jwk_made } }) do
    local ok, err
    ok, err, code = lifecycle_each(self, one.token, function(context)
      return lifecycle_writes.record_created(context, set, one.jwk.kid)
    end)
    if not ok and code ~= E.ERR_KEY_STATES_UNSUPPORTED then -- that one is said once
      self.log("warn", string.format("key set '%s': the new key '%s' is not recorded yet (%s: %s); the next "
        .. "reader records it as next", set, tostring(one.jwk.kid), tostring(code), tostring(err)))
    end
  end
  return jwk_made, type(made) == "table" and made or nil
end

-- Adds a key to the software store (never the HSM): a JWK (table or JSON)
-- or a PEM block. options: kid, alg, use. Returns the public JWK.
Engine.import = checked_call("import", kid_in_options, "options.kid")

-- Replaces an existing software key with the same kid.
Engine.update = checked_call("update", kid_in_options, "options.kid")

-- Makes a self-signed X.509 certificate for a key, signed by the key itself
-- (on the token for an HSM key), and stores it with the key, so its public
-- JWK carries x5c and x5t#S256. options.subject: "CN=..., O=..." (required);
-- options.days: validity (default 365). Returns the public JWK.
local certify = checked_call("certify", kid_argument, "kid", true)
function Engine:certify(set, kid, options)
  if type(options) ~= "table" or type(options.subject) ~= "string" then
    error("options.subject must be a string (\"CN=...\")", 2)
  end
  local days = options.days or 365
  if type(days) ~= "number" or days % 1 ~= 0 then error("options.days must be a whole number", 2) end
  return certify(self, set, kid, { subject = options.subject, days = days })
end

-- Re-seals every software key with the first secret, in one transaction.
function Engine:rotate_secrets()
  return keys_of[self]:rotate_secrets()
end

-- Deletes one key (kid given) or the whole set. A key the lifecycle still
-- needs (the current key, a previous key inside retain, a next key) is
-- refused with ERR_KEY_STATE unless options.force.
local delete = checked_call("delete", kid_argument, "kid")
function Engine:delete(set, kid, options)
  if options ~= nil and type(options) ~= "table" then error("options must be a table { force = true }", 2) end
  local token = token_option(options)
  if kid ~= nil and not (options and options.force) and check_names(set, kid, "kid") then
    local ok, err, code = lifecycle_each(self, token, function(context)
      return lifecycle_writes.check_delete(context, set, kid)
    end)
    if not ok and code ~= E.ERR_KEY_SET_NOT_FOUND and code ~= E.ERR_KEY_NOT_FOUND then return nil, err, code end
  end
  if token ~= nil and group_of[self] then
    local ok, err, code = check_names(set, kid, "kid")
    if not ok then return nil, err, code end
    keys_of[self]:forget(set)
    return group_of[self]:delete(set, kid, token)
  end
  return delete(self, set, kid)
end

-- Signs payload bytes as a compact JWS; options: kid, typ, alg.
function Engine:sign(set, payload, options)
  if type(payload) ~= "string" then error("payload must be a string", 2) end
  local ok, err, code = check_names(set, option_kid(options), "options.kid")
  if ok then ok, err, code = check_sign_options(options) end
  if not ok then return nil, err, code end
  return keys_of[self]:sign(set, payload, options)
end

-- The common case of sign_jwt: the claims encoded in C and their
-- registered claims type-checked in the same pass (core.json_claims:
-- numbers exact, iat and exp written in when missing), without copying the
-- caller's table.
local function encode_claims_fast(claims, lifetime)
  local iat, exp
  if claims.iat == nil or (lifetime and claims.exp == nil) then
    local now = os.time()
    iat = now
    if lifetime then exp = now + math.floor(lifetime) end
  end
  local payload, err, code = core.json_claims(claims, iat, exp)
  if payload then return payload end
  if code == E.ERR_JWT_CLAIM_INVALID then return nil, err, code end
  return util.fail(code, "claims cannot be encoded: %s", err)
end

-- Signs a JWT: iat = now and exp = now + options.lifetime unless present
-- (lifetime defaults to jwt.DEFAULT_LIFETIME, or tokens.max_lifetime when
-- that is shorter, so that verify_jwt's defaults accept what the defaults
-- make; false: no exp); iss, sub, aud and jti from options.issuer, subject,
-- audience, jti (true: a random UUID) when absent; registered claims are
-- type-checked; typ defaults to "JWT". options.now (a number or function)
-- fixes the clock.
function Engine:sign_jwt(set, claims, options)
  if type(claims) ~= "table" then error("claims must be a table", 2) end
  -- the common call (no options but lifetime) in this frame: the same
  -- checks as below with five Lua calls fewer per token
  if options == nil or (type(options) == "table" and options.kid == nil and options.alg == nil
      and options.typ == nil and options.issuer == nil and options.subject == nil
      and options.audience == nil and options.jti == nil and options.now == nil) then
    local ok, err, code = names.check(set, "set", false, 3)
    if not ok then return nil, err, code end
    local lifetime = options and options.lifetime
    if lifetime == nil then
      local max = self.policies.limits.max_lifetime
      lifetime = jwt.DEFAULT_LIFETIME
      if max < lifetime then lifetime = max end
    elseif lifetime ~= false and (type(lifetime) ~= "number" or lifetime <= 0) then
      jwt.lifetime(lifetime, nil, 2) -- raises its own message
    end
    local payload
    payload, err, code = encode_claims_fast(claims, lifetime)
    if not payload then return nil, err, code end
    return keys_of[self]:sign(set, payload, DEFAULT_JWT_OPTIONS)
  end
  local ok, err, code = check_names(set, option_kid(options), "options.kid")
  if ok then ok, err, code = check_sign_options(options) end
  if not ok then return nil, err, code end
  local default_lifetime = math.min(jwt.DEFAULT_LIFETIME, self.policies.limits.max_lifetime)
  local payload
  if options == nil or (options.issuer == nil and options.subject == nil and options.audience == nil
      and options.jti == nil and options.now == nil) then
    payload, err, code = encode_claims_fast(claims, jwt.lifetime(options and options.lifetime, default_lifetime, 2))
  else
    payload, err, code = jwt.encode_claims(claims, options, default_lifetime)
  end
  if not payload then return nil, err, code end
  if options == nil or (options.kid == nil and options.alg == nil and options.typ == nil) then
    return keys_of[self]:sign(set, payload, DEFAULT_JWT_OPTIONS)
  end
  return keys_of[self]:sign(set, payload, { kid = options.kid, alg = options.alg, typ = options.typ or "JWT" })
end

-- The keys that verify a set's tokens (verify and verify_jwt).
local function verification_keys(engine, set)
  local ok, err, code = check_names(set)
  if not ok then return nil, err, code end
  return keys_of[engine]:verification_keys(set)
end

-- Verifies a JWT against a set's keys, with the claim checks of
-- jwkengine.jwt.verify (exp is required; issuer, audience, subject, typ,
-- max_age, clock_tolerance, required_claims, now). options.algorithms
-- defaults to the algorithms of the set's own keys. Returns claims, header.
function Engine:verify_jwt(set, token, options)
  local candidates, err, code = verification_keys(self, set)
  if not candidates then return nil, err, code end
  local o = {}
  for k, v in pairs(options or {}) do o[k] = v end
  o.algorithms = o.algorithms or candidates.algorithms
  local claims, header, third = jwt.verify(token, candidates, o)
  if not claims then return nil, header, third end
  return claims, header
end

-- The RFC 7638 thumbprint of one key of a set: SHA-256 unless hash is
-- "SHA-384" or "SHA-512".
function Engine:thumbprint(set, kid, hash)
  local key, err, code = self:key(set, kid)
  if not key then return nil, err, code end
  return jwk.thumbprint(key, hash)
end

-- Verifies a compact JWS against a set's keys. options.algorithms defaults
-- to the algorithms of the set's own keys. Returns payload, header.
function Engine:verify(set, token, options)
  local candidates, err, code = verification_keys(self, set)
  if not candidates then return nil, err, code end
  if options == nil or options.algorithms == nil then
    -- the set's own algorithms; the options table is built once per set
    local defaults = candidates.verify_options
    if not defaults then
      defaults = { algorithms = candidates.algorithms, min_rsa_bits = options and options.min_rsa_bits }
      if not (options and options.min_rsa_bits) then candidates.verify_options = defaults end
    end
    return jws.verify(token, candidates, defaults)
  end
  return jws.verify(token, candidates, { algorithms = options.algorithms, min_rsa_bits = options.min_rsa_bits })
end

-- maintain, rotate, retire, activate, key_states, key_policy,
-- repair_states: the key lifecycle's writes (see lifecycle_of).

-- With several HSM tokens each acts on every token (options.token: on
-- that one), and the changes and key states carry their token's index.

function Engine:maintain(options)
  return joined(lifecycle_each(self, token_option(options), function(context)
    return lifecycle_writes.maintain(context, options)
  end))
end
function Engine:key_states(set, options)
  return joined(lifecycle_each(self, token_option(options), function(context)
    return lifecycle_writes.key_states(context, set)
  end))
end
function Engine:rotate(set, options)
  return joined(lifecycle_each(self, token_option(options), function(context)
    return lifecycle_writes.rotate(context, set, options)
  end))
end
function Engine:retire(set, kid, options)
  return joined(lifecycle_each(self, token_option(options), function(context)
    return lifecycle_writes.retire(context, set, kid)
  end))
end
function Engine:activate(set, kid, options)
  return joined(lifecycle_each(self, token_option(options), function(context)
    return lifecycle_writes.activate(context, set, kid)
  end))
end

-- A set's rotation policy: { recorded, configured, effective } (see
-- jwkengine.lifecycle.writes.policy); with settings ({ period, prepublish,
-- retain, destroy_after }, false turning one off) records it first.
-- With several tokens: the first token's answer, and `tokens` = each
-- token's ({ token, recorded, configured, effective }).
function Engine:key_policy(set, settings, options)
  local ok, err, code = check_names(set)
  if not ok then return nil, err, code end
  if settings ~= nil and type(settings) ~= "table" then error("settings must be a table", 2) end
  local results
  results, err, code = lifecycle_each(self, token_option(options), function(context)
    return lifecycle_writes.policy(context, set, settings)
  end)
  if not results or not results[1] or results[1].token == nil then return results, err, code end
  local answer = { tokens = {} }
  for k, v in pairs(results[1].value) do answer[k] = v end
  for i, result in ipairs(results) do
    result.value.token = result.token
    answer.tokens[i] = result.value
  end
  return answer
end

-- Rewrites a set's key states on the operator's word, whatever they hold
-- (the repair of ERR_KEY_STATES_CORRUPT): options.current = the kid that
-- signs, options.retire = kids to unpublish. Returns the changes.
function Engine:repair_states(set, options)
  if type(options) ~= "table" then error("options must be a table { current = KID }", 2) end
  local ok, err, code = check_names(set, options.current, "options.current", true)
  if not ok then return nil, err, code end
  if options.retire ~= nil and type(options.retire) ~= "table" then error("options.retire must be a list of kids", 2) end
  return joined(lifecycle_each(self, options.token, function(context)
    return lifecycle_writes.repair(context, set, options)
  end))
end

-- What every call on a closed engine answers: a clear error rather than
-- "attempt to index a nil value".
local CLOSED_KEYS = setmetatable({}, { __index = function()
  return function() return util.fail(E.ERR_CLOSED, "the engine is closed") end
end })

function Engine:close()
  local keys = keys_of[self]
  if keys and keys ~= CLOSED_KEYS then keys:close() end
  keys_of[self] = CLOSED_KEYS
end

return M

-- Configuration: defaults < config file < environment < the table given to
-- jwkengine.open. The file is JSON or YAML with Hydra's `hsm:` block; the
-- environment variables are Hydra's (HSM_ENABLED, HSM_LIBRARY, ...).
local config_schema = require("jwkengine.config_schema")
local settings = require("jwkengine.config_settings")
local core = require("jwkengine.core")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

M.DEFAULT_STARTUP_SETS = {
  { set = "hydra.openid.id-token", alg = "RS256" },
  { set = "hydra.jwt.access-token", alg = "RS256" },
}

local LIMITS = core.limits()

-- Sections left as set in the loaded configuration: the rotation policy
-- applies their defaults (jwkengine.lifecycle.policy), and a host tells a
-- value set from a default (nginx refuses a publication that differs from
-- what it serves).
local LEFT_UNSET = { publication = true, tokens = true }

-- The defaults, from the schema (jwkengine.config_settings).
local function defaults()
  local cfg = { startup_sets = M.DEFAULT_STARTUP_SETS, secrets = {}, store = {}, publication = {}, tokens = {},
    hsm = {} }
  for _, setting in ipairs(settings.SETTINGS) do
    if setting.file ~= false and setting.default ~= nil and not LEFT_UNSET[setting.section] then
      local section = setting.section == "" and cfg or cfg[setting.section]
      section[setting.key] = settings.default(setting.name)
    end
  end
  return cfg
end

M.MIN_SECRET_LENGTH = LIMITS.min_secret_length

-- Options of jwkengine.open that steer opening rather than configure.
M.OPEN_OPTIONS = { config = true, environment = true, logger = true, select_slot = true,
  startup = true, store_driver = true, now = true, metrics = true }

-- The type each `hsm` key must have once parsed; anything else is a typo
-- or a mistake and is reported rather than ignored.
local hsm_schema = {}
-- The hsm keys that Hydra also reads from the environment: variable -> key.
local hsm_environment = {}
for key, setting in pairs(settings.section("hsm")) do
  hsm_schema[key] = setting.type
  if setting.env then hsm_environment[setting.env] = key end
end

-- The other variables load reads.
local CONFIG_VARIABLE = settings.BY_NAME.config.env
local DSN_VARIABLE = settings.BY_NAME.dsn.env
local SECRETS_VARIABLE = settings.BY_NAME["secrets.system"].env

-- Every environment variable load reads: a host that filters its
-- environment (nginx keeps only what `env` directives name) passes these.
M.ENVIRONMENT = { CONFIG_VARIABLE, DSN_VARIABLE, SECRETS_VARIABLE }
for _, name in ipairs(util.sorted_keys(hsm_environment)) do M.ENVIRONMENT[#M.ENVIRONMENT + 1] = name end

-- Below 2^53 every integer is exact in a double and has an integer form in
-- C: 1e999 (inf) or 1e300 would pass v == floor(v) and then raise there.
local function is_integer(v)
  return type(v) == "number" and v == math.floor(v) and v >= 0 and v < 2 ^ 53
end

-- Converts text (from the environment, or a YAML/JSON scalar) to the type
-- the schema wants; nil when it cannot.
local function coerce(kind, value)
  if kind == "boolean" then
    if type(value) == "boolean" then return value end
    local s = tostring(value):lower()
    if s == "true" or s == "1" then return true end
    if s == "false" or s == "0" or s == "" then return false end
    return nil
  elseif kind == "integer" then
    local n = tonumber(value)
    if n and is_integer(n) then return math.floor(n) end
    return nil
  else
    -- a number is not turned back into text: 01234 would come back as 668
    -- (see decode_file for how a YAML file keeps the text as written)
    if type(value) == "string" then return value end
    return nil
  end
end

local function describe(value)
  if type(value) == "string" then return string.format("%q", value) end
  return type(value)
end

-- The settings of one token (per_token in the schema): the keys of each
-- hsm.tokens entry.
local token_schema = {}
for key, setting in pairs(settings.section("hsm")) do
  if setting.per_token then token_schema[key] = setting.type end
end

local normalize_tokens, expand_tokens

-- Applies `source` (a table of hsm keys) over target (cfg.hsm, or one
-- token's entry), checking each against schema (hsm_schema, token_schema).
-- `origin` names where the values came from, for error messages; secret
-- values are never echoed back. prefix: how names are shown ("hsm.",
-- "hsm.tokens[2]."); given: records the per-token settings set on hsm itself.
local function apply_settings(target, source, origin, names, as_written, schema, prefix, given)
  for key, value in pairs(source) do
    local kind = schema[key]
    if kind == "string" and as_written then value = as_written[key] end
    local name = names and names[key] or (prefix .. tostring(key))
    if not kind then
      if schema == token_schema and hsm_schema[key] then
        return util.fail(E.ERR_CONFIG, "%s: %s is not a setting of one token: set hsm.%s, it applies to every token",
          origin, name, tostring(key))
      end
      return util.fail(E.ERR_CONFIG, "%s: unknown setting '%s' (known: %s)", origin, name,
        table.concat(util.sorted_keys(schema), ", "))
    end
    if kind == "tokens" then
      local list, err, code = normalize_tokens(value, as_written and as_written[key], origin)
      if not list then return nil, err, code end
      target.tokens = list
      goto continue
    end
    local parsed = coerce(kind, value)
    if parsed == nil then
      local shown = key == "pin" and type(value) == "string" and "a value" or describe(value)
      local wanted = kind == "integer" and "a non-negative integer"
        or kind == "boolean" and "true or false (or 1 or 0)"
        or kind == "string" and "a string: quote it" or ("a " .. kind)
      return util.fail(E.ERR_CONFIG, "%s: %s must be %s, got %s", origin, name, wanted, shown)
    end
    local setting = settings.section("hsm")[key]
    if setting.type == "integer" then
      -- the range, named as the value came (HSM_MAX_SESSIONS or hsm.max_sessions)
      local ok, range_err = settings.check({ name = name, type = "integer", min = setting.min, max = setting.max },
        parsed)
      if ok == nil then return util.fail(E.ERR_CONFIG, "%s: %s", origin, range_err) end
    end
    target[key] = parsed
    if given and token_schema[key] and value ~= "" then given[key] = name end
    ::continue::
  end
  return true
end

local function apply_hsm(cfg, source, origin, names, as_written)
  return apply_settings(cfg.hsm, source, origin, names, as_written, hsm_schema, "hsm.", cfg.given)
end

-- hsm.tokens as written: a non-empty list of mappings, each checked as a
-- token's settings (the values only; defaults and the checks between
-- settings come once every layer is applied, see expand_tokens).
function normalize_tokens(value, as_written, origin)
  local count = 0
  for _ in pairs(type(value) == "table" and value or {}) do count = count + 1 end
  if type(value) ~= "table" or #value == 0 or count ~= #value then
    return util.fail(E.ERR_CONFIG, "%s: hsm.tokens must be a non-empty list of token entries", origin)
  end
  local list = {}
  for i, entry in ipairs(value) do
    local prefix = string.format("hsm.tokens[%d].", i)
    if type(entry) ~= "table" then
      return util.fail(E.ERR_CONFIG, "%s: hsm.tokens[%d] must be a mapping of token settings", origin, i)
    end
    list[i] = {}
    local ok, err, code = apply_settings(list[i], entry, origin, nil, type(as_written) == "table"
      and type(as_written[i]) == "table" and as_written[i] or nil, token_schema, prefix)
    if not ok then return nil, err, code end
  end
  return list
end

-- Startup sets may be written as a list of {set=, alg=} or as a map
-- set -> alg; the result is a list in a stable order. value: names and
-- algs as written; parsed: the same list with YAML's numbers, where each
-- rotation policy's seconds come from.
local function normalize_startup_sets(value, origin, parsed)
  if type(value) ~= "table" then
    return util.fail(E.ERR_CONFIG, "%s: startup_sets must be a list or a map", origin)
  end
  local sets = {}
  if #value > 0 then
    for i, entry in ipairs(value) do
      if type(entry) ~= "table" or type(entry.set) ~= "string" then
        return util.fail(E.ERR_CONFIG, "%s: startup_sets[%d] needs a string 'set': quote it", origin, i)
      end
      local rotation = type(parsed) == "table" and type(parsed[i]) == "table" and parsed[i].rotation
      sets[#sets + 1] = { set = entry.set, alg = entry.alg or "RS256", rotation = rotation or entry.rotation }
    end
  else
    for _, set in ipairs(util.sorted_keys(value)) do
      sets[#sets + 1] = { set = set, alg = value[set] }
    end
  end
  for _, entry in ipairs(sets) do
    if type(entry.alg) ~= "string" then
      return util.fail(E.ERR_CONFIG, "%s: the algorithm of startup set '%s' must be a string",
        origin, entry.set)
    end
  end
  return sets
end

local function decode_file(path)
  local text, err = util.read_file(path)
  if not text then
    return util.fail(E.ERR_CONFIG, "cannot read config file: %s", err)
  end
  if path:match("%.json$") or text:match("^%s*{") then
    local cjson = require("cjson.safe")
    local data, perr = cjson.decode(text)
    if type(data) ~= "table" then
      return util.fail(E.ERR_CONFIG, "config file %s is not a JSON object: %s", path,
        perr or "not an object")
    end
    return data
  end
  local ok, lyaml = pcall(require, "lyaml")
  local implicit = ok and require("lyaml.implicit")
  if not ok then
    return util.fail(E.ERR_CONFIG, "config file %s is YAML, which needs lyaml (Debian: lua-yaml)", path)
  end
  local parsed_ok, data = pcall(lyaml.load, text)
  if not parsed_ok then
    return util.fail(E.ERR_CONFIG, "config file %s is not valid YAML: %s", path, tostring(data))
  end
  if data == nil then data = {} end
  if type(data) ~= "table" then
    return util.fail(E.ERR_CONFIG, "config file %s must hold a mapping at the top", path)
  end
  -- YAML makes numbers of unquoted text that looks like one (pin: 01234 is
  -- the octal 668, 0000 is 0, a 20-digit PIN loses digits) and booleans of
  -- yes/no. String settings are read from a second view of the same file
  -- in which every scalar but null stays the text written.
  local as_written = lyaml.load(text, { implicit_scalar = function(scalar)
    local null = implicit.null(scalar)
    if null ~= nil then return null end
    return scalar
  end })
  return data, as_written
end

-- Checks a value of a store, publication or tokens setting against its
-- type in the schema (a seconds setting: a non-negative number).
local function check_value(setting, value, origin)
  local ok, err = settings.check(setting, value)
  if ok == nil then return util.fail(E.ERR_CONFIG, "%s: %s", origin, err) end
  return true
end

-- Hydra config files carry much more than `hsm:`; jwkengine reads its own
-- sections and leaves the rest alone. as_written: the same document with
-- scalars as the text written (YAML; see decode_file), the source of every
-- string setting.
local function apply_document(cfg, doc, origin, as_written)
  as_written = as_written or doc
  if doc.hsm ~= nil then
    if type(doc.hsm) ~= "table" then
      return util.fail(E.ERR_CONFIG, "%s: hsm must be a mapping", origin)
    end
    local ok, err, code = apply_hsm(cfg, doc.hsm, origin, nil, as_written.hsm)
    if not ok then return nil, err, code end
  end
  if doc.startup_sets ~= nil then
    local sets, err, code = normalize_startup_sets(as_written.startup_sets, origin, doc.startup_sets)
    if not sets then return nil, err, code end
    cfg.startup_sets = sets
  end
  local dsn = as_written.dsn
  if dsn ~= nil then
    if type(dsn) ~= "string" then
      return util.fail(E.ERR_CONFIG, "%s: dsn must be a string: quote it", origin)
    end
    cfg.dsn = dsn
  end
  local secrets = as_written.secrets
  if secrets ~= nil then
    if type(secrets) ~= "table" or (secrets.system ~= nil and type(secrets.system) ~= "table") then
      return util.fail(E.ERR_CONFIG, "%s: secrets.system must be a list of strings", origin)
    end
    if secrets.system ~= nil then cfg.secrets.system = secrets.system end
  end
  for _, section in ipairs({ "store", "publication", "tokens" }) do
    if doc[section] ~= nil and type(doc[section]) ~= "table" then
      return util.fail(E.ERR_CONFIG, "%s: %s must be a mapping", origin, section)
    end
    for key, value in pairs(doc[section] or {}) do
      local ok, err, code = check_value(settings.section(section)[key], value, origin)
      if not ok then return nil, err, code end
      cfg[section][key] = value
    end
  end
  for key, value in pairs(doc) do
    if cfg[key] == nil then cfg[key] = value end
  end
  return true
end

-- Secrets seal the software store: the first one encrypts, every one is
-- tried to decrypt. Values are never echoed in errors.
local function check_secrets(secrets, origin)
  for i, secret in ipairs(secrets) do
    if type(secret) ~= "string" then
      return util.fail(E.ERR_CONFIG, "%s: secret #%d must be a string: quote it", origin, i)
    end
    if #secret < M.MIN_SECRET_LENGTH then
      return util.fail(E.ERR_CONFIG, "%s: secret #%d is shorter than %d characters", origin, i,
        M.MIN_SECRET_LENGTH)
    end
  end
  return true
end

-- An RFC 7512 PKCS#11 URI (hsm.uri, HSM_URI) is another way to name the
-- token, module and PIN. What it names must not also be set on its own: two
-- answers to "which token" would be a guess.
local URI_KEYS = { "token_label", "token_serial", "token_manufacturer", "token_model", "slot",
  "library", "pin", "pin_file" }

function M.apply_uri(hsm)
  if not hsm.uri or hsm.uri == "" then return true end
  local pkcs11_uri = require("jwkengine.pkcs11_uri")
  local parsed, err, code = pkcs11_uri.parse(hsm.uri, { pin_stays_encoded = true })
  if not parsed then return nil, err, code end
  local named
  named, err, code = pkcs11_uri.to_hsm_config(parsed)
  if not named then return nil, err, code end
  for _, key in ipairs(URI_KEYS) do
    if named[key] ~= nil then
      local explicit = hsm[key]
      if key == "pin" then explicit = explicit or hsm.pin_env end
      if explicit ~= nil then
        return util.fail(E.ERR_CONFIG, "hsm.uri and hsm.%s both set the %s: use one of them", key,
          key == "pin" and "PIN" or key:gsub("_", " "))
      end
      if key == "pin" then
        hsm.pin_in_uri = true -- the token reads it from the URI in C (token:login_uri)
      else
        hsm[key] = named[key]
      end
    end
  end
  return true
end

-- An empty PIN or PIN file name is a mistake (HSM_PIN= in a unit file), not
-- "no PIN": caught here, so a host that checks the configuration before
-- starting (nginx's master) refuses to start instead of retrying a login.
local function check_pin_settings(hsm)
  if not hsm.enabled then return true end
  if hsm.pin == "" then
    return util.fail(E.ERR_CONFIG, "HSM_PIN (hsm.pin) is set but empty")
  end
  if hsm.pin_file == "" then
    return util.fail(E.ERR_CONFIG, "HSM_PIN_FILE (hsm.pin_file) is set but empty")
  end
  return true
end

-- Why the PIN settings cannot be used, or nil: exactly one of hsm.pin,
-- HSM_PIN, HSM_PIN_FILE (hsm.pin_file) and the URI's pin-value is needed.
function M.pin_problem(hsm)
  local given = 0
  for _, key in ipairs({ "pin", "pin_env", "pin_file", "pin_in_uri" }) do
    if hsm[key] then given = given + 1 end
  end
  if given > 1 then
    return "set either HSM_PIN (hsm.pin) or HSM_PIN_FILE (hsm.pin_file), not both"
  elseif given == 0 then
    return "the HSM is enabled but neither HSM_PIN nor HSM_PIN_FILE is set"
  end
end

-- Whether an enabled HSM's settings can open: what can be told without
-- loading the PKCS#11 module.
function M.check_hsm(hsm)
  if not hsm.library or hsm.library == "" then
    return util.fail(E.ERR_CONFIG, "the HSM is enabled but HSM_LIBRARY (hsm.library) is not set")
  end
  local file, err = io.open(hsm.library, "rb")
  if not file then
    local reason = err:sub(1, #hsm.library + 2) == hsm.library .. ": " and err:sub(#hsm.library + 3) or err
    return util.fail(E.ERR_CONFIG, "PKCS#11 module '%s' cannot be read: %s", hsm.library, reason)
  end
  file:close()
  local pin_problem = M.pin_problem(hsm)
  if pin_problem then return util.fail(E.ERR_CONFIG, "%s", pin_problem) end
  return true
end

-- Whether a loaded configuration names key stores jwkengine.open can open,
-- checked before anything is loaded or connected: jwkengine.open runs it,
-- and so does a host that checks before it starts (nginx's master).
--   options.store_driver: a SQL driver given instead of the DSN
function M.check_stores(cfg, options)
  if cfg.hsm.enabled then
    for i, token in ipairs(cfg.hsm.tokens or { cfg.hsm }) do
      local ok, err, code = M.check_hsm(token)
      if not ok then return nil, cfg.hsm.tokens and string.format("hsm.tokens[%d]: %s", i, err) or err, code end
    end
  end
  local software = #cfg.secrets.system > 0
  local driver = options and options.store_driver
  if not software and (cfg.dsn or driver) then
    return util.fail(E.ERR_CONFIG, "%s but SECRETS_SYSTEM (secrets.system) is not set",
      driver and "a store_driver is given" or "a DSN is configured")
  end
  if not cfg.hsm.enabled and not software then
    return util.fail(E.ERR_CONFIG,
      "no key store is enabled: set HSM_ENABLED=true for the HSM and/or SECRETS_SYSTEM for the software store")
  end
  return true
end

local function split_secrets(text)
  local secrets = {}
  for secret in (text .. ","):gmatch("([^,]*),") do
    if secret ~= "" then secrets[#secrets + 1] = secret end
  end
  return secrets
end

-- The one check between two settings: after every layer, as each may set either.
local function check_at_least(hsm, prefix)
  for key, setting in pairs(settings.section("hsm")) do
    if setting.at_least and hsm[key] < hsm[setting.at_least] then
      return util.fail(E.ERR_CONFIG, "%s%s (%d) must be at least %s%s (%d)", prefix, key, hsm[key],
        prefix, setting.at_least, hsm[setting.at_least])
    end
  end
  return true
end

-- With hsm.tokens, each entry becomes a whole token configuration, as
-- hsm.open takes it: its own settings over their defaults, and the
-- settings of every token (key_set_prefix, min_rsa_bits, ...) from hsm.
-- A per-token setting on hsm itself as well would leave "which token" to
-- a guess: refused, naming both.
function expand_tokens(hsm, given)
  local first = util.sorted_keys(given)[1]
  if first then
    return util.fail(E.ERR_CONFIG, "%s and hsm.tokens both configure a token: set %s in each hsm.tokens entry "
      .. "instead (or drop hsm.tokens for a single token)", given[first], first)
  end
  for i, entry in ipairs(hsm.tokens) do
    local token = {}
    for key, setting in pairs(settings.section("hsm")) do
      if setting.per_token then
        if entry[key] ~= nil then token[key] = entry[key] else token[key] = settings.default(setting.name) end
      elseif key ~= "tokens" then
        token[key] = hsm[key]
      end
    end
    local prefix = string.format("hsm.tokens[%d].", i)
    local ok, err, code = M.apply_uri(token)
    if ok then ok, err, code = check_pin_settings(token) end
    if not ok then return nil, string.format("hsm.tokens[%d]: %s", i, err), code end
    ok, err, code = check_at_least(token, prefix)
    if not ok then return nil, err, code end
    token.index = i
    hsm.tokens[i] = token
  end
  return true
end

-- Loads the configuration.
--   options.config       path of the config file (else JWKENGINE_CONFIG)
--   options.environment  a table standing in for os.getenv (tests)
--   options.hsm, options.startup_sets, ...: applied last
function M.load(options)
  options = options or {}
  local getenv = os.getenv
  if options.environment then
    local env = options.environment
    getenv = function(name) return env[name] end
  end
  local known, kerr, kcode = config_schema.check_options(options, hsm_schema, M.OPEN_OPTIONS)
  if not known then return nil, kerr, kcode end
  local cfg = defaults()
  cfg.given = {} -- per-token settings set on hsm itself (apply_settings), until expand_tokens

  local path = options.config or getenv(CONFIG_VARIABLE)
  if path and path ~= "" then
    local doc, as_written_or_err, code = decode_file(path)
    if not doc then return nil, as_written_or_err, code end
    local known, kerr, kcode = config_schema.check_file(doc, "config file " .. path, hsm_schema)
    if not known then return nil, kerr, kcode end
    local ok, aerr, acode = apply_document(cfg, doc, "config file " .. path, as_written_or_err)
    if not ok then return nil, aerr, acode end
  end

  local from_env, names = {}, {}
  for variable, key in pairs(hsm_environment) do
    -- the process's own HSM_PIN is never read into Lua: the token takes it
    -- in C, into locked memory, and erases it (token:login_env)
    local value = (key ~= "pin" or options.environment) and getenv(variable) or nil
    if value ~= nil then
      from_env[key] = value
      names[key] = variable
    end
  end
  local ok, err, code = apply_hsm(cfg, from_env, "environment", names)
  if not ok then return nil, err, code end
  if not options.environment then
    local set, empty = core.env_is_set("HSM_PIN")
    if set then
      cfg.hsm.pin = nil -- the environment overrides the file
      cfg.hsm.pin_env = "HSM_PIN"
      cfg.given.pin = "HSM_PIN"
    elseif empty then
      cfg.hsm.pin = "" -- HSM_PIN= is a mistake check_pin_settings names
    end
  end
  local dsn = getenv(DSN_VARIABLE)
  if dsn and dsn ~= "" then cfg.dsn = dsn end
  local secrets_origin = "secrets.system"
  local secrets_text = getenv(SECRETS_VARIABLE)
  if secrets_text and secrets_text ~= "" then
    cfg.secrets.system = split_secrets(secrets_text)
    secrets_origin = SECRETS_VARIABLE
  end

  local overrides = {}
  for key, value in pairs(options) do
    if not M.OPEN_OPTIONS[key] then overrides[key] = value end
  end
  ok, err, code = apply_document(cfg, overrides, "options")
  if not ok then return nil, err, code end
  if type(overrides.hsm) == "table" and overrides.hsm.pin ~= nil then cfg.hsm.pin_env = nil end
  ok, err, code = check_secrets(cfg.secrets.system, overrides.secrets and "options" or secrets_origin)
  if not ok then return nil, err, code end
  ok, err, code = M.apply_uri(cfg.hsm)
  if not ok then return nil, err, code end
  ok, err, code = check_pin_settings(cfg.hsm)
  if not ok then return nil, err, code end
  ok, err, code = check_at_least(cfg.hsm, "hsm.")
  if not ok then return nil, err, code end
  local given = cfg.given
  cfg.given = nil
  if cfg.hsm.tokens then
    ok, err, code = expand_tokens(cfg.hsm, given)
    if not ok then return nil, err, code end
  end
  return cfg
end

return M

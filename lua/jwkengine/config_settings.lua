-- Every configuration setting, once: its type, default, environment
-- variable, range and one line of documentation. config.lua's defaults,
-- types, environment names and range checks, the rotation policy's limits,
-- nginx's publication defaults, the token options the binding takes and the
-- README's configuration table (scripts/readme-config.lua) all come from
-- this list; nothing after config.load checks again what it checks.
--
-- name     as the config file writes it ("hsm.max_sessions", "dsn")
-- type     boolean | string | integer (a whole number, 0 to 2^53 - 1) |
--          seconds (a non-negative number) | list (of strings) | sets
-- default  the value when nothing sets it (nil: unset)
-- env      the environment variable (Hydra's name), if any
-- min/max  the range of an integer, beside its type's own
-- positive a seconds setting that must be above 0
-- token    passed by this name to module:open_token (core/lua/lua_module.c)
-- per_token  a setting of one token: also a key of each `hsm.tokens` entry
--          (the others of `hsm` apply to every token)
-- file     false: not a key of the config file (an option of jwkengine.open)
-- shown    how the README shows the default when it is not a plain value
-- doc      one line for the README
local core = require("jwkengine.core")

local LIMITS = core.limits()

local M = {}

M.SETTINGS = {
  { name = "hsm.enabled", type = "boolean", default = false, env = "HSM_ENABLED",
    doc = "use the HSM: `true`/`false` or `1`/`0`, in any case (`TRUE`); `yes`/`no` are refused; empty is `false`" },
  { name = "hsm.library", per_token = true, type = "string", env = "HSM_LIBRARY", doc = "path of the vendor's PKCS#11 module" },
  { name = "hsm.token_label", per_token = true, type = "string", env = "HSM_TOKEN_LABEL",
    doc = "token label; wins over the slot; the first slot holding it is used" },
  { name = "hsm.slot", per_token = true, type = "integer", env = "HSM_SLOT", shown = "unset = `0`",
    doc = "`CK_SLOT_ID` (as `pkcs11-tool --slot`) when no label is set" },
  { name = "hsm.pin", per_token = true, type = "string", env = "HSM_PIN",
    doc = "user PIN (never logged, never in an error); set but empty is a configuration error" },
  { name = "hsm.pin_file", per_token = true, type = "string", env = "HSM_PIN_FILE",
    doc = "a file holding the PIN (its content, trailing newlines dropped, at most 255 bytes); read in C into "
      .. "locked memory, never through Lua; not together with `HSM_PIN`" },
  { name = "hsm.uri", per_token = true, type = "string", env = "HSM_URI",
    doc = "an RFC 7512 PKCS#11 URI naming token, module and PIN (see below)" },
  { name = "hsm.init_args", per_token = true, type = "string", env = "HSM_INIT_ARGS",
    doc = "passed to the module's `C_Initialize` as `CK_C_INITIALIZE_ARGS.pReserved`, for modules that need it "
      .. "(NSS softokn: `configdir='sql:/path' certPrefix='' keyPrefix='' secmod='secmod.db' flags=`)" },
  { name = "hsm.token_serial", per_token = true, type = "string", env = "HSM_TOKEN_SERIAL",
    doc = "the token's serial number; with a label, both must match" },
  { name = "hsm.token_manufacturer", per_token = true, type = "string", doc = "the token's manufacturer ID; must match when set" },
  { name = "hsm.token_model", per_token = true, type = "string", doc = "the token's model; must match when set" },
  { name = "hsm.max_sessions", per_token = true, type = "integer", default = LIMITS.max_sessions, env = "HSM_MAX_SESSIONS",
    min = 0, max = LIMITS.pool_limit, token = true,
    doc = "bound of the session pool, per process (the login session is extra); lowered at open to what the "
      .. "token reports free (see \"Session budgets\"); `0` = no pool: every operation runs on the login "
      .. "session, one at a time" },
  { name = "hsm.session_idle_max", per_token = true, type = "integer", default = LIMITS.session_idle_max,
    env = "HSM_SESSION_IDLE_MAX", min = 0, max = 86400, token = true, -- a day fits C's int in ms
    doc = "seconds a pooled session may idle before it is checked with `C_GetSessionInfo` (and replaced if "
      .. "the token closed it); `0` = never checked" },
  { name = "hsm.verify_after_sign", per_token = true, type = "boolean", env = "HSM_VERIFY_AFTER_SIGN", token = true,
    shown = "unset = RSA only",
    doc = "check each token-made signature against the key's public half on the host before it is used: "
      .. "`true` = every algorithm, `false` = none" },
  { name = "hsm.session_wait_ms", per_token = true, type = "integer", default = LIMITS.session_wait_ms, min = 1,
    max = 2 ^ 31 - 1, token = true,
    doc = "how long a signer waits for a free session before a clear error" },
  { name = "hsm.reinit_interval_ms", per_token = true, type = "integer", default = LIMITS.reinit_interval_ms, min = 1,
    max = 2 ^ 31 - 1, token = true,
    doc = "minimum time between two full re-initializations after device errors; the first wait of the "
      .. "backoff during an outage (\"Using a real HSM\")" },
  { name = "hsm.reinit_interval_max_ms", per_token = true, type = "integer", default = LIMITS.reinit_interval_max_ms,
    min = 1, max = 2 ^ 31 - 1, at_least = "reinit_interval_ms", token = true,
    doc = "the longest wait between two attempts to come back from an outage" },
  { name = "hsm.tokens", type = "tokens", shown = "unset = one token, from the settings above",
    doc = "several tokens holding the same sets (see \"Several HSMs\"): a list of entries, each taking the "
      .. "settings marked *per token*; the first is the primary; not together with those settings on `hsm` itself" },
  { name = "hsm.failback_after", type = "integer", default = 30, min = 0, max = 86400,
    doc = "with `hsm.tokens`: seconds the primary must answer before signing returns to it from another token (never sooner than the publication window: see Several HSMs)" },
  { name = "hsm.negative_cache_ttl", type = "integer", default = 30,
    doc = "seconds the HSM's \"set not found\" is remembered (the fallback asks the HSM first on every call)" },
  { name = "hsm.key_set_prefix", type = "string", default = "", env = "HSM_KEY_SET_PREFIX", shown = "empty",
    doc = "prepended to set names in `CKA_LABEL`" },
  { name = "hsm.min_rsa_bits", type = "integer", default = LIMITS.hsm_min_rsa_bits, env = "HSM_MIN_RSA_BITS",
    doc = "smallest RSA key accepted from the token (jwkengine's own)" },
  { name = "config", type = "string", env = "JWKENGINE_CONFIG", shown = "—", file = false,
    doc = "path of the config file (JSON or YAML); not a setting of the file itself" },
  { name = "secrets.system", type = "list", default = {}, env = "SECRETS_SYSTEM", shown = "none (store off)",
    doc = "secrets of the software store, comma-separated in the environment; the first seals, all are tried "
      .. "to open; each at least " .. LIMITS.min_secret_length .. " characters" },
  { name = "dsn", type = "string", env = "DSN", shown = "`sqlite://jwkengine.sqlite`",
    doc = "the software store's database" },
  { name = "store.cache_ttl", type = "seconds", default = 30,
    doc = "seconds a loaded software set is trusted before it is read again" },
  { name = "store.network_id", type = "string", shown = "the only network",
    doc = "on a Hydra 2.x table, the network (an id from Hydra's `networks` table) to use when that table "
      .. "holds several" },
  { name = "publication.max_age", type = "seconds", default = 300,
    doc = "seconds a client may cache the JWK Set (nginx's `jwks.max_age` defaults to it)" },
  { name = "publication.refresh", type = "seconds", default = 30,
    doc = "seconds between two reloads of the published set (nginx's `jwks.refresh` defaults to it)" },
  { name = "tokens.max_lifetime", type = "seconds", default = 3600,
    doc = "the longest lifetime of a token signed with these keys" },
  { name = "tokens.clock_tolerance", type = "seconds", default = 60,
    doc = "the clock skew verifiers allow" },
  { name = "startup_sets", type = "sets",
    shown = "`hydra.openid.id-token` and `hydra.jwt.access-token`, RS256",
    doc = "sets generated on startup when missing, with their algorithm (and a `rotation` table each)" },
}

-- A schema's indexes: name -> setting, and section -> { key -> setting }
-- ("" for the top level); each setting gets its section and key. For this
-- list and for others in its form (jwkengine.nginx.options).
function M.index(list)
  local by_name, sections = {}, {}
  for _, setting in ipairs(list) do
    by_name[setting.name] = setting
    local section, key = setting.name:match("^(.-)%.?([^.]+)$")
    setting.section, setting.key = section, key
    sections[section] = sections[section] or {}
    sections[section][key] = setting
  end
  return by_name, sections
end
M.BY_NAME, M.SECTIONS = M.index(M.SETTINGS)

-- The settings of a section, or of the top level ("").
function M.section(name)
  return M.SECTIONS[name] or {}
end

M.INT_MAX = 2 ^ 31 - 1

-- What a value of a setting must be, in words (errors, README).
function M.wanted(setting)
  local kind = setting.type
  if kind == "seconds" then
    return setting.positive and "a positive number of seconds" or "a non-negative number of seconds"
  elseif kind == "integer" then
    return string.format("a whole number from %d to %s", setting.min or 0,
      setting.max == M.INT_MAX and "2^31 - 1" or string.format("%d", setting.max or 2 ^ 53 - 1))
  elseif kind == "string" then
    return "a non-empty string"
  elseif kind == "list" then
    return "a non-empty list of strings"
  end
  return "a " .. kind
end

-- The one check of a value against its setting's type and range, for the
-- engine's settings, the rotation policy's seconds and nginx's options:
-- the value, or nil and a message naming the setting and what it must be.
-- (The environment's text is converted to the type first: config.lua.)
function M.check(setting, value)
  local kind, ok = setting.type, true
  if kind == "seconds" then
    ok = type(value) == "number" and value == value and value ~= math.huge
      and (value > 0 or (value == 0 and not setting.positive))
  elseif kind == "integer" then
    ok = type(value) == "number" and value == math.floor(value) and value >= (setting.min or 0)
      and value <= (setting.max or 2 ^ 53 - 1)
  elseif kind == "string" then
    ok = type(value) == "string" and value ~= ""
  elseif kind == "list" then
    ok = type(value) == "table" and #value > 0
    for _, item in ipairs(ok and value or {}) do
      if type(item) ~= "string" or item == "" then ok = false end
    end
  end
  if ok then return value end
  return nil, string.format("%s must be %s, got %s", setting.name, M.wanted(setting),
    type(value) == "string" and string.format("%q", value) or type(value) == "number" and tostring(value)
    or type(value))
end

-- The default of a setting, by name (a fresh copy of a table).
function M.default(name)
  local value = assert(M.BY_NAME[name], name).default
  if type(value) == "table" then
    local copy = {}
    for i, v in ipairs(value) do copy[i] = v end
    return copy
  end
  return value
end

return M

-- init()'s options: checked in nginx's master, where a mistake stops nginx
-- from starting (and a reload keeps the old configuration; `nginx -t` does
-- not run init_by_lua, so it cannot see these errors). The configuration
-- itself is checked as jwkengine.open checks it (config.load and
-- config.check_stores), without loading the PKCS#11 module or logging in.
local config = require("jwkengine.config")
-- Loaded in the master, so the workers share the code pages; loading the C
-- module touches no PKCS#11 library (that happens in open()).
local jwkengine = require("jwkengine")
local engine_settings = require("jwkengine.config_settings")
local logging = require("jwkengine.nginx.logging")
local options_schema = require("jwkengine.nginx.options")
local secrets = require("jwkengine.nginx.secrets")
local threads = require("jwkengine.nginx.threads")
local util = require("jwkengine.util")
local worker = require("jwkengine.nginx.worker")

local M = {}

-- init()'s options that are nginx's own, by section (jwkengine.nginx.options,
-- the one schema); everything else goes to jwkengine.open.
local OWN_OPTIONS = {}
for section, keys in pairs(options_schema.SECTIONS) do
  if section == "" then
    for key in pairs(keys) do OWN_OPTIONS[key] = true end
  else
    OWN_OPTIONS[section] = true
  end
end

-- A section of init()'s options, checked against the schema, with the
-- schema's defaults filled in: { key -> value } or nil, message.
local function section_values(options, section)
  local given, known = options, options_schema.SECTIONS[section]
  if section ~= "" then
    given = options[section]
    if given == nil then given = {} end
    if type(given) ~= "table" then return nil, section .. " must be a table" end
    for key in pairs(given) do
      if not known[key] then
        return nil, string.format("unknown option %s.%s (known: %s)", section, tostring(key),
          table.concat(util.sorted_keys(known), ", "))
      end
    end
  end
  local values = {}
  for key, option in pairs(known) do
    local value = given[key]
    if value == nil then
      value = option.default
    else
      local err
      value, err = engine_settings.check(option, value)
      if value == nil then return nil, err end
    end
    values[key] = value
  end
  return values
end

-- Every section of init()'s options (section -> { key -> value }), or
-- nil, message.
local function option_values(options)
  local values = {}
  for section in pairs(options_schema.SECTIONS) do
    local err
    values[section], err = section_values(options, section)
    if not values[section] then return nil, err end
  end
  return values
end

-- The sets GET /.well-known/jwks.json publishes and the set POST /token
-- signs with (see jwkengine.nginx.init for the defaults); nil, message when
-- there is none to publish.
local function choose_sets(s, jwks, token, cfg)
  s.sets = {}
  for i, name in ipairs(jwks.sets or {}) do s.sets[i] = name end
  if not jwks.sets then
    for i, entry in ipairs(cfg.startup_sets) do s.sets[i] = entry.set end
  end
  if #s.sets == 0 then return nil, "no key set to publish: set jwks.sets (or startup_sets)" end
  s.token_set = token.set
  if not s.token_set then
    for _, name in ipairs(s.sets) do
      if name == "hydra.jwt.access-token" then s.token_set = name end
    end
    s.token_set = s.token_set or s.sets[1]
  end
  for _, name in ipairs(s.sets) do
    if name == s.token_set then s.token_set_published = true end
  end
  return true
end

-- The engine's rotation rules must hold for what nginx serves: its
-- publication settings are jwks.max_age and jwks.refresh. A configuration
-- (file or options) that names other values is refused by name.
local function publication_options(open_options, max_age, refresh)
  local cfg, err, code = config.load(open_options)
  if not cfg then return nil, string.format("configuration: %s (%s)", tostring(err), tostring(code)) end
  local served = { max_age = max_age, refresh = refresh }
  local publication = {}
  for name, value in pairs(cfg.publication) do publication[name] = value end
  for name, value in pairs(served) do
    if publication[name] ~= nil and publication[name] ~= value then
      return nil, string.format("publication.%s (%s) differs from jwks.%s (%s), which is what nginx serves: " ..
        "set jwks.%s only", name, tostring(publication[name]), name, tostring(value), name)
    end
    publication[name] = value
  end
  return publication
end

-- The checked settings of init(options), or nil, a message naming the
-- mistake (init raises it).
function M.load(options)
  if type(options) ~= "table" then return nil, "init(options): options must be a table" end
  local values, verr = option_values(options)
  if not values then return nil, verr end
  local top, jwks, token = values[""], values.jwks, values.token
  local open_options = {}
  for k, v in pairs(options) do
    if not OWN_OPTIONS[k] then open_options[k] = v end
  end
  if open_options.startup ~= nil and open_options.startup ~= false then
    return nil, "options.startup may only be false (skip generation on startup)"
  end
  if open_options.logger == nil then open_options.logger = logging.logger end

  secrets.forget_pin()
  local publication, perr = publication_options(open_options, jwks.max_age, jwks.refresh)
  if not publication then return nil, perr end
  open_options.publication = publication
  local cfg, policies, code = jwkengine.check_config(open_options)
  if not cfg then return nil, string.format("configuration: %s (%s)", tostring(policies), tostring(code)) end
  cfg.hsm.pin = nil -- the workers read it again; no copy stays here
  if token.lifetime > policies.limits.max_lifetime then
    return nil, string.format("token.lifetime (%d s) is longer than tokens.max_lifetime (%d s), which the key " ..
      "rotation's retain rule counts on: raise tokens.max_lifetime", token.lifetime, policies.limits.max_lifetime)
  end

  local kept_secrets
  open_options, kept_secrets = secrets.keep(open_options, cfg)
  if not open_options then return nil, kept_secrets end

  local queue = values.thread_queue
  local s = {
    options = values, -- section -> key -> value, as checked against the schema
    open_options = open_options,
    kept_secrets = kept_secrets,
    shared_dict = top.shared_dict,
    ready_timeout = top.ready_timeout,
    startup_lock_timeout = top.startup_lock_timeout,
    startup_sets = cfg.startup_sets,
    max_age = jwks.max_age,
    refresh = jwks.refresh,
    lifetime = token.lifetime,
    max_body = token.max_body,
    -- the key schedule (engine:maintain) runs in one worker when a set has
    -- a rotation policy
    scheduled = #policies.scheduled > 0,
    schedule_interval = top.schedule_interval or jwks.refresh,
    health_budget = values.health.budget,
    health_cache = values.health.cache,
    metrics_flush_interval = values.metrics.flush_interval,
    -- by default as many signatures in flight as the engine has sessions,
    -- so the thread VMs' engines (one session each) stay within
    -- hsm.max_sessions (jwkengine.nginx.queue)
    thread_queue = { in_flight = queue.in_flight or math.max(1, cfg.hsm.max_sessions), length = queue.length,
      timeout = queue.timeout },
  }
  local chosen, cerr = choose_sets(s, jwks, token, cfg)
  if not chosen then return nil, cerr end

  if ngx and ngx.shared then
    local dict = ngx.shared[s.shared_dict]
    if not dict then
      return nil, string.format("lua_shared_dict %s is missing: add `lua_shared_dict %s 1m;` to the http block",
        s.shared_dict, s.shared_dict)
    end
    worker.allow_login(dict)
  end
  if top.thread_pool ~= nil then
    s.thread_pool = top.thread_pool
    if type(ngx.run_worker_thread) ~= "function" then
      return nil, "thread_pool is set but this nginx Lua module has no ngx.run_worker_thread " ..
        "(lua-nginx-module 0.10.21 or newer, on Linux)"
    end
  end
  -- Always prepared, so a location may turn thread signing on by itself.
  s.thread_options_json, s.thread_options_problem = threads.options_json(open_options)
  if not s.thread_options_json and s.thread_pool then return nil, s.thread_options_problem end

  s.master_env = open_options.environment and {} or worker.master_environment()
  return s
end

return M

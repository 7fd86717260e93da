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
local secrets = require("jwkengine.nginx.secrets")
local threads = require("jwkengine.nginx.threads")
local util = require("jwkengine.util")
local worker = require("jwkengine.nginx.worker")

local M = {}

-- Options of init() that belong here; everything else goes to jwkengine.open.
local OWN_OPTIONS = { jwks = true, token = true, thread_pool = true, thread_queue = true, shared_dict = true,
  ready_timeout = true, startup_lock_timeout = true, schedule_interval = true, health = true, metrics = true }

local DEFAULTS = {
  shared_dict = "jwkengine",
  ready_timeout = 10,          -- seconds a request waits for its worker's engine
  startup_lock_timeout = 300,  -- seconds the startup generation may hold the lock
  -- the engine's publication defaults (its schema): nginx serves with those
  jwks = { max_age = engine_settings.default("publication.max_age"),
    refresh = engine_settings.default("publication.refresh") },
  token = { lifetime = 300, max_body = 16384 },
  health = { budget = 1, cache = 5 },
  metrics = { flush_interval = 1 },
  -- thread-pool signing, per worker: in_flight defaults to hsm.max_sessions
  thread_queue = { length = 256, timeout = 2 },
}

-- Raises a mistake in init()'s options; level as error() counts it from
-- the caller of fail.
function M.fail(message, level)
  error("jwkengine.nginx: " .. message, (level or 1) + 1)
end
local fail = M.fail

-- Levels for fail: the caller of init() is 4 frames above a check in
-- M.load (fail, M.load, init, its caller), 5 above one in a helper.
local IN_LOAD, IN_HELPER = 3, 4

local function positive_number(value, name)
  if type(value) ~= "number" or value <= 0 then
    fail(name .. " must be a positive number of seconds/bytes, got " .. tostring(value), IN_HELPER)
  end
  return value
end

local function whole_number(value, name, least)
  if type(value) ~= "number" or value ~= math.floor(value) or value < least or value > 2 ^ 31 then
    fail(string.format("%s must be a whole number from %d to 2^31, got %s", name, least, tostring(value)),
      IN_HELPER)
  end
  return value
end

local function set_name(value, name)
  if type(value) ~= "string" or value == "" then
    fail(name .. " must be a non-empty string (a key set name), got " .. tostring(value), IN_HELPER)
  end
  return value
end

local function check_keys(t, allowed, name)
  if t == nil then return {} end
  if type(t) ~= "table" then fail(name .. " must be a table", IN_HELPER) end
  for k in pairs(t) do
    if not allowed[k] then
      fail(string.format("unknown option %s.%s (known: %s)", name, tostring(k),
        table.concat(util.sorted_keys(allowed), ", ")), IN_HELPER)
    end
  end
  return t
end

-- The sets GET /.well-known/jwks.json publishes and the set POST /token
-- signs with (see jwkengine.nginx.init for the defaults).
local function choose_sets(s, jwks, token, cfg)
  s.sets = {}
  if jwks.sets ~= nil then
    if type(jwks.sets) ~= "table" or #jwks.sets == 0 then
      fail("jwks.sets must be a non-empty list of set names", IN_HELPER)
    end
    for i, name in ipairs(jwks.sets) do s.sets[i] = set_name(name, "jwks.sets[" .. i .. "]") end
  else
    for i, entry in ipairs(cfg.startup_sets) do s.sets[i] = entry.set end
  end
  if #s.sets == 0 then fail("no key set to publish: set jwks.sets (or startup_sets)", IN_HELPER) end
  if token.set ~= nil then
    s.token_set = set_name(token.set, "token.set")
  else
    for _, name in ipairs(s.sets) do
      if name == "hydra.jwt.access-token" then s.token_set = name end
    end
    s.token_set = s.token_set or s.sets[1]
  end
  for _, name in ipairs(s.sets) do
    if name == s.token_set then s.token_set_published = true end
  end
end

-- The engine's rotation rules must hold for what nginx serves: its
-- publication settings are jwks.max_age and jwks.refresh. A configuration
-- (file or options) that names other values is refused by name.
local function publication_options(open_options, max_age, refresh)
  local cfg, err, code = config.load(open_options)
  if not cfg then fail(string.format("configuration: %s (%s)", tostring(err), tostring(code)), IN_HELPER) end
  local served = { max_age = max_age, refresh = refresh }
  local publication = {}
  for name, value in pairs(cfg.publication) do publication[name] = value end
  for name, value in pairs(served) do
    if publication[name] ~= nil and publication[name] ~= value then
      fail(string.format("publication.%s (%s) differs from jwks.%s (%s), which is what nginx serves: " ..
        "set jwks.%s only", name, tostring(publication[name]), name, tostring(value), name), IN_HELPER)
    end
    publication[name] = value
  end
  return publication
end

-- The bounds of thread-pool signing in each worker (jwkengine.nginx.queue):
-- by default as many signatures in flight as the engine has sessions, so
-- the thread VMs' engines (one session each) stay within hsm.max_sessions.
local function thread_queue(options, cfg)
  local q = check_keys(options, { in_flight = true, length = true, timeout = true }, "thread_queue")
  local defaults = DEFAULTS.thread_queue
  return {
    in_flight = whole_number(q.in_flight or math.max(1, cfg.hsm.max_sessions), "thread_queue.in_flight", 1),
    length = whole_number(q.length or defaults.length, "thread_queue.length", 0),
    timeout = positive_number(q.timeout or defaults.timeout, "thread_queue.timeout"),
  }
end

-- The checked settings of init(options), or a raise naming the mistake.
function M.load(options)
  if type(options) ~= "table" then fail("init(options): options must be a table", IN_LOAD) end
  local open_options = {}
  for k, v in pairs(options) do
    if not OWN_OPTIONS[k] then open_options[k] = v end
  end
  if open_options.startup ~= nil and open_options.startup ~= false then
    fail("options.startup may only be false (skip generation on startup)", IN_LOAD)
  end
  if open_options.logger == nil then open_options.logger = logging.logger end

  local jwks = check_keys(options.jwks, { sets = true, max_age = true, refresh = true }, "jwks")
  local token = check_keys(options.token, { set = true, lifetime = true, max_body = true }, "token")
  local health = check_keys(options.health, { budget = true, cache = true }, "health")
  local metrics = check_keys(options.metrics, { flush_interval = true }, "metrics")
  local max_age = jwks.max_age or DEFAULTS.jwks.max_age
  if type(max_age) ~= "number" or max_age < 0 then fail("jwks.max_age must be a number >= 0", IN_LOAD) end
  local refresh = positive_number(jwks.refresh or DEFAULTS.jwks.refresh, "jwks.refresh")

  secrets.forget_pin()
  open_options.publication = publication_options(open_options, max_age, refresh)
  local cfg, policies, code = jwkengine.check_config(open_options)
  if not cfg then fail(string.format("configuration: %s (%s)", tostring(policies), tostring(code)), IN_LOAD) end
  cfg.hsm.pin = nil -- the workers read it again; no copy stays here
  local lifetime = positive_number(token.lifetime or DEFAULTS.token.lifetime, "token.lifetime")
  if lifetime > policies.limits.max_lifetime then
    fail(string.format("token.lifetime (%d s) is longer than tokens.max_lifetime (%d s), which the key " ..
      "rotation's retain rule counts on: raise tokens.max_lifetime", lifetime, policies.limits.max_lifetime), IN_LOAD)
  end

  local kept_secrets
  open_options, kept_secrets = secrets.keep(open_options, cfg)
  if not open_options then fail(kept_secrets, IN_LOAD) end

  local s = {
    open_options = open_options,
    kept_secrets = kept_secrets,
    shared_dict = set_name(options.shared_dict or DEFAULTS.shared_dict, "shared_dict"),
    ready_timeout = positive_number(options.ready_timeout or DEFAULTS.ready_timeout, "ready_timeout"),
    startup_lock_timeout = positive_number(options.startup_lock_timeout or DEFAULTS.startup_lock_timeout,
      "startup_lock_timeout"),
    startup_sets = cfg.startup_sets,
    max_age = max_age,
    refresh = refresh,
    lifetime = lifetime,
    max_body = positive_number(token.max_body or DEFAULTS.token.max_body, "token.max_body"),
    -- the key schedule (engine:maintain) runs in one worker when a set has
    -- a rotation policy
    scheduled = #policies.scheduled > 0,
    schedule_interval = positive_number(options.schedule_interval or refresh, "schedule_interval"),
    health_budget = positive_number(health.budget or DEFAULTS.health.budget, "health.budget"),
    health_cache = positive_number(health.cache or DEFAULTS.health.cache, "health.cache"),
    metrics_flush_interval = positive_number(metrics.flush_interval or DEFAULTS.metrics.flush_interval,
      "metrics.flush_interval"),
    thread_queue = thread_queue(options.thread_queue, cfg),
  }
  choose_sets(s, jwks, token, cfg)

  if ngx and ngx.shared then
    local dict = ngx.shared[s.shared_dict]
    if not dict then
      fail(string.format("lua_shared_dict %s is missing: add `lua_shared_dict %s 1m;` to the http block",
        s.shared_dict, s.shared_dict), IN_LOAD)
    end
    worker.allow_login(dict)
  end
  if options.thread_pool ~= nil then
    s.thread_pool = set_name(options.thread_pool, "thread_pool")
    if type(ngx.run_worker_thread) ~= "function" then
      fail("thread_pool is set but this nginx Lua module has no ngx.run_worker_thread " ..
        "(lua-nginx-module 0.10.21 or newer, on Linux)", IN_LOAD)
    end
  end
  -- Always prepared, so a location may turn thread signing on by itself.
  s.thread_options_json, s.thread_options_problem = threads.options_json(open_options)
  if not s.thread_options_json and s.thread_pool then fail(s.thread_options_problem, IN_LOAD) end

  s.master_env = open_options.environment and {} or worker.master_environment()
  return s
end

return M

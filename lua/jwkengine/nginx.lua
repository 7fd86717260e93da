-- jwkengine in nginx with the Lua module (OpenResty, or Debian's nginx with
-- libnginx-mod-http-lua): a JWK Set endpoint and a token endpoint backed by
-- the engine, opened in each worker after the fork.
--
--   init_by_lua_block        { require("jwkengine.nginx").init({ ... }) }
--   init_worker_by_lua_block { require("jwkengine.nginx").init_worker() }
--   location = /.well-known/jwks.json { content_by_lua_block { require("jwkengine.nginx").serve_jwks() } }
--   location = /token                 { content_by_lua_block { require("jwkengine.nginx").serve_token() } }
--
-- Phases:
--   init (master)         reads and checks the configuration (config file,
--                         environment, options); never loads the PKCS#11
--                         module, never logs in. A bad configuration stops
--                         nginx from starting, and a reload keeps the old
--                         configuration (`nginx -t` does not run
--                         init_by_lua, so it cannot see these errors).
--                         A PIN or store secrets given as options are
--                         handed to C (kept_secret.c): the settings the
--                         workers inherit hold none.
--   init_worker (worker)  starts a zero-delay timer (init_worker cannot
--                         sleep, the timer can). The timer takes a lock in a
--                         lua_shared_dict (`add` with an expiry), opens the
--                         engine (C_Initialize and login happen here, after
--                         the fork), generates the missing startup sets and
--                         releases the lock: with N workers starting at once
--                         each set is generated exactly once. Then it builds
--                         the worker's JWK Set cache, refreshed on a timer.
--                         A refused PIN is tried by one worker only, and not
--                         again until the next reload or restart.
--   content               serve_jwks answers from the worker's cache;
--                         serve_token signs, in the event loop or in nginx's
--                         thread pool (options.thread_pool).
-- Requests that arrive before their worker's engine is open wait for it (up
-- to options.ready_timeout seconds, then 503).
--
-- Written for LuaJIT / Lua 5.1 (OpenResty); thread_sign also runs in the
-- Lua VMs of nginx's worker threads, where only a few ngx APIs exist.
local cjson = require "cjson.safe"
local http = require "jwkengine.http"
local jwk = require "jwkengine.jwk"
local log = require "jwkengine.log"

local M = { _VERSION = "0.1.0" }

-- Options of init() that belong here; everything else goes to jwkengine.open.
local OWN_OPTIONS = { jwks = true, token = true, thread_pool = true, shared_dict = true,
  ready_timeout = true, startup_lock_timeout = true }

local DEFAULTS = {
  shared_dict = "jwkengine",
  ready_timeout = 10,          -- seconds a request waits for its worker's engine
  startup_lock_timeout = 300,  -- seconds the startup generation may hold the lock
  jwks = { max_age = 300, refresh = 30 },
  token = { lifetime = 300, max_body = 16384 },
}

-- The environment variables jwkengine reads; nginx removes every variable
-- not named by an `env` directive from its workers.
local ENV_NAMES = { "HSM_ENABLED", "HSM_LIBRARY", "HSM_TOKEN_LABEL", "HSM_SLOT", "HSM_PIN",
  "HSM_PIN_FILE", "HSM_KEY_SET_PREFIX", "HSM_MIN_RSA_BITS", "HSM_MAX_SESSIONS", "HSM_URI",
  "JWKENGINE_CONFIG", "SECRETS_SYSTEM", "DSN", "SOFTHSM2_CONF" }

local LOCK_KEY = "jwkengine:startup-lock"
-- Set when the token refused the PIN: the other workers (and a worker that
-- replaces a dead one) do not try it again, since every wrong attempt brings
-- the token closer to locking the PIN. init() clears it: a reload is how an
-- operator says the PIN was fixed.
local LOGIN_REFUSED_KEY = "jwkengine:login-refused"

-- A PIN given to init() as an option (hsm.pin, or the pin-value of
-- hsm.uri) is kept in C under this name: the workers' login finds it there
-- as it would the variable (token:login_env). Store secrets given as
-- options are kept as SECRET_NAME .. i.
local PIN_NAME = "HSM_PIN"
local SECRET_NAME = "jwkengine.nginx secrets.system "

-- Per-process state. In the master only `settings` is filled; the workers
-- inherit it and add their engine and JWK Set cache.
local settings          -- checked options (see M.init)
local engine            -- this worker's engine, once open
local open_error        -- why the last attempt to open failed
local open_given_up     -- true when that failure is not retried (configuration, PIN)
local jwks_cache        -- { body = json, etag = '"..."' }
local thread_engines = {} -- in worker-thread VMs: options JSON -> { engine, refreshed }

------------------------------------------------------------------------
-- helpers

local function fail(message, level)
  error("jwkengine.nginx: " .. message, (level or 1) + 1)
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local LEVELS -- engine level -> ngx level, filled lazily (ngx.* constants)
local function write_ngx_log(level, message)
  if not LEVELS then
    LEVELS = { debug = ngx.DEBUG, info = ngx.NOTICE, notice = ngx.NOTICE, warn = ngx.WARN,
      warning = ngx.WARN, error = ngx.ERR, err = ngx.ERR }
  end
  ngx.log(LEVELS[level] or ngx.NOTICE, "jwkengine: ", message)
end
-- Every line this module and the engine log goes through log.new, which
-- escapes newlines and other control characters.
local ngx_logger = log.new(write_ngx_log)

local function positive_number(value, name)
  if type(value) ~= "number" or value <= 0 then
    fail(name .. " must be a positive number of seconds/bytes, got " .. tostring(value), 3)
  end
  return value
end

local function set_name(value, name)
  if type(value) ~= "string" or value == "" then
    fail(name .. " must be a non-empty string (a key set name), got " .. tostring(value), 3)
  end
  return value
end

local function check_keys(t, allowed, name)
  if t == nil then return {} end
  if type(t) ~= "table" then fail(name .. " must be a table", 3) end
  for k in pairs(t) do
    if not allowed[k] then
      local names = {}
      for a in pairs(allowed) do names[#names + 1] = a end
      table.sort(names)
      fail(string.format("unknown option %s.%s (known: %s)", name, tostring(k), table.concat(names, ", ")), 3)
    end
  end
  return t
end

-- Serializable copy of the open options for the worker-thread VMs (which
-- share nothing with the worker's VM): functions cannot cross. It holds no
-- secret (keep_secrets took them out first): those VMs find them in C.
local function thread_options(open_options)
  local function clean(value, path)
    local kind = type(value)
    if kind == "table" then
      local c = {}
      for k, v in pairs(value) do c[k] = clean(v, path .. "." .. tostring(k)) end
      return c
    elseif kind == "function" or kind == "userdata" or kind == "thread" then
      fail("thread_pool signing cannot pass option " .. path .. " (a " .. kind ..
        ") to nginx's worker threads; leave it out or sign in the event loop", 4)
    end
    return value
  end
  local o = {}
  for k, v in pairs(open_options) do
    if k ~= "logger" and k ~= "select_slot" then o[k] = clean(v, k) end
  end
  return o
end

-- Hands the secrets among the options (hsm.pin, hsm.uri's pin-value,
-- secrets.system) to C and returns the options without them, which is all
-- the master keeps in Lua for its workers (and serializes for the thread
-- pool), with the number of store secrets kept. A reload forgets what the
-- previous configuration kept.
local function keep_secrets(open_options, cfg)
  local core = require "jwkengine.core"
  local public = copy(open_options)
  if type(open_options.hsm) == "table" then
    public.hsm = copy(open_options.hsm)
    local ok, err, code = true, nil, nil
    -- with the HSM disabled no PIN is needed: it is dropped, not kept
    if cfg.hsm.enabled and public.hsm.pin ~= nil then
      ok, err, code = core.keep_pin(PIN_NAME, public.hsm.pin)
    elseif cfg.hsm.enabled and cfg.hsm.pin_in_uri and public.hsm.uri then
      ok, err, code = core.keep_uri_pin(PIN_NAME, public.hsm.uri)
    end
    if not ok then fail(string.format("configuration: %s (%s)", tostring(err), tostring(code)), 3) end
    if public.hsm.uri then public.hsm.uri = require("jwkengine.pkcs11_uri").without_pin(public.hsm.uri) end
    public.hsm.pin = nil
  end
  local secrets = type(open_options.secrets) == "table" and open_options.secrets.system or {}
  for i, secret in ipairs(secrets) do
    local ok, err, code = core.keep_secret(SECRET_NAME .. i, secret)
    if not ok then fail(string.format("configuration: %s (%s)", tostring(err), tostring(code)), 3) end
  end
  local stale = #secrets + 1
  while core.forget_secret(SECRET_NAME .. stale) do stale = stale + 1 end
  public.secrets = nil
  return public, #secrets
end

-- The open options a worker (or a worker-thread VM) passes to
-- jwkengine.open: the master's, with the store secrets it kept read back
-- (the engine's store seals with Lua strings).
local function with_kept_secrets(o, kept_secrets)
  if kept_secrets and kept_secrets > 0 then
    local core = require "jwkengine.core"
    local system = {}
    for i = 1, kept_secrets do system[i] = core.kept_secret(SECRET_NAME .. i) end
    o.secrets = { system = system }
  end
  return o
end

------------------------------------------------------------------------
-- init (master): configuration only

-- Reads and checks the configuration in init_by_lua. options: everything
-- jwkengine.open takes (config, environment, hsm, startup_sets, dsn, secrets,
-- store, select_slot, logger), plus
--   jwks = { sets = {names}, max_age = 300, refresh = 30 }
--     sets: the sets whose public keys GET /.well-known/jwks.json publishes
--     (default: the startup sets); max_age: Cache-Control max-age; refresh:
--     seconds between re-reads of the sets from the token, per worker
--   token = { set = name, lifetime = 300, max_body = 16384 }
--     set: the set POST /token signs with (default: hydra.jwt.access-token
--     when published, else the first published set); lifetime: exp - iat;
--     max_body: the largest claims body accepted, in bytes
--   thread_pool = "name": sign in that nginx thread pool (ngx.run_worker_thread)
--   shared_dict = "jwkengine": the lua_shared_dict holding the startup lock
--   ready_timeout = 10: seconds a request waits for its worker's engine
--   startup_lock_timeout = 300: seconds one worker may hold the startup lock
function M.init(options)
  options = options or {}
  if type(options) ~= "table" then fail("init(options): options must be a table", 2) end
  if ngx and ngx.get_phase and ngx.get_phase() ~= "init" then
    fail("init() belongs in init_by_lua_block (it runs in nginx's master)", 2)
  end
  local config = require "jwkengine.config"
  -- Preloaded in the master so the workers share the code pages; loading
  -- the C module touches no PKCS#11 library (that happens in open()).
  require "jwkengine"

  local open_options = {}
  for k, v in pairs(options) do
    if not OWN_OPTIONS[k] then open_options[k] = v end
  end
  if open_options.startup ~= nil and open_options.startup ~= false then
    fail("options.startup may only be false (skip generation on startup)", 2)
  end
  if open_options.logger == nil then open_options.logger = ngx_logger end

  -- what a previous configuration kept is not this one's PIN
  require("jwkengine.core").forget_pin(PIN_NAME)
  local cfg, err, code = config.load(open_options)
  if not cfg then fail(string.format("configuration: %s (%s)", tostring(err), tostring(code)), 2) end
  if cfg.hsm.enabled then
    if not cfg.hsm.library or cfg.hsm.library == "" then
      fail("the HSM is enabled but HSM_LIBRARY (hsm.library) is not set", 2)
    end
    local f = io.open(cfg.hsm.library, "rb")
    if not f then fail("HSM_LIBRARY " .. cfg.hsm.library .. " cannot be read", 2) end
    f:close()
    local pin_problem = config.pin_problem(cfg.hsm)
    if pin_problem then fail(pin_problem, 2) end
    cfg.hsm.pin = nil -- the workers read it again; no copy stays here
  elseif #cfg.secrets.system == 0 then
    fail("no key store is enabled: set HSM_ENABLED=true for the HSM and/or SECRETS_SYSTEM for the software store", 2)
  end

  local kept_secrets
  open_options, kept_secrets = keep_secrets(open_options, cfg)

  local jwks = check_keys(options.jwks, { sets = true, max_age = true, refresh = true }, "jwks")
  local token = check_keys(options.token, { set = true, lifetime = true, max_body = true }, "token")
  local s = {
    open_options = open_options,
    kept_secrets = kept_secrets,
    shared_dict = set_name(options.shared_dict or DEFAULTS.shared_dict, "shared_dict"),
    ready_timeout = positive_number(options.ready_timeout or DEFAULTS.ready_timeout, "ready_timeout"),
    startup_lock_timeout = positive_number(options.startup_lock_timeout or DEFAULTS.startup_lock_timeout,
      "startup_lock_timeout"),
    startup_sets = cfg.startup_sets,
    max_age = jwks.max_age or DEFAULTS.jwks.max_age,
    refresh = positive_number(jwks.refresh or DEFAULTS.jwks.refresh, "jwks.refresh"),
    lifetime = positive_number(token.lifetime or DEFAULTS.token.lifetime, "token.lifetime"),
    max_body = positive_number(token.max_body or DEFAULTS.token.max_body, "token.max_body"),
  }
  if type(s.max_age) ~= "number" or s.max_age < 0 then fail("jwks.max_age must be a number >= 0", 2) end

  -- published sets: given, or the startup sets
  s.sets = {}
  if jwks.sets ~= nil then
    if type(jwks.sets) ~= "table" or #jwks.sets == 0 then fail("jwks.sets must be a non-empty list of set names", 2) end
    for i, name in ipairs(jwks.sets) do s.sets[i] = set_name(name, "jwks.sets[" .. i .. "]") end
  else
    for i, entry in ipairs(cfg.startup_sets) do s.sets[i] = entry.set end
  end
  if #s.sets == 0 then fail("no key set to publish: set jwks.sets (or startup_sets)", 2) end
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

  if ngx and ngx.shared then
    local dict = ngx.shared[s.shared_dict]
    if not dict then
      fail(string.format("lua_shared_dict %s is missing: add `lua_shared_dict %s 1m;` to the http block",
        s.shared_dict, s.shared_dict), 2)
    end
    dict:delete(LOGIN_REFUSED_KEY) -- a (re)load may carry a corrected PIN: one new attempt
  end
  if options.thread_pool ~= nil then
    s.thread_pool = set_name(options.thread_pool, "thread_pool")
    if type(ngx.run_worker_thread) ~= "function" then
      fail("thread_pool is set but this nginx Lua module has no ngx.run_worker_thread " ..
        "(lua-nginx-module 0.10.21 or newer, on Linux)", 2)
    end
  end
  -- Always prepared, so a location may turn thread signing on by itself.
  local serializable, topts = pcall(thread_options, open_options)
  if serializable then
    s.thread_options_json = assert(cjson.encode(topts))
  elseif s.thread_pool then
    error(topts, 2)
  else
    s.thread_options_problem = topts
  end

  -- Which variables the master sees, to explain a missing `env` directive
  -- when a worker does not see them (names only, never values).
  s.master_env = {}
  if not open_options.environment then
    for _, name in ipairs(ENV_NAMES) do
      if os.getenv(name) ~= nil then s.master_env[#s.master_env + 1] = name end
    end
  end
  settings = s
  return true
end

------------------------------------------------------------------------
-- JWK Set cache

-- JSON with sorted member names, so that every worker (and every reload)
-- serializes the same keys to the same bytes, and so to the same ETag.
local function canonical(value)
  if type(value) == "table" then
    if #value > 0 or next(value) == nil then
      local parts = {}
      for i, v in ipairs(value) do parts[i] = canonical(v) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local names = {}
    for k in pairs(value) do names[#names + 1] = tostring(k) end
    table.sort(names)
    local parts = {}
    for i, k in ipairs(names) do parts[i] = cjson.encode(k) .. ":" .. canonical(value[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return cjson.encode(value)
end

local sha256
do
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, "unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);")
    local found = pcall(function() return ffi.C.SHA256 end) -- nginx links libcrypto
    if found then
      local md = ffi.new("unsigned char[32]")
      sha256 = function(data)
        ffi.C.SHA256(data, #data, md)
        return ffi.string(md, 32)
      end
    end
  end
end

local function b64url(bytes)
  return (ngx.encode_base64(bytes, true):gsub("[+/]", { ["+"] = "-", ["/"] = "_" }))
end

-- A strong ETag: base64url of SHA-256 over the exact body (SHA-1 where
-- nginx's libcrypto is not reachable through the FFI).
local function etag_of(body)
  local digest = sha256 and sha256(body) or ngx.sha1_bin(body)
  return '"' .. b64url(digest) .. '"'
end

-- Re-reads the published sets from the token (not only from the engine's
-- cache, so keys added or deleted by other processes show up) and rebuilds
-- the body. On an error the previous cache stays.
local function rebuild_jwks(reread)
  local keys, seen = {}, {}
  for _, set in ipairs(settings.sets) do
    if reread then engine:refresh(set) end
    local jwks, err, code = engine:key_set(set)
    if jwks then
      local sorted = {}
      for i, jwk in ipairs(jwks.keys) do sorted[i] = jwk end
      table.sort(sorted, function(a, b) return tostring(a.kid) < tostring(b.kid) end)
      for _, jwk in ipairs(sorted) do
        local json = canonical(jwk)
        if not seen[json] then -- the same key in two sets is published once
          seen[json] = true
          keys[#keys + 1] = json
        end
      end
    elseif code ~= "ERR_KEY_SET_NOT_FOUND" then
      return nil, string.format("key set '%s': %s", set, tostring(err))
    end
  end
  local body = '{"keys":[' .. table.concat(keys, ",") .. ']}'
  if not jwks_cache or jwks_cache.body ~= body then
    if jwks_cache then ngx_logger("info", "the published JWK Set changed") end
    jwks_cache = { body = body, etag = etag_of(body), count = #keys }
  end
  return true
end

------------------------------------------------------------------------
-- init_worker: open the engine after the fork

local kill -- kill(2) through the FFI, or false
local function process_alive(pid)
  if kill == nil then
    kill = false
    local ok, ffi = pcall(require, "ffi")
    if ok then
      pcall(ffi.cdef, "int kill(int pid, int sig);")
      if pcall(function() return ffi.C.kill end) then
        kill = function(p) return ffi.C.kill(p, 0) == 0 or ffi.errno() ~= 3 end -- 3: ESRCH
      end
    end
  end
  if not kill then return true end -- unknown: wait for the lock's expiry
  return kill(pid)
end

-- The startup lock: `add` with an expiry is the mutex; a holder that died
-- (a worker killed while generating) is taken over at once rather than
-- waited out, with a second `add` so that only one waiter takes it over.
local function acquire_startup_lock(dict)
  local pid = ngx.worker.pid()
  local ttl = settings.startup_lock_timeout
  local deadline = ngx.now() + ttl + 5
  local delay = 0.01
  while true do
    local ok, err = dict:add(LOCK_KEY, pid, ttl)
    if ok then return true end
    if err ~= "exists" then return nil, "shared dict " .. settings.shared_dict .. ": " .. tostring(err) end
    local holder = dict:get(LOCK_KEY)
    if holder and holder ~= pid and not process_alive(holder) then
      if dict:add(LOCK_KEY .. ":taken-from:" .. holder, pid, ttl) then
        ngx_logger("warn", "worker " .. holder .. " died holding the startup lock; taking it over")
        dict:set(LOCK_KEY, pid, ttl)
        return true
      end
    end
    if ngx.now() > deadline then return nil, "timed out waiting for the startup lock" end
    ngx.sleep(delay)
    if delay < 0.2 then delay = delay * 2 end
  end
end

local function release_startup_lock(dict)
  if dict:get(LOCK_KEY) == ngx.worker.pid() then dict:delete(LOCK_KEY) end
end

-- True for failures where trying again would only repeat a wrong PIN: the
-- code says so (C sets ERR_LOGIN_REFUSED where it refuses to log in).
local function login_refused(code)
  if code == "ERR_LOGIN_REFUSED" then return true end
  return type(code) == "string" and code:find("^CKR_PIN") ~= nil
end

-- Opens the engine and generates the missing startup sets, holding the
-- startup lock for both: generation happens once, and no worker reads the
-- token while another one is writing to it (SoftHSM, for one, can miss a
-- token whose files are being rewritten during C_Initialize).

local function open_engine()
  local jwkengine = require "jwkengine"
  local o = with_kept_secrets(copy(settings.open_options), settings.kept_secrets)
  o.startup = false -- generation happens below, under the lock
  local dict = ngx.shared[settings.shared_dict]
  local locked, lerr = acquire_startup_lock(dict)
  if not locked then return nil, lerr, "ERR_STARTUP_LOCK" end
  local refused = dict:get(LOGIN_REFUSED_KEY)
  if refused then
    release_startup_lock(dict)
    return nil, "another worker's login was refused (" .. tostring(refused) ..
      "); the PIN is not tried again until nginx is reloaded or restarted", "ERR_LOGIN_REFUSED"
  end
  local opened, e, err, code = pcall(jwkengine.open, o)
  if not opened or not e then
    if opened and login_refused(code) then dict:set(LOGIN_REFUSED_KEY, tostring(code or err)) end
    release_startup_lock(dict)
    if not opened then return nil, "jwkengine.open raised: " .. tostring(e), "ERR_OPEN" end
    return nil, err, code
  end
  local sets = e.config and e.config.startup_sets or settings.startup_sets
  if settings.open_options.startup ~= false and #sets > 0 then
    local ran, done, gerr, gcode = pcall(e.ensure_startup_sets, e, sets)
    if not ran or not done then
      release_startup_lock(dict)
      e:close()
      if not ran then return nil, "startup generation raised: " .. tostring(done), "ERR_STARTUP" end
      return nil, gerr, gcode
    end
  end
  release_startup_lock(dict)
  return e
end

local retry_delay = 1
local function open_in_timer(premature)
  if premature then return end
  local e, err, code = open_engine()
  if not e then
    open_error = string.format("%s (%s)", tostring(err), tostring(code))
    if code == "ERR_CONFIG" or code == "ERR_LOGIN_REFUSED" or login_refused(code) then
      open_given_up = true
      ngx_logger("error", "opening the engine in worker " .. ngx.worker.pid() .. " failed: " ..
        open_error .. "; not retrying: fix the configuration and reload nginx")
      return
    end
    ngx_logger("error", "opening the engine in worker " .. ngx.worker.pid() .. " failed: " ..
      open_error .. "; retrying in " .. retry_delay .. " s")
    local ok, terr = ngx.timer.at(retry_delay, open_in_timer)
    if not ok then ngx_logger("error", "cannot schedule a retry: " .. tostring(terr)) end
    retry_delay = math.min(retry_delay * 2, 30)
    return
  end
  local slot = e:slot()
  if slot then settings.slot_id = slot.id end
  local jwks_ok, jerr
  engine = e
  jwks_ok, jerr = rebuild_jwks(false)
  if not jwks_ok then ngx_logger("error", "building the JWK Set: " .. jerr) end
  open_error = nil
  ngx_logger("info", "the engine is open in worker " .. ngx.worker.pid())
end

local function refresh_timer(premature)
  if premature or not engine then return end
  local ok, err = rebuild_jwks(true)
  if not ok then ngx_logger("warn", "refreshing the JWK Set (the previous one is kept): " .. err) end
  if not settings.token_set_published then
    engine:reload(settings.token_set) -- the signing set, when it is not published
  end
end

-- Opens the engine in this worker (in a zero-delay timer: the startup lock
-- may have to wait, and init_worker cannot sleep) and schedules the JWK Set
-- refresh.
function M.init_worker()
  if not settings then
    fail("init_worker() needs init() in init_by_lua_block first", 2)
  end
  local missing = {}
  for _, name in ipairs(settings.master_env) do
    if os.getenv(name) == nil then missing[#missing + 1] = "env " .. name .. ";" end
  end
  if #missing > 0 then
    ngx_logger("warn", "nginx removed variables jwkengine reads from its workers' environment; add " ..
      table.concat(missing, " ") .. " to the main block of nginx.conf")
  end
  local ok, err = ngx.timer.at(0, open_in_timer)
  if not ok then fail("cannot start the opening timer: " .. tostring(err), 2) end
  ok, err = ngx.timer.every(settings.refresh, refresh_timer)
  if not ok then fail("cannot start the JWK Set refresh timer: " .. tostring(err), 2) end
end

------------------------------------------------------------------------
-- content handlers

local function send(status, content_type, body, headers)
  ngx.status = status
  if content_type then ngx.header["Content-Type"] = content_type end
  if headers then for k, v in pairs(headers) do ngx.header[k] = v end end
  if body then
    ngx.header["Content-Length"] = #body
    ngx.print(body)
  end
  -- the response is complete: ngx.exit(status >= 300) would replace it with
  -- nginx's own error page (and drop ETag), so finish with HTTP_OK
  return ngx.exit(ngx.HTTP_OK)
end

local function send_error(status, error_code, description, headers)
  local h = headers or {}
  h["Cache-Control"] = "no-store"
  return send(status, "application/json",
    cjson.encode({ error = error_code, error_description = description }) .. "\n", h)
end

-- An error response for a failure's code, with the status http.status_of
-- gives it.
local function send_failure(code, description, headers)
  local status, error_code = http.status_of(code)
  return send_error(status, error_code, description, headers)
end

-- Waits (yielding) until this worker's engine is open.
local function wait_ready()
  if engine then return true end
  local deadline = ngx.now() + settings.ready_timeout
  while not engine do
    if open_given_up or ngx.now() >= deadline then return false end
    ngx.sleep(0.02)
  end
  return true
end

local function not_ready()
  if open_given_up then
    return send_error(503, "temporarily_unavailable", "the key engine cannot be opened (see the error log)")
  end
  return send_error(503, "temporarily_unavailable",
    "the key engine is not open in this worker yet" .. (open_error and " (see the error log)" or ""),
    { ["Retry-After"] = "1" })
end

-- GET /.well-known/jwks.json: the public keys of the published sets, from
-- this worker's cache.
function M.serve_jwks()
  local method = ngx.req.get_method()
  if method ~= "GET" and method ~= "HEAD" then
    return send_failure("ERR_HTTP_METHOD", "use GET", { Allow = "GET, HEAD" })
  end
  if not wait_ready() or not jwks_cache then return not_ready() end
  local cache = jwks_cache
  local headers = {
    ETag = cache.etag,
    ["Cache-Control"] = "public, max-age=" .. settings.max_age,
  }
  if http.not_modified(ngx.var.http_if_none_match, cache.etag) then
    return send(304, nil, nil, headers)
  end
  return send(200, "application/json", cache.body, headers)
end

-- Signs in a worker thread; returns what thread_sign returns, or nil, err, code.
local function sign_in_thread(pool, set, body, lifetime)
  if not settings.thread_options_json then
    return nil, tostring(settings.thread_options_problem), "ERR_CONFIG"
  end
  if not ngx.run_worker_thread then
    return nil, "this nginx Lua module has no ngx.run_worker_thread", "ERR_CONFIG"
  end
  local ok, token, err, code = ngx.run_worker_thread(pool, "jwkengine.nginx", "thread_sign",
    settings.thread_options_json, settings.slot_id or false, set, body, lifetime, settings.refresh,
    settings.kept_secrets)
  if not ok then return nil, "worker thread: " .. tostring(token), "ERR_THREAD" end
  return token, err, code
end

-- POST /token with a JSON object of claims: a JWT signed with the
-- configured set (iat and exp added unless given), as application/jwt.
-- options (per location, all optional): set, lifetime, thread_pool (a pool
-- name, or false to sign in the event loop even when init() set one).
function M.serve_token(options)
  local set, lifetime, pool = settings.token_set, settings.lifetime, settings.thread_pool
  if options then
    set = options.set or set
    lifetime = options.lifetime or lifetime
    if options.thread_pool ~= nil then pool = options.thread_pool or nil end
  end
  if ngx.req.get_method() ~= "POST" then
    return send_failure("ERR_HTTP_METHOD", "use POST with a JSON object of claims", { Allow = "POST" })
  end
  if not http.is_json(ngx.var.content_type) then
    return send_failure("ERR_HTTP_MEDIA_TYPE", "the body must be application/json")
  end
  local too_large = "the body is larger than " .. settings.max_body .. " bytes"
  local length = tonumber(ngx.var.content_length)
  if length and length > settings.max_body then
    return send_failure("ERR_HTTP_BODY_TOO_LARGE", too_large)
  end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    if ngx.req.get_body_file() then -- larger than client_body_buffer_size
      return send_failure("ERR_HTTP_BODY_TOO_LARGE", too_large)
    end
    return send_failure("ERR_HTTP_BODY_INVALID", "the body is empty: send a JSON object of claims")
  end
  if #body > settings.max_body then
    return send_failure("ERR_HTTP_BODY_TOO_LARGE", too_large)
  end
  -- as strict as every other JSON the engine reads (valid UTF-8, no
  -- duplicate claim names, no NaN), not resolved by whichever wins
  local claims, derr = jwk.decode_json(body)
  if not claims then
    return send_failure("ERR_HTTP_BODY_INVALID", "the body must be a JSON object of claims: " .. tostring(derr))
  end
  if not wait_ready() then return not_ready() end

  local token, err, code
  if pool then
    token, err, code = sign_in_thread(pool, set, body, lifetime)
  else
    token, err, code = engine:sign_jwt(set, claims, { lifetime = lifetime })
  end
  if not token then
    local client_error = http.is_client_error(code)
    ngx_logger(client_error and "info" or "error", string.format("signing with key set '%s' failed: %s (%s)",
      set, tostring(err), tostring(code)))
    if client_error then return send_failure(code, tostring(err)) end
    local headers = http.status_of(code) == 503 and { ["Retry-After"] = "1" } or nil
    return send_failure(code, "signing failed (" .. tostring(code) .. ")", headers)
  end
  return send(200, "application/jwt", token, { ["Cache-Control"] = "no-store" })
end

------------------------------------------------------------------------
-- worker-thread VMs

-- ngx.log does not exist in worker-thread VMs; nginx points stderr at its
-- error log, so a line shaped like nginx's own goes there.
local NGX_LEVEL_NAMES = { debug = "debug", info = "notice", notice = "notice", warn = "warn",
  warning = "warn", error = "error", err = "error" }
local getpid
local thread_logger = log.new(function(level, message)
  if pcall(write_ngx_log, level, message) then return end
  if getpid == nil then
    local ok, ffi = pcall(require, "ffi")
    getpid = false
    if ok then
      pcall(ffi.cdef, "int getpid(void);")
      if pcall(function() return ffi.C.getpid end) then
        getpid = function() return ffi.C.getpid() end
      end
    end
  end
  io.stderr:write(string.format("%s [%s] %s#thread: jwkengine (worker thread): %s\n",
    os.date("%Y/%m/%d %H:%M:%S"), NGX_LEVEL_NAMES[level] or "notice",
    getpid and tostring(getpid()) or "?", message))
end)

-- Runs in a Lua VM of nginx's thread pool (ngx.run_worker_thread). Each VM
-- opens its own engine on first use (one PKCS#11 session is enough: a VM
-- serves one thread at a time), on the slot the worker chose, and keeps it;
-- the set is re-read from the token every jwks.refresh seconds.
function M.thread_sign(options_json, slot_id, set, body, lifetime, refresh, kept_secrets)
  local entry = thread_engines[options_json]
  if not entry then
    local jwkengine = require "jwkengine"
    local o = with_kept_secrets(cjson.decode(options_json), kept_secrets)
    o.startup = false
    o.logger = thread_logger
    o.hsm = o.hsm or {}
    o.hsm.max_sessions = 1
    if slot_id then
      o.select_slot = function(list)
        for _, slot in ipairs(list) do
          if slot.id == slot_id then return slot end
        end
        return nil, "slot " .. tostring(slot_id) .. " (the worker's) is gone", "ERR_TOKEN_NOT_FOUND"
      end
    end
    local e, err, code = jwkengine.open(o)
    if not e then return nil, err, code end
    entry = { engine = e, refreshed = os.time() }
    thread_engines[options_json] = entry
    thread_logger("info", "a worker-thread Lua VM opened its engine")
  end
  local e = entry.engine
  local now = os.time()
  if refresh and now - entry.refreshed >= refresh then
    entry.refreshed = now
    e:reload(set) -- on an error the cached set stays and signing reports it
  end
  local claims = cjson.decode(body)
  if type(claims) ~= "table" then return nil, "claims are not a JSON object", "ERR_JWT_CLAIMS" end
  return e:sign_jwt(set, claims, { lifetime = lifetime })
end

-- True once this worker's engine is open (what serve_token waits for): for
-- a readiness check of one's own.
function M.ready()
  return engine ~= nil
end

return M

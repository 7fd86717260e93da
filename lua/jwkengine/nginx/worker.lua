-- init_worker: each worker opens its engine after the fork, in a timer.
-- The first opening holds the startup lock (jwkengine.nginx.startup_lock)
-- and generates the missing startup sets: with N workers starting at once
-- each set is generated exactly once, and no worker reads the token while
-- another one writes to it (SoftHSM, for one, can miss a token whose files
-- are being rewritten during C_Initialize). Then the worker builds its JWK
-- Set cache, refreshed on a timer.
local config = require("jwkengine.config")
local jwks = require("jwkengine.nginx.jwks")
local logging = require("jwkengine.nginx.logging")
local schedule = require("jwkengine.nginx.schedule")
local secrets = require("jwkengine.nginx.secrets")
local startup_lock = require("jwkengine.nginx.startup_lock")
local state = require("jwkengine.nginx.state")
local E = require("jwkengine.errors").E

local M = {}

local log = logging.logger
local LOCK_KEY = "jwkengine:startup-lock"
-- Set when the token refused the PIN: the other workers (and a worker that
-- replaces a dead one) do not try it again, since every wrong attempt brings
-- the token closer to locking the PIN. A (re)load clears it: that is how an
-- operator says the PIN was fixed.
local LOGIN_REFUSED_KEY = "jwkengine:login-refused"

-- init() (a load or reload) allows one new login attempt.
function M.allow_login(dict)
  dict:delete(LOGIN_REFUSED_KEY)
end

-- True for failures where trying again would only repeat a wrong PIN: the
-- code says so (C sets ERR_LOGIN_REFUSED where it refuses to log in).
local function login_refused(code)
  if code == E.ERR_LOGIN_REFUSED then return true end
  return type(code) == "string" and code:find("^CKR_PIN") ~= nil
end

-- Opens the engine and generates the missing startup sets, holding the
-- startup lock for both.
local function open_engine()
  local settings = state.settings
  local jwkengine = require("jwkengine")
  local o = secrets.with_kept(secrets.copy(settings.open_options), settings.kept_secrets)
  o.startup = false -- generation happens below, under the lock
  -- the recorder /metrics reads (jwkengine.nginx.metrics), kept beside the engine
  o.metrics = jwkengine.metrics.new()
  local dict = ngx.shared[settings.shared_dict]
  local locked, lerr = startup_lock.acquire(dict, settings.shared_dict, LOCK_KEY, settings.startup_lock_timeout)
  if not locked then return nil, lerr, E.ERR_STARTUP_LOCK end
  local refused = dict:get(LOGIN_REFUSED_KEY)
  if refused then
    startup_lock.release(dict, LOCK_KEY)
    return nil, "another worker's login was refused (" .. tostring(refused) ..
      "); the PIN is not tried again until nginx is reloaded or restarted", E.ERR_LOGIN_REFUSED
  end
  local opened, e, err, code = pcall(jwkengine.open, o)
  if not opened or not e then
    if opened and login_refused(code) then dict:set(LOGIN_REFUSED_KEY, tostring(code or err)) end
    startup_lock.release(dict, LOCK_KEY)
    if not opened then return nil, "jwkengine.open raised: " .. tostring(e), E.ERR_OPEN end
    return nil, err, code
  end
  local sets = e:configuration().startup_sets
  if settings.open_options.startup ~= false and #sets > 0 then
    local ran, done, gerr, gcode = pcall(e.ensure_startup_sets, e, sets)
    if not ran or not done then
      startup_lock.release(dict, LOCK_KEY)
      e:close()
      if not ran then return nil, "startup generation raised: " .. tostring(done), E.ERR_STARTUP end
      return nil, gerr, gcode
    end
  end
  startup_lock.release(dict, LOCK_KEY)
  state.metrics = o.metrics -- read once state.engine is e
  return e
end

-- The sessions one worker may hold (README: Session budgets), and how that
-- adds up, for the warning. hsm.max_sessions is per process: a worker
-- holds its engine's pool and login session; with thread_pool signing,
-- each worker-thread Lua VM that signs opens an engine of its own, which
-- signs on its login session, and at most thread_queue.in_flight VMs of a
-- worker sign at once.
local function sessions_per_worker(hsm, settings)
  local own = hsm.max_sessions + 1
  if not settings.thread_pool then
    return own, string.format("(hsm.max_sessions %d + 1 login session)", hsm.max_sessions)
  end
  local vms = settings.thread_queue.in_flight
  return own + vms, string.format("(hsm.max_sessions %d + 1 login session + thread_queue.in_flight %d " ..
    "thread VMs x 1 session)", hsm.max_sessions, vms)
end

-- What to lower so that `workers` fit within `limit` sessions.
local function budget_advice(hsm, settings, workers, limit)
  local per_worker = math.floor(limit / workers)
  if not settings.thread_pool then
    return string.format("lower HSM_MAX_SESSIONS to %d or fewer", math.max(1, per_worker - 1))
  end
  return string.format("lower thread_queue.in_flight to %d or fewer with HSM_MAX_SESSIONS 0",
    math.max(1, per_worker - 1))
end

-- Said once (by worker 0) when the workers together may need more sessions
-- than the token reports it has.
local function warn_session_budget(e)
  local hsm = e:configuration().hsm
  local stats = hsm and hsm.enabled and ngx.worker.id() == 0 and e:stats()
  local limit = stats and stats.token_max_sessions
  if not limit then return end
  local settings = state.settings
  local workers = ngx.worker.count()
  local per_worker, sum = sessions_per_worker(hsm, settings)
  local needed = workers * per_worker
  if needed > limit then
    log("warn", string.format("%d workers x %s = %d sessions, but the token reports %d: %s " ..
      "(README: Session budgets)", workers, sum, needed, limit, budget_advice(hsm, settings, workers, limit)))
  end
end

-- Seconds between a worker's attempts to open its engine: 1, 2, 4 ... up
-- to this.
M.MAX_RETRY_DELAY = 30

-- Seconds a client should wait before asking again while this worker's
-- engine is not open (Retry-After): until the worker's next attempt, at
-- least 1. A worker that gave up (a configuration or PIN failure) tries
-- again only after a reload, which no client can foresee: it asks for the
-- longest wait between attempts, so clients poll slowly while an operator
-- fixes it.
function M.retry_after()
  if state.open_given_up then return M.MAX_RETRY_DELAY end
  local at = state.open_retry_at
  return at and math.max(1, math.ceil(at - ngx.now())) or 1
end

local retry_delay = 1
local function open_in_timer(premature)
  if premature then return end
  state.open_retry_at = nil
  local e, err, code = open_engine()
  if not e then
    state.open_error = string.format("%s (%s)", tostring(err), tostring(code))
    if code == E.ERR_CONFIG or code == E.ERR_LOGIN_REFUSED or login_refused(code) then
      state.open_given_up = true
      log("error", "opening the engine in worker " .. ngx.worker.pid() .. " failed: " ..
        state.open_error .. "; not retrying: fix the configuration and reload nginx")
      return
    end
    log("error", "opening the engine in worker " .. ngx.worker.pid() .. " failed: " ..
      state.open_error .. "; retrying in " .. retry_delay .. " s")
    local ok, terr = ngx.timer.at(retry_delay, open_in_timer)
    if ok then
      state.open_retry_at = ngx.now() + retry_delay
    else
      log("error", "cannot schedule a retry: " .. tostring(terr))
    end
    retry_delay = math.min(retry_delay * 2, M.MAX_RETRY_DELAY)
    return
  end
  local slot = e:slot()
  if slot then state.settings.slot_id = slot.id end
  state.engine = e
  warn_session_budget(e)
  local jwks_ok, jerr = jwks.rebuild(false)
  if not jwks_ok then log("error", "building the JWK Set: " .. jerr) end
  state.open_error = nil
  log("info", "the engine is open in worker " .. ngx.worker.pid())
end

local function refresh_timer(premature)
  local engine, settings = state.engine, state.settings
  if premature or not engine then return end
  local ok, err = jwks.rebuild(true)
  if not ok then log("warn", "refreshing the JWK Set (the previous one is kept): " .. err) end
  if not settings.token_set_published then
    engine:reload(settings.token_set) -- the signing set, when it is not published
  end
end

-- Opens the engine in this worker (in a zero-delay timer: the startup lock
-- may have to wait, and init_worker cannot sleep) and schedules the JWK Set
-- refresh. Returns true, or nil, message.
function M.start()
  local settings = state.settings
  local missing = {}
  for _, name in ipairs(settings.master_env) do
    if os.getenv(name) == nil then missing[#missing + 1] = "env " .. name .. ";" end
  end
  if #missing > 0 then
    log("warn", "nginx removed variables jwkengine reads from its workers' environment; add " ..
      table.concat(missing, " ") .. " to the main block of nginx.conf")
  end
  local ok, err = ngx.timer.at(0, open_in_timer)
  if not ok then return nil, "cannot start the opening timer: " .. tostring(err) end
  ok, err = ngx.timer.every(settings.refresh, refresh_timer)
  if not ok then return nil, "cannot start the JWK Set refresh timer: " .. tostring(err) end
  if settings.scheduled then return schedule.start() end
  return true
end

-- Read by a PKCS#11 module rather than by jwkengine, and as easily lost.
local MODULE_ENVIRONMENT = { "SOFTHSM2_CONF" }

-- The variables the master sees of those jwkengine (and its module) reads,
-- names only, never values: a worker that does not see them names the
-- missing `env` directives.
function M.master_environment()
  local names = {}
  for _, list in ipairs({ config.ENVIRONMENT, MODULE_ENVIRONMENT }) do
    for _, name in ipairs(list) do
      if os.getenv(name) ~= nil then names[#names + 1] = name end
    end
  end
  return names
end

return M

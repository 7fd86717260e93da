-- jwkengine in nginx with the Lua module (OpenResty, or Debian's nginx with
-- libnginx-mod-http-lua): a JWK Set endpoint and a token endpoint backed by
-- the engine, opened in each worker after the fork.
--
--   init_by_lua_block        { require("jwkengine.nginx").init({ ... }) }
--   init_worker_by_lua_block { require("jwkengine.nginx").init_worker() }
--   location = /.well-known/jwks.json { content_by_lua_block { require("jwkengine.nginx").serve_jwks() } }
--   location = /token                 { content_by_lua_block { require("jwkengine.nginx").serve_token() } }
--
-- Phases, and the file of each:
--   init (master)         settings.lua: reads and checks the configuration;
--                         never loads the PKCS#11 module, never logs in. A
--                         PIN or store secrets given as options are handed
--                         to C (secrets.lua).
--   init_worker (worker)  worker.lua: opens the engine in a timer, under the
--                         startup lock (startup_lock.lua), generating the
--                         missing startup sets once; builds the worker's JWK
--                         Set cache (jwks.lua), refreshed on a timer.
--   content               handlers.lua: serve_jwks answers from the cache;
--                         serve_token signs, in the event loop or in nginx's
--                         thread pool (threads.lua), behind the worker's
--                         bounded queue (queue.lua).
-- state.lua holds what the files share in one process; logging.lua writes
-- to nginx's error log.
--
-- Written for LuaJIT / Lua 5.1 (OpenResty); thread_sign also runs in the
-- Lua VMs of nginx's worker threads, where only a few ngx APIs exist.
local handlers = require("jwkengine.nginx.handlers")
local health = require("jwkengine.nginx.health")
local metrics = require("jwkengine.nginx.metrics")
local settings = require("jwkengine.nginx.settings")
local state = require("jwkengine.nginx.state")
local threads = require("jwkengine.nginx.threads")
local worker = require("jwkengine.nginx.worker")

local M = { _VERSION = "0.1.0" }

-- Reads and checks the configuration in init_by_lua. options: everything
-- jwkengine.open takes (config, environment, hsm, startup_sets, dsn, secrets,
-- store, select_slot, logger), plus nginx's own options: jwks, token,
-- thread_pool, thread_queue, shared_dict, ready_timeout, startup_lock_timeout,
-- schedule_interval, health, metrics (each with its type, default and
-- meaning in jwkengine.nginx.options, the README's table of them).
function M.init(options)
  local s, err
  if ngx and ngx.get_phase and ngx.get_phase() ~= "init" then
    err = "init() belongs in init_by_lua_block (it runs in nginx's master)"
  else
    s, err = settings.load(options or {})
  end
  -- A mistake in the options stops nginx: raised here, at the caller's line.
  if not s then error("jwkengine.nginx: " .. err, 2) end
  state.settings = s
  return true
end

-- Opens the engine in this worker and schedules the JWK Set refresh.
function M.init_worker()
  local ok, err = false, "init_worker() needs init() in init_by_lua_block first"
  if state.settings then
    ok, err = worker.start()
    if ok then ok, err = metrics.start() end
  end
  if not ok then error("jwkengine.nginx: " .. tostring(err), 2) end
end

-- GET /metrics: Prometheus text of every worker, summed (keep it on
-- loopback or behind allow).
M.serve_metrics = metrics.serve_metrics

-- GET /health: 200 or 503 with a JSON body naming the failing part; a
-- readiness probe (cached per worker for health.cache seconds).
M.serve_health = health.serve_health

-- GET /.well-known/jwks.json: the public keys of the published sets, from
-- this worker's cache.
M.serve_jwks = handlers.serve_jwks

-- POST /token with a JSON object of claims: a JWT signed with the
-- configured set (iat and exp added unless given), as application/jwt.
-- options (per location, all optional): set, lifetime, thread_pool (a pool
-- name, or false to sign in the event loop even when init() set one).
M.serve_token = handlers.serve_token

-- Runs in a Lua VM of nginx's thread pool (ngx.run_worker_thread calls it
-- as jwkengine.nginx.threads.thread_sign; kept here for configurations that
-- name it by this module).
M.thread_sign = threads.thread_sign

-- True once this worker's engine is open (what serve_token waits for): for
-- a readiness check of one's own.
function M.ready()
  return state.engine ~= nil
end

return M

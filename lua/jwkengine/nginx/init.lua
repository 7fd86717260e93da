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
--   thread_queue = { in_flight = hsm.max_sessions, length = 256, timeout = 2 }:
--     per worker, signatures run at once in the pool, requests kept waiting
--     for a turn, seconds one waits; past that 503 (jwkengine.nginx.queue)
--   shared_dict = "jwkengine": the lua_shared_dict holding the startup lock
--   ready_timeout = 10: seconds a request waits for its worker's engine
--   startup_lock_timeout = 300: seconds one worker may hold the startup lock
--   health = { budget = 1, cache = 5 }: seconds a probe signature may take;
--     seconds a worker reuses its health result
--   metrics = { flush_interval = 1 }: seconds between a worker's flushes of
--     its counts into the shared dict
function M.init(options)
  if ngx and ngx.get_phase and ngx.get_phase() ~= "init" then
    settings.fail("init() belongs in init_by_lua_block (it runs in nginx's master)", 2)
  end
  local s = settings.load(options or {})
  state.settings = s
  return true
end

-- Opens the engine in this worker and schedules the JWK Set refresh.
function M.init_worker()
  if not state.settings then
    settings.fail("init_worker() needs init() in init_by_lua_block first", 2)
  end
  local ok, err = worker.start()
  if ok then ok, err = metrics.start() end
  if not ok then settings.fail(err, 2) end
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

-- Every option of jwkengine.nginx.init() that is nginx's own (everything
-- else goes to jwkengine.open), once, in the form of the engine's schema
-- (jwkengine.config_settings): its type, default, range and one line of
-- documentation. jwkengine.nginx.settings checks and fills init()'s options
-- from this list, and the README's table of nginx options is made from it
-- (scripts/readme-config.lua; spec/nginx/nginx_options_spec.lua compares).
--
-- name     as init() takes it ("jwks.max_age": options.jwks.max_age)
-- type     as in config_settings, whose check() checks each value
-- positive a seconds value that must be above 0
-- min/max  the range of an integer
-- default  the value when the option is not given (nil: unset, or worked
--          out by settings.lua from the configuration, as `shown` says)
-- shown    how the README shows the default when it is not a plain value
-- doc      one line for the README
local engine_settings = require("jwkengine.config_settings")
local E = require("jwkengine.errors").E

local M = {}

local INT_MAX = engine_settings.INT_MAX

M.OPTIONS = {
  { name = "jwks.sets", type = "list", shown = "the startup sets",
    doc = "the key sets whose public keys `GET /.well-known/jwks.json` publishes (a non-empty list)" },
  { name = "jwks.max_age", type = "seconds", default = engine_settings.default("publication.max_age"),
    doc = "`Cache-Control: max-age` of the JWK Set; the engine's `publication.max_age` (a configuration "
      .. "naming another value is refused)" },
  { name = "jwks.refresh", type = "seconds", positive = true, default = engine_settings.default("publication.refresh"),
    doc = "seconds between two re-reads of the published sets, per worker; the engine's `publication.refresh`" },
  { name = "token.set", type = "string",
    shown = "`hydra.jwt.access-token` when published, else the first published set",
    doc = "the key set `POST /token` signs with" },
  { name = "token.lifetime", type = "seconds", positive = true, default = 300,
    doc = "`exp - iat` of the tokens `POST /token` makes; at most `tokens.max_lifetime`" },
  { name = "token.max_body", type = "integer", min = 1, max = INT_MAX, default = 16384,
    doc = "the largest claims body `POST /token` accepts, in bytes (413 beyond)" },
  { name = "thread_pool", type = "string",
    doc = "sign in this nginx `thread_pool` (`ngx.run_worker_thread`) instead of the event loop" },
  { name = "thread_queue.in_flight", type = "integer", min = 1, max = INT_MAX,
    shown = "`hsm.max_sessions` (at least 1)",
    doc = "per worker, signatures running at once in the thread pool" },
  { name = "thread_queue.length", type = "integer", min = 0, max = INT_MAX, default = 256,
    doc = "per worker, requests waiting for a turn in the thread pool (503 `" .. E.ERR_OVERLOADED .. "` beyond)" },
  { name = "thread_queue.timeout", type = "seconds", positive = true, default = 2,
    doc = "seconds a request waits for its turn in the thread pool (503 `" .. E.ERR_OVERLOADED .. "` after)" },
  { name = "shared_dict", type = "string", default = "jwkengine",
    doc = "the `lua_shared_dict` holding the startup lock, the schedule lock and the metrics" },
  { name = "ready_timeout", type = "seconds", positive = true, default = 10,
    doc = "seconds a request waits for its worker's engine to open" },
  { name = "startup_lock_timeout", type = "seconds", positive = true, default = 300,
    doc = "seconds one worker may hold the startup lock while it generates the startup sets" },
  { name = "schedule_interval", type = "seconds", positive = true, shown = "`jwks.refresh`",
    doc = "seconds between two runs of the key schedule (`engine:maintain()`), in one worker" },
  { name = "health.budget", type = "seconds", positive = true, default = 1,
    doc = "seconds the health check's probe signature may take" },
  { name = "health.cache", type = "seconds", positive = true, default = 5,
    doc = "seconds a worker reuses its health result" },
  { name = "metrics.flush_interval", type = "seconds", positive = true, default = 1,
    doc = "seconds between two flushes of a worker's counts into the shared dict" },
}

-- name -> option, and section -> { key -> option } ("" for the top level).
M.BY_NAME, M.SECTIONS = engine_settings.index(M.OPTIONS)

return M

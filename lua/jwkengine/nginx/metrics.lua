-- GET /metrics: the engine's Prometheus metrics summed over every worker.
-- Each worker counts in Lua tables (its engine's jwkengine.metrics
-- recorder, and the JWK Set and health counts below) and adds what it
-- counted since its last flush to the shared dict with dict:incr, on a
-- timer (metrics.flush_interval) and before it answers a scrape. Counters
-- in the dict outlive workers and reloads, as Prometheus counters should.
-- Gauges are per worker: the session pool's are summed from each live
-- worker's last flush (kept for a few flush intervals), with the sessions
-- its thread-pool VMs' engines hold (their PKCS#11 counters reach the
-- worker with each signature: jwkengine.nginx.threads); key states are the
-- answering worker's (every worker computes the same ones).
local metrics = require("jwkengine.metrics")
local logging = require("jwkengine.nginx.logging")
local state = require("jwkengine.nginx.state")

local M = {}

local COUNTER_PREFIX = "metric:"
local GAUGE_PREFIX = "gauge:"

local jwks_counts = {}    -- HTTP status -> count, this worker
local probe_counts = {}   -- "ok" | "failed" -> count, this worker
local flushed = {}        -- series key -> value already added to the dict

function M.count_jwks(status)
  jwks_counts[status] = (jwks_counts[status] or 0) + 1
end

function M.count_probe(ok)
  local result = ok and "ok" or "failed"
  probe_counts[result] = (probe_counts[result] or 0) + 1
end

local function stats_of(engine)
  return engine and (engine:stats()) or nil -- nil without an HSM
end

-- This worker's counters, cumulative since it started.
local function worker_counters(engine)
  local values = engine and state.metrics:counters(stats_of(engine)) or {}
  for status, count in pairs(jwks_counts) do
    values[metrics.series("jwkengine_jwks_requests_total", "status", status)] = count
  end
  for result, count in pairs(probe_counts) do
    values[metrics.series("jwkengine_health_probes_total", "result", result)] = count
  end
  return values
end

-- Adds this worker's counts since the last flush to the shared dict. A
-- series this worker has not flushed yet is written even at 0 (incr with
-- an init value creates it): Prometheus wants every bucket of a histogram,
-- and every counter the engine prints, on every scrape, zeros included.
function M.flush()
  local settings = state.settings
  local dict = ngx.shared[settings.shared_dict]
  local engine = state.engine
  for key, value in pairs(worker_counters(engine)) do
    local delta = value - (flushed[key] or 0)
    if delta ~= 0 or flushed[key] == nil then
      local _, err = dict:incr(COUNTER_PREFIX .. key, delta, 0)
      if err then
        logging.logger("warn", "metrics: cannot count in lua_shared_dict " .. settings.shared_dict .. ": " .. err)
        return
      end
      flushed[key] = value
    end
  end
  local stats = stats_of(engine)
  if stats then
    local ttl = settings.metrics_flush_interval * 3
    local pid = ngx.worker.pid()
    dict:set(GAUGE_PREFIX .. pid .. ":jwkengine_pkcs11_sessions_open", stats.sessions_open, ttl)
    dict:set(GAUGE_PREFIX .. pid .. ":jwkengine_pkcs11_max_sessions", stats.max_sessions, ttl)
    for series, value in pairs(metrics.token_gauges(stats, {})) do
      dict:set(GAUGE_PREFIX .. pid .. ":" .. series, value, ttl)
    end
    local thread_sessions = state.metrics:thread_sessions()
    if thread_sessions then
      dict:set(GAUGE_PREFIX .. pid .. ":jwkengine_pkcs11_thread_sessions", thread_sessions, ttl)
    end
  end
end

local function flush_timer(premature)
  if not premature then M.flush() end
end

-- Starts this worker's flush timer (init_worker).
function M.start()
  return ngx.timer.every(state.settings.metrics_flush_interval, flush_timer)
end

-- Every series of every worker, summed.
local function all_workers()
  local dict = ngx.shared[state.settings.shared_dict]
  local values = {}
  for _, key in ipairs(dict:get_keys(0)) do
    local series = key:sub(1, #COUNTER_PREFIX) == COUNTER_PREFIX and key:sub(#COUNTER_PREFIX + 1)
      or key:sub(1, #GAUGE_PREFIX) == GAUGE_PREFIX and key:match("^[^:]+:%d+:(.*)$")
    local value = series and dict:get(key)
    if value then values[series] = (values[series] or 0) + value end
  end
  return values
end

function M.serve_metrics()
  M.flush()
  local values = all_workers()
  local engine = state.engine
  if engine then
    local sets = {}
    for i, set in ipairs(state.settings.sets) do sets[i] = set end
    if not state.settings.token_set_published then sets[#sets + 1] = state.settings.token_set end
    metrics.gauges(engine, nil, sets, values)
  end
  local body = metrics.text(values)
  ngx.status = 200
  ngx.header["Content-Type"] = metrics.CONTENT_TYPE
  ngx.header["Cache-Control"] = "no-store"
  ngx.header["Content-Length"] = #body
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK)
end

return M

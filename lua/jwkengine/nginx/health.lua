-- GET /health: 200 {"status":"ok",...} when this worker's engine is open,
-- the token is present and a probe signature with each published set's
-- current key verifies within health.budget seconds; 503 with the failing
-- part named otherwise; 200 {"status":"degraded",...} while one of several
-- HSM tokens (hsm.tokens) signs and another is down. The result is cached per worker for health.cache
-- seconds, so health checks, however frequent, sign at most once per set
-- per worker and period (counted as jwkengine_health_probes_total).
local cjson = require("cjson.safe")
local health = require("jwkengine.health")
local metrics = require("jwkengine.nginx.metrics")
local state = require("jwkengine.nginx.state")

local M = {}

local cached -- { body, status, expires }

-- The answer while the engine is not open: why, as worker.lua recorded it.
local function not_open()
  local part = "not open yet"
  if state.open_error then
    local code = state.open_error:match("%(([%w_]+)%)$")
    part = health.part_of(code) or (state.open_given_up and "cannot open" or "not open yet")
  end
  return { status = "unavailable", failure = part,
    checks = { engine = state.open_error and (part .. ": " .. state.open_error) or part } }
end

local function evaluate()
  local settings = state.settings
  if not state.engine then return not_open() end
  local result = health.check(state.engine, settings.sets, settings.health_budget)
  metrics.count_probe(result.status ~= "unavailable")
  return result
end

function M.serve_health()
  local now = ngx.now()
  if not cached or now >= cached.expires then
    local result = evaluate()
    -- a worker whose engine is not open yet probes nothing: no caching
    -- needed, and the answer turns 200 as soon as it opens
    local ttl = state.engine and state.settings.health_cache or 0
    cached = { body = cjson.encode(result) .. "\n", status = result.status ~= "unavailable" and 200 or 503,
      expires = now + ttl }
  end
  ngx.status = cached.status
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Cache-Control"] = "no-store"
  ngx.header["Content-Length"] = #cached.body
  ngx.print(cached.body)
  return ngx.exit(ngx.HTTP_OK)
end

return M

-- The key schedule (engine:maintain: generate the next key, record
-- promotions and retirements) runs in one worker at a time. Which key
-- signs and which are published needs no run of it (every worker computes
-- that from the recorded states and the clock); the writes do, and one
-- writer is enough.
--
-- The worker that holds the lock (a lua_shared_dict entry holding its pid,
-- renewed on each run) runs it every schedule_interval seconds. If that
-- worker dies, its entry expires after a few intervals and another takes
-- over. Two runs at once would still be safe (each write is a
-- compare-and-swap on the set's state version); the lock saves the work.
local jwks = require("jwkengine.nginx.jwks")
local logging = require("jwkengine.nginx.logging")
local state = require("jwkengine.nginx.state")

local M = {}

local LOCK_KEY = "jwkengine:schedule"
local EXPIRY_INTERVALS = 3

-- True when this worker runs the schedule now: it held the lock or took it.
local function lead(dict, interval)
  local pid = ngx.worker.pid()
  local ttl = interval * EXPIRY_INTERVALS
  if dict:add(LOCK_KEY, pid, ttl) then return true end
  if dict:get(LOCK_KEY) ~= pid then return false end
  dict:set(LOCK_KEY, pid, ttl)
  return true
end

local function run(premature)
  local settings, engine = state.settings, state.engine
  if premature or not engine then return end
  if not lead(ngx.shared[settings.shared_dict], settings.schedule_interval) then return end
  local changes, err, code = engine:maintain()
  if not changes then
    logging.logger("error", string.format("running the key schedule: %s (%s)", tostring(err), tostring(code)))
    return
  end
  for _, change in ipairs(changes) do
    logging.logger("info", string.format("key set '%s': key '%s' %s -> %s", change.set, change.kid,
      change.from or "new", change.to))
  end
  -- this worker publishes what it wrote at once; the others on their refresh
  if #changes > 0 then
    local ok, rerr = jwks.rebuild(true)
    if not ok then logging.logger("warn", "refreshing the JWK Set after the schedule: " .. rerr) end
  end
end

-- Starts the schedule's timer in this worker. Returns true, or nil, message.
function M.start()
  local ok, err = ngx.timer.every(state.settings.schedule_interval, run)
  if not ok then return nil, "cannot start the key schedule's timer: " .. tostring(err) end
  return true
end

return M

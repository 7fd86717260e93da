-- Admission to thread-pool signing, per worker: at most `in_flight`
-- signatures run at once, at most `length` requests wait for a turn, none
-- waits longer than `timeout` seconds. Waiting happens here, in the event
-- loop, where it costs nothing: a request handed to ngx.run_worker_thread
-- beyond what the worker's Lua VM pool holds fails at once ("no available
-- Lua vm"), and more VMs than signers only open more engines and sessions.
-- A request past the queue gets ERR_OVERLOADED, which the handler answers
-- with 503 and Retry-After.
local logging = require("jwkengine.nginx.logging")
local E = require("jwkengine.errors").E

local M = {}

local slots   -- this worker's ngx.semaphore, made on first use (not in the master)
local waiting = 0
local refused, last_report = 0, 0

-- Under overload every refused request would log a line, adding disk
-- writes exactly when the worker has no time: one line a second instead.
local function refuse(message)
  refused = refused + 1
  local now = ngx.now()
  if now - last_report >= 1 then
    logging.logger("warn", string.format("signing overloaded: %d requests refused with 503 since the last " ..
      "report (%s)", refused, message))
    refused, last_report = 0, now
  end
  return nil, message, E.ERR_OVERLOADED
end

-- Frees the slot, then passes on what fn returned (or what it raised).
local function release(ok, ...)
  slots:post(1)
  if not ok then error((...), 0) end
  return ...
end

-- Calls fn(...) when a slot is free and returns what it returns, or nil,
-- message, "ERR_OVERLOADED" when the queue is full or the wait ran out.
-- limits: { in_flight, length, timeout } (checked by jwkengine.nginx.settings).
--
-- A request whose handler is torn down while fn runs (lua_check_client_abort
-- on, or ngx.exit from another light thread) would keep its slot: the
-- nginx endpoints do neither.
function M.run(limits, fn, ...)
  if not slots then slots = assert(require("ngx.semaphore").new(limits.in_flight)) end
  if slots:count() <= 0 and waiting >= limits.length then
    return refuse(string.format("all %d signing slots of this worker are busy and %d requests wait already " ..
      "(thread_queue.length)", limits.in_flight, waiting))
  end
  waiting = waiting + 1
  local ok, err = slots:wait(limits.timeout)
  waiting = waiting - 1
  if not ok then
    if err == "timeout" then
      return refuse(string.format("no signing slot of this worker became free within %g s (thread_queue.timeout)",
        limits.timeout))
    end
    return nil, "waiting for a signing slot: " .. tostring(err), E.ERR_THREAD
  end
  return release(pcall(fn, ...))
end

return M

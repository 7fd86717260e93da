-- A lock across nginx's workers in a lua_shared_dict: `add` with an expiry
-- is the mutex. A holder that died (a worker killed while generating) is
-- taken over at once rather than waited out, with a second `add` so that
-- only one waiter takes it over.
local logging = require("jwkengine.nginx.logging")

local M = {}

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

-- Takes the lock `key` of `dict` (named dict_name in errors), waiting (with
-- ngx.sleep) up to ttl seconds and a little more; it expires after ttl.
-- Returns true, or nil, message.
function M.acquire(dict, dict_name, key, ttl)
  local pid = ngx.worker.pid()
  local deadline = ngx.now() + ttl + 5
  local delay = 0.01
  while true do
    local ok, err = dict:add(key, pid, ttl)
    if ok then return true end
    if err ~= "exists" then return nil, "shared dict " .. dict_name .. ": " .. tostring(err) end
    local holder = dict:get(key)
    if holder and holder ~= pid and not process_alive(holder) then
      if dict:add(key .. ":taken-from:" .. holder, pid, ttl) then
        logging.logger("warn", "worker " .. holder .. " died holding the startup lock; taking it over")
        dict:set(key, pid, ttl)
        return true
      end
    end
    if ngx.now() > deadline then return nil, "timed out waiting for the startup lock" end
    ngx.sleep(delay)
    if delay < 0.2 then delay = delay * 2 end
  end
end

function M.release(dict, key)
  if dict:get(key) == ngx.worker.pid() then dict:delete(key) end
end

return M

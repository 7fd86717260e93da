-- Signing in nginx's thread pool (ngx.run_worker_thread). The worker hands
-- a thread the serialized open options, its slot, the set and the claims;
-- the thread's Lua VM (which shares nothing with the worker's, and has only
-- a few ngx APIs) opens an engine of its own on first use and keeps it.
local cjson = require "cjson.safe"
local logging = require "jwkengine.nginx.logging"
local queue = require "jwkengine.nginx.queue"
local secrets = require "jwkengine.nginx.secrets"
local state = require "jwkengine.nginx.state"

local M = {}

-- The options of jwkengine.open as JSON for the worker-thread VMs, or nil
-- and why they cannot cross (functions cannot). They hold no secret
-- (secrets.keep took them out first): those VMs find them in C.
function M.options_json(open_options)
  local function clean(value, path)
    local kind = type(value)
    if kind == "table" then
      local c = {}
      for k, v in pairs(value) do
        local cleaned, err = clean(v, path .. "." .. tostring(k))
        if err then return nil, err end
        c[k] = cleaned
      end
      return c
    elseif kind == "function" or kind == "userdata" or kind == "thread" then
      return nil, "thread_pool signing cannot pass option " .. path .. " (a " .. kind ..
        ") to nginx's worker threads; leave it out or sign in the event loop"
    end
    return value
  end
  local o = {}
  for k, v in pairs(open_options) do
    if k ~= "logger" and k ~= "select_slot" then
      local cleaned, err = clean(v, k)
      if err then return nil, err end
      o[k] = cleaned
    end
  end
  return assert(cjson.encode(o))
end

local vm_pool_warned = false

-- One signature in a worker thread. The thread's VM loads this module
-- only, not jwkengine.nginx: lua-nginx-module runs a full garbage
-- collection of the VM in the worker's event loop after every call, so
-- what the VM holds is paid on every token.
local function run_in_thread(pool, set, body, lifetime)
  local settings = state.settings
  local ok, token, err, code = ngx.run_worker_thread(pool, "jwkengine.nginx.threads", "thread_sign",
    settings.thread_options_json, settings.slot_id or false, set, body, lifetime, settings.refresh,
    settings.kept_secrets)
  if not ok then
    if token == "no available Lua vm" and not vm_pool_warned then
      vm_pool_warned = true
      logging.logger("warn", string.format("nginx's worker-thread Lua VM pool is smaller than " ..
        "thread_queue.in_flight (%d): set lua_worker_thread_vm_pool_size to at least that",
        settings.thread_queue.in_flight))
    end
    return nil, "worker thread: " .. tostring(token), "ERR_THREAD"
  end
  return token, err, code
end

-- Signs in a worker thread (from a worker's content handler), waiting in
-- this worker's bounded queue for a free slot; returns what thread_sign
-- returns, or nil, err, code (ERR_OVERLOADED past the queue).
function M.sign(pool, set, body, lifetime)
  local settings = state.settings
  if not settings.thread_options_json then
    return nil, tostring(settings.thread_options_problem), "ERR_CONFIG"
  end
  if not ngx.run_worker_thread then
    return nil, "this nginx Lua module has no ngx.run_worker_thread", "ERR_CONFIG"
  end
  return queue.run(settings.thread_queue, run_in_thread, pool, set, body, lifetime)
end

------------------------------------------------------------------------
-- in the worker-thread VMs

local thread_engines = {} -- options JSON -> { engine, refreshed }

-- Opens a VM's engine: one PKCS#11 session is enough (a VM serves one
-- thread at a time), on the slot the worker chose.
local function open_thread_engine(options_json, slot_id, kept_secrets)
  local jwkengine = require "jwkengine"
  local o = secrets.with_kept(cjson.decode(options_json), kept_secrets)
  o.startup = false
  o.logger = logging.thread_logger
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
  logging.thread_logger("info", "a worker-thread Lua VM opened its engine")
  return e
end

-- The function ngx.run_worker_thread calls (as jwkengine.nginx.threads.thread_sign).
-- The set is re-read from the token every `refresh` seconds.
function M.thread_sign(options_json, slot_id, set, body, lifetime, refresh, kept_secrets)
  local entry = thread_engines[options_json]
  if not entry then
    local e, err, code = open_thread_engine(options_json, slot_id, kept_secrets)
    if not e then return nil, err, code end
    entry = { engine = e, refreshed = os.time() }
    thread_engines[options_json] = entry
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

return M

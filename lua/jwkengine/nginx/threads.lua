-- Signing in nginx's thread pool (ngx.run_worker_thread). The worker hands
-- a thread the serialized open options, its slot, the set and the claims;
-- the thread's Lua VM (which shares nothing with the worker's, and has only
-- a few ngx APIs) opens an engine of its own on first use and keeps it.
local cjson = require("cjson.safe")
local logging = require("jwkengine.nginx.logging")
local metrics = require("jwkengine.metrics")
local queue = require("jwkengine.nginx.queue")
local secrets = require("jwkengine.nginx.secrets")
local state = require("jwkengine.nginx.state")
local E = require("jwkengine.errors").E

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

-- This worker's recorder (the counts /metrics serves), or nil before its
-- engine is open.
local function recorder()
  return state.engine and state.metrics
end

-- What ngx.run_worker_thread answered, passed on as thread_sign's answer,
-- true (counted) and the thread engine's seconds to its next attempt to
-- come back (nil but during an HSM outage). What the thread's engine did
-- (thread_sign returns it last, after what its PKCS#11 counters grew by)
-- is counted in this worker's recorder; a thread that did not run is a
-- signing failure, ERR_THREAD.
local function count_thread_call(set, ok, token, err, code, retry_in, pkcs11, ...)
  local counts = recorder()
  if not ok then
    if token == "no available Lua vm" and not vm_pool_warned then
      vm_pool_warned = true
      logging.logger("warn", string.format("nginx's worker-thread Lua VM pool is smaller than " ..
        "thread_queue.in_flight (%d): set lua_worker_thread_vm_pool_size to at least that",
        state.settings.thread_queue.in_flight))
    end
    if counts then counts:failed(E.ERR_THREAD) end
    return nil, "worker thread: " .. tostring(token), E.ERR_THREAD, true
  end
  if counts then
    counts:add_call(set, ...)
    if pkcs11 then counts:add_pkcs11(pkcs11) end
  end
  return token, err, code, true, retry_in or nil
end

-- One signature in a worker thread. The thread's VM loads this module
-- only, not jwkengine.nginx: every VM of the pool keeps what it loaded for
-- the worker's lifetime, and its garbage collections walk all of it.
local function run_in_thread(pool, set, body, lifetime)
  local settings = state.settings
  return count_thread_call(set, ngx.run_worker_thread(pool, "jwkengine.nginx.threads", "thread_sign",
    settings.thread_options_json, settings.slot_id or false, set, body, lifetime, settings.refresh,
    settings.kept_secrets))
end

-- Signs in a worker thread (from a worker's content handler), waiting in
-- this worker's bounded queue for a free slot; returns what thread_sign
-- returns, or nil, err, code (ERR_OVERLOADED past the queue); during an HSM
-- outage a fourth value, the seconds until the thread's engine next tries
-- to come back (its own outage, not the worker's: Retry-After). Each call
-- is counted in this worker's metrics as a signature in its event loop
-- would be, and a refusal of the queue as a signing failure by its code.
function M.sign(pool, set, body, lifetime)
  local settings = state.settings
  if not settings.thread_options_json then
    return nil, tostring(settings.thread_options_problem), E.ERR_CONFIG
  end
  if not ngx.run_worker_thread then
    return nil, "this nginx Lua module has no ngx.run_worker_thread", E.ERR_CONFIG
  end
  local token, err, code, counted, retry_in = queue.run(settings.thread_queue, run_in_thread, pool, set, body,
    lifetime)
  local counts = recorder()
  if not counted and counts then counts:failed(code) end
  return token, err, code, retry_in
end

------------------------------------------------------------------------
-- in the worker-thread VMs

local thread_engines = {} -- options JSON -> { engine, refreshed, reported }

-- With hsm.tokens (from the options or the config file) max_sessions is
-- each token's: the entries as configured, each with max_sessions 0 (the
-- settings a URI named are left to the URI, as written). nil without
-- hsm.tokens.
local function tokens_without_pool(jwkengine, o)
  local cfg = jwkengine.check_config(o)
  if not (cfg and cfg.hsm.tokens) then return nil end
  local settings = require("jwkengine.config_settings")
  local pkcs11_uri = require("jwkengine.pkcs11_uri")
  local tokens = {}
  for i, token in ipairs(cfg.hsm.tokens) do
    local named = {}
    if token.uri then
      local parsed = pkcs11_uri.parse(token.uri, { pin_stays_encoded = true })
      named = parsed and pkcs11_uri.to_hsm_config(parsed) or {}
    end
    local entry = {}
    for key, setting in pairs(settings.section("hsm")) do
      if setting.per_token and named[key] == nil and token[key] ~= nil then entry[key] = token[key] end
    end
    entry.max_sessions = 0
    tokens[i] = entry
  end
  return tokens
end

-- Opens a VM's engine on the slot the worker chose, signing on its login
-- session (max_sessions 0: no pool): a VM serves one thread at a time, so
-- one session is enough, and each VM holds one session of the token's
-- budget instead of two (README: Session budgets).
local function open_thread_engine(options_json, slot_id, kept_secrets)
  local jwkengine = require("jwkengine")
  local o = secrets.with_kept(cjson.decode(options_json), kept_secrets)
  o.startup = false
  o.logger = logging.thread_logger
  o.metrics = metrics.last_call() -- its calls are counted by the worker
  o.hsm = o.hsm or {}
  local tokens = tokens_without_pool(jwkengine, o)
  if tokens then
    o.hsm.tokens = tokens
    slot_id = nil -- the worker's slot is one token's; each token is found by its own settings
  else
    o.hsm.max_sessions = 0
  end
  if slot_id then
    o.select_slot = function(list)
      for _, slot in ipairs(list) do
        if slot.id == slot_id then return slot end
      end
      return nil, "slot " .. tostring(slot_id) .. " (the worker's) is gone", E.ERR_TOKEN_NOT_FOUND
    end
  end
  local e, err, code = jwkengine.open(o)
  if not e then return nil, err, code end
  logging.thread_logger("info", "a worker-thread Lua VM opened its engine")
  return e, nil, nil, o.metrics
end

-- What this VM's engine's PKCS#11 counters grew by since it last said
-- (metrics.pkcs11_since), or false; its first report also counts the one
-- session it holds (thread_sessions), for the worker's gauge.
local function pkcs11_report(entry)
  local e = entry.engine
  local stats = (e:stats()) -- nil without an HSM
  local delta = stats and metrics.pkcs11_since(stats, entry.reported) or false
  if stats and not entry.announced then
    entry.announced = true
    delta = delta or {}
    delta.thread_sessions = 1
  end
  return delta
end

-- The function ngx.run_worker_thread calls (as jwkengine.nginx.threads.thread_sign).
-- The set is re-read from the token every `refresh` seconds. Returns the
-- token (or nil, err, code), the seconds to this engine's next attempt to
-- come back during an HSM outage (false otherwise), then what the call did
-- for the worker to count: what the engine's PKCS#11 counters grew by
-- (pkcs11_report) and metrics.last_call's take.
function M.thread_sign(options_json, slot_id, set, body, lifetime, refresh, kept_secrets)
  local entry = thread_engines[options_json]
  if not entry then
    local e, err, code, recorder = open_thread_engine(options_json, slot_id, kept_secrets)
    if not e then return nil, err, code end
    entry = { engine = e, recorder = recorder, refreshed = os.time(), reported = {} }
    thread_engines[options_json] = entry
  end
  local e = entry.engine
  local now = os.time()
  if refresh and now - entry.refreshed >= refresh then
    entry.refreshed = now
    e:reload(set) -- on an error the cached set stays and signing reports it
  end
  local claims = cjson.decode(body)
  if type(claims) ~= "table" then
    return nil, "claims are not a JSON object", E.ERR_JWT_CLAIMS, false, pkcs11_report(entry)
  end
  local token, err, code = e:sign_jwt(set, claims, { lifetime = lifetime })
  local outage = code == E.ERR_HSM_UNAVAILABLE and e:hsm_outage()
  -- then what the engine counted, for the worker's metrics (see count_thread_call)
  return token, err, code, outage and outage.retry_in or false, pkcs11_report(entry), entry.recorder:take()
end

return M

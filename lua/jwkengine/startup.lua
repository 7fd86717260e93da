-- Generation on startup: the configured sets (by default Hydra's
-- hydra.openid.id-token and hydra.jwt.access-token, RS256) are generated
-- when missing, in the HSM when it is enabled, else in the software store.
-- A set found in either place counts as present (Hydra's fallback rule).
-- Any error other than "not found" stops the start: creating a second key
-- because a token hiccuped would be worse than not starting. A set whose
-- key states cannot be read (ERR_KEY_STATES_CORRUPT) exists: it is logged
-- and refuses by itself, the start goes on.
--
-- Once across processes: PKCS#11 has no "create if missing", so two
-- processes finding a set missing at once would each make a first key.
-- Whoever finds one missing takes a lock file of what it generates into
-- (flock; nginx's workers hold their shared-dict lock around this as well)
-- and looks again under it; the software store's first key is also written with an atomic
-- insert-if-empty. Nothing is locked while every set exists.
local core = require("jwkengine.core")
local E = require("jwkengine.errors").E

local M = {}

-- How long a process waits for another one's startup generation (RSA 4096
-- on a network HSM takes seconds; nginx's startup_lock_timeout is the same).
M.LOCK_TIMEOUT = 300

local function lock_dir()
  local f = io.open("/run/lock/.", "r") -- Debian's world-writable lock folder
  if f then
    f:close()
    return "/run/lock"
  end
  return os.getenv("TMPDIR") or "/tmp"
end

-- What identifies the place startup generates into, as text: the HSM's
-- library and token (its URI without a PIN, label, serial, slot) and the
-- key set prefix, or the store's DSN without its user and password.
-- Processes generating into other tokens or stores never wait for each
-- other; the text is only ever hashed into a file name.
function M.identity(config)
  local hsm = config.hsm or {}
  if hsm.enabled then
    local uri = hsm.uri and hsm.uri:gsub("[;?&]?pin%-[%w]+=[^;?&]*", "")
    return table.concat({ "hsm", tostring(hsm.library), tostring(uri), tostring(hsm.token_label),
      tostring(hsm.token_serial), tostring(hsm.slot), tostring(hsm.key_set_prefix) }, "\0")
  end
  local dsn = config.dsn or "sqlite://jwkengine.sqlite"
  dsn = dsn:gsub("^(%a[%w+.-]*://)[^/@]*@", "%1"):gsub("([?&])password=[^&]*", "%1")
  return "store\0" .. dsn
end

-- The lock file processes generating into the same place (identity, see
-- M.identity) take before generating; a short hash of it names the file.
function M.lock_file(identity)
  local name = "jwkengine-startup.lock"
  if identity then
    local digest = core.digest("SHA-256", identity):sub(1, 8)
    name = "jwkengine-startup-" .. digest:gsub(".", function(c) return string.format("%02x", c:byte()) end)
      .. ".lock"
  end
  return lock_dir() .. "/" .. name
end

-- The startup lock, waited for up to timeout seconds: lock, or
-- nil, err, code (ERR_STARTUP_LOCK), timed_out.
local function acquire(path, timeout, log)
  local deadline = core.monotonic() + timeout
  local said = false
  while true do
    local lock, err, code = core.try_lock_file(path)
    if lock or lock == nil then return lock, err, code end
    if not said then
      log("info", string.format("another process is generating startup key sets (it holds %s); waiting", path))
      said = true
    end
    if core.monotonic() > deadline then
      return nil, string.format("timed out after %d s waiting for the startup lock %s", timeout, path),
        E.ERR_STARTUP_LOCK, true
    end
    core.pause(0.05)
  end
end

-- keys: the engine's fallback manager (jwkengine.fallback); startup_sets:
-- { { set =, alg = }, ... }; log(level, message); options.lock_file (default
-- M.lock_file(options.identity)), options.lock_timeout (default M.LOCK_TIMEOUT),
-- options.created(set): called for each set this call generated (the
-- lifecycle records it).
-- Returns true, the names of the sets this call generated.
function M.ensure_sets(keys, startup_sets, log, options)
  options = options or {}
  -- A set that does not read back as present is looked at again under the
  -- lock, whatever the read said: another process generating it leaves it
  -- half made (a public half without its private half) for a moment.
  -- A set whose key states cannot be read exists: said once here, no lock.
  local missing = {}
  for _, entry in ipairs(startup_sets) do
    local jwks, err, code = keys:key_set(entry.set)
    if not jwks and code == E.ERR_KEY_STATES_CORRUPT then
      log("error", string.format("startup key set '%s': %s", entry.set, err))
    elseif not jwks then
      missing[#missing + 1] = entry
    end
  end
  if #missing == 0 then return true, {} end
  local path = options.lock_file or M.lock_file(options.identity)
  local lock, lerr, lcode, timed_out = acquire(path, options.lock_timeout or M.LOCK_TIMEOUT, log)
  if timed_out then return nil, lerr, lcode end
  if not lock then
    -- a folder this process cannot write: generate as before the lock (at
    -- worst two processes racing make a key each, which the lifecycle
    -- orders), rather than refuse to start
    log("warn", string.format("%s (%s): generating startup key sets without the lock", lerr, lcode))
  end
  local generated = {}
  local function failed(...)
    if lock then lock:release() end
    return nil, ...
  end
  for _, entry in ipairs(missing) do
    local jwks, err, code = keys:key_set(entry.set)
    if not jwks and code == E.ERR_KEY_STATES_CORRUPT then
      -- the set exists and refuses by itself until keys repair: the start
      -- goes on, so the other sets serve and this one answers at once
      log("error", string.format("startup key set '%s': %s", entry.set, err))
    elseif not jwks and code ~= E.ERR_KEY_SET_NOT_FOUND then
      return failed(err, code)
    elseif not jwks then
      log("info", string.format("JSON Web Key Set '%s' doesn't exist yet, generating new key pair...",
        entry.set))
      local result
      result, err, code = keys:generate_if_missing(entry.set, entry.alg)
      if not result then
        return failed(string.format("generating startup key set '%s': %s", entry.set, err), code)
      end
      if result == "exists" then
        log("info", string.format("JSON Web Key Set '%s' was created by another instance meanwhile",
          entry.set))
      else
        generated[#generated + 1] = entry.set
        if options.created then options.created(entry.set) end
      end
    end
  end
  if lock then lock:release() end
  return true, generated
end

return M

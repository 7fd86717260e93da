-- Secrets given to init() as options (hsm.pin, the pin-value of hsm.uri,
-- secrets.system) are handed to C (kept_secret.c) in the master: the
-- settings the workers inherit, and the options serialized for the thread
-- pool, hold none. The workers' login finds the PIN in C under the name of
-- the variable it would otherwise read (token:login_env); the store's
-- secrets are read back when an engine opens (it seals with Lua strings).
local M = {}

M.PIN_NAME = "HSM_PIN"
local SECRET_NAME = "jwkengine.nginx secrets.system " -- .. i

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end
M.copy = copy

-- What a previous configuration kept is not this one's PIN.
function M.forget_pin()
  require("jwkengine").kept_secrets.forget_pin(M.PIN_NAME)
end

-- Keeps the secrets among the open options in C and returns the options
-- without them, with the number of store secrets kept; nil, message on a
-- failure. cfg: the loaded configuration (with the HSM disabled, no PIN is
-- needed: it is dropped, not kept). A reload forgets what the previous
-- configuration kept.
function M.keep(open_options, cfg)
  local kept = require("jwkengine").kept_secrets
  local public = copy(open_options)
  if type(open_options.hsm) == "table" then
    public.hsm = copy(open_options.hsm)
    local ok, err, code = true, nil, nil
    if cfg.hsm.enabled and public.hsm.pin ~= nil then
      ok, err, code = kept.keep_pin(M.PIN_NAME, public.hsm.pin)
    elseif cfg.hsm.enabled and cfg.hsm.pin_in_uri and public.hsm.uri then
      ok, err, code = kept.keep_uri_pin(M.PIN_NAME, public.hsm.uri)
    end
    if not ok then return nil, string.format("configuration: %s (%s)", tostring(err), tostring(code)) end
    -- one PIN is kept (under HSM_PIN); the tokens of hsm.tokens read theirs
    -- from files, so no PIN travels in the options the workers inherit
    for i, token in ipairs(type(public.hsm.tokens) == "table" and public.hsm.tokens or {}) do
      if type(token) == "table" and (token.pin ~= nil or (type(token.uri) == "string" and token.uri:find("pin%-value="))) then
        return nil, string.format("configuration: hsm.tokens[%d] gives its PIN in the options: under nginx give "
          .. "each token a pin_file (or put hsm.tokens in the config file)", i)
      end
    end
    if public.hsm.uri then public.hsm.uri = require("jwkengine.pkcs11_uri").without_pin(public.hsm.uri) end
    public.hsm.pin = nil
  end
  local secrets = type(open_options.secrets) == "table" and open_options.secrets.system or {}
  for i, secret in ipairs(secrets) do
    local ok, err, code = kept.keep_secret(SECRET_NAME .. i, secret)
    if not ok then return nil, string.format("configuration: %s (%s)", tostring(err), tostring(code)) end
  end
  local stale = #secrets + 1
  while kept.forget_secret(SECRET_NAME .. stale) do stale = stale + 1 end
  public.secrets = nil
  return public, #secrets
end

-- The open options a worker (or a worker-thread VM) passes to
-- jwkengine.open: `o` with the store secrets the master kept read back.
function M.with_kept(o, kept_secrets)
  if kept_secrets and kept_secrets > 0 then
    local kept = require("jwkengine").kept_secrets
    local system = {}
    for i = 1, kept_secrets do system[i] = kept.kept_secret(SECRET_NAME .. i) end
    o.secrets = { system = system }
  end
  return o
end

return M

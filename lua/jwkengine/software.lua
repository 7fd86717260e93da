-- The software key manager: keys kept in the store, sealed with AES-256-GCM
-- in Ory Hydra's format (keydata = sealed JSON of the private JWK).
--
-- Decrypted keys are held as OpenSSL keys while their set is cached (never
-- decrypted again per signature) and freed when the cache lets go of them.
-- The cache lives `cache_ttl` seconds, so instances sharing a PostgreSQL
-- store pick up each other's new keys.
local core = require("jwkengine.core")
local cjson = require("cjson.safe")
local jwk_module = require("jwkengine.jwk")
local keyset = require("jwkengine.keyset")
local key_rules = require("jwkengine.key_rules")
local names = require("jwkengine.names")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}
-- key_set, key, signing_key, verification_keys and reload come from the
-- base, keyset.Manager; load and what only the store does are below.
local Manager = setmetatable({ where = "software" }, { __index = keyset.Manager })
Manager.__index = Manager

local implied_alg = key_rules.implied_alg

-- store: jwkengine.store; secrets: list of secret strings (first seals).
-- options.cache_ttl: seconds a loaded set is trusted (default 30).
-- options.logger(level, message): where unusable certificates are logged
function M.new(store, secrets, options)
  options = options or {}
  return setmetatable({
    store = store,
    secrets = secrets,
    cache_ttl = options.cache_ttl or 30,
    now = options.now or os.time,
    log = options.logger or function() end,
    sets = {},
  }, Manager)
end

function Manager:seal(jwk)
  local text = assert(cjson.encode(jwk))
  return core.aes_gcm_seal(self.secrets[1], text)
end

-- Decrypts one row into { kid, alg, use, key, private, jwk (public) }.
-- Decryption and import are one C call: the private members never become
-- Lua strings; `jwk` is the stored JWK without them. A row that does not
-- decrypt is ERR_KEY_DECRYPT; one that decrypts but is not a key jwkengine
-- can use and publish as stored is ERR_KEY_INVALID (C sets which).
function Manager:open_row(row)
  local function invalid(why)
    return util.fail(E.ERR_KEY_INVALID, "key set '%s' key '%s': %s", row.sid, row.kid, why)
  end
  local key, stored, code = core.open_sealed_key(self.secrets, row.keydata)
  if not key then
    return util.fail(code, "key set '%s' key '%s': %s", row.sid, row.kid, stored)
  end
  local jwk = cjson.decode(stored)
  local public = key:public_jwk()
  local alg, use = jwk.alg, jwk.use
  if alg == nil then alg = implied_alg(public) end
  if use == nil then use = "sig" end
  local ok, err = key_rules.check_alg(key, alg)
  if not ok then return invalid(err) end
  ok, err = key_rules.check_use(alg, use)
  if not ok then return invalid(err) end
  public.kid, public.alg, public.use = row.kid, alg, use
  self:add_certificate(row, key, jwk.x5c, public)
  return { kid = row.kid, alg = alg, use = use, object = key, private = key:is_private(), jwk = public,
    retired_mark = M.retired_on_row(jwk, use) or nil }
end

-- Retirement written on a software key (mark_retired): its sealed JWK's
-- key_ops is a list without "sign". Rows without key_ops (Hydra's, and
-- every key jwkengine writes otherwise) are not marked.
function M.retired_on_row(jwk, use)
  if use ~= "sig" or type(jwk.key_ops) ~= "table" then return false end
  for _, op in ipairs(jwk.key_ops) do
    if op == "sign" then return false end
  end
  return true
end

-- The stored JWK's x5c (the certificate keys.lua cert made, kept in the
-- sealed row as Hydra's JWKs keep theirs) into the public JWK, once its
-- public key is checked to be the key's. One that cannot be published is
-- logged, and the key signs on without it, as on the token (hsm.lua).
function Manager:add_certificate(row, key, x5c, public)
  if x5c == nil then return end
  local members, err, code
  local first = type(x5c) == "table" and x5c[1]
  if type(first) ~= "string" or not first:find("^[%w+/]+=?=?$") then
    err, code = string.format("key '%s': member 'x5c' is not a list of base64 certificates", row.kid),
      E.ERR_CERTIFICATE_INVALID
  else
    local der = core.b64url_decode((first:gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" })))
    members, err, code = key:public_key():certificate_members(der or "", row.kid)
  end
  if not members then
    self.log("error", string.format("key set '%s': %s (%s); the key is published without x5c",
      row.sid, err, code))
    return
  end
  public.x5c, public["x5t#S256"] = members.x5c, members["x5t#S256"]
end

-- Loads a set: every row decrypted, newest first. A row that cannot be
-- decrypted is kept as `broken` with its error, so the other keys still
-- work and the broken one is reported wherever it matters.
function Manager:load(set, refresh)
  local entry = self.sets[set]
  if entry and not refresh and self.now() - entry.loaded_at < self.cache_ttl then return entry end
  local rows, err, code = self.store:rows(set)
  if not rows then return nil, err, code end
  if #rows == 0 then
    self.sets[set] = nil
    return util.fail(E.ERR_KEY_SET_NOT_FOUND, "key set '%s' not found", set)
  end
  -- rows come newest first (created_at): the lifecycle may rely on that
  entry = { keys = {}, loaded_at = self.now(), newest_first = true }
  for i, row in ipairs(rows) do
    local key, kerr, kcode = self:open_row(row)
    entry.keys[i] = key or { kid = row.kid, broken = kerr, code = kcode }
  end
  return self:loaded(set, entry, "newest")
end

-- How store_key writes a sealed key: a new row, a replaced row, or a new
-- row only while the set is still empty (startup generation, which several
-- processes may race for: the transaction holds the store's write lock).
local WRITES = {
  insert = function(store, set, kid, keydata) return store:insert(set, kid, keydata) end,
  replace = function(store, set, kid, keydata)
    local rows, err, code = store:rows(set)
    if not rows then return nil, err, code end
    for _, row in ipairs(rows) do
      if row.kid == kid then return store:update_keydata(row.pk, keydata) end
    end
    return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' not found in key set '%s'", kid, set)
  end,
  first_in_set = function(store, set, kid, keydata)
    local present, err, code = store:set_exists(set)
    if present == nil then return nil, err, code end
    if present then return "exists" end
    return store:insert(set, kid, keydata)
  end,
}

-- Seals a key and writes it (mode: a WRITES name, default insert; x5c:
-- the certificate list to keep with it). Returns its public JWK, or
-- "exists" when first_in_set found the set taken.
function Manager:store_key(set, key, kid, alg, use, mode, x5c)
  local jwk = key:is_private() and key:private_jwk() or key:public_jwk()
  jwk.kid, jwk.alg, jwk.use, jwk.x5c = kid, alg, use, x5c
  local keydata, err, code = self:seal(jwk)
  if not keydata then return util.fail(code, "cannot seal key '%s': %s", kid, err) end
  local write = WRITES[mode or "insert"]
  local ok
  ok, err, code = self.store:transaction(function(store) return write(store, set, kid, keydata) end)
  self.sets[set] = nil
  if not ok then return nil, err, code end
  if ok == "exists" then return "exists" end
  local public = key:public_jwk()
  public.kid, public.alg, public.use = kid, alg, use
  return public
end

function Manager:generate(set, alg, options)
  options = options or {}
  if not key_rules.generates("software", alg) then
    return util.fail(E.ERR_UNSUPPORTED_ALG, "cannot generate keys for algorithm '%s'", tostring(alg))
  end
  local use = options.use or "sig"
  local ok, err, code = key_rules.check_use(alg, use)
  if not ok then return nil, err, code end
  local key
  key, err, code = core.generate_software_key(alg, { bits = options.rsa_bits })
  if not key then return nil, err, code end
  local kid = options.kid
  if options.thumbprint_kid then
    if kid ~= nil then error("pass kid or thumbprint_kid, not both", 2) end
    local hash = options.thumbprint_kid == true and "SHA-256" or options.thumbprint_kid
    kid, err, code = jwk_module.thumbprint(key, hash)
    if not kid then return nil, err, code end
  end
  if not kid then
    kid, err, code = core.uuid()
    if not kid then return nil, err, code end
  end
  return self:store_key(set, key, kid, alg, use)
end

-- Generates a key for a set only if the set has none, atomically across
-- processes sharing the store. Returns "generated" or "exists".
function Manager:generate_if_missing(set, alg)
  if not key_rules.generates("software", alg) then
    return util.fail(E.ERR_UNSUPPORTED_ALG, "cannot generate keys for algorithm '%s'", tostring(alg))
  end
  local exists, err, code = self.store:set_exists(set)
  if exists == nil then return nil, err, code end
  if exists then return "exists" end
  -- Generating can take a second (RSA 4096): done before taking the lock.
  local key
  key, err, code = core.generate_software_key(alg)
  if not key then return nil, err, code end
  local result, kid
  kid, err, code = core.uuid()
  if not kid then return nil, err, code end
  result, err, code = self:store_key(set, key, kid, alg, "sig", "first_in_set")
  if not result then return nil, err, code end
  return result == "exists" and "exists" or "generated"
end

-- Writes a key from a JWK (table or JSON text) or PEM; mode: a WRITES
-- name. options: kid, alg, use.
local function write_key(self, set, input, options, mode)
  options = options or {}
  local key, err, code, jwk
  if type(input) == "string" and input:match("^%s*%-%-%-%-%-BEGIN") then
    key, err, code = core.import_pem(input)
    jwk = {}
  else
    if type(input) == "string" then
      -- strict JSON: a duplicated member (two "d"s) is refused, not resolved
      local derr
      jwk, derr = jwk_module.decode_json(input)
      if type(jwk) ~= "table" then
        return util.fail(E.ERR_KEY_IMPORT, "input is neither a PEM block nor a JSON Web Key%s",
          input:match("^%s*[{%[]") and (": " .. tostring(derr)) or "")
      end
    elseif type(input) == "table" then
      jwk = input
    else
      error("import takes a JWK (table or JSON) or a PEM string", 3)
    end
    if jwk.keys then
      return util.fail(E.ERR_KEY_IMPORT, "input is a JWK Set: import one key at a time")
    end
    key, err, code = core.import_jwk(jwk)
  end
  if not key then return util.fail(code, "cannot import key: %s", err) end
  local private, perr, pcode = key_rules.check_private(key)
  if not private then return nil, perr, pcode end
  local alg = options.alg or jwk.alg or implied_alg(key:public_jwk())
  if not alg then return util.fail(E.ERR_KEY_IMPORT, "cannot tell the key's algorithm: pass alg") end
  local fits, ferr = key_rules.check_alg(key, alg)
  if not fits then return util.fail(E.ERR_KEY_IMPORT, "cannot import key: %s", ferr) end
  local use = options.use or jwk.use or "sig"
  local ok, uerr, ucode = key_rules.check_use(alg, use)
  if not ok then return nil, uerr, ucode end
  local kid = options.kid or jwk.kid
  if kid == nil then
    kid, uerr, ucode = core.uuid()
    if not kid then return nil, uerr, ucode end
  elseif type(kid) ~= "string" then
    return util.fail(E.ERR_KEY_IMPORT, "cannot import key: kid must be a string, got %s", key_rules.shown(kid))
  else
    ok, uerr, ucode = names.check(kid, "kid")
    if not ok then return nil, uerr, ucode end
  end
  return self:store_key(set, key, kid, alg, use, mode)
end

-- Adds a key (a new row).
function Manager:import(set, input, options)
  return write_key(self, set, input, options, "insert")
end

-- Replaces the key with the same kid (its row keeps its place).
function Manager:update(set, input, options)
  return write_key(self, set, input, options, "replace")
end

-- Forgets the cached set: the next use reads the store again.
-- A self-signed certificate for a software key, kept in its sealed row as
-- the JWK member x5c (Hydra's rows and JWKs carry it the same way); returns
-- the public JWK with x5c. options: subject, days (see hsm.lua).
function Manager:certify(set, kid, options)
  local key, err, code = self:key_entry(set, kid)
  if not key then return nil, err, code end
  -- as the token refuses a retired pair's signature (and re-sealing here
  -- would drop the mark)
  if key.retired_mark then return nil, keyset.retired_on_key(key, set), E.ERR_KEY_STATE end
  local der
  der, err, code = key.object:self_signed_certificate(options.subject, options.days)
  if not der then return nil, string.format("key set '%s': %s", set, err), code end
  local members
  members, err, code = key.object:public_key():certificate_members(der, kid)
  if not members then return nil, err, code end
  local ok
  ok, err, code = self:store_key(set, key.object, kid, key.alg, key.use, "replace", members.x5c)
  if not ok then return nil, err, code end
  return self:key(set, kid)
end

function Manager:forget(set)
  self.sets[set] = nil
end

function Manager:delete(set, kid)
  local count, err, code = self.store:delete(set, kid)
  self.sets[set] = nil
  if not count then return nil, err, code end
  if count == 0 then
    if kid then return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' not found in key set '%s'", kid, set) end
    return util.fail(E.ERR_KEY_SET_NOT_FOUND, "key set '%s' not found", set)
  end
  return true
end

-- Writes retirement on the key itself (retired true: the sealed JWK gets
-- key_ops ["verify"], so it never signs again whatever the set's records
-- say) or undoes it (false: key_ops removed). The row is read, re-sealed
-- in C (the private members never reach Lua) and written back in one
-- transaction, keeping its place and Hydra's hydra_jwk schema.
function Manager:mark_retired(set, kid, retired)
  if type(retired) ~= "boolean" then error("mark_retired takes a boolean", 2) end
  local ok, err, code = self.store:transaction(function(store)
    local rows, rerr, rcode = store:rows(set)
    if not rows then return nil, rerr, rcode end
    for _, row in ipairs(rows) do
      if row.kid == kid then
        local key, stored, kcode = core.open_sealed_key(self.secrets, row.keydata)
        if not key then return util.fail(kcode, "key set '%s' key '%s': %s", set, kid, stored) end
        local jwk = cjson.decode(stored)
        if jwk.use ~= nil and jwk.use ~= "sig" then
          return util.fail(E.ERR_KEY_USE, "key '%s' of key set '%s' is an encryption key: it has "
            .. "no signing state to mark", kid, set)
        end
        local sealed, serr, scode = core.sealed_key_mark(self.secrets, row.keydata, retired)
        if not sealed then return util.fail(scode, "key set '%s' key '%s': %s", set, kid, serr) end
        return store:update_keydata(row.pk, sealed)
      end
    end
    return util.fail(E.ERR_KEY_NOT_FOUND, "key '%s' not found in key set '%s'", kid, set)
  end)
  self.sets[set] = nil
  if not ok then return nil, err, code end
  return true
end

function Manager:sign(set, payload, options)
  local entry, err, code = self:load(set)
  if not entry then return nil, err, code end
  return keyset.sign(entry, set, payload, options, "software", self.metrics)
end

-- Re-seals every row with the first secret, in one transaction: a crash
-- part-way leaves every row as it was. Returns the number of rows. Each
-- row is opened and sealed again in one C call: the private key it holds
-- never becomes a Lua string.
function Manager:rotate_secrets()
  local count, err, code = self.store:transaction(function(store)
    local rows, rerr, rcode = store:all_rows()
    if not rows then return nil, rerr, rcode end
    for _, row in ipairs(rows) do
      local sealed, serr, scode = core.aes_gcm_reseal(self.secrets, row.keydata)
      if not sealed then
        return util.fail(scode, "key set '%s' key '%s': %s", row.sid, row.kid, serr)
      end
      local ok, uerr, ucode = store:update_keydata(row.pk, sealed)
      if not ok then return nil, uerr, ucode end
    end
    return #rows
  end)
  self.sets = {}
  return count, err, code
end

function Manager:close()
  self.sets = {}
  if self.store then self.store:close() end
  self.store = nil
end

return M

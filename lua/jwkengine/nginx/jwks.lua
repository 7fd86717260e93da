-- The worker's JWK Set: the public keys of the published sets as one
-- canonical JSON body with a strong ETag, rebuilt on a timer.
local cjson = require "cjson.safe"
local core = require "jwkengine.core"
local logging = require "jwkengine.nginx.logging"
local state = require "jwkengine.nginx.state"

local M = {}

-- JSON with sorted member names, so that every worker (and every reload)
-- serializes the same keys to the same bytes, and so to the same ETag.
local function canonical(value)
  if type(value) == "table" then
    if #value > 0 or next(value) == nil then
      local parts = {}
      for i, v in ipairs(value) do parts[i] = canonical(v) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local names = {}
    for k in pairs(value) do names[#names + 1] = tostring(k) end
    table.sort(names)
    local parts = {}
    for i, k in ipairs(names) do parts[i] = cjson.encode(k) .. ":" .. canonical(value[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return cjson.encode(value)
end

-- A strong ETag: base64url of SHA-256 over the exact body.
local function etag_of(body)
  return '"' .. core.b64url_encode(core.digest("SHA-256", body)) .. '"'
end

-- Re-reads the published sets from the token or store when `reread` (not
-- only from the engine's cache, so keys added or deleted by other processes
-- show up) and rebuilds the body. On an error the previous cache stays.
function M.rebuild(reread)
  local settings, engine = state.settings, state.engine
  local keys, seen = {}, {}
  for _, set in ipairs(settings.sets) do
    if reread then engine:refresh(set) end
    local jwks, err, code = engine:key_set(set)
    if jwks then
      local sorted = {}
      for i, jwk in ipairs(jwks.keys) do sorted[i] = jwk end
      table.sort(sorted, function(a, b) return tostring(a.kid) < tostring(b.kid) end)
      for _, jwk in ipairs(sorted) do
        local json = canonical(jwk)
        if not seen[json] then -- the same key in two sets is published once
          seen[json] = true
          keys[#keys + 1] = json
        end
      end
    elseif code ~= "ERR_KEY_SET_NOT_FOUND" then
      return nil, string.format("key set '%s': %s", set, tostring(err))
    end
  end
  local body = '{"keys":[' .. table.concat(keys, ",") .. ']}'
  local cache = state.jwks_cache
  if not cache or cache.body ~= body then
    if cache then logging.logger("info", "the published JWK Set changed") end
    state.jwks_cache = { body = body, etag = etag_of(body), count = #keys }
  end
  return true
end

return M

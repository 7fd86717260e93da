-- The worker's JWK Set: the public keys of the published sets as one
-- canonical JSON body with a strong ETag, rebuilt on a timer.
local jwkengine = require("jwkengine")
local jwk = jwkengine.jwk
local logging = require("jwkengine.nginx.logging")
local state = require("jwkengine.nginx.state")
local E = require("jwkengine.errors").E

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
    for i, k in ipairs(names) do parts[i] = jwk.encode(k) .. ":" .. canonical(value[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return jwk.encode(value)
end

-- A strong ETag: base64url of SHA-256 over the exact body and the keys'
-- states: a promotion (next -> current) changes no published key, yet a
-- client that revalidates must learn that the set's schedule moved on.
local function etag_of(body, states)
  return '"' .. jwkengine.b64url_encode(jwkengine.digest("SHA-256", body .. "\n" .. states)) .. '"'
end

-- Re-reads the published sets from the token or store when `reread` (not
-- only from the engine's cache, so keys added or deleted by other processes
-- show up) and rebuilds the body. On an error the previous cache stays.
-- The re-read is a reload, not a refresh: a read that fails (a pair another
-- process is making has one half on the token for a moment) keeps the
-- engine's cached set too, so this worker goes on signing and publishing
-- the keys it had instead of failing every request until the next read.
-- The cache is valid until the earliest next state change of its sets
-- (valid_until, nil when none is scheduled): serve_jwks rebuilds it then
-- and never lets a client cache it past that time.
function M.rebuild(reread)
  local settings, engine = state.settings, state.engine
  local keys, seen, states, valid_until = {}, {}, {}, nil
  for _, set in ipairs(settings.sets) do
    if reread then
      local ok, rerr, rcode = engine:reload(set)
      if not ok and rcode ~= E.ERR_KEY_SET_NOT_FOUND then
        logging.logger("warn", string.format("re-reading key set '%s' (the cached keys stay): %s (%s)",
          set, tostring(rerr), tostring(rcode)))
      end
    end
    local publication, err, code = engine:publication(set)
    if publication then
      local sorted = {}
      for i, jwk in ipairs(publication.keys) do sorted[i] = jwk end
      table.sort(sorted, function(a, b) return tostring(a.kid) < tostring(b.kid) end)
      for _, jwk in ipairs(sorted) do
        local json = canonical(jwk)
        if not seen[json] then -- the same key in two sets is published once
          seen[json] = true
          keys[#keys + 1] = json
        end
      end
      states[#states + 1] = canonical({ set = set, states = publication.states })
      local change = publication.next_change
      if change and (not valid_until or change < valid_until) then valid_until = change end
    elseif code ~= E.ERR_KEY_SET_NOT_FOUND then
      return nil, string.format("key set '%s': %s", set, tostring(err))
    end
  end
  local body = '{"keys":[' .. table.concat(keys, ",") .. ']}'
  local etag = etag_of(body, table.concat(states, "\n"))
  local cache = state.jwks_cache
  if not cache or cache.etag ~= etag then
    if cache then logging.logger("info", "the published JWK Set changed") end
    state.jwks_cache = { body = body, etag = etag, count = #keys, valid_until = valid_until }
  else
    cache.valid_until = valid_until
  end
  return true
end

-- Seconds a client may cache the JWK Set from now on: jwks.max_age, cut
-- at the next state change. Rebuilds the cache first when that change has
-- come (the engine re-evaluates the states on its own clock: no re-read).
-- clock() -> the current time, read after the rebuild: a rebuild blocks,
-- and a time read before it (nginx caches its time per event loop turn)
-- would let max-age reach past the change by as long as it blocked.
function M.max_age(clock)
  local cache = state.jwks_cache
  local now = clock()
  if cache.valid_until and now >= cache.valid_until then
    local ok, err = M.rebuild(false)
    if not ok then logging.logger("warn", "rebuilding the JWK Set at a state change: " .. err) end
    cache = state.jwks_cache
    now = clock()
  end
  local max_age = state.settings.max_age
  if cache.valid_until then
    max_age = math.max(0, math.min(max_age, math.floor(cache.valid_until - now)))
  end
  return max_age
end

return M

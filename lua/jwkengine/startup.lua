-- Generation on startup: the configured sets (by default Hydra's
-- hydra.openid.id-token and hydra.jwt.access-token, RS256) are generated
-- when missing, in the HSM when it is enabled, else in the software store.
-- A set found in either place counts as present (Hydra's fallback rule).
-- Any error other than "not found" stops the start: creating a second key
-- because a token hiccuped would be worse than not starting. A set whose
-- key states cannot be read (ERR_KEY_STATES_CORRUPT) exists: it is logged
-- and refuses by itself, the start goes on.
local M = {}

-- keys: the engine's fallback manager (jwkengine.fallback); startup_sets:
-- { { set =, alg = }, ... }; log(level, message); created(set): called for
-- each set this call generated (the lifecycle records it).
function M.ensure_sets(keys, startup_sets, log, created)
  for _, entry in ipairs(startup_sets) do
    local jwks, err, code = keys:key_set(entry.set)
    if not jwks and code == "ERR_KEY_STATES_CORRUPT" then
      -- the set exists and refuses by itself until keys repair: the start
      -- goes on, so the other sets serve and this one answers at once
      log("error", string.format("startup key set '%s': %s", entry.set, err))
    elseif not jwks then
      if code ~= "ERR_KEY_SET_NOT_FOUND" then return nil, err, code end
      log("info", string.format("JSON Web Key Set '%s' doesn't exist yet, generating new key pair...",
        entry.set))
      local result
      result, err, code = keys:generate_if_missing(entry.set, entry.alg)
      if not result then
        return nil, string.format("generating startup key set '%s': %s", entry.set, err), code
      end
      if result == "exists" then
        log("info", string.format("JSON Web Key Set '%s' was created by another instance meanwhile",
          entry.set))
      elseif created then
        created(entry.set)
      end
    end
  end
  return true
end

return M

-- Which keys a configuration may hold, so a typo is an error that names it
-- ("did you mean ...") rather than a setting silently left at its default.
--
-- A config file may be a whole Hydra config file: jwkengine owns `hsm`,
-- `startup_sets`, `dsn`, `secrets`, `store`, `publication` and `tokens`, and ignores Hydra's other
-- top-level sections by name (and `secrets.cookie`). Any other key, at the
-- top or inside a section jwkengine owns, is an error. The options table of
-- jwkengine.open takes jwkengine's sections and its own options only.
local policy = require("jwkengine.lifecycle.policy")
local settings = require("jwkengine.config_settings")
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

-- jwkengine's sections, each with the keys it may hold, from the schema
-- (jwkengine.config_settings; hsm's come from the caller); true: a
-- top-level setting (startup_sets: any keys, as a map set -> alg).
local SECTIONS = {}
for section, keys in pairs(settings.SECTIONS) do
  if section == "" then
    for key, setting in pairs(keys) do
      if setting.file ~= false then SECTIONS[key] = true end
    end
  elseif section ~= "hsm" then
    SECTIONS[section] = {}
    for key in pairs(keys) do SECTIONS[section][key] = true end
  end
end

-- The top-level sections of Ory Hydra's config file (v1.x and v2.x) that
-- jwkengine leaves alone, and Hydra's keys inside sections jwkengine reads.
M.HYDRA_SECTIONS = { "cgroups", "clients", "db", "dev", "feature_flags", "log", "oauth2", "oidc",
  "profiling", "serve", "sqa", "strategies", "tracing", "ttl", "urls", "version", "webfinger" }
local HYDRA_KEYS = { secrets = { cookie = true } }

local STARTUP_SET_KEYS = { set = true, alg = true, rotation = true }

local function edit_distance(a, b)
  local previous = {}
  for j = 0, #b do previous[j] = j end
  for i = 1, #a do
    local current = { [0] = i }
    for j = 1, #b do
      local substitution = previous[j - 1] + (a:sub(i, i) == b:sub(j, j) and 0 or 1)
      current[j] = math.min(previous[j] + 1, current[j - 1] + 1, substitution)
    end
    previous = current
  end
  return previous[#b]
end

-- The closest known name within two edits (a missing letter, two swapped).
local function closest(name, known)
  local best, best_distance = nil, 3
  for _, candidate in ipairs(util.sorted_keys(known)) do
    local distance = edit_distance(name, candidate)
    if distance < best_distance and distance < #name then best, best_distance = candidate, distance end
  end
  return best
end

local function unknown(origin, path, key, known)
  local suggestion = type(key) == "string" and closest(key, known)
  return util.fail(E.ERR_CONFIG, "%s: unknown setting '%s%s'%s", origin, path, tostring(key),
    suggestion and string.format(" (did you mean '%s%s'?)", path, suggestion) or "")
end

-- A mapping: a table whose keys are all strings ({} counts).
local function check_mapping(value, origin, name)
  if type(value) ~= "table" then
    return util.fail(E.ERR_CONFIG, "%s: %s must be a mapping (key: value), got %s", origin, name, type(value))
  end
  for key in pairs(value) do
    if type(key) ~= "string" then
      return util.fail(E.ERR_CONFIG, "%s: %s must be a mapping (key: value), not a list", origin, name)
    end
  end
  return true
end

local function check_keys(section, origin, path, known, also_known)
  for key in pairs(section) do
    if not known[key] and not (also_known and also_known[key]) then
      local names = {}
      for name in pairs(known) do names[name] = true end
      for name in pairs(also_known or {}) do names[name] = true end
      return unknown(origin, path, key, names)
    end
  end
  return true
end

local function check_startup_sets(value, origin)
  if type(value) ~= "table" or #value == 0 then return true end -- the map form, or config.lua's error
  for i, entry in ipairs(value) do
    if type(entry) == "table" then
      local path = string.format("startup_sets[%d].", i)
      local ok, err, code = check_keys(entry, origin, path, STARTUP_SET_KEYS)
      if ok and type(entry.rotation) == "table" then
        ok, err, code = check_keys(entry.rotation, origin, path .. "rotation.", policy.FIELD)
      end
      if not ok then return nil, err, code end
    end
  end
  return true
end

-- Checks a document's keys. top_extra: more names allowed at the top
-- (Hydra's sections in a file, jwkengine.open's own options in the table);
-- hydra: whether Hydra's keys inside jwkengine's sections are allowed.
local function check(doc, origin, hsm_keys, top_extra, hydra)
  local top = { hsm = true }
  for name in pairs(SECTIONS) do top[name] = true end
  local ok, err, code = check_keys(doc, origin, "", top, top_extra)
  if not ok then return nil, err, code end
  if doc.hsm ~= nil then
    ok, err, code = check_mapping(doc.hsm, origin, "hsm")
    if ok then ok, err, code = check_keys(doc.hsm, origin, "hsm.", hsm_keys) end
    if not ok then return nil, err, code end
  end
  for name, keys in pairs(SECTIONS) do
    if type(keys) == "table" and doc[name] ~= nil then
      ok, err, code = check_mapping(doc[name], origin, name)
      if ok then
        ok, err, code = check_keys(doc[name], origin, name .. ".", keys, hydra and HYDRA_KEYS[name])
      end
      if not ok then return nil, err, code end
    end
  end
  return check_startup_sets(doc.startup_sets, origin)
end

-- A config file (JSON or YAML, possibly Hydra's own).
function M.check_file(doc, origin, hsm_keys)
  local hydra = {}
  for _, name in ipairs(M.HYDRA_SECTIONS) do hydra[name] = true end
  return check(doc, origin, hsm_keys, hydra, true)
end

-- The options table of jwkengine.open; open_options: the names that steer
-- opening (config, logger, ...).
function M.check_options(options, hsm_keys, open_options)
  return check(options, "options", hsm_keys, open_options, false)
end

return M

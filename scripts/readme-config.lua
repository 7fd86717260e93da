-- The README's configuration table, made from the schema
-- (lua/jwkengine/config_settings.lua): rewrites the block between the two
-- marker comments in place, so a setting added or changed there needs only
--   lua5.4 scripts/readme-config.lua [README.md]
-- (from the repository, after the build: the schema reads the C limits).
-- spec/core/config_settings_spec.lua fails while the block is not what this makes.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/lib/?.so;" .. package.cpath
local settings = require("jwkengine.config_settings")

local M = {}

M.BEGIN = "<!-- config: made by scripts/readme-config.lua from lua/jwkengine/config_settings.lua -->"
M.END = "<!-- /config -->"

local function shown_default(setting)
  if setting.shown then return setting.shown end
  local value = setting.default
  if value == nil then return "—" end
  return "`" .. tostring(value) .. "`"
end

local function shown_type(setting)
  local kind = setting.type
  if kind == "integer" then
    if setting.max then
      local max = setting.max == 2 ^ 31 - 1 and "2^31 - 1" or string.format("%d", setting.max)
      kind = string.format("integer, %d to %s", setting.min or 0, max)
    end
    if setting.at_least then kind = kind .. ", at least `" .. setting.at_least .. "`" end
  elseif kind == "list" then
    kind = "list of strings"
  elseif kind == "sets" then
    kind = "list or map"
  elseif kind == "tokens" then
    kind = "list of mappings"
  end
  return kind
end

-- The block (markers included).
function M.block()
  local lines = { M.BEGIN, "| Environment | Setting | Type | Meaning | Default |", "|---|---|---|---|---|" }
  for _, setting in ipairs(settings.SETTINGS) do
    local name = setting.file == false and "—" or "`" .. setting.name .. "`"
    lines[#lines + 1] = string.format("| %s | %s | %s | %s | %s |", setting.env and "`" .. setting.env .. "`" or "—",
      name, shown_type(setting), setting.doc .. (setting.per_token and "; *per token* (a key of each `hsm.tokens` entry too)" or ""),
      shown_default(setting))
  end
  lines[#lines + 1] = M.END
  return table.concat(lines, "\n")
end

local marked_block = assert(loadfile("scripts/lib/marked_block.lua"))()

-- text with its block rewritten, or nil, message when the markers are not
-- there once each, in order.
function M.rewrite(text)
  return marked_block.replace(text, M.BEGIN, M.END, M.block())
end

-- loadfile("scripts/readme-config.lua")("module") returns M (the spec);
-- run as a script, it rewrites the file.
if ... ~= "module" then
  local path = ... or "README.md"
  if marked_block.rewrite_file("readme-config.lua", path, M.rewrite) then
    print("readme-config.lua: " .. path .. ": configuration table rewritten")
  end
end

return M

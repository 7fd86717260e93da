-- The facade is closed: require("jwkengine") exports exactly the names the
-- README's Lua API lists, an engine answers exactly the methods it lists,
-- and the hosts inside the library (the nginx package, health.lua) use
-- nothing else: not the binding, not an engine's fields. Below the facade,
-- the key managers never call up into the lifecycle that governs them; a
-- spec requires the binding only when it says it is about the binding.
local jwkengine = require("jwkengine")

local function read(path)
  return assert(require("jwkengine.util").read_file(path))
end

-- The code block that opens the README's "## Lua API" section.
local function lua_api_block()
  local readme = read("README.md")
  local section = assert(readme:match("\n## Lua API\n(.-)\n## "), "README has no Lua API section")
  return assert(section:match("```lua\n(.-)\n```"), "the Lua API section has no lua code block")
end

local function sorted(set)
  local list = {}
  for name in pairs(set) do list[#list + 1] = name end
  table.sort(list)
  return list
end

-- Names the block documents: jwkengine.NAME and engine:NAME(.
local function documented()
  local module, methods = {}, {}
  -- not a path ("/etc/jwkengine.yaml") nor a longer name
  for before, name in lua_api_block():gmatch("([/%w_%.]?)jwkengine%.([%a_][%w_]*)") do
    if before == "" then module[name] = true end
  end
  for name in lua_api_block():gmatch("engine:([%a_][%w_]*)%(") do methods[name] = true end
  return module, methods
end

local function engine_methods()
  local engine = assert(jwkengine.open({ logger = false, startup = false, environment = {
    HSM_ENABLED = "false", SECRETS_SYSTEM = "facade-surface-secret-0123456789", DSN = "memory" } }))
  local methods = {}
  for name, value in pairs(getmetatable(engine).__index) do
    if type(value) == "function" then methods[name] = true end
  end
  engine:close()
  return methods
end

-- The library's own files that are hosts of the facade.
local function host_files()
  local files = { "lua/jwkengine/health.lua" }
  local pipe = assert(io.popen("ls lua/jwkengine/nginx/*.lua"))
  for path in pipe:lines() do files[#files + 1] = path end
  pipe:close()
  assert.is_true(#files > 5, "no nginx files found")
  return files
end

-- Code without its comments (a comment may name the binding).
local function code_of(text)
  return (text:gsub("%-%-%[(=*)%[.-%]%1%]", ""):gsub("%-%-[^\n]*", ""))
end

describe("the facade", function()
  it("exports exactly the names the README's Lua API lists", function()
    local module = documented()
    local exported = {}
    for name in pairs(jwkengine) do exported[name] = true end
    assert.same(sorted(module), sorted(exported))
    assert.is_nil(jwkengine.core, "the binding is not the facade's")
  end)

  it("gives an engine exactly the methods the README's Lua API lists", function()
    local _, methods = documented()
    assert.same(sorted(methods), sorted(engine_methods()))
  end)

  it("is all the nginx package and health.lua use: no binding, no engine field", function()
    local _, methods = documented()
    local reach = {}
    for _, path in ipairs(host_files()) do
      local code = code_of(read(path))
      if code:find("jwkengine%.core") then reach[#reach + 1] = path .. ": requires jwkengine.core" end
      -- an engine handed to a library module (health.check(state.engine, ...))
      -- instead of asked through its method
      for call in code:gmatch("[%w_%.]+%(state%.engine[,)]") do reach[#reach + 1] = path .. ": " .. call end
      -- an engine (engine, e, state.engine) indexed with "." names a method
      -- the README lists, never a field
      for before, name in code:gmatch("([%w_%.]*)engine%.([%a_][%w_]*)") do
        if before == "" or before == "state." then
          if not methods[name] then reach[#reach + 1] = path .. ": engine." .. name end
        end
      end
      for before, name in code:gmatch("([%w_%.]?)e%.([%a_][%w_]*)") do
        if before == "" and not methods[name] then reach[#reach + 1] = path .. ": e." .. name end
      end
    end
    assert.same({}, reach)
  end)

  it("has data flow one way: the key managers never call up into the lifecycle", function()
    -- the engine puts each manager under its states (jwkengine.lifecycle.govern)
    local up = {}
    for _, path in ipairs({ "lua/jwkengine/keyset.lua", "lua/jwkengine/hsm.lua", "lua/jwkengine/software.lua",
      "lua/jwkengine/fallback.lua" }) do
      local code = code_of(read(path))
      for call in code:gmatch("states:[%a_]+") do up[#up + 1] = path .. ": " .. call end
      if code:find("options%.states") then up[#up + 1] = path .. ": takes options.states" end
    end
    assert.same({}, up)
  end)

  it("is what the specs test, except a spec that says in its first line it is about the binding", function()
    local pipe = assert(io.popen("grep -rl 'require(\"jwkengine.core\")' spec --include='*_spec.lua'"))
    local unsaid = {}
    for path in pipe:lines() do
      local first = read(path):match("^[^\n]*")
      if not first:find("^%-%- About the binding %(jwkengine%.core%)") then unsaid[#unsaid + 1] = path end
    end
    pipe:close()
    assert.same({}, unsaid)
  end)
end)

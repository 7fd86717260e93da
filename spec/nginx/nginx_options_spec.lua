-- nginx's own options of init() come from one schema
-- (jwkengine.nginx.options), in the form of the engine's: the loader
-- checks and fills every option from it, refuses what it refuses in its
-- words, and the README's table of options is the one made from it. Runs
-- the loader in plain Lua 5.4, as nginx's master would, without nginx.
local engine_settings = require("jwkengine.config_settings")
local nginx = require("jwkengine.nginx")
local options_schema = require("jwkengine.nginx.options")
local settings = require("jwkengine.nginx.settings")
local softhsm = require("helpers.softhsm")

-- A software store only: the loader checks the configuration as open does.
local function options(extra)
  local o = { environment = { SECRETS_SYSTEM = string.rep("s", 40), DSN = "sqlite://" .. softhsm.tmpname() } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- init()'s options with one option set to value.
local function with(option, value)
  if option.section == "" then return options({ [option.key] = value }) end
  return options({ [option.section] = { [option.key] = value } })
end

-- A value of the wrong type for the option.
local function wrong(option)
  if option.type == "string" or option.type == "list" then return 5 end
  return "soon"
end

describe("nginx's init() options", function()
  it("take the schema's defaults when not given", function()
    local s = assert(settings.load(options()))
    for _, option in ipairs(options_schema.OPTIONS) do
      if option.default ~= nil then
        assert.same(option.default, s.options[option.section][option.key], option.name)
      end
    end
  end)

  it("take every option the schema names, and nothing else inside a section", function()
    for _, option in ipairs(options_schema.OPTIONS) do
      local value = option.default
      if value == nil then value = option.type == "list" and { "hydra.jwt.access-token" } or nil end
      if value ~= nil then assert(settings.load(with(option, value)), option.name) end
    end
    local s, err = settings.load(options({ thread_queue = { lenght = 1 } }))
    assert.is_nil(s)
    assert.equals("unknown option thread_queue.lenght (known: in_flight, length, timeout)", err)
  end)

  it("refuse a value of the wrong type or out of range, in the schema's words", function()
    for _, option in ipairs(options_schema.OPTIONS) do
      local s, err = settings.load(with(option, wrong(option)))
      assert.is_nil(s, option.name)
      assert.matches(option.name .. " must be " .. engine_settings.wanted(option), err, 1, true)
    end
    local s, err = settings.load(options({ thread_queue = { length = -1 } }))
    assert.is_nil(s)
    assert.equals('thread_queue.length must be a whole number from 0 to 2^31 - 1, got -1', err)
    s, err = settings.load(options({ thread_queue = { in_flight = 2 ^ 31 } }))
    assert.is_nil(s)
    assert.equals("thread_queue.in_flight must be a whole number from 1 to 2^31 - 1, got 2147483648.0", err)
    s, err = settings.load(options({ jwks = { refresh = 0 } }))
    assert.is_nil(s)
    assert.equals("jwks.refresh must be a positive number of seconds, got 0", err)
  end)

  it("stop init() with the mistake raised at the line that called init()", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, err = pcall(function() nginx.init(options({ token = { max_body = 1.5 } })) end)
    assert.is_false(ok)
    assert.equals(string.format("spec/nginx/nginx_options_spec.lua:%d: jwkengine.nginx: token.max_body must be "
      .. "a whole number from 1 to 2^31 - 1, got 1.5", line), err)
  end)
end)

describe("the README's table of nginx options", function()
  it("is the one scripts/readme-config.lua makes from the schema", function()
    local generator = assert(loadfile("scripts/readme-config.lua"))("module")
    -- the whole block, markers included, as the generator makes it
    assert.is_truthy(softhsm.read_file("README.md"):find(generator.nginx_block(), 1, true),
      "README.md's table of nginx options is stale: run lua5.4 scripts/readme-config.lua")
  end)
end)

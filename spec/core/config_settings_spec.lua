-- About the binding (jwkengine.core): module:open_token takes the schema's settings by name (and the C limits).
-- The configuration schema (jwkengine.config_settings) is the one source of
-- each setting's type, default, environment variable, range and
-- documentation: config.load's defaults, environment names and range
-- checks, the rotation policy's limits, the README's table and the options
-- the binding takes all follow it, and nothing downstream checks again.
local config = require("jwkengine.config")
local core = require("jwkengine.core")
local policy = require("jwkengine.lifecycle.policy")
local settings = require("jwkengine.config_settings")
local softhsm = require("helpers.softhsm")

local read = softhsm.read_file

local function refused(pattern, ...)
  local value, err, code = ...
  assert.is_nil(value)
  assert.equals("ERR_CONFIG", code)
  assert.matches(pattern, err, 1, true)
end

describe("the configuration schema", function()
  it("gives every setting a type and one line of documentation, and each variable once", function()
    local variables = {}
    for _, setting in ipairs(settings.SETTINGS) do
      assert.is_string(setting.type, setting.name)
      assert.is_string(setting.doc, setting.name)
      assert.is_nil(setting.doc:find("\n"), setting.name)
      if setting.env then
        assert.is_nil(variables[setting.env], setting.env)
        variables[setting.env] = true
      end
    end
    -- the variables config.load reads are exactly the schema's
    local read_by_load = {}
    for _, name in ipairs(config.ENVIRONMENT) do read_by_load[name] = true end
    assert.same(variables, read_by_load)
  end)

  it("is where config.load takes its defaults from", function()
    local cfg = assert(config.load({ environment = {} }))
    for _, setting in ipairs(settings.SETTINGS) do
      -- publication and tokens stay unset: the rotation policy applies their defaults (below)
      if setting.default ~= nil and setting.file ~= false and setting.section ~= "publication"
        and setting.section ~= "tokens" then
        local section = setting.section == "" and cfg or cfg[setting.section]
        assert.same(setting.default, section[setting.key], setting.name)
      end
    end
  end)

  it("is where the rotation policy's limits come from", function()
    for name, value in pairs(policy.DEFAULT_LIMITS) do
      local setting = settings.BY_NAME["publication." .. name] or settings.BY_NAME["tokens." .. name]
        or settings.BY_NAME["store." .. name]
      assert.equals(setting.default, value, name)
    end
  end)

  it("refuses a value outside its range when the configuration is loaded, naming the range", function()
    refused("HSM_MAX_SESSIONS must be a whole number from 0 to " .. core.limits().pool_limit .. ", got 65",
      config.load({ environment = { HSM_MAX_SESSIONS = "65" } }))
    refused("HSM_SESSION_IDLE_MAX must be a whole number from 0 to 86400, got 86401",
      config.load({ environment = { HSM_SESSION_IDLE_MAX = "86401" } }))
    refused("hsm.reinit_interval_ms must be a whole number from 1 to", config.load({ environment = {}, hsm = { reinit_interval_ms = 0 } }))
    refused("hsm.reinit_interval_max_ms (100) must be at least hsm.reinit_interval_ms (500)",
      config.load({ environment = {}, hsm = { reinit_interval_ms = 500, reinit_interval_max_ms = 100 } }))
    -- whether the HSM is enabled or not: the value is wrong either way
    refused("publication.max_age must be a non-negative number of seconds, got -1",
      config.load({ environment = {}, publication = { max_age = -1 } }))
  end)
end)

describe("a setting's value", function()
  it("is checked by one function (config_settings.check) wherever it is read", function()
    -- config.load, the rotation policy and nginx's options give its words
    refused("publication.max_age must be a non-negative number of seconds, got \"soon\"",
      config.load({ environment = {}, publication = { max_age = "soon" } }))
    local made, err = policy.make({ period = -5 }, policy.DEFAULT_LIMITS)
    assert.is_nil(made)
    assert.equals("rotation.period must be a non-negative number of seconds, got -5", err)
    -- and nothing else writes a check of seconds of its own
    local pipe = assert(io.popen("grep -l 'math.huge' lua/jwkengine/config.lua lua/jwkengine/lifecycle/policy.lua "
      .. "lua/jwkengine/nginx/*.lua"))
    local found = {}
    for path in pipe:lines() do found[#found + 1] = path end
    pipe:close()
    assert.same({}, found)
  end)
end)

describe("the README's configuration table", function()
  it("is the one scripts/readme-config.lua makes from the schema", function()
    local generator = assert(loadfile("scripts/readme-config.lua"))("module")
    local readme = read("README.md")
    local first = assert(readme:find(generator.BEGIN, 1, true), "no configuration table marker in README.md")
    local last = assert(readme:find(generator.END, first, true), "the configuration table has no end marker")
    assert.equals(generator.block(), readme:sub(first, last + #generator.END - 1),
      "README.md's configuration table is stale: run lua5.4 scripts/readme-config.lua")
  end)
end)

describe("module:open_token", function()
  local token, module, slot

  setup(function()
    token = softhsm.new_token("options")
    module = assert(core.load_module(softhsm.LIBRARY))
    for _, s in ipairs(assert(module:slots())) do
      if s.label == token.label then slot = s end
    end
  end)

  teardown(function()
    if module then module:close() end
  end)

  it("takes the schema's settings by name and in their units", function()
    local opened = assert(module:open_token(slot.id, { label = slot.label, max_sessions = 0, session_idle_max = 0,
      session_wait_ms = 100, reinit_interval_ms = 5, reinit_interval_max_ms = 10, verify_after_sign = true }))
    assert.is_true(opened:login(token.pin))
    -- 0: no pool, the login session signs
    assert.equals(0, opened:stats().max_sessions)
    opened:close()
    opened = assert(module:open_token(slot.id, { label = slot.label, max_sessions = 3 }))
    assert.is_true(opened:login(token.pin))
    assert.equals(3, opened:stats().max_sessions)
    opened:close()
  end)

  it("refuses an unknown or mistyped option instead of ignoring it", function()
    assert.has_error(function() module:open_token(slot.id, { max_session = 3 }) end,
      "open_token: unknown option 'max_session'")
    assert.has_error(function() module:open_token(slot.id, { session_idle_max_ms = 1000 }) end,
      "open_token: unknown option 'session_idle_max_ms'")
    assert.has_error(function() module:open_token(slot.id, { max_sessions = "4" }) end,
      "open_token: option 'max_sessions' must be an integer")
    assert.has_error(function() module:open_token(slot.id, { max_sessions = 2.5 }) end,
      "open_token: option 'max_sessions' must be an integer that fits an int")
    assert.has_error(function() module:open_token(slot.id, { verify_after_sign = 1 }) end,
      "open_token: option 'verify_after_sign' must be a boolean")
    assert.has_error(function() module:open_token(slot.id, { session_idle_max = 2 ^ 40 }) end)
  end)
end)

describe("after config.load", function()
  -- The checks and clamps the schema made redundant, as they were written
  -- before it: none may come back downstream of config.load.
  local RECHECKS = {
    "config%.check_hsm%(hsm_config",          -- hsm.lua checking again what check_stores checked
    "or LIMITS%.reinit_interval",             -- hsm.lua re-defaulting loaded settings
    "math%.max%(interval,",                   -- hsm.lua re-clamping the backoff
    "== 0 and %-1",                           -- hsm.lua translating sentinels by hand
    "seconds%(value, \"configuration\"",      -- policy.lua re-checking publication/tokens
    "options%->[%w_]+ > 0 %?",                -- p11_token.c clamping non-positive options
    "max_ms < interval_ms %?",                -- p11_outage.c clamping the backoff's bounds
  }
  local FILES = { "lua/jwkengine/hsm.lua", "lua/jwkengine/lifecycle/policy.lua", "lua/jwkengine/nginx/settings.lua",
    "core/p11_token.c", "core/p11_outage.c", "core/p11_login.c", "core/lua/lua_module.c" }

  it("nothing checks or clamps again what the schema checked", function()
    for _, path in ipairs(FILES) do
      local text = read(path)
      for _, pattern in ipairs(RECHECKS) do
        assert.is_nil(text:find(pattern), string.format("%s re-checks a setting (%s)", path, pattern))
      end
    end
  end)
end)

-- About the binding (jwkengine.core): the built C module installed where the rock puts it.
-- The rock: the README's LuaRocks lines, run as written with Debian's
-- `luarocks` (LUAROCKS_CONFIG pointing it at a throwaway tree), build
-- jwkengine from the rockspecs at the root (CMake, JWKE_ROCK) for Lua 5.4
-- and for LuaJIT (OpenResty's ABI, Lua 5.1); a plain interpreter with only
-- that tree's paths then opens an engine on a throwaway SoftHSM token and
-- signs, and python3-jwcrypto verifies the token. LuaRocks' own build folder
-- (build.luarocks/, ignored by git) is kept between runs, so only the first
-- build compiles the whole core.
local cjson = require("cjson")
local core = require("jwkengine.core")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")

local q = softhsm.quote
local ROCKSPECS = { "jwkengine-scm-1.rockspec", "jwkengine-" .. core._VERSION .. "-1.rockspec" }

-- What the installed module does, run by the interpreter under test from
-- an empty folder: where each module came from, then the JWK Set and a
-- signed JWT, one JSON line.
local PROBE = [[
local jwkengine = require("jwkengine")
local env = { HSM_ENABLED = "true", HSM_LIBRARY = arg[1], HSM_TOKEN_LABEL = arg[2], HSM_PIN = arg[3] }
local engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))
assert(engine:generate("rock", "ES256", { kid = "rock-1" }))
local token = assert(engine:sign_jwt("rock", { sub = "rock" }))
local cjson = require("cjson")
print(cjson.encode({ version = jwkengine._VERSION, lua = jit and jit.version or _VERSION,
  core = package.searchpath("jwkengine.core", package.cpath),
  init = package.searchpath("jwkengine", package.path),
  jwks = assert(engine:key_set_json("rock")), token = token }))
engine:close()
]]

describe("the LuaRocks rock", function()
  local tmp

  setup(function()
    tmp = softhsm.run("mktemp -d"):gsub("%s+$", "")
    softhsm.write_file(tmp .. "/probe.lua", PROBE)
  end)

  teardown(function() os.execute("rm -rf " .. q(tmp)) end)

  it("has rockspecs that luarocks lint accepts, one named for core._VERSION", function()
    for _, rockspec in ipairs(ROCKSPECS) do
      local out, ok = softhsm.run("luarocks lint " .. rockspec)
      assert.is_true(ok, rockspec .. ": " .. out)
    end
    assert.matches('\nversion = "' .. core._VERSION:gsub("%.", "%%.") .. '%-1"', softhsm.read_file(ROCKSPECS[2]))
  end)

  it("has two rockspecs that differ only in version and source tag", function()
    local function common(text)
      return (text:gsub("^%-%-[^\n]*\n", ""):gsub("\n%-%-[^\n]*", ""):gsub('\nversion = "[^"]*"', "")
        :gsub('\n   tag = "[^"]*",', ""))
    end
    local scm, released = softhsm.read_file(ROCKSPECS[1]), softhsm.read_file(ROCKSPECS[2])
    assert.matches('\n   tag = "v' .. core._VERSION:gsub("%.", "%%.") .. '",', released)
    assert.equals(common(scm), common(released))
  end)

  -- The README's LuaRocks block (the sh block after "With LuaRocks"), line
  -- by line without the comments: the spec runs what a reader types.
  local function readme_lines()
    local block = assert(softhsm.read_file("README.md"):match("\nWith LuaRocks.-\n```sh\n(.-)\n```"),
      "README.md has no sh block after \"With LuaRocks\"")
    local lines = {}
    for line in block:gmatch("[^\n]+") do lines[#lines + 1] = (line:gsub("%s+#.*$", "")) end
    return lines
  end

  -- Which interpreter loads what a line built: LuaJIT where the line builds
  -- against its headers.
  local function interpreter_of(line, lua_version)
    if line:find("luajit", 1, true) then return "luajit", "LuaJIT" end
    return "lua" .. lua_version, "Lua " .. lua_version
  end

  it("runs the README's luarocks lines as written, and each build opens an engine on SoftHSM and signs",
    function()
      local lines = readme_lines()
      -- LUAROCKS_CONFIG names a throwaway tree, so the lines (which install
      -- into the system tree as root) change nothing outside tmp
      local config = tmp .. "/luarocks-config.lua"
      local tree = tmp .. "/tree"
      softhsm.write_file(config, string.format("rocks_trees = { { name = %q, root = %q } }\n", "throwaway", tree))
      local env = "env LUAROCKS_CONFIG=" .. q(config) .. " "
      local built, packages = {}, 0
      for _, line in ipairs(lines) do
        local apt = line:match("^apt%-get install %-y (.+)$")
        if apt then
          for package in apt:gmatch("%S+") do
            local status = softhsm.run("dpkg-query -W -f='${Status}' " .. q(package))
            assert.matches("install ok installed", status, 1, true)
            packages = packages + 1
          end
        else
          assert.matches("^luarocks ", line)
          local out, ok = softhsm.run(env .. line)
          assert.is_true(ok, line .. ": " .. out)
          local lua_version = line:match("%-%-lua%-version (%S+)")
          assert.is_truthy(lua_version, "a luarocks line without --lua-version builds for Debian's default, 5.1: " .. line)
          built[#built + 1] = { line = line, lua_version = lua_version }
        end
      end
      assert.is_true(packages > 0, "the block names no package")
      assert.same({ "5.4", "5.1" }, { built[1] and built[1].lua_version, built[2] and built[2].lua_version })

      for _, b in ipairs(built) do
        local token = softhsm.new_token("rock") -- the probe generates its set
        local interpreter, expect = interpreter_of(b.line, b.lua_version)
        -- only the tree's paths (and the system's, for cjson): nothing from
        -- the checkout or the build folder the other specs use
        local command = string.format("cd %s && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 "
          .. "-u LUA_CPATH_5_4 LUAROCKS_CONFIG=%s sh -c %s", q(tmp), q(config), q(string.format(
            'eval "$(luarocks --lua-version %s path)" && %s probe.lua %s %s %s',
            b.lua_version, interpreter, q(softhsm.LIBRARY), q(token.label), q(token.pin))))
        local out, ok = softhsm.run(command)
        assert.is_true(ok, b.line .. ": " .. out)
        local result = cjson.decode(out:match("{.*}"))
        assert.equals(core._VERSION, result.version)
        assert.matches(expect, result.lua, 1, true)
        assert.equals(tree .. "/lib/lua/" .. b.lua_version .. "/jwkengine/core.so", result.core)
        assert.equals(tree .. "/share/lua/" .. b.lua_version .. "/jwkengine/init.lua", result.init)
        local verified, why = verifier.jwcrypto(result.jwks, result.token)
        assert.is_true(verified, why)
      end
    end)
end)

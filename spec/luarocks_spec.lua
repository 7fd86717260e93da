-- The rock: Debian's `luarocks` builds jwkengine from the rockspecs at the
-- root (CMake, JWKE_ROCK) into a throwaway tree, for Lua 5.4 and for
-- LuaJIT (OpenResty's ABI, Lua 5.1); a plain interpreter with only that
-- tree's paths then opens an engine on a throwaway SoftHSM token and signs,
-- and python3-jwcrypto verifies the token. LuaRocks' own build folder
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

-- luarocks for one Lua version (extra: variables such as LUA_INCDIR).
local function luarocks(lua_version, args, extra)
  return softhsm.run(string.format("luarocks --lua-version %s %s %s", lua_version, args, extra or ""))
end

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

  local targets = {
    { name = "Lua 5.4", lua_version = "5.4", interpreter = "lua5.4", expect = "Lua 5.4" },
    { name = "LuaJIT (Lua 5.1 ABI)", lua_version = "5.1", interpreter = "luajit",
      extra = "LUA_INCDIR=/usr/include/luajit-2.1", expect = "LuaJIT" },
  }
  for _, target in ipairs(targets) do
    it("installs into a throwaway tree for " .. target.name .. ", opens an engine on SoftHSM and signs",
      function()
        local tree = tmp .. "/tree-" .. target.lua_version
        local out, ok = luarocks(target.lua_version,
          "make --deps-mode none --tree " .. q(tree) .. " " .. ROCKSPECS[1], target.extra)
        assert.is_true(ok, "luarocks make: " .. out)

        local token = softhsm.new_token("rock")
        -- only the tree's paths (and the system's, for cjson): nothing from
        -- the checkout or the build folder the other specs use
        local command = string.format("cd %s && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 "
          .. "-u LUA_CPATH_5_4 sh -c %s", q(tmp), q(string.format(
            'eval "$(luarocks --lua-version %s path --tree %s)" && %s probe.lua %s %s %s',
            target.lua_version, q(tree), target.interpreter, q(softhsm.LIBRARY), q(token.label),
            q(token.pin))))
        out, ok = softhsm.run(command)
        assert.is_true(ok, target.name .. ": " .. out)
        local result = cjson.decode(out:match("{.*}"))
        assert.equals(core._VERSION, result.version)
        assert.matches(target.expect, result.lua, 1, true)
        assert.equals(tree .. "/lib/lua/" .. target.lua_version .. "/jwkengine/core.so", result.core)
        assert.equals(tree .. "/share/lua/" .. target.lua_version .. "/jwkengine/init.lua", result.init)
        local verified, why = verifier.jwcrypto(result.jwks, result.token)
        assert.is_true(verified, why)
      end)
  end
end)

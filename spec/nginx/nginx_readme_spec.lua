-- What the README shows runs as shown: every ```nginx snippet starts real
-- nginx and serves keys and tokens, and every ```yaml snippet is a
-- configuration jwkengine loads. Only what the README itself says to change
-- is changed (the installed Lua paths for this checkout's, the port) plus
-- what a test sandbox needs (pid file and worker user).
local jwkengine = require("jwkengine")
local nginx = require("helpers.nginx")
local softhsm = require("helpers.softhsm")
local read_file = require("jwkengine.util").read_file
local cjson = require("cjson")

local README = assert(read_file("README.md"), "run the specs from the repository root")

local function snippets(language)
  local found = {}
  for body in README:gmatch("\n```" .. language .. "\n(.-\n)```") do found[#found + 1] = body end
  return found
end

describe("the README's nginx snippets", function()
  local list = snippets("nginx")

  it("exist", function() assert.is_true(#list >= 1) end)

  -- Starts the snippet with the given environment overrides, waits for
  -- the JWK Set, checks it and 20 tokens (verified by jwcrypto).
  local function serve(snippet, overrides, after)
    local token = softhsm.new_token("readme")
    local server = nginx.new({ token = token, render = function(o)
      local text = nginx.checkout_paths(snippet, o)
      text = nginx.replace_once(text, "listen 127.0.0.1:8080;", "listen 127.0.0.1:" .. o.port .. ";")
      return "user root; # the test's token files belong to root\npid " .. o.prefix .. "/logs/nginx.pid;\n" .. text
    end })
    local ok, failure = pcall(function()
      local out, started = softhsm.run(server:command(nil, overrides(server)))
      assert(started, "nginx did not start: " .. out .. "\n" .. server:log())
      server.started = true
      local status = server:client({ "wait", server.port, "/.well-known/jwks.json", 60 })
      assert(status.status == 200, "the JWK Set never answered 200:\n" .. server:log())
      local jwks = server:requests({ { method = "GET", path = "/.well-known/jwks.json" } })[1]
      assert.equals(200, jwks.status)
      assert.equals(2, #cjson.decode(jwks.body).keys)
      local result = server:tokens("/token", 20, 2)
      assert.equals(20, result.valid, cjson.encode(result))
      if after then after(server) end
    end)
    server:dispose()
    assert(ok, failure)
    return server
  end

  for i, snippet in ipairs(list) do
    it("#" .. i .. " starts as given with the HSM, publishes the startup sets and signs tokens", function()
      serve(snippet, function() return {} end)
    end)

    it("#" .. i .. " passes the software store's variables to the workers", function()
      local function dsn_file(server) return server.prefix .. "/keys.sqlite" end
      serve(snippet, function(server)
        return { HSM_ENABLED = "false", SECRETS_SYSTEM = "readme-secret-0123456789",
          DSN = "sqlite://" .. dsn_file(server) }
      end, function(server)
        -- the workers generated the startup sets into the DSN's database
        local db = assert(require("jwkengine.store.luasql").sqlite(dsn_file(server)))
        local rows = assert(db:query("SELECT sid FROM hydra_jwk ORDER BY sid"))
        db:close()
        assert.equals(2, #rows)
      end)
    end)
  end
end)

describe("the README's YAML snippets", function()
  local list = snippets("yaml")

  it("exist", function() assert.is_true(#list >= 1) end)

  for i, snippet in ipairs(list) do
    it("#" .. i .. " is a configuration jwkengine loads", function()
      local path = os.tmpname()
      softhsm.write_file(path, snippet)
      finally(function() os.remove(path) end)
      local cfg, err = jwkengine.config.load({ config = path, environment = {} })
      assert.truthy(cfg, err)
    end)
  end
end)

-- Secrets given to jwkengine.nginx's init() as options: the master hands
-- them to C, so no Lua value a worker can reach (its settings, the options
-- JSON for the thread pool) holds the PIN, or the store secret other than
-- as the engine's own copy (README, "PIN hygiene"). A test location walks
-- everything reachable from the worker VM's registry (tables, upvalues,
-- metatables, environments) and counts the strings holding a random PIN
-- or secret; signing in the event loop and in the thread pool still works.
local cjson = require("cjson")
local softhsm = require("helpers.softhsm")
local nginx = require("helpers.nginx")

-- Answers { ready, equal, larger }: reachable strings equal to the needle
-- (hex in ?needle=), and longer ones containing it.
local REACHABLE_LOCATION = [[
        location = /reachable-secrets {
            allow 127.0.0.1;
            deny all;
            content_by_lua_block {
                local needle = ngx.var.arg_needle:gsub("..", function(h) return string.char(tonumber(h, 16)) end)
                local seen, strings, stack = {}, {}, { debug.getregistry() }
                local function push(v)
                  local t = type(v)
                  if t == "string" then strings[v] = true
                  elseif (t == "table" or t == "function" or t == "userdata") and not seen[v] then
                    seen[v] = true
                    stack[#stack + 1] = v
                  end
                end
                while #stack > 0 do
                  local v = table.remove(stack)
                  local t = type(v)
                  if t == "table" then
                    for k, x in next, v do push(k) push(x) end
                  elseif t == "function" then
                    local i = 1
                    while true do
                      local name, x = debug.getupvalue(v, i)
                      if not name then break end
                      push(x)
                      i = i + 1
                    end
                  end
                  push(debug.getmetatable(v))
                  if t ~= "table" then push(debug.getfenv(v)) end
                end
                local equal, larger = 0, 0
                for s in pairs(strings) do
                  if s == needle then equal = equal + 1
                  elseif s:find(needle, 1, true) then larger = larger + 1 end
                end
                ngx.say(require("cjson").encode({ ready = require("jwkengine.nginx").ready(),
                  equal = equal, larger = larger }))
            }
        }

        location = /token {]]

describe("nginx: secrets given to init() as options", function()
  local server, token, pin, secret

  setup(function()
    pin = softhsm.random_hex(12)
    secret = softhsm.random_hex(16)
    token = softhsm.new_token("ngxsecret", pin)
    server = nginx.new({ token = token, workers = 2,
      startup_sets = "  hydra.openid.id-token: ES256\n  hydra.jwt.access-token: ES256\n",
      render = function(opts)
        local text = nginx.render_config(opts)
        text = nginx.replace_once(text, [[require("jwkengine.nginx").init({]], string.format([[
        local function first_line(path)
            local f = assert(io.open(path))
            local line = f:read("*l")
            f:close()
            return line
        end
        require("jwkengine.nginx").init({
            hsm = { pin = first_line("%s/pin") },
            secrets = { system = { first_line("%s/secret") } },
            dsn = "sqlite://%s/store.sqlite",]], opts.prefix, opts.prefix, opts.prefix))
        return nginx.replace_once(text, "        location = /token {", REACHABLE_LOCATION)
      end })
    softhsm.write_file(server.prefix .. "/pin", pin .. "\n")
    softhsm.write_file(server.prefix .. "/secret", secret .. "\n")
    -- the PIN reaches nginx only as an option: no HSM_PIN in its environment
    local out, ok = softhsm.run(server:command(nil, { HSM_PIN = false }))
    server.started = true
    assert(ok, "nginx did not start: " .. out .. "\n" .. server:log())
    local status = server:client({ "wait", server.port, "/.well-known/jwks.json", 60 })
    assert(status.status == 200, "the JWK Set never answered 200:\n" .. server:log())
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  -- Asks workers until a ready one answers.
  local function reachable(needle)
    local deadline = os.time() + 30
    while true do
      local r = server:requests({ { path = "/reachable-secrets?needle=" .. softhsm.hex(needle) } })[1]
      assert.are.equal(200, r.status, r.body)
      local counts = cjson.decode(r.body)
      if counts.ready then return counts end
      assert(os.time() < deadline, "no worker opened its engine:\n" .. server:log())
      nginx.sleep(0.1)
    end
  end

  it("signs in the event loop and in the thread pool with the PIN it kept", function()
    local result = server:tokens("/token", 20, 4, 300)
    assert.are.equal(20, result.valid, cjson.encode(result) .. "\n" .. server:log())
    if not server:signs_in_threads("/token-threaded", pending) then return end
    result = server:tokens("/token-threaded", 20, 4, 300)
    assert.are.equal(20, result.valid, cjson.encode(result) .. "\n" .. server:log())
  end)

  it("no Lua value a worker reaches holds the PIN", function()
    assert.are.same({ ready = true, equal = 0, larger = 0 }, reachable(pin))
  end)

  it("the store secret only as the engine's own copy (none in the settings' JSON)", function()
    -- equal = 1: the worker's engine holds it, so the store got it from C
    assert.are.same({ ready = true, equal = 1, larger = 0 }, reachable(secret))
  end)
end)

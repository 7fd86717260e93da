-- About the binding (jwkengine.core): every way into a PKCS#11 module survives SIGPIPE.
-- Calls into p11-kit's client module after its server died: the client
-- writes to a socket whose other end is gone, which raises SIGPIPE, and
-- SIGPIPE's default action ends the process (exit 141). Every way into the
-- module must keep that from happening (core/sigpipe_guard.c), not only
-- signing: listing slots (jwkengine.slots, health's token check), opening a
-- token, logging in, opening an engine. Each path runs in a child process
-- of its own through the jwkengine runner (busted itself would die), which
-- connects while the server is up, waits until the server is killed, then
-- takes that one path and says what it got.
local p11kit = require("helpers.p11kit")
local softhsm = require("helpers.softhsm")

-- The child: arg[1] is the path to take; the rest is the token and the
-- two files it syncs on.
local CHILD = [[
local core = require("jwkengine.core")
local jwkengine = require("jwkengine")
local path, client, label, pin, ready, go = table.unpack(arg)
local env = { HSM_ENABLED = "true", HSM_LIBRARY = client, HSM_TOKEN_LABEL = label, HSM_PIN = pin }

-- connected while the server is up: the module initialized, a slot found
local module = assert(core.load_module(client))
local slot
for _, s in ipairs(assert(module:slots())) do
  if s.token_present and s.label == label then slot = s.id end
end
assert(slot, "the served token is not listed")
local token = path == "login" and assert(module:open_token(slot, { label = label }))
io.open(ready, "w"):close()
while not io.open(go) do os.execute("sleep 0.02") end

local result, err, code
if path == "slots" then
  result, err, code = module:slots()
elseif path == "open_token" then
  result, err, code = module:open_token(slot, { label = label })
elseif path == "login" then
  result, err, code = token:login(pin)
elseif path == "engine" then
  result, err, code = jwkengine.open({ environment = env, startup = false, logger = false })
end
print(string.format("%s: %s %s %s", path, tostring(result ~= nil), tostring(code), tostring(err)))
]]

-- What the child wrote so far ("" before it wrote anything).
local function written(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local data = f:read("a")
  f:close()
  return data
end

describe("calls into p11-kit's client module after its server died", function()
  local server, dir, script

  setup(function()
    server = p11kit.new({ label = "dead" })
    dir = server.dir
    script = dir .. "/dead_server.lua"
    softhsm.write_file(script, CHILD)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  -- Runs the child on one path with the server killed after it connected;
  -- returns its output and its exit status as the shell saw it.
  local function after_death(path)
    if not server.pgid then server:start() end
    local ready, go = dir .. "/" .. path .. ".ready", dir .. "/" .. path .. ".go"
    local out_path = dir .. "/" .. path .. ".out"
    os.execute(string.format("(%s %s/jwkengine %s %s %s %s %s %s %s >%s 2>&1; echo \"exit $?\" >>%s) &",
      server:shell_environment(), softhsm.BUILD, softhsm.quote(script), path, p11kit.CLIENT,
      softhsm.quote(server.token.label), softhsm.quote(server.token.pin), softhsm.quote(ready),
      softhsm.quote(go), softhsm.quote(out_path), softhsm.quote(out_path)))
    local started = false
    for _ = 1, 3000 do
      local f = io.open(ready)
      if f then f:close() started = true break end
      os.execute("sleep 0.02")
    end
    assert.is_true(started, "the child did not connect: " .. written(out_path))
    server:stop()
    io.open(go, "w"):close()
    local out
    for _ = 1, 3000 do
      out = written(out_path)
      if out:match("exit %d+") then break end
      os.execute("sleep 0.02")
    end
    return out, tonumber(out:match("exit (%d+)"))
  end

  for _, path in ipairs({ "slots", "open_token", "login", "engine" }) do
    it(string.format("%s: an error naming the broken call, not death by SIGPIPE", path), function()
      local out, status = after_death(path)
      assert.equals(0, status, out)
      -- the call failed, with a stable code, and said so
      local ok, code = out:match(path .. ": (%a+) (%S+)")
      assert.equals("false", ok, out)
      assert.is_truthy(code and code:match("^ERR_") or code:match("^CKR_"), out)
    end)
  end
end)

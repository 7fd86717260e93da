-- A second process on the spec's token, run by the real runner
-- (build/jwkengine spec/helpers/hsm_state_worker.lua MODE SET ...), with
-- the HSM_* settings (and JWKENGINE_CONFIG) in its environment and its
-- clock in JWKE_NOW:
--   states SET             one JSON line per key (kid, state, times), then
--                          {"signer": kid}
--   write SET VERSION TAG  a raw compare-and-swap on the token's state
--                          objects; prints "won", "lost at the destroy" or
--                          "lost before the destroy"
--   maintain SET | rotate SET   engine:maintain / engine:rotate: one JSON
--                          line per change, or "refused CODE"
-- With JWKE_READY and JWKE_GO set, a process opens the token, creates
-- JWKE_READY.TAG and waits for JWKE_GO before it acts, so that the spec
-- can start two of them at the same instant.
-- spec/ on the path, as busted has it: the runner runs this file alone
package.path = arg[0]:gsub("helpers/[^/]*$", "?.lua;") .. package.path
local cjson = require("cjson")
local core = require("helpers.binding")
local hsm_states = require("jwkengine.lifecycle.token_backend")
local jwkengine = require("jwkengine")

local mode, set, tag = arg[1], arg[2], arg[4] or arg[3] or "x"
local now = tonumber(os.getenv("JWKE_NOW")) or os.time()

-- Opening retries: SoftHSM answers a process that reads its token files
-- while another rewrites them (a login does) with an unlisted token or
-- CKR_GENERAL_ERROR. What is under test starts after the barrier.
local function retried(open)
  for _ = 1, 50 do
    local opened = open()
    if opened then return opened end
    os.execute("sleep 0.05")
  end
  error("cannot open and log in to the token")
end

local function barrier()
  if not os.getenv("JWKE_GO") then return end
  assert(io.open(os.getenv("JWKE_READY") .. "." .. tag, "w")):close()
  -- no sleep while waiting: both processes must leave the wait together
  local deadline = os.time() + 60 -- should the other process have failed
  while not io.open(os.getenv("JWKE_GO")) and os.time() < deadline do end
end

local function open_engine()
  return retried(function()
    return jwkengine.open({ logger = false, startup = false, now = function() return now end })
  end)
end

local function print_changes(changes, err, code)
  if not changes then
    print("refused " .. tostring(code) .. ": " .. tostring(err))
    return
  end
  for _, change in ipairs(changes) do print(cjson.encode(change)) end
end

if mode == "states" then
  local engine = open_engine()
  local list = assert(engine:key_states(set))
  table.sort(list, function(a, b) return a.kid < b.kid end)
  for _, key in ipairs(list) do
    print(cjson.encode({ kid = key.kid, state = key.state, times = key.times }))
  end
  local jws = assert(engine:sign(set, "x"))
  local _, header = assert(engine:verify(set, jws))
  print(cjson.encode({ signer = header.kid }))
  engine:close()
elseif mode == "maintain" or mode == "rotate" then
  local engine = open_engine()
  barrier()
  if mode == "maintain" then
    print_changes(engine:maintain({ sets = { set } }))
  else
    print_changes(engine:rotate(set))
  end
  engine:close()
elseif mode == "write" then
  local token = retried(function()
    local module = assert(core.load_module(os.getenv("HSM_LIBRARY")))
    for _, s in ipairs(module:slots() or {}) do
      if s.label == os.getenv("HSM_TOKEN_LABEL") then
        local token = module:open_token(s.id, { label = s.label, serial = s.serial })
        if token and token:login(os.getenv("HSM_PIN")) then return token end
        if token then token:close() end
      end
    end
  end)
  -- The writer sees the token through a proxy that notes whether it got
  -- as far as destroying the version it read: a loser that did read that
  -- version while it stood, as the winner did (the two contended); one that
  -- did not found the winner's write already done (the load serialized
  -- them), which proves nothing about the race.
  local destroyed = false
  local proxy = setmetatable({}, {
    __index = function(_, name)
      if name == "destroy_data" then
        return function(_, ...)
          destroyed = true
          return token:destroy_data(...)
        end
      end
      local method = token[name]
      return function(_, ...) return method(token, ...) end
    end,
  })
  barrier()
  local won, err = hsm_states.new(proxy, ""):write(set, tonumber(arg[3]),
    { [tag] = { state = "current", times = { current = now } } })
  assert(won ~= nil, err)
  print(won and "won" or (destroyed and "lost at the destroy" or "lost before the destroy"))
  token:close()
else
  error("unknown mode " .. tostring(mode))
end

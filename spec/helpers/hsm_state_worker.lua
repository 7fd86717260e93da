-- A second process on the spec's token, run by the real runner
-- (build/jwkengine spec/helpers/hsm_state_worker.lua MODE SET ...), with
-- the HSM_* settings in its environment and its clock in JWKE_NOW:
--   states SET           one JSON line per key (kid, state, times), then
--                        {"signer": kid}
--   write SET VERSION TAG  a raw compare-and-swap on the token's state
--                        objects; prints "won" or "lost"
local cjson = require "cjson"
local jwkengine = require "jwkengine"

local mode, set = arg[1], arg[2]
local now = tonumber(os.getenv("JWKE_NOW")) or os.time()

if mode == "states" then
  local engine = assert(jwkengine.open({ logger = false, startup = false, now = function() return now end }))
  local list = assert(engine:key_states(set))
  table.sort(list, function(a, b) return a.kid < b.kid end)
  for _, key in ipairs(list) do
    print(cjson.encode({ kid = key.kid, state = key.state, times = key.times }))
  end
  local jws = assert(engine:sign(set, "x"))
  local _, header = assert(engine:verify(set, jws))
  print(cjson.encode({ signer = header.kid }))
  engine:close()
elseif mode == "write" then
  local core = require "jwkengine.core"
  local hsm_states = require "jwkengine.hsm_states"
  -- Opening and logging in retries: SoftHSM answers a process that reads
  -- its token files while another rewrites them with an unlisted token or
  -- CKR_GENERAL_ERROR. The race under test is the write, which starts in
  -- both processes at once (the spec creates JWKE_GO once both are ready).
  local token
  for _ = 1, 50 do
    local module = assert(core.load_module(os.getenv("HSM_LIBRARY")))
    for _, s in ipairs(module:slots() or {}) do
      if s.label == os.getenv("HSM_TOKEN_LABEL") then
        token = module:open_token(s.id, { label = s.label, serial = s.serial })
      end
    end
    if token and token:login(os.getenv("HSM_PIN")) then break end
    if token then token:close() end
    token = nil
    os.execute("sleep 0.05")
  end
  assert(token, "cannot open and log in to the token")
  assert(io.open(os.getenv("JWKE_READY") .. "." .. arg[4], "w")):close()
  -- no sleep while waiting: both processes must leave the wait together
  local deadline = os.time() + 60 -- should the other process have failed
  while not io.open(os.getenv("JWKE_GO")) and os.time() < deadline do end
  local won, err = hsm_states.new(token, ""):write(set, tonumber(arg[3]),
    { [arg[4]] = { state = "current", times = { current = now } } })
  assert(won ~= nil, err)
  print(won and "won" or "lost")
  token:close()
else
  error("unknown mode " .. tostring(mode))
end

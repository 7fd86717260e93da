-- Key states of HSM sets live on the token (CKO_DATA objects beside the
-- keys): real SoftHSM tokens, real processes (the runner), pkcs11-tool, and
-- the fault-injecting module in front of SoftHSM.
local cjson = require "cjson"
local core = require "jwkengine.core"
local hsm_states = require "jwkengine.hsm_states"
local jwkengine = require "jwkengine"
local cli = require "helpers.cli"
local faults = require "helpers.faults"
local softhsm = require "helpers.softhsm"

local ROTATION = { period = 1000, prepublish = 400, retain = 4000 }

local function open(token, clock, extra)
  local options = { environment = softhsm.environment(token), logger = false, startup = false,
    now = function() return clock.t end, -- policies as the other processes have them
    startup_sets = { { set = "rot", alg = "ES256", rotation = ROTATION } } }
  for k, v in pairs(extra or {}) do options[k] = v end
  return jwkengine.open(options)
end

local function signer(engine, set)
  local jws = assert(engine:sign(set, "x"))
  local _, header = assert(engine:verify(set, jws))
  return header.kid
end

local function states_of(engine, set)
  local by_kid = {}
  for _, key in ipairs(assert(engine:key_states(set))) do by_kid[key.kid] = key end
  return by_kid
end

-- The worker process (spec/helpers/hsm_state_worker.lua) on `token`.
local function worker(token, now, args)
  local env = softhsm.environment(token, { JWKE_NOW = tostring(now) })
  local out, ok = softhsm.run(string.format("%s %s/jwkengine spec/helpers/hsm_state_worker.lua %s",
    cli.env_prefix(env), softhsm.BUILD, args))
  return out, ok
end

-- What `worker states SET` printed: kid -> { state, times }, and the signer.
local function worker_states(token, now, set)
  local out, ok = worker(token, now, "states " .. set)
  assert(ok, out)
  local by_kid, signing = {}, nil
  for line in out:gmatch("[^\n]+") do
    local value = cjson.decode(line)
    if value.signer then signing = value.signer else by_kid[value.kid] = value end
  end
  return by_kid, signing
end

-- A token object of this process, for reading the data objects themselves.
local function raw_token(token, library)
  local module = assert(core.load_module(library or softhsm.LIBRARY))
  for _, slot in ipairs(assert(module:slots())) do
    if slot.label == token.label then
      local t = assert(module:open_token(slot.id, { label = slot.label, serial = slot.serial }))
      assert(t:login(token.pin))
      return t
    end
  end
  error("token not found: " .. token.label)
end

describe("key states on the token", function()
  local token
  setup(function() token = softhsm.new_token("hsmstate") end)

  it("are written by one process and read by another", function()
    local clock = { t = 1000 }
    local engine = assert(open(token, clock))
    assert(engine:generate("shared", "ES256", { kid = "one" }))
    assert.equals("one", signer(engine, "shared")) -- records "one" current at 1000
    engine:close()
    -- another process, much later, reads the time this one recorded
    local states, signing = worker_states(token, 5000, "shared")
    assert.equals("one", signing)
    assert.equals("current", states.one.state)
    assert.equals(1000, states.one.times.current)
    -- the state is a private data object under the set's label
    local t = raw_token(token)
    local objects = assert(t:data_objects(hsm_states.APPLICATION, "shared"))
    assert.equals(1, #objects)
    local value = cjson.decode(objects[1].value)
    assert.equals(1, value.version)
    assert.equals(1000, value.records.one.times.current)
    t:close()
  end)

  it("lets exactly one of two processes racing a write of the same version win, 20 rounds", function()
    local t = raw_token(token)
    local backend = hsm_states.new(t, "")
    assert.is_true(assert(backend:write("race", 0, {})))
    for round = 1, 20 do
      local version = assert(backend:read("race")).version
      -- the processes log in one after the other (SoftHSM fails logins
      -- that overlap), then both write when told to (JWKE_GO)
      local ready, go = os.tmpname(), os.tmpname()
      os.remove(go)
      local a, b = "a" .. round, "b" .. round
      local function start(tag)
        return string.format("%s %s/jwkengine spec/helpers/hsm_state_worker.lua write race %d %s & "
          .. "for i in $(seq 6000); do [ -e %s.%s ] && break; sleep 0.01; done",
          cli.env_prefix(softhsm.environment(token, { JWKE_NOW = "1", JWKE_READY = ready, JWKE_GO = go })),
          softhsm.BUILD, version, tag, ready, tag)
      end
      local out = softhsm.run(string.format("(%s; %s; touch %s; wait)", start(a), start(b), go))
      os.remove(ready); os.remove(ready .. "." .. a); os.remove(ready .. "." .. b); os.remove(go)
      local _, won = out:gsub("won", "")
      local _, lost = out:gsub("lost", "")
      assert.equals(1, won, "round " .. round .. ": " .. out)
      assert.equals(1, lost, "round " .. round .. ": " .. out)
      local state = assert(backend:read("race"))
      assert.equals(version + 1, state.version)
      -- the records are the winner's, and only one state object is left
      local winner = next(state.records)
      assert.matches("^[ab]" .. round .. "$", winner)
      local objects = assert(t:data_objects(hsm_states.APPLICATION, "race"))
      assert.equals(1, #objects, "round " .. round)
    end
    t:close()
  end)

  it("makes a pair added with pkcs11-tool next in every process, with one first-seen time, then promotes it", function()
    local clock = { t = 10000 }
    local engine = assert(open(token, clock))
    assert(engine:generate("op", "ES256", { kid = "first" }))
    assert.equals("first", signer(engine, "op")) -- "first" recorded current
    local _, ok = softhsm.pkcs11_tool(token, "--login --keypairgen --key-type EC:prime256v1 --usage-sign"
      .. " --label op --id " .. softhsm.hex("added"))
    assert(ok)
    -- a process sees it first, at 10100: next from then on
    local states, signing = worker_states(token, 10100, "op")
    assert.equals("first", signing)
    assert.equals("next", states.added.state)
    assert.equals(10100, states.added.times.next)
    -- another process, later, and this one agree on that time
    states = worker_states(token, 10300, "op")
    assert.equals(10100, states.added.times.next)
    clock.t = 10300
    assert(engine:refresh("op"))
    assert.equals(10100, states_of(engine, "op").added.times.next)
    assert.equals("first", signer(engine, "op"))
    -- promoted prepublish after it was first seen, in every process
    local prepublish = engine.policies.default.prepublish
    clock.t = 10100 + prepublish
    assert(engine:refresh("op"))
    assert.equals("added", signer(engine, "op"))
    states, signing = worker_states(token, 10100 + prepublish, "op")
    assert.equals("added", signing)
    assert.equals("previous", states.first.state)
    -- the CLI lists the set's states from the token
    local out, err, status = cli.keys(softhsm.environment(token), "keys op")
    assert.equals(0, status, err)
    local listed = {}
    for line in out:gmatch("[^\n]+") do
      local key = cjson.decode(line)
      listed[key.kid] = key
    end
    -- (its clock is real: long past this schedule, "first" is retired)
    assert.equals(10100, listed.added.times.next)
    assert.equals("current", listed.added.state)
    assert.equals("retired", listed.first.state)
    engine:close()
  end)

  it("makes exactly one new key per cycle when two processes run maintain on one token", function()
    local clock = { t = os.time() }
    local engine = assert(open(token, clock))
    assert(engine:generate("rot", "ES256", { kid = "k0" }))
    assert.equals("k0", signer(engine, "rot"))
    engine:close()
    local path = os.tmpname() .. ".json"
    softhsm.write_file(path, cjson.encode({ startup_sets = { { set = "rot", alg = "ES256", rotation = ROTATION } },
      store = { cache_ttl = 0 } }))
    local env = softhsm.environment(token, { JWKENGINE_CONFIG = path })
    local t = raw_token(token)
    local backend = hsm_states.new(t, "")
    for cycle = 1, 3 do
      -- move the set's records back one period so maintain is due now (the
      -- CLI's clock is real)
      local state = assert(backend:read("rot"))
      for _, r in pairs(state.records) do
        for name, at in pairs(r.times) do r.times[name] = at - ROTATION.period end
      end
      assert.is_true(assert(backend:write("rot", state.version, state.records)))
      local command = string.format("%s %s/jwkengine scripts/keys.lua maintain", cli.env_prefix(env), softhsm.BUILD)
      local out = softhsm.run(string.format("(%s & %s; wait)", command, command))
      local _, generated = out:gsub('"to":"next"', "")
      assert.equals(1, generated, out)
      -- one new pair on the token: loading the set would refuse a duplicate
      -- CKA_ID, and exactly one key is next
      clock.t = os.time()
      engine = assert(open(token, clock))
      local states = states_of(engine, "rot")
      local count, next_keys = 0, 0
      for _, key in pairs(states) do
        count = count + 1
        if key.state == "next" then next_keys = next_keys + 1 end
      end
      assert.equals(cycle + 1, count, out)
      assert.equals(1, next_keys, out)
      engine:close()
    end
    t:close()
    os.remove(path)
  end)
end)

describe("key states through a failing token", function()
  local token
  setup(function()
    faults.set({})
    token = softhsm.new_token("hsmstate-faults")
  end)
  after_each(function() faults.set({}) end)

  it("returns a token error while writing state, not hidden", function()
    local clock = { t = 1000 }
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, now = function() return clock.t end, store = { cache_ttl = 0 } }))
    assert(engine:generate("f", "ES256", { kid = "one" }))
    assert.equals("one", signer(engine, "f"))
    faults.set({ faults = "C_CreateObject:CKR_DEVICE_MEMORY" })
    local changes, err, code = engine:rotate("f", { now = true })
    assert.is_nil(changes)
    assert.equals("CKR_DEVICE_MEMORY", code, err)
    assert.matches("writing its key states", err, 1, true)
    faults.set({})
    engine:close()
  end)

  it("refuses a state object the token reports as larger than its buffer, by name", function()
    local clock = { t = 1000 }
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, now = function() return clock.t end, store = { cache_ttl = 0 } }))
    assert(engine:generate("g", "ES256", { kid = "one" }))
    assert.equals("one", signer(engine, "g"))
    faults.set({ lengths = "C_GetAttributeValue:CKA_VALUE=buffer+1" })
    local changes, err, code = engine:retire("g", "one")
    assert.is_nil(changes)
    assert.equals("ERR_TOKEN_LENGTH", code, err)
    assert.matches("CKA_VALUE is larger than 65536 bytes", err, 1, true)
    faults.set({})
    engine:close()
  end)
end)

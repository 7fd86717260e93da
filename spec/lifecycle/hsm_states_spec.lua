-- Key states of HSM sets live on the token (CKO_DATA objects beside the
-- keys): real SoftHSM tokens, real processes (the runner), pkcs11-tool, and
-- the fault-injecting module in front of SoftHSM.
local cjson = require("cjson")
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local hsm_states = require("jwkengine.lifecycle.token_backend")
local jwkengine = require("jwkengine")
local cli = require("helpers.cli")
local faults = require("helpers.faults")
local refused = require("helpers.refusal").refused
local softhsm = require("helpers.softhsm")

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

-- An engine at time t whose set has one key, kid, recorded as current
-- (an ES256 key): the engine and its clock.
local function open_with_key(token, t, set, kid, extra)
  local clock = { t = t }
  local engine = assert(open(token, clock, extra))
  assert(engine:generate(set, "ES256", { kid = kid }))
  assert.equals(kid, signer(engine, set))
  return engine, clock
end

local function states_of(engine, set)
  local by_kid = {}
  for _, key in ipairs(assert(engine:key_states(set))) do by_kid[key.kid] = key end
  return by_kid
end

-- The worker process (spec/helpers/hsm_state_worker.lua) on `token`.
local function worker(token, now, args, extra)
  local env = softhsm.environment(token, { JWKE_NOW = tostring(now) })
  for k, v in pairs(extra or {}) do env[k] = v end
  local out, ok = softhsm.run(string.format("%s %s/jwkengine spec/helpers/hsm_state_worker.lua %s",
    cli.env_prefix(env), softhsm.BUILD, args))
  return out, ok
end

-- Two workers acting at the same instant: each opens the token (one after
-- the other: SoftHSM fails logins that overlap), then both leave a barrier
-- together. args_a/args_b end with the worker's tag. Returns their output.
local function race(token, now, args_a, args_b, extra)
  local ready, go = os.tmpname(), os.tmpname()
  os.remove(go)
  local env = softhsm.environment(token, { JWKE_NOW = tostring(now), JWKE_READY = ready, JWKE_GO = go })
  for k, v in pairs(extra or {}) do env[k] = v end
  local function start(args)
    local tag = args:match("(%S+)$")
    return string.format("%s %s/jwkengine spec/helpers/hsm_state_worker.lua %s & "
      .. "for i in $(seq 6000); do [ -e %s.%s ] && break; sleep 0.01; done",
      cli.env_prefix(env), softhsm.BUILD, args, ready, tag), tag
  end
  local command_a, tag_a = start(args_a)
  local command_b, tag_b = start(args_b)
  local out = softhsm.run(string.format("(%s; %s; touch %s; wait)", command_a, command_b, go))
  os.remove(ready); os.remove(ready .. "." .. tag_a); os.remove(ready .. "." .. tag_b); os.remove(go)
  return out
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

local raw_token = require("helpers.lifecycle").raw_token

describe("key states on the token", function()
  local token
  setup(function() token = softhsm.new_token("hsmstate") end)

  it("are written by one process and read by another", function()
    local engine = open_with_key(token, 1000, "shared", "one") -- records "one" current at 1000
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

  -- the keys and states of set `set` as an engine at `now` sees them
  local function census(now, set)
    local clock = { t = now }
    local engine = assert(open(token, clock))
    local count, next_keys, current = 0, 0, nil
    for kid, key in pairs(states_of(engine, set)) do
      count = count + 1
      if key.state == "next" then next_keys = next_keys + 1 end
      if key.state == "current" then current = kid end
    end
    engine:close()
    return count, next_keys, current
  end

  -- A writer moves a set from version N to N+1 by destroying the N object,
  -- then creating N+1; a loaded machine can hold it up in between. A
  -- process that has seen version N and reads then must not take "no
  -- states" for the truth: deciding from the keys alone would make the
  -- first key by CKA_ID sign, whatever the records say.
  it("keeps the states it read when another writer is held up between its destroy and its create", function()
    local engine = open_with_key(token, 1000, "midwrite", "bb") -- current, recorded
    assert(engine:generate("midwrite", "ES256", { kid = "aa" }))
    assert.equals("bb", signer(engine, "midwrite")) -- "aa" is next, recorded
    -- the other writer, after its destroy
    local t = raw_token(token)
    for _, object in ipairs(assert(t:data_objects(hsm_states.APPLICATION, "midwrite"))) do
      assert(t:destroy_data(hsm_states.APPLICATION, "midwrite", object.value))
    end
    -- the backend says so instead of answering "nothing recorded"
    local backend = hsm_states.new(t, "")
    backend.seen.midwrite = 2
    local state, err, code = backend:read("midwrite")
    assert.is_nil(state)
    assert.equals("ERR_STORE", code)
    assert.matches("being rewritten by another process", err, 1, true)
    -- the engine reads the set again and keeps the states it had
    assert(engine:reload("midwrite"))
    assert.equals("bb", signer(engine, "midwrite"))
    assert.equals("next", states_of(engine, "midwrite").aa.state)
    -- and wrote nothing from the failed read
    assert.equals(0, #assert(t:data_objects(hsm_states.APPLICATION, "midwrite")))
    t:close()
    engine:close()
  end)

  it("waits for a writer held up between its destroy and its create instead of reporting it", function()
    local engine = open_with_key(token, 1000, "slowwrite", "s1") -- version 1 recorded
    engine:close()
    local t = raw_token(token)
    local objects = assert(t:data_objects(hsm_states.APPLICATION, "slowwrite"))
    assert.equals(1, #objects)
    local version1 = objects[1].value
    -- the other writer destroys version 1 ...
    assert(t:destroy_data(hsm_states.APPLICATION, "slowwrite", version1))
    -- ... and creates version 2 only while this reader waits, at its
    -- fourth pause: the reader must still be reading then, and take it
    local pauses, version2 = {}, version1:gsub('"version":1', '"version":2')
    assert.are_not.equal(version1, version2)
    local backend = hsm_states.new(t, "", nil, function(seconds)
      pauses[#pauses + 1] = seconds
      if #pauses == 4 then assert(t:create_data(hsm_states.APPLICATION, "slowwrite", version2)) end
    end)
    backend.seen.slowwrite = 1
    local state = assert(backend:read("slowwrite"))
    assert.equals(2, state.version)
    assert.same({ 0.001, 0.002, 0.004, 0.008 }, pauses)
    t:close()
  end)

  it("core.pause waits at least what it is given and refuses what is not a short pause", function()
    local started = core.monotonic()
    core.pause(0.05)
    assert.is_true(core.monotonic() - started >= 0.05)
    for _, bad in ipairs({ -0.1, 1.5, "soon" }) do
      local ok, err = pcall(core.pause, bad)
      assert.is_false(ok)
      assert.matches("bad argument #1 to '[%w.]*pause'", err)
    end
  end)

  -- The same gap met by a process that has read nothing yet (a `keys.lua
  -- maintain` just started, as in the maintain race below under load):
  -- finding no state object, it must not take the set for one never
  -- written, record the keys' states afresh and make a next key of its own.
  it("makes no key and records nothing when a fresh process runs maintain while a writer is between its destroy and its create", function()
    -- a set one rotation old: g0 previous, a generated key current
    -- g0 current at 100000, recorded
    local engine, clock = open_with_key(token, 100000, "gap", "g0",
      { startup_sets = { { set = "gap", alg = "ES256", rotation = ROTATION } } })
    clock.t = 100000 + ROTATION.period - ROTATION.prepublish
    assert.equals(1, #assert(engine:maintain()))
    clock.t = 100000 + ROTATION.period
    assert(engine:maintain())
    local rotated = signer(engine, "gap")
    assert.not_equals("g0", rotated)
    engine:close()
    local t = raw_token(token)
    local before = assert(t:data_objects(hsm_states.APPLICATION, "gap"))
    assert.equals(1, #before)
    local held = cjson.decode(before[1].value)
    -- the held writer's destroy
    assert.equals(1, assert(t:destroy_data(hsm_states.APPLICATION, "gap", before[1].value)))
    -- a fresh process, when the schedule says a next key is due
    local config = os.tmpname() .. ".json"
    softhsm.write_file(config, cjson.encode({ startup_sets = { { set = "gap", alg = "ES256", rotation = ROTATION } } }))
    local due = 100000 + 2 * ROTATION.period - ROTATION.prepublish
    local out = worker(token, due, "maintain gap", { JWKENGINE_CONFIG = config })
    os.remove(config)
    assert.matches("refused ERR_STORE: key set 'gap': its key states are being rewritten by another process", out, 1, true)
    -- the held writer's create: its version stands alone, and the token
    -- has no key the fresh process made
    held.version = held.version + 1
    assert(t:create_data(hsm_states.APPLICATION, "gap", cjson.encode(held)))
    local objects = assert(t:data_objects(hsm_states.APPLICATION, "gap"))
    assert.equals(1, #objects, out)
    assert.equals(held.version, cjson.decode(objects[1].value).version)
    local count, next_keys, current = census(due, "gap")
    assert.equals(2, count, out)
    assert.equals(0, next_keys, out)
    assert.equals(rotated, current)
    t:close()
  end)

  -- A writer that dies in the gap leaves a marker without a state object:
  -- refused until the marker is deleted as the README says, then recorded
  -- afresh.
  it("refuses a set left with a marker and no state object until pkcs11-tool deletes the marker", function()
    local engine = open_with_key(token, 1000, "died", "d0")
    engine:close()
    local t = raw_token(token)
    assert.equals(1, #assert(t:data_objects(hsm_states.MARKER_APPLICATION, "died")))
    for _, object in ipairs(assert(t:data_objects(hsm_states.APPLICATION, "died"))) do
      assert(t:destroy_data(hsm_states.APPLICATION, "died", object.value))
    end
    refused("ERR_STORE", "key set 'died': its key states are being rewritten by another process",
      hsm_states.new(t, ""):read("died"))
    local _, ok = softhsm.pkcs11_tool(token, "--login --delete-object --type data --application-label '"
      .. hsm_states.MARKER_APPLICATION .. "' --label died")
    assert(ok)
    assert.equals(0, #assert(t:data_objects(hsm_states.MARKER_APPLICATION, "died")))
    assert.same({ version = 0, records = {} }, assert(hsm_states.new(t, ""):read("died")))
    local states = worker_states(token, 2000, "died")
    assert.equals("current", states.d0.state)
    assert.equals(2000, states.d0.times.current)
    assert.equals(1, #assert(t:data_objects(hsm_states.MARKER_APPLICATION, "died")))
    t:close()
  end)

  -- Two first writers that see each other's version 1 must not both back
  -- off (the marker would then stand alone and refuse the set for good):
  -- the one readers pick keeps its object, the other destroys its own.
  it("keeps the version 1 readers pick when two first writers see each other's, and drops the other", function()
    local t = raw_token(token)
    local picked = '{"version":1,"writer":"a","records":{}}'
    local other = '{"version":1,"writer":"b","records":{}}'
    -- the other first writer has made its version 1 (and the marker) ...
    assert(t:create_data(hsm_states.MARKER_APPLICATION, "twofirst", "1"))
    assert(t:create_data(hsm_states.APPLICATION, "twofirst", other))
    -- ... this one makes its own and looks for rivals first: it keeps it
    assert.is_true(hsm_states.new(t, ""):first_write("twofirst", picked))
    -- the other looks next, sees the one readers pick, and drops its own
    assert.is_false(hsm_states.new(t, ""):first_write("twofirst", other))
    local objects = assert(t:data_objects(hsm_states.APPLICATION, "twofirst"))
    assert.equals(1, #objects)
    assert.equals(picked, objects[1].value)
    assert.equals(1, assert(hsm_states.new(t, ""):read("twofirst")).version)
    t:close()
  end)

  -- A round proves the race only when both writers read the version
  -- before either replaced it (the loser got as far as the destroy): under
  -- load the two may run one after the other, and such a round would pass
  -- without a race. So rounds go on past 20 until CONTENDED of them raced
  -- (at most MAX_ROUNDS), and every round, raced or not, has one winner.
  -- About 1 round in 5 races on an idle machine, 1 in 14 beside a process
  -- that keeps a core busy: 100 rounds miss a race about once in 1,500 runs.
  it("lets exactly one of two processes racing a write of the same version win, 20 rounds and a real race", function()
    local CONTENDED, MAX_ROUNDS = 1, 100
    local t = raw_token(token)
    local backend = hsm_states.new(t, "")
    assert.is_true(assert(backend:write("race", 0, {})))
    local contended, round = 0, 0
    while (round < 20 or contended < CONTENDED) and round < MAX_ROUNDS do
      round = round + 1
      local version = assert(backend:read("race")).version
      local out = race(token, 1, string.format("write race %d a%d", version, round),
        string.format("write race %d b%d", version, round))
      local _, won = out:gsub("won", "")
      local _, lost = out:gsub("lost", "")
      assert.equals(1, won, "round " .. round .. ": " .. out)
      assert.equals(1, lost, "round " .. round .. ": " .. out)
      if out:find("lost at the destroy", 1, true) then contended = contended + 1 end
      local state = assert(backend:read("race"))
      assert.equals(version + 1, state.version)
      -- the records are the winner's, and only one state object is left
      local winner = next(state.records)
      assert.matches("^[ab]" .. round .. "$", winner)
      local objects = assert(t:data_objects(hsm_states.APPLICATION, "race"))
      assert.equals(1, #objects, "round " .. round)
    end
    print(string.format("two writers: %d of %d rounds raced to the destroy", contended, round))
    assert(contended >= CONTENDED, string.format("only %d of %d rounds had both writers read the version "
      .. "before either replaced it: the race was not exercised", contended, round))
    t:close()
  end)

  it("makes a pair added with pkcs11-tool next in every process, with one first-seen time, then promotes it", function()
    local engine, clock = open_with_key(token, 10000, "op", "first") -- "first" recorded current
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
    local engine = open_with_key(token, 100000, "rot", "k0") -- k0 current at 100000
    engine:close()
    local config = os.tmpname() .. ".json"
    softhsm.write_file(config, cjson.encode({ startup_sets = { { set = "rot", alg = "ES256", rotation = ROTATION } } }))
    local signers = { k0 = true }
    for cycle = 1, 3 do
      -- a next key is due period - prepublish after the current one began,
      -- and promoted prepublish later
      local due = 100000 + cycle * ROTATION.period - ROTATION.prepublish
      local out = race(token, due, "maintain rot a", "maintain rot b", { JWKENGINE_CONFIG = config })
      local _, generated = out:gsub('"to":"next"', "")
      assert.equals(1, generated, out)
      local count, next_keys = census(due, "rot")
      assert.equals(cycle + 1, count, out) -- loading refuses a duplicate CKA_ID
      assert.equals(1, next_keys, out)
      out = race(token, due + ROTATION.prepublish, "maintain rot a", "maintain rot b", { JWKENGINE_CONFIG = config })
      local _, promoted = out:gsub('"to":"current"', "")
      assert.equals(1, promoted, out)
      local current
      count, next_keys, current = census(due + ROTATION.prepublish, "rot")
      assert.equals(0, next_keys, out)
      assert.is_nil(signers[current])
      signers[current] = true
    end
    os.remove(config)
  end)

  it("makes one next key when two processes rotate a set at once, and refuses the other by name", function()
    local engine = open_with_key(token, 200000, "twice", "t0")
    engine:close()
    local out = race(token, 200000, "rotate twice a", "rotate twice b")
    local _, generated = out:gsub('"to":"next"', "")
    assert.equals(1, generated, out)
    assert.matches("refused ERR_KEY_STATE: key set 'twice' already has a next key", out, 1, true)
    local count, next_keys, current = census(200000, "twice")
    assert.equals(2, count)
    assert.equals(1, next_keys)
    assert.equals("t0", current)
  end)
end)

describe("key states through a failing token", function()
  local token
  setup(function()
    faults.set({})
    token = softhsm.new_token("hsmstate-faults")
  end)
  after_each(function() faults.set({}) end)

  it("returns a token error while writing state, not hidden, and keeps the states it had", function()
    local clock = { t = 1000 }
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, now = function() return clock.t end, store = { cache_ttl = 0 } }))
    assert(engine:generate("f", "ES256", { kid = "one" }))
    assert.equals("one", signer(engine, "f")) -- one current at 1000
    assert(engine:generate("f", "ES256", { kid = "two" }))
    assert.equals("one", signer(engine, "f")) -- two next from 1000
    -- the first create fails (the new state object); the replaced one is
    -- put back, so the set keeps its recorded states
    faults.set({ faults = "C_CreateObject:CKR_DEVICE_MEMORY@1" })
    -- (activate: retire would mark "two" on the key first, by design)
    refused("CKR_DEVICE_MEMORY", "key set 'f': writing its key states to the token", engine:activate("f", "two"))
    faults.set({})
    clock.t = 1100
    assert(engine:refresh("f"))
    local states = states_of(engine, "f")
    assert.equals("next", states.two.state)
    assert.equals(1000, states.two.times.next)
    assert.equals("one", signer(engine, "f"))
    engine:close()
  end)

  it("records a retirement whose mark on the key failed, returns the failure, and marks it on retire again", function()
    local clock = { t = 1000 }
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, now = function() return clock.t end }))
    assert(engine:generate("m", "ES256", { kid = "one" }))
    assert(engine:generate("m", "ES256", { kid = "two" })) -- next
    faults.set({ faults = "C_SetAttributeValue:CKR_DEVICE_MEMORY@1" })
    local err = refused("CKR_DEVICE_MEMORY", "is retired in the records but not on the key", engine:retire("m", "two"))
    assert.matches("keys retire m two", err, 1, true)
    faults.set({})
    local states = states_of(engine, "m")
    assert.equals("retired", states.two.state)
    assert.is_nil(states.two.retired_mark)
    assert(engine:retire("m", "two")) -- nothing to record: the mark is written
    assert.is_true(states_of(engine, "m").two.retired_mark)
    engine:close()
  end)

  it("retires a key of a set with no signer on a token that refuses the mark, in the records alone", function()
    for _, kid in ipairs({ "u1", "u2", "u3" }) do
      assert(softhsm.pkcs11_tool_ok(token, "--login --keypairgen --key-type EC:prime256v1 --usage-sign"
        .. " --label undecided --id " .. softhsm.hex(kid)))
    end
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, now = function() return 1000 end }))
    faults.set({ faults = "C_SetAttributeValue:CKR_ATTRIBUTE_READ_ONLY" })
    local changes = assert(engine:retire("undecided", "u1"))
    faults.set({})
    assert.equals("retired", changes[1].to)
    assert.is_false(changes[1].marked)
    assert.equals("retired", states_of(engine, "undecided").u1.state)
    engine:close()
  end)

  -- The marker is made before version 1: when version 1 then cannot be
  -- made, a marker left alone would refuse the set to every reader and
  -- writer until removed by hand.
  it("takes back the marker of a first write whose state object cannot be created, and writes the set next time", function()
    local t = raw_token(token, faults.MODULE)
    -- the first create (the marker) succeeds, the second (version 1) fails
    faults.set({ faults = "C_CreateObject:CKR_DEVICE_MEMORY@2" })
    refused("CKR_DEVICE_MEMORY", "key set 'firstfail': writing its key states to the token",
      hsm_states.new(t, ""):write("firstfail", 0, {}))
    faults.set({})
    assert.equals(0, #assert(t:data_objects(hsm_states.MARKER_APPLICATION, "firstfail")))
    assert.same({ version = 0, records = {} }, assert(hsm_states.new(t, ""):read("firstfail")))
    assert.is_true(hsm_states.new(t, ""):write("firstfail", 0, {}))
    assert.equals(1, assert(hsm_states.new(t, ""):read("firstfail")).version)
    assert.equals(1, #assert(t:data_objects(hsm_states.MARKER_APPLICATION, "firstfail")))
    t:close()
  end)

  it("refuses a state object the token reports as larger than its buffer, by name", function()
    local clock = { t = 1000 }
    local engine = assert(jwkengine.open({ environment = faults.environment(token), logger = false,
      startup = false, now = function() return clock.t end, store = { cache_ttl = 0 } }))
    assert(engine:generate("g", "ES256", { kid = "one" }))
    assert.equals("one", signer(engine, "g"))
    faults.set({ lengths = "C_GetAttributeValue:CKA_VALUE=buffer+1" })
    -- the object the token cannot hand over is named, and nothing is written
    -- over it (the binding reports it beside the others: the set's only
    -- state object unreadable is unreadable records)
    local err = refused("ERR_KEY_STATES_CORRUPT", "CKA_VALUE is larger than 65536 bytes", engine:rotate("g"))
    assert.matches("ERR_TOKEN_LENGTH", err, 1, true)
    faults.set({})
    engine:close()
  end)
end)

-- C_GenerateKeyPair of another process writes one half, then the other: a
-- set read between the two has a lone half for a moment, which the load
-- waits out (hsm.LONE_HALF_WAIT) instead of failing the whole set.
describe("a lone half of a pair another process is making", function()
  local hsm = require("jwkengine.hsm")
  local token, dir, saved
  setup(function()
    token = softhsm.new_token("lonehalf")
    dir = softhsm.run("mktemp -d"):gsub("%s+$", "")
    local out, ok = softhsm.run(string.format("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 "
      .. "-outform DER -out %s/priv.der && openssl pkey -inform DER -in %s/priv.der -pubout -outform DER "
      .. "-out %s/pub.der", dir, dir, dir))
    assert(ok, out)
    saved = hsm.LONE_HALF_WAIT
  end)
  teardown(function()
    hsm.LONE_HALF_WAIT = saved
    os.execute("rm -rf " .. softhsm.quote(dir))
  end)

  local function write_half(set, class, file, login)
    return string.format("pkcs11-tool --module %s --token-label %s --pin %s %s --write-object %s/%s "
      .. "--type %s --label %s --id 6c6f6e65 --usage-sign", softhsm.quote(softhsm.LIBRARY),
      softhsm.quote(token.label), token.pin, login and "--login" or "", dir, file, class, set)
  end

  it("is waited for while the other half comes, then the pair signs", function()
    softhsm.pkcs11_tool_ok(token, "--write-object " .. dir .. "/pub.der --type pubkey --label lone-a --id 6c6f6e65")
    -- long enough for any machine: the load returns as soon as the half is there
    hsm.LONE_HALF_WAIT = 60
    local engine = assert(open(token, { t = 1000 }))
    assert(os.execute("(sleep 0.5; " .. write_half("lone-a", "privkey", "priv.der", true) .. ") >/dev/null 2>&1 &"))
    local jwks, err, code = engine:key_set("lone-a")
    assert.is_truthy(jwks, tostring(code) .. ": " .. tostring(err))
    assert.same({ "lone" }, { jwks.keys[1].kid })
    assert.equals("lone", signer(engine, "lone-a"))
    engine:close()
  end)

  it("fails the set by name when the half stays alone: never published, never signs", function()
    softhsm.pkcs11_tool_ok(token, "--write-object " .. dir .. "/pub.der --type pubkey --label lone-b --id 6c6f6e65")
    hsm.LONE_HALF_WAIT = 0.2
    local engine = assert(open(token, { t = 1000 }))
    local jwks, err, code = engine:key_set("lone-b")
    assert.is_nil(jwks)
    assert.equals("ERR_KEY_INVALID", code)
    assert.matches("has a public half but no private half", err, 1, true)
    assert.matches("delete the lone half or import its other half", err, 1, true)
    assert.is_nil(engine:sign("lone-b", "x"))
    engine:close()
  end)
end)

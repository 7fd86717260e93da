-- The lifecycle on the software store (SQLite and PostgreSQL), with
-- injected clocks: rows of jwkengine_key_state corrupted through SQL are
-- refused by name and repaired; the policy recorded with a set's states is
-- the one every process evaluates with; deletion is guarded; activate
-- records the former signer; a previous key stays published for all of
-- retain.
local cjson = require("cjson")
local cli = require("helpers.cli")
local lifecycle_helpers = require("helpers.lifecycle")
local softhsm = require("helpers.softhsm")
local store_module = require("jwkengine.store")
local lifecycle_rule = require("jwkengine.lifecycle.rule")
local sql_backend = require("jwkengine.lifecycle.sql_backend")
local stores = require("helpers.stores")

local SECRET = "lifecycle-store-secret-0123456789"
local ROTATION = { period = 1000, prepublish = 400, retain = 4000 }

local function open(dsn, clock, rotation, extra)
  local options = { now = function() return clock.t end, store = { cache_ttl = 0 }, logger = false,
    startup_sets = { { set = "rot", alg = "ES256", rotation = rotation } } }
  if rotation == false then options.startup_sets = {} end
  for k, v in pairs(extra or {}) do options[k] = v end
  return assert(stores.open_engine(dsn, SECRET, options))
end

local function signer(engine, set) return lifecycle_helpers.signer(engine, set or "rot") end
local function published(engine, set) return lifecycle_helpers.published(engine, set or "rot") end

local function states(engine, set)
  local by_kid = {}
  for _, key in ipairs(assert(engine:key_states(set or "rot"))) do by_kid[key.kid] = key end
  return by_kid
end

-- Runs SQL on the store directly (another program on the database).
local function sql(dsn, statement)
  local s = assert(store_module.open(dsn))
  local ok, err = s.driver:exec(statement)
  s:close()
  assert(ok, err)
end

local function recorded(dsn, set)
  local s = assert(store_module.open(dsn))
  local value = assert(sql_backend.new(s):read(set or "rot"))
  s:close()
  return value
end

stores.describe_each("the lifecycle on the software store", function(database, backend)
  -- "old" retired by rotate --now; returns the new current kid
  local function emergency(t)
    local engine = open(database.dsn, { t = t }, ROTATION)
    assert(engine:generate("rot", "ES256", { kid = "old" }))
    assert.equals("old", signer(engine))
    assert(engine:rotate("rot", { now = true }))
    local new = signer(engine)
    engine:close()
    return new
  end

  local CORRUPTIONS = {
    { "a record without times", [[UPDATE jwkengine_key_state SET records = '{"format":2,"records":{"old":{"state":"current"}}}']] },
    { "records a list", [[UPDATE jwkengine_key_state SET records = '{"format":2,"records":[]}']] },
    { "records not an object", [[UPDATE jwkengine_key_state SET records = '{"format":2,"records":7}']] },
    { "truncated JSON", [[UPDATE jwkengine_key_state SET records = '{"format":2,"records":{"old":{"sta']] },
    { "a newer format", [[UPDATE jwkengine_key_state SET records = '{"format":3,"records":{}}']] },
    { "times that are not numbers", [[UPDATE jwkengine_key_state SET records = '{"old":{"state":"current","times":{"current":"now"}}}']] },
  }
  if backend.name == "SQLite" then
    CORRUPTIONS[#CORRUPTIONS + 1] = { "a version that is text", [[UPDATE jwkengine_key_state SET version = 'two']] }
    CORRUPTIONS[#CORRUPTIONS + 1] = { "version 1e999", [[UPDATE jwkengine_key_state SET version = 1e999]] }
  end

  for _, case in ipairs(CORRUPTIONS) do
    it("refuses a set whose row holds " .. case[1] .. " by name, without raising, until keys repair", function()
      local new = emergency(1000)
      sql(database.dsn, case[2])
      local engine = open(database.dsn, { t = 1100 }, ROTATION)
      local ok, kid, err, code = pcall(signer, engine)
      assert.is_true(ok, "raised: " .. tostring(kid))
      assert.is_nil(kid)
      assert.equals("ERR_KEY_STATES_CORRUPT", code, err)
      assert.matches("keys repair rot --current KID", err, 1, true)
      local kids, jerr, jcode = published(engine)
      assert.is_nil(kids)
      assert.equals("ERR_KEY_STATES_CORRUPT", jcode, jerr)
      local _, merr, mcode = engine:maintain()
      assert.equals("ERR_KEY_STATES_CORRUPT", mcode, merr)
      -- the repair, on the operator's word
      local changes = assert(engine:repair_states("rot", { current = new }))
      assert.is_true(#changes >= 1)
      assert.equals(new, signer(engine))
      assert.same({ new }, published(engine)) -- "old" is marked retired on its row
      assert.equals("retired", states(engine).old.state)
      engine:close()
    end)
  end

  it("never signs with the retired key when its set's row is deleted", function()
    local new = emergency(1000)
    sql(database.dsn, "DELETE FROM jwkengine_key_state")
    local engine = open(database.dsn, { t = 1100 }, ROTATION)
    assert.equals(new, signer(engine))
    assert.same({ new }, published(engine))
    engine:close()
  end)

  it("keeps the last good version in a process that read one, and refuses writes from it", function()
    local new = emergency(1000)
    local engine = open(database.dsn, { t = 1100 }, ROTATION)
    assert.equals(new, signer(engine))
    sql(database.dsn, [[UPDATE jwkengine_key_state SET records = 'garbage']])
    assert.equals(new, signer(engine))
    assert.same({ new }, published(engine))
    local _, _, code = engine:rotate("rot")
    assert.equals("ERR_KEY_STATES_CORRUPT", code)
    engine:close()
  end)

  it("evaluates with the policy recorded with the states, whatever each process's configuration says", function()
    local a = open(database.dsn, { t = 0 }, ROTATION)
    assert(a:generate("rot", "ES256", { kid = "k0" }))
    assert(a:maintain()) -- records the configured policy with the states
    assert.same(ROTATION.prepublish, recorded(database.dsn).policy.prepublish)
    assert(a:generate("rot", "ES256", { kid = "k1" })) -- next from 0
    local logged = {}
    local b = open(database.dsn, { t = 0 }, { period = 5000, prepublish = 2000, retain = 8000 },
      { logger = function(_, line) logged[#logged + 1] = line end })
    local c = open(database.dsn, { t = 0 }, false) -- no rotation configured (the CLI without a config)
    for t = 0, 2400, 50 do
      for _, engine in ipairs({ a, b, c }) do
        engine:refresh("rot")
      end
      local clock_a, clock_b = signer(a), signer(b)
      assert.equals(clock_a, clock_b, "at " .. t)
      assert.equals(clock_a, signer(c), "at " .. t)
    end
    local differs = 0
    for _, line in ipairs(logged) do
      if line:find("differs from the one recorded with its states", 1, true) then differs = differs + 1 end
    end
    assert.equals(1, differs, table.concat(logged, "\n"))
    -- keys policy records another, checked against the safety minimums
    local _, err, code = c:key_policy("rot", { prepublish = 1 })
    assert.equals("ERR_CONFIG", code, err)
    local shown = assert(c:key_policy("rot", { prepublish = 500, period = false }))
    assert.equals(500, shown.effective.prepublish)
    assert.is_nil(shown.effective.period)
    assert.equals(500, shown.recorded.prepublish)
    assert.is_nil(shown.configured)
    shown = assert(b:key_policy("rot"))
    assert.equals(500, shown.effective.prepublish)
    assert.equals(2000, shown.configured.prepublish)
    for _, engine in ipairs({ a, b, c }) do engine:close() end
    -- a process whose own minimums are above the recorded policy says so
    -- once, and follows it all the same
    logged = {}
    local d = open(database.dsn, { t = 2400 }, false, { publication = { max_age = 1000 },
      logger = function(_, line) logged[#logged + 1] = line end })
    local before = signer(d)
    d:refresh("rot")
    assert.equals(before, signer(d))
    local unsafe = 0
    for _, line in ipairs(logged) do
      if line:find("below this process's safety minimums", 1, true) then unsafe = unsafe + 1 end
    end
    assert.equals(1, unsafe, table.concat(logged, "\n"))
    d:close()
  end)

  it("shows and sets the policy from the CLI", function()
    local engine = open(database.dsn, { t = os.time() }, false)
    assert(engine:generate("rot", "ES256", { kid = "k0" }))
    engine:close()
    local env = { SECRETS_SYSTEM = SECRET, DSN = database.dsn, HSM_ENABLED = "false" }
    local out, err, status = cli.keys(env, "policy rot --prepublish 700 --retain 5000 --period 9000")
    assert.equals(0, status, err)
    local effective
    for line in out:gmatch("[^\n]+") do
      local row = cjson.decode(line)
      if row.policy == "effective" then effective = row end
    end
    assert.equals(700, effective.prepublish)
    assert.equals(9000, effective.period)
    out, err, status = cli.keys(env, "policy rot --period soon")
    assert.equals(2, status, err)
    assert.equals(5000, recorded(database.dsn).policy.retain)
    assert.is_string(out)
  end)

  it("refuses to delete the current key, a previous key inside retain and a next key without force", function()
    local clock = { t = 1000 }
    local engine = open(database.dsn, clock, ROTATION)
    assert(engine:generate("rot", "ES256", { kid = "a" }))
    assert(engine:generate("rot", "ES256", { kid = "b" }))
    local _, err, code = engine:delete("rot", "b")
    assert.equals("ERR_KEY_STATE", code)
    assert.matches("next key", err, 1, true)
    _, err, code = engine:delete("rot", "a")
    assert.equals("ERR_KEY_STATE", code)
    assert.matches("current key", err, 1, true)
    clock.t = 1000 + ROTATION.prepublish -- b signs, a previous
    assert.equals("b", signer(engine))
    _, err, code = engine:delete("rot", "a")
    assert.equals("ERR_KEY_STATE", code)
    assert.matches("previous key inside retain", err, 1, true)
    -- the CLI says the same and exits 1
    local env = { SECRETS_SYSTEM = SECRET, DSN = database.dsn, HSM_ENABLED = "false" }
    local _, cli_err, status = cli.keys(env, "delete rot b")
    assert.equals(1, status)
    assert.matches("current key", cli_err, 1, true)
    -- past retain it goes; with force anything goes
    clock.t = clock.t + ROTATION.retain
    assert.same({ "b" }, published(engine))
    assert.is_true(engine:delete("rot", "a"))
    assert(engine:generate("rot", "ES256", { kid = "c" }))
    assert.is_true(engine:delete("rot", "c", { force = true }))
    engine:close()
  end)

  it("records the former signer as previous on activate, and keeps it published", function()
    local clock = { t = 1000 }
    local engine = open(database.dsn, clock, ROTATION)
    assert(engine:generate("rot", "ES256", { kid = "a" }))
    assert(engine:generate("rot", "ES256", { kid = "b" }))
    clock.t = 1050
    local changes = assert(engine:activate("rot", "b"))
    local by_kid = {}
    for _, change in ipairs(changes) do by_kid[change.kid] = change end
    assert.equals("previous", by_kid.a and by_kid.a.to)
    assert.equals(1050, by_kid.a.at)
    local value = recorded(database.dsn)
    assert.equals("previous", value.records.a.state)
    assert.equals(1050, value.records.a.times.previous)
    assert.equals("current", value.records.b.state)
    assert.equals("b", signer(engine))
    assert.same({ "a", "b" }, published(engine))
    engine:close()
  end)

  it("keeps a previous key published for all of retain, in a long-lived process and a fresh one", function()
    local creator = open(database.dsn, { t = 1000 }, ROTATION) -- records the policy with the states
    assert(creator:generate("rot", "ES256", { kid = "a" }))
    assert(creator:generate("rot", "ES256", { kid = "b" }))
    creator:close()
    -- a process that never reads the store again (no rotation configured:
    -- it evaluates with the recorded policy, re-evaluating on its clock)
    local clock = { t = 1000 }
    local engine = open(database.dsn, clock, false, { store = { cache_ttl = 100000 } })
    assert.same({ "a", "b" }, published(engine))
    local promoted = 1000 + ROTATION.prepublish
    for _, t in ipairs({ promoted, promoted + 1, promoted + 101, promoted + ROTATION.retain / 2,
      promoted + ROTATION.retain - 1 }) do
      clock.t = t
      assert.same({ "a", "b" }, published(engine), "at " .. t)
      local fresh = open(database.dsn, { t = t }, ROTATION)
      assert.same({ "a", "b" }, published(fresh), "a fresh process at " .. t)
      fresh:close()
    end
    clock.t = promoted + ROTATION.retain
    assert.same({ "b" }, published(engine))
    engine:close()
  end)

  it("marks on the key what a scheduled retirement retired, and activate takes the mark off first", function()
    local clock = { t = 1000 }
    local unscheduled = { prepublish = ROTATION.prepublish, retain = ROTATION.retain } -- no new key made
    local engine = open(database.dsn, clock, unscheduled)
    assert(engine:generate("rot", "ES256", { kid = "a" }))
    assert(engine:generate("rot", "ES256", { kid = "b" }))
    clock.t = 1000 + ROTATION.prepublish + ROTATION.retain -- a: previous, then retired by the clock
    assert(engine:maintain())
    local a = states(engine).a
    assert.equals("retired", a.state)
    assert.is_true(a.retired_mark)
    -- the records lost: the mark alone keeps it retired
    sql(database.dsn, "DELETE FROM jwkengine_key_state")
    local fresh = open(database.dsn, { t = clock.t }, unscheduled)
    assert.equals("b", signer(fresh))
    assert.same({ "b" }, published(fresh))
    -- a process that read the lost records keeps them, and writes nothing
    assert.equals("b", signer(engine))
    local _, err, code = engine:activate("rot", "a")
    assert.equals("ERR_KEY_STATES_CORRUPT", code)
    assert.matches("went back from version", err, 1, true)
    engine:close()
    -- activate (in a process that never read them) takes the mark off first
    assert(fresh:activate("rot", "a"))
    assert.equals("a", signer(fresh))
    assert.is_nil(states(fresh).a.retired_mark)
    fresh:close()
  end)

  it("records a set the engine creates at creation, with the configured policy", function()
    local engine = open(database.dsn, { t = 1000 }, ROTATION, { startup = true })
    local value = recorded(database.dsn)
    assert.equals(1, value.version)
    local kids = {}
    for kid, record in pairs(value.records) do kids[#kids + 1] = kid; assert.equals("current", record.state) end
    assert.equals(1, #kids)
    assert.equals(ROTATION.prepublish, value.policy.prepublish)
    engine:close()
  end)

  it("keeps writing when destroyed keys' records would pass the records' bound: the oldest go", function()
    local clock = { t = 1000 }
    local rotation = { period = 1000, prepublish = 400, retain = 4000, destroy_after = 10 }
    local engine = open(database.dsn, clock, rotation, { startup = true })
    local first = signer(engine)
    -- a long history: the set's own record and 399 destroyed ones, the
    -- records' bound (MAX_RECORDS) reached
    local value = recorded(database.dsn)
    local records = { [first] = value.records[first] }
    for i = 1, 399 do
      records[string.format("d%03d", i)] = { state = "destroyed", times = { retired = i, destroyed = 10 + i } }
    end
    local s = assert(store_module.open(database.dsn))
    assert.is_true(assert(sql_backend.new(s):write("rot", value.version, records, value.policy)))
    s:close()
    -- the new signer's record would make 401: rotate --now must still work
    -- (it retires the first key now; maintain destroys it 10 s later)
    assert(engine:rotate("rot", { now = true }))
    clock.t = clock.t + 11
    assert(engine:maintain())
    local after = recorded(database.dsn)
    local destroyed, total = 0, 0
    for _, record in pairs(after.records) do
      total = total + 1
      if record.state == "destroyed" then destroyed = destroyed + 1 end
    end
    assert.equals("destroyed", after.records[first].state, "the newest destroyed record stays")
    assert.equals(lifecycle_rule.KEEP_DESTROYED, destroyed)
    assert.is_nil(after.records.d001, "the oldest goes")
    assert.is_true(total < 400)
    assert.is_not_nil(signer(engine))
    engine:close()
  end)
end)

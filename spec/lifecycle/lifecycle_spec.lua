-- The one rule of the key lifecycle (jwkengine.lifecycle.rule), as a pure
-- function of records, keys present, policy and an injected clock.
local lifecycle = require("jwkengine.lifecycle.rule")
local policy_module = require("jwkengine.lifecycle.policy")
local refused = require("helpers.refusal").refused

local LIMITS = policy_module.DEFAULT_LIMITS
local function make_policy(set, rotation, limits)
  return policy_module.make(rotation, limits, string.format("startup set '%s': rotation.", set))
end
local POLICY = { prepublish = 400, retain = 4000 }

local function rec(state, times) return { state = state, times = times } end

local function states(evaluation)
  local out = {}
  for kid, key in pairs(evaluation.keys) do out[kid] = key.state end
  return out
end

describe("lifecycle rule", function()
  it("makes a lone unrecorded key current, to be recorded", function()
    local e = lifecycle.evaluate({}, { "a" }, POLICY, 1000)
    assert.equals("a", e.signer)
    assert.same({ a = "current" }, states(e))
    assert.same({ current = 1000 }, e.keys.a.times)
    assert.same({ "a" }, e.published)
    assert.is_true(e.must_record)
  end)

  it("makes the newest of several unrecorded keys current and the others previous where the store knows the order", function()
    local e = lifecycle.evaluate({}, { "new", "old" }, POLICY, 1000, { newest_first = true })
    assert.equals("new", e.signer)
    assert.same({ new = "current", old = "previous" }, states(e))
    assert.equals(1000 + POLICY.retain, e.next_change)
    -- not the kid order: the newest row signs whatever its kid
    e = lifecycle.evaluate({}, { "zz", "aa" }, POLICY, 1000, { newest_first = true })
    assert.equals("zz", e.signer)
  end)

  it("names no signer among several unrecorded keys in no known order (a token), and records none", function()
    local e = lifecycle.evaluate({}, { "aa", "zz" }, POLICY, 1000)
    assert.is_nil(e.signer)
    assert.is_true(e.undecided)
    assert.is_false(e.must_record)
    assert.same({ "aa", "zz" }, e.published)
    assert.is_nil(e.next_change) -- no clock ever promotes one of them
    assert.same({}, lifecycle.records_after({}, e))
    -- one named by the operator (activate) signs; the other enters next
    e = lifecycle.evaluate({ zz = rec("current", { current = 1000 }) }, { "aa", "zz" }, POLICY, 1001)
    assert.equals("zz", e.signer)
    assert.same({ aa = "next", zz = "current" }, states(e))
  end)

  it("makes a key with no record next whatever its kid sorts as, once the set has a signer", function()
    for _, kid in ipairs({ "aa", "zzz" }) do
      local records = { m = rec("current", { current = 10 }) }
      local e = lifecycle.evaluate(records, { kid, "m" }, POLICY, 1000, { newest_first = true })
      assert.equals("m", e.signer)
      assert.equals("next", e.keys[kid].state)
      e = lifecycle.evaluate(records, { "m", kid }, POLICY, 1000)
      assert.equals("m", e.signer)
      assert.equals("next", e.keys[kid].state)
    end
  end)

  it("treats a key marked retired on the key as retired whatever its record says", function()
    local records = { old = rec("current", { current = 10 }), new = rec("next", { next = 20 }) }
    local e = lifecycle.evaluate(records, { "new", "old" }, POLICY, 100, { marked = { old = true } })
    assert.equals("retired", e.keys.old.state)
    assert.is_true(e.changed)
    -- the next key published longest signs rather than nothing
    assert.equals("new", e.signer)
    assert.same({ "new" }, e.published)
    -- no other key may sign: no signer at all, fail closed
    e = lifecycle.evaluate({ old = rec("current", { current = 10 }) }, { "old" }, POLICY, 100,
      { marked = { old = true } })
    assert.is_nil(e.signer)
    assert.same({}, e.published)
    -- records lost: the marked key is still retired; the set's one other
    -- key (with no record) is the only one that may sign
    e = lifecycle.evaluate({}, { "old", "fresh" }, POLICY, 100, { marked = { old = true } })
    assert.equals("fresh", e.signer)
    assert.equals("retired", e.keys.old.state)
    e = lifecycle.evaluate({}, { "old" }, POLICY, 100, { marked = { old = true }, newest_first = true })
    assert.is_nil(e.signer)
  end)

  it("makes a key added to a set with a current key next, and promotes it after prepublish", function()
    local records = { a = rec("current", { current = 10 }) }
    local e = lifecycle.evaluate(records, { "b", "a" }, POLICY, 1000)
    assert.equals("a", e.signer)
    assert.same({ a = "current", b = "next" }, states(e))
    assert.same({ "b", "a" }, e.published)
    assert.equals(1400, e.next_change)
    assert.is_true(e.must_record)
    -- recorded (as a loader writes it), then the clock passes prepublish
    records = lifecycle.records_after(records, e)
    e = lifecycle.evaluate(records, { "b", "a" }, POLICY, 1399)
    assert.equals("a", e.signer)
    assert.is_false(e.changed)
    e = lifecycle.evaluate(records, { "b", "a" }, POLICY, 1400)
    assert.equals("b", e.signer)
    assert.same({ a = "previous", b = "current" }, states(e))
    assert.equals(1400, e.keys.a.times.previous)
    assert.is_true(e.changed)
    assert.is_false(e.must_record)
  end)

  it("replays promotion and retirement at the times they fell due, whatever the clock", function()
    local records = { a = rec("current", { current = 0 }), b = rec("next", { next = 100 }) }
    local late = lifecycle.evaluate(records, { "b", "a" }, POLICY, 100000)
    assert.same({ a = "retired", b = "current" }, states(late))
    assert.equals(500, late.keys.b.times.current)
    assert.equals(500, late.keys.a.times.previous)
    assert.equals(4500, late.keys.a.times.retired)
    assert.same({ "b" }, late.published)
    -- another process evaluating at another time records the same times
    local other = lifecycle.evaluate(records, { "b", "a" }, POLICY, 5000)
    assert.same(late.keys, other.keys)
  end)

  it("publishes next, current and previous keys, never retired or destroyed ones", function()
    local records = { n = rec("next", { next = 990 }), c = rec("current", { current = 1 }),
      p = rec("previous", { previous = 900 }), r = rec("retired", { retired = 5 }) }
    local e = lifecycle.evaluate(records, { "n", "c", "p", "r" }, POLICY, 1000)
    assert.same({ "n", "c", "p" }, e.published)
    assert.equals("c", e.signer)
    assert.equals(1390, e.next_change)
  end)

  it("keeps exactly one current key when records name two", function()
    local records = { a = rec("current", { current = 10 }), b = rec("current", { current = 20 }) }
    local e = lifecycle.evaluate(records, { "a", "b" }, POLICY, 30)
    assert.equals("b", e.signer)
    assert.same({ a = "previous", b = "current" }, states(e))
  end)

  it("picks a signer when the current key is gone: the next key first, else the latest previous", function()
    local records = { gone = rec("current", { current = 1 }), n = rec("next", { next = 90 }),
      p = rec("previous", { previous = 50 }) }
    local e = lifecycle.evaluate(records, { "n", "p" }, POLICY, 100)
    assert.equals("n", e.signer)
    assert.is_true(e.must_record)
    records.n = nil
    e = lifecycle.evaluate(records, { "p" }, POLICY, 100)
    assert.equals("p", e.signer)
  end)

  it("says when the period wants a next key, and not while one is next", function()
    local policy = { period = 1000, prepublish = 400, retain = 4000 }
    local records = { a = rec("current", { current = 0 }) }
    local e = lifecycle.evaluate(records, { "a" }, policy, 599)
    assert.is_nil(e.generate)
    assert.equals(600, e.next_change)
    e = lifecycle.evaluate(records, { "a" }, policy, 600)
    assert.is_true(e.generate)
    records.b = rec("next", { next = 600 })
    e = lifecycle.evaluate(records, { "b", "a" }, policy, 700)
    assert.is_nil(e.generate)
    assert.equals(1000, e.next_change)
  end)

  it("lists retired keys to destroy only when destroy_after is set", function()
    local records = { c = rec("current", { current = 0 }), r = rec("retired", { retired = 100 }) }
    assert.same({}, lifecycle.evaluate(records, { "c", "r" }, POLICY, 10 ^ 9).destroy)
    local policy = { prepublish = 400, retain = 4000, destroy_after = 50 }
    local e = lifecycle.evaluate(records, { "c", "r" }, policy, 149)
    assert.same({}, e.destroy)
    assert.equals(150, e.next_change)
    assert.same({ "r" }, lifecycle.evaluate(records, { "c", "r" }, policy, 150).destroy)
  end)

  it("ignores records of keys that are not present and treats destroyed kids seen again as new", function()
    local records = { c = rec("current", { current = 0 }), x = rec("destroyed", { destroyed = 5 }) }
    local e = lifecycle.evaluate(records, { "x", "c" }, POLICY, 100)
    assert.same({ c = "current", x = "next" }, states(e))
    assert.is_nil(lifecycle.evaluate(records, { "c" }, POLICY, 100).keys.x)
  end)

  it("keeps the newest KEEP_DESTROYED records of destroyed keys and every other record", function()
    local keep = lifecycle.KEEP_DESTROYED
    local records = { c = rec("current", { current = 0 }), gone = rec("previous", { previous = 1 }) }
    for i = 1, keep + 10 do
      records["d" .. i] = rec("destroyed", { retired = i, destroyed = 1000 + i })
    end
    local out = lifecycle.records_after(records, lifecycle.evaluate(records, { "c" }, POLICY, 5000))
    local destroyed = 0
    for _, record in pairs(out) do
      if record.state == "destroyed" then destroyed = destroyed + 1 end
    end
    assert.equals(keep, destroyed)
    for i = 1, 10 do assert.is_nil(out["d" .. i], "the oldest go first: d" .. i) end
    for i = 11, keep + 10 do assert.is_not_nil(out["d" .. i], "d" .. i) end
    -- records that decide something stay, present or not
    assert.equals("current", out.c.state)
    assert.equals("previous", out.gone.state)
  end)

  it("runs several scheduled cycles, one signer at every instant", function()
    local policy = { period = 1000, prepublish = 400, retain = 1500 }
    local records = { k1 = rec("current", { current = 0 }) }
    local present = { "k1" }
    local signers, n = {}, 1
    for now = 0, 5000, 50 do
      local e = lifecycle.evaluate(records, present, policy, now)
      assert.truthy(e.signer)
      signers[e.signer] = true
      if e.generate then
        n = n + 1
        local kid = "k" .. n
        table.insert(present, 1, kid)
        e = lifecycle.evaluate(records, present, policy, now)
        assert.equals("next", e.keys[kid].state)
      end
      records = lifecycle.records_after(records, e)
      -- every key that signs was published at least prepublish before
      local signer = e.keys[e.signer]
      if signer.times.next then assert.is_true(signer.times.current - signer.times.next >= policy.prepublish) end
    end
    assert.is_true(n >= 5)
    for i = 1, n - 2 do assert.is_true(signers["k" .. i]) end
  end)
end)

describe("lifecycle policy", function()
  it("defaults prepublish and retain to the safe minimums, period and destroy off", function()
    local policy = assert(make_policy("s", nil, LIMITS))
    assert.equals(300 + 30 + 30, policy.prepublish)
    assert.equals(3600 + 60 + 300, policy.retain)
    assert.is_nil(policy.period)
    assert.is_nil(policy.destroy_after)
  end)

  it("refuses prepublish shorter than the cache lifetime plus refresh, by name", function()
    local err = refused("ERR_CONFIG", "rotation.prepublish (359 s) is shorter than publication.max_age + publication.refresh",
      make_policy("s", { prepublish = 359 }, LIMITS))
    assert.matches("startup set 's'", err, 1, true)
  end)

  it("refuses retain shorter than the token lifetime plus tolerance plus cache lifetime, by name", function()
    refused("ERR_CONFIG", "rotation.retain (3959 s) is shorter than tokens.max_lifetime + tokens.clock_tolerance",
      make_policy("s", { retain = 3959 }, LIMITS))
  end)

  it("refuses a period no longer than prepublish", function()
    local _, err, code = make_policy("s", { period = 360 }, LIMITS)
    assert.equals("ERR_CONFIG", code)
    assert.matches("rotation.period (360 s) must be longer than rotation.prepublish", err, 1, true)
  end)
end)

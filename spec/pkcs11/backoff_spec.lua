-- About the binding (jwkengine.core): the PKCS#11 layer's outage backoff, read from the token object.
-- The outage backoff of a token (core/p11_outage.c), read after every failed
-- attempt to come back, not only bounded: each wait doubles from
-- hsm.reinit_interval_ms up to hsm.reinit_interval_max_ms and is drawn
-- between half and all of its backoff, so that tokens (and nginx workers)
-- that lost the HSM together do not retry in step.
local core = require("jwkengine.core")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")

local function sleep_ms(ms)
  os.execute(string.format("sleep %.3f", ms / 1000))
end

describe("the outage backoff", function()
  local token, module

  setup(function()
    token = faults.fresh_token("backoff")
    module = assert(core.load_module(faults.MODULE))
  end)

  teardown(function()
    faults.set({})
    module:close()
  end)

  after_each(function()
    faults.set({})
  end)

  local function open_token()
    local chosen
    for _, slot in ipairs(assert(module:slots())) do
      if slot.label == token.label then chosen = slot end
    end
    local opened = assert(module:open_token(chosen.id, { label = chosen.label, serial = chosen.serial,
      reinit_interval_ms = 100, reinit_interval_max_ms = 1600 }))
    assert.is_true(opened:login(token.pin))
    return opened
  end

  -- One call into the token: during an outage, the attempt to come back
  -- when it is due. Fails while the token is removed.
  local function call(opened)
    local objects, err, code = opened:load_set("backoff", 2048)
    assert.is_nil(objects)
    return err, code
  end

  it("waits 100, 200, 400, 800, 1600, 1600 ms after each failed attempt, each at least half of it", function()
    local opened = open_token()
    faults.set({ removed = 1 })
    local _, code = call(opened) -- the failure, the re-initialization, the token not found: down
    assert.equals("ERR_HSM_UNAVAILABLE", code)
    local waits = {}
    for _, backoff in ipairs({ 100, 200, 400, 800, 1600, 1600 }) do
      local retry_in = opened:outage()
      assert.truthy(retry_in, "the token is not down")
      waits[#waits + 1] = retry_in
      -- read right after the failure that set it: a few ms of slack
      assert.is_true(retry_in >= backoff / 2 - 10 and retry_in <= backoff,
        string.format("a wait of %d ms for the backoff of %d ms (waits so far: %s)", retry_in, backoff,
          table.concat(waits, ", ")))
      sleep_ms(retry_in + 5)
      _, code = call(opened) -- the attempt, which fails: the next wait
      assert.equals("ERR_HSM_UNAVAILABLE", code)
    end
    faults.set({})
    opened:close()
  end)

  it("spreads the attempts of two tokens that failed at the same moment", function()
    local a, b = open_token(), open_token()
    faults.set({ removed = 1 })
    call(a)
    call(b)
    local apart = 0
    local pairs_seen = {}
    for _ = 1, 4 do
      local wait_a, wait_b = a:outage(), b:outage()
      assert.truthy(wait_a and wait_b, "a token is not down")
      pairs_seen[#pairs_seen + 1] = wait_a .. "/" .. wait_b
      if math.abs(wait_a - wait_b) > 2 then apart = apart + 1 end
      sleep_ms(math.max(wait_a, wait_b) + 5)
      call(a) -- both attempt at the same moment, and fail
      call(b)
    end
    -- without jitter both would wait the same after every attempt; with it
    -- two draws within 2 ms of each other are rare, three of four in a row
    -- all but never
    assert.is_true(apart >= 2, "the attempts stay in step: " .. table.concat(pairs_seen, ", "))
    faults.set({})
    a:close()
    b:close()
  end)
end)

-- Thread-pool signing in real nginx under load, with the fault module
-- (spec/faultmod) in front of SoftHSM adding latency to C_Sign: requests
-- beyond the signers wait in the worker's bounded queue (thread_queue),
-- only past it get 503 with Retry-After, never a 500; the JWK Set answers
-- while every signer is busy. One worker, so its queue is the whole
-- server's. No assertion depends on speed: the only time compared is a
-- refusal's against a bound several seconds wider than the queue's, and
-- shorter than the signature it did not wait for.
local faults = require("helpers.faults")
local nginx = require("helpers.nginx")
local softhsm = require("helpers.softhsm")

-- The example configuration, signing in the thread pool as the README says
-- for network HSMs, with `queue` as thread_queue and a VM pool of vm_pool.
local function new_server(token, queue, vm_pool, sign_latency_us)
  return nginx.new({ token = token, workers = 1,
    startup_sets = "  hydra.openid.id-token: ES256\n  hydra.jwt.access-token: ES256\n",
    environment = { HSM_LIBRARY = faults.MODULE, JWKE_FAULT_LATENCY_US = "C_Sign:" .. sign_latency_us },
    render = function(opts)
      local text = nginx.render_config(opts)
      text = nginx.replace_once(text, "env SOFTHSM2_CONF;", "env SOFTHSM2_CONF;\nenv JWKE_FAULT_LATENCY_US;")
      text = nginx.replace_once(text, "# lua_worker_thread_vm_pool_size 16;",
        "lua_worker_thread_vm_pool_size " .. vm_pool .. ";")
      return nginx.replace_once(text, '-- thread_pool = "jwkengine",', string.format(
        'thread_pool = "jwkengine", thread_queue = { in_flight = %d, length = %d, timeout = %g },',
        queue.in_flight, queue.length, queue.timeout))
    end })
end

local function statuses_other_than(result, allowed)
  local other = {}
  for status, n in pairs(result.statuses) do
    if not allowed[tonumber(status)] then other[#other + 1] = status .. " x" .. n end
  end
  return other
end

describe("nginx thread-pool signing within capacity", function()
  local token, server
  local IN_FLIGHT, REQUESTS = 2, 12

  setup(function()
    token = softhsm.new_token("nginx-queue")
    -- a VM pool no larger than the slots: without the queue, requests
    -- beyond it would fail with "no available Lua vm"
    server = new_server(token, { in_flight = IN_FLIGHT, length = REQUESTS, timeout = 60 }, IN_FLIGHT, 50000)
    server:start(120)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("answers every request of a burst beyond the signers with 200 and a token jwcrypto verifies", function()
    local result = server:tokens("/token", REQUESTS, REQUESTS)
    assert.are.same({ ["200"] = REQUESTS }, result.statuses, table.concat(result.problems, "\n"))
    assert.are.equal(REQUESTS, result.valid, table.concat(result.problems, "\n"))
    assert.are.same({ ES256 = REQUESTS }, result.algs)
    local log = server:log()
    assert.are.equal(0, nginx.count(log, "no available Lua vm"))
    -- each thread VM opened its engine once and kept it
    local opened = nginx.count(log, "a worker-thread Lua VM opened its engine")
    assert.is_true(opened >= 1 and opened <= IN_FLIGHT, "engines opened by thread VMs: " .. opened)
  end)
end)

describe("nginx thread-pool signing past its queue", function()
  local token, server
  local TIMEOUT, LENGTH, REQUESTS = 1, 2, 8
  local SIGN_SECONDS = 12
  -- a refusal comes at once or after TIMEOUT; this leaves several seconds
  -- for a loaded machine and stays below the signature it must not wait for
  local REFUSAL_BOUND = TIMEOUT + 6

  setup(function()
    token = softhsm.new_token("nginx-overload")
    server = new_server(token, { in_flight = 1, length = LENGTH, timeout = TIMEOUT }, 4, SIGN_SECONDS * 1000000)
    server:start(120)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("refuses with 503 and Retry-After within the queue's time bound, never 500, and serves the JWK Set meanwhile",
    function()
      local done = server:client_start({ "tokens", server.port, "/token", REQUESTS, REQUESTS, 300 })
      -- the one signer is busy for SIGN_SECONDS: the JWK Set still answers
      nginx.sleep(2)
      local jwks = server:jwks(8, 4)
      assert.are.same({ ["200"] = 8 }, jwks.statuses)

      local result = done()
      assert.are.same({}, statuses_other_than(result, { [200] = true, [503] = true }))
      local ok, refused = result.statuses["200"] or 0, result.statuses["503"] or 0
      assert.is_true(ok >= 1, "no request was signed: " .. table.concat(result.problems, "\n"))
      assert.are.equal(ok, result.valid, table.concat(result.problems, "\n"))
      -- one signs, LENGTH wait and time out, the rest find the queue full
      assert.is_true(refused >= REQUESTS - 1 - LENGTH, "too few refusals: " .. refused)
      assert.are.equal(0, result.retry_after_missing)
      assert.is_true(result.slowest["503"] < REFUSAL_BOUND,
        "a refused request waited " .. result.slowest["503"] .. " s, past the queue's bound")

      local log = server:log()
      assert.is_true(nginx.count(log, "signing overloaded:") >= 1, "the overload was not logged")
      assert.are.equal(0, nginx.count(log, "no available Lua vm"))
    end)
end)

-- The queue's length bound on its own: a wait (30 s) longer than every
-- waiter needs (8 signatures of 3 s one at a time take 24 s), so without
-- the bound every request would be signed; with it, one signs, `length`
-- wait their turn and sign, and the rest are refused at once.
describe("nginx thread-pool signing with a full queue", function()
  local token, server
  local LENGTH, REQUESTS, SIGN_SECONDS = 2, 8, 3

  setup(function()
    token = softhsm.new_token("nginx-qlength")
    server = new_server(token, { in_flight = 1, length = LENGTH, timeout = 30 }, 4, SIGN_SECONDS * 1000000)
    server:start(120)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("signs the one in flight and the 2 queued, and refuses the other 5 at once naming thread_queue.length",
    function()
      local result = server:tokens("/token", REQUESTS, REQUESTS)
      local expected_refused = REQUESTS - 1 - LENGTH
      assert.are.same({ ["200"] = 1 + LENGTH, ["503"] = expected_refused }, result.statuses,
        table.concat(result.problems, "\n"))
      assert.are.equal(1 + LENGTH, result.valid)
      assert.are.equal(0, result.retry_after_missing)
      -- at once: sooner than the one signature they would otherwise wait for
      assert.is_true(result.slowest["503"] < SIGN_SECONDS,
        "a refused request waited " .. result.slowest["503"] .. " s")
      -- the refusals' bodies (the client's problems) name the bound reached
      assert.are.equal(expected_refused, result.problem_count)
      for _, problem in ipairs(result.problems) do
        assert.matches("status 503 .*thread_queue%.length", problem)
      end
      assert.is_true(nginx.count(server:log(), "(thread_queue.length)") >= 1, "the overload was not logged")
    end)
end)

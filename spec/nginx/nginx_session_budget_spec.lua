-- The session budget across nginx's workers: hsm.max_sessions is per
-- process, so nginx warns at start when the sessions the workers may hold
-- (README: Session budgets) exceed the limit the token reports (the
-- fault-injecting module reports it in C_GetTokenInfo, as a networked HSM
-- does).
local cjson = require("cjson")
local faults = require("helpers.faults")
local nginx = require("helpers.nginx")
local softhsm = require("helpers.softhsm")

describe("nginx session budget", function()
  local token

  setup(function()
    token = softhsm.new_token("ngxbudget")
  end)

  local function start(workers, token_limit)
    local server = faults.nginx_server({ token = token, workers = workers,
      environment = { HSM_MAX_SESSIONS = "4", JWKE_FAULT_TOKEN_MAX_SESSIONS = tostring(token_limit) } })
    server:start()
    return server
  end

  it("warns once when workers x (max_sessions + 1) exceeds what the token reports", function()
    local server = start(2, 6)
    local expected = "2 workers x (hsm.max_sessions 4 + 1 login session) = 10 sessions, but the " ..
      "token reports 6: lower HSM_MAX_SESSIONS to 2 or fewer"
    local deadline = os.time() + 30
    while not server:log():find(expected, 1, true) and os.time() < deadline do nginx.sleep(0.2) end
    local log = server:log()
    server:dispose()
    assert.equals(1, nginx.count(log, expected), log)
  end)

  it("says nothing when they fit (the check above can fail)", function()
    local server = start(1, 6) -- 1 x (4 + 1) = 5 sessions: the JWK Set came from worker 0's engine
    local log = server:log()
    server:dispose()
    assert.truthy(log:find("the engine is open in worker", 1, true), log)
    assert.is_nil(log:find("login session) =", 1, true), log)
  end)

  -- The session budget in thread-pool mode: each worker-thread Lua VM opens
  -- an engine of its own, which signs on its login session (no pool), so a
  -- worker may hold hsm.max_sessions + 1 + thread_queue.in_flight sessions
  -- (README: Session budgets). Counted by the fault-injecting module in each
  -- worker (its sessions_peak: the most sessions alive at once in that
  -- process), with a token limit it reports as a networked HSM does.
  local WORKERS, MAX_SESSIONS, IN_FLIGHT = 2, 2, 2
  -- the README's formula, written out here rather than taken from the code
  local PER_WORKER = MAX_SESSIONS + 1 + IN_FLIGHT
  local BUDGET = WORKERS * PER_WORKER

  describe("with thread-pool signing", function()
    local function start_threaded(token_limit, stats_dir)
      local server = faults.nginx_server({ token = token, workers = WORKERS,
        environment = { HSM_MAX_SESSIONS = tostring(MAX_SESSIONS),
          JWKE_FAULT_TOKEN_MAX_SESSIONS = tostring(token_limit),
          JWKE_FAULT_STATS = stats_dir .. "/stats.%p", JWKE_FAULT_STATS_SYNC = "1" },
        edit = function(text)
          text = nginx.replace_once(text, '-- thread_pool = "jwkengine",', 'thread_pool = "jwkengine",')
          text = nginx.replace_once(text, "-- thread_queue = { in_flight = 4,",
            "thread_queue = { in_flight = " .. IN_FLIGHT .. ",")
          -- more VMs than in_flight: the queue, not the VM pool, bounds them
          return nginx.replace_once(text, "# lua_worker_thread_vm_pool_size 16;", "lua_worker_thread_vm_pool_size 16;")
        end })
      server:start()
      return server
    end

    local function stats_dir()
      local out = assert(io.popen("mktemp -d /tmp/jwkengine-thrbudget.XXXXXX")):read("*l")
      return out
    end

    -- The fault module's sessions_peak in each worker, from the stats file it
    -- rewrites after every call.
    local function worker_peaks(server, dir)
      local peaks = {}
      for _, pid in ipairs(server:worker_pids()) do
        local f = io.open(dir .. "/stats." .. pid)
        local text = f and f:read("*a") or ""
        if f then f:close() end
        peaks[#peaks + 1] = tonumber(text:match("\nsessions_peak (%d+)")) or 0
      end
      return peaks
    end

    it("holds no more sessions than the README's formula under concurrent thread-pool signing", function()
      local dir = stats_dir()
      local server = start_threaded(BUDGET, dir)
      if not server:signs_in_threads("/token") then
        server:dispose()
        pending("this nginx Lua module has no ngx.run_worker_thread")
        return
      end
      local result = server:tokens("/token", 120, 8)
      local peaks = worker_peaks(server, dir)
      local log = server:log()
      server:dispose()
      os.execute("rm -rf '" .. dir .. "'")
      assert.are.equal(120, result.valid, cjson.encode(result))
      assert.are.equal(WORKERS, #peaks, log)
      local total = 0
      for _, peak in ipairs(peaks) do
        assert.is_true(peak <= PER_WORKER, string.format("a worker held %d sessions at once; the README " ..
          "says at most %d: %s", peak, PER_WORKER, cjson.encode(peaks)))
        total = total + peak
      end
      -- the VMs did open engines of their own: more than the workers' own
      -- engines (login + one pool session each) could account for
      assert.is_true(total > WORKERS * 2, "no thread VM opened a session: " .. cjson.encode(peaks))
      assert.is_true(total <= BUDGET, cjson.encode(peaks))
      assert.is_nil(log:find("thread VMs x 1 session) =", 1, true), log)
    end)

    it("warns once when the formula exceeds what the token reports, naming what to lower", function()
      local dir = stats_dir()
      local server = start_threaded(BUDGET - 1, dir)
      local expected = string.format("%d workers x (hsm.max_sessions %d + 1 login session + " ..
        "thread_queue.in_flight %d thread VMs x 1 session) = %d sessions, but the token reports %d: " ..
        "lower thread_queue.in_flight to 3 or fewer with HSM_MAX_SESSIONS 0", WORKERS, MAX_SESSIONS,
        IN_FLIGHT, BUDGET, BUDGET - 1)
      local deadline = os.time() + 30
      while not server:log():find(expected, 1, true) and os.time() < deadline do nginx.sleep(0.2) end
      local log = server:log()
      server:dispose()
      os.execute("rm -rf '" .. dir .. "'")
      assert.equals(1, nginx.count(log, expected), log)
    end)
  end)
end)

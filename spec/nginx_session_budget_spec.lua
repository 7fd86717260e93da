-- The session budget across nginx's workers: hsm.max_sessions is per
-- process, so nginx warns at start when workers x (max_sessions + 1 login
-- session) exceeds the limit the token reports (the fault-injecting module
-- reports it in C_GetTokenInfo, as a networked HSM does).
local faults = require "helpers.faults"
local nginx = require "helpers.nginx"
local softhsm = require "helpers.softhsm"

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
end)

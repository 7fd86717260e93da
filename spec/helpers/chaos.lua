-- What the nginx chaos specs (spec/nginx/nginx_chaos_*_spec.lua) check of a
-- client run (spec/nginx/client.py rotation) while another process damages
-- a set's key states, and how they wait for signing to resume.
local assert = require("luassert")
local cjson = require("cjson")
local jwkengine = require("jwkengine")
local nginx = require("helpers.nginx")

local M = {}

-- Every token request and JWK Set probe of a client run, checked: no 500
-- (only 200, or 503 from a worker that refuses the set), the retired kid
-- in no token and no JWK Set, every 200 token verified. Returns the
-- statuses seen (status -> count) and how many tokens verified.
function M.check_run(run, retired, what, server)
  local statuses, verified = {}, 0
  local function seen(status)
    local name = string.format("%d", status)
    statuses[name] = (statuses[name] or 0) + 1
  end
  for _, t in ipairs(run.tokens) do
    seen(t.status)
    assert.is_true(t.status == 200 or t.status == 503, what .. ": token status " .. t.status
      .. "\n" .. server:log():sub(-3000))
    assert.are_not.equal(retired, t.kid, what .. ": the retired key signed")
    if t.status == 200 then
      assert.is_true(t.ok, what .. ": a token failed to verify: " .. tostring(t.error))
      verified = verified + 1
    end
  end
  for _, p in ipairs(run.probes) do
    seen(p.status)
    assert.is_true(p.status == 200 or p.status == 503, what .. ": JWK Set status " .. p.status)
    assert.is_false(nginx.contains(p.kids, retired), what .. ": the retired kid is published")
  end
  return statuses, verified
end

-- The wall clock with its fraction, as the client's time.time() reads it.
function M.now()
  local pipe = assert(io.popen("date +%s.%N"))
  local t = tonumber(pipe:read("*l"))
  pipe:close()
  return t
end

-- The kid in a compact JWS's protected header.
local function kid_of(token)
  local header = assert(jwkengine.b64url_decode(token:match("^([^.]+)%.")))
  return cjson.decode(header).kid
end

-- Waits until `count` requests in a row sign (every worker serving
-- again), none with the key `not_kid` when given.
function M.wait_signing(server, count, not_kid)
  local list = {}
  for i = 1, count do list[i] = { method = "POST", path = "/token", headers = { ["Content-Type"] = "application/json" },
    body = '{"sub":"probe"}' } end
  local deadline = os.time() + 30
  while true do
    local all = true
    for _, r in ipairs(server:requests(list)) do
      all = all and r.status == 200 and (not not_kid or kid_of(r.body) ~= not_kid)
    end
    if all then return end
    assert(os.time() < deadline, "signing did not resume:\n" .. server:log():sub(-3000))
    nginx.sleep(0.3)
  end
end

-- The current and the retired kid in the output of `keys rotate SET
-- --now` (a JSON object a line, one per change of state).
function M.rotated(out)
  local current, retired
  for line in out:gmatch("[^\n]+") do
    local change = cjson.decode(line)
    if change.to == "current" then current = change.kid end
    if change.to == "retired" then retired = change.kid end
  end
  assert.is_string(current, out)
  assert.is_string(retired, out)
  return current, retired
end

-- Waits until `count` JWK Set requests in a row leave out `kid` (every
-- worker read the set again since it was retired).
function M.wait_unpublished(server, kid, count)
  local list = {}
  for i = 1, count do list[i] = { path = "/.well-known/jwks.json" } end
  local deadline = os.time() + 30
  while true do
    local gone = true
    for _, r in ipairs(server:requests(list)) do
      gone = gone and r.status == 200
      for _, key in ipairs(gone and cjson.decode(r.body).keys or {}) do gone = gone and key.kid ~= kid end
    end
    if gone then return end
    assert(os.time() < deadline, kid .. " is still published:\n" .. server:log():sub(-3000))
    nginx.sleep(0.3)
  end
end

-- A key retired by `keys rotate SET --now` (rotate() runs it and returns
-- its output) in the setup of a file that does not run the emergency
-- rotation under the client; waits, as M.emergency does, until no worker
-- signs with or publishes it. Returns the current and the retired kid.
function M.retire_now(server, rotate)
  local current, retired = M.rotated(rotate())
  M.wait_signing(server, 16, retired)
  M.wait_unpublished(server, retired, 16)
  return current, retired
end

-- The emergency rotation under a client: rotate() runs `keys rotate SET
-- --now` and returns its output; marked(retired) checks, independently,
-- that the retirement is written on the key. No answer is a 500; no token
-- requested more than windows.sign seconds after the rotation carries the
-- retired kid (0 on a token, which refuses the key at once; a software
-- worker reads the set again within store.cache_ttl), and no worker
-- publishes it more than windows.publish seconds after. Returns the
-- current and the retired kid.
function M.emergency(server, windows, rotate, marked)
  local finish = server:client_start({ "rotation", server.port, "/token", 6 })
  nginx.sleep(1.5)
  local out = rotate()
  local done = M.now()
  local current, retired = M.rotated(out)
  marked(retired)
  local run = finish()
  for _, t in ipairs(run.tokens) do
    assert.is_true(t.status == 200 or t.status == 503, "token status " .. t.status .. "\n" .. server:log():sub(-3000))
    if t.sent > done + windows.sign then
      assert.are_not.equal(retired, t.kid, "the retired key signed after rotate --now")
    end
  end
  for _, p in ipairs(run.probes) do
    if p.sent > done + windows.publish then
      assert.is_false(nginx.contains(p.kids, retired), "the retired kid is still published")
    end
  end
  M.wait_signing(server, 16)
  return current, retired
end

-- The kid `keys keys SET` names current (its output: a JSON object a
-- line), or nil when it names none. A repair names the key that signs as
-- the operator reads it: a damaged record may have made another key
-- current (a rival naming every key current since 1970 makes the
-- schedule rotate) and the one the spec began with retired since.
function M.current_in(listing)
  for line in (listing or ""):gmatch("[^\n]+") do
    local key = cjson.decode(line)
    if key.state == "current" and not key.retired_mark then return key.kid end
  end
  return nil
end

-- A refusing set answers at once (503 with Retry-After): it does not hold
-- the worker's engine closed for every set. Whatever the machine's speed:
-- every fresh worker's engine opened at its first attempt (the error log
-- written after `logged` bytes names no failed opening), and no request
-- of the run waited ready_timeout for an engine to open (that 503 says
-- "not open in this worker").
function M.opened_at_once(server, run, logged, kind)
  local since = server:log():sub(logged + 1)
  assert.is_nil(since:find("opening the engine in worker %d+ failed"),
    kind .. ": a fresh worker's engine did not open at once:\n" .. since:sub(-3000))
  local waited = 0
  for _, t in ipairs(run.tokens) do
    if tostring(t.error):find("not open in this worker", 1, true) then waited = waited + 1 end
  end
  assert.equals(0, waited, kind .. ": requests waited ready_timeout for the engine to open")
end

-- One kind of damage under a client: corrupt() applied while the workers
-- run, then every worker replaced by a fresh one (nginx reloaded), then
-- repair() (the documented repair) after which every worker signs and
-- the client verifies every token. Starts with repair() too, from a good
-- state whatever a test before left.
function M.survive(server, kind, retired, corrupt, repair)
  repair()
  M.wait_signing(server, 16)
  local finish = server:client_start({ "rotation", server.port, "/token", 3 })
  nginx.sleep(0.5)
  corrupt()
  M.check_run(finish(), retired, kind .. " (running workers)", server)
  local logged = #server:log()
  server:reload()
  local fresh = server:client({ "rotation", server.port, "/token", 3 })
  local statuses = M.check_run(fresh, retired, kind .. " (fresh workers)", server)
  print(string.format("%s: fresh workers answered %s", kind, cjson.encode(statuses)))
  M.opened_at_once(server, fresh, logged, kind)
  repair()
  M.wait_signing(server, 16)
  local run = server:client({ "rotation", server.port, "/token", 3 })
  local _, verified = M.check_run(run, retired, kind .. " (repaired)", server)
  local failed = 0
  for _, t in ipairs(run.tokens) do
    if not t.ok then failed = failed + 1 end
  end
  assert.equals(0, failed, kind .. ": failed verifications after the repair")
  assert.is_true(verified > 10, kind .. ": too few tokens after the repair: " .. verified)
end

return M

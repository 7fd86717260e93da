-- jwkengine in nginx against a network-like HSM:
--   build/jwkengine scripts/bench_nginx.lua [--seconds 8] [--latency-us 1000]
--     [--connections 64] [--jwks-connections 4] [--workers 4] [--modes event,thread,thread0]
--     [--jwks-rate 0] [--wrk-threads 0] [--in-flight 0] [--raw 1]
--
-- The fault module (spec/faultmod) adds --latency-us to C_SignInit and to
-- C_Sign in front of a throwaway SoftHSM token; nginx runs the documented
-- example (scripts/examples/nginx.conf, rendered as the specs render it)
-- with HSM_MAX_SESSIONS=4 on a loopback port. For each mode, wrk POSTs
-- /token on --connections connections while a second wrk reads
-- /.well-known/jwks.json; it prints tokens/s, the 503s (and how many had
-- Retry-After), every other non-2xx, the JWK Set's requests/s, p99 of
-- both, the CPU the machine and nginx's workers spent, and the ceiling the
-- signers and the latency allow: signers / (2 x latency).
--   event    signing in the event loop (one signer per worker)
--   thread   thread_pool = "jwkengine" (thread_queue.in_flight signers per worker)
--   thread0  the same with no added latency: what the CPU alone allows
--   event0   signing in the event loop on SoftHSM itself (no fault module),
--            printed against the raw floor: C_SignInit + C_Sign loops in
--            2 processes on the same token, key and cores (--raw 0: not)
-- --jwks-rate N caps the JWK Set reader at N requests/s (0: as fast as it
-- can, which takes every cycle the signers leave idle); --wrk-threads sets
-- the token wrk's threads (0: 2); --in-flight sets thread_queue.in_flight
-- (0: the default, hsm.max_sessions; the pool has threads=4 per worker).
-- See BENCHMARKS.md. Needs wrk (Debian: wrk) and nginx with the Lua module.
local options = { seconds = 8, ["latency-us"] = 1000, connections = 64, ["jwks-connections"] = 4, workers = 4,
  modes = "event,thread,thread0", ["jwks-rate"] = 0, ["wrk-threads"] = 0,
  ["in-flight"] = 0, raw = 1 }
local raw_worker = arg[1] == "--raw-worker" and tonumber(arg[2])
for i = raw_worker and 3 or 1, #arg, 2 do
  local name = arg[i]:match("^%-%-(.+)$")
  assert(name and options[name] ~= nil and arg[i + 1], "unknown or incomplete option: " .. tostring(arg[i]))
  options[name] = tonumber(arg[i + 1]) or arg[i + 1]
end

local here = arg[0]:gsub("[^/]*$", "")
package.path = here .. "lib/?.lua;" .. here .. "../spec/?.lua;" .. package.path
local sandbox = require("sandbox")
sandbox.enter()

local faults = require("helpers.faults")
local nginx = require("helpers.nginx")
local util = require("jwkengine.util")

local SESSIONS = 4
local SET = "hydra.jwt.access-token"
local SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"

-- One process of the raw floor: the set's key, the raw loop of
-- scripts/bench/baseline.c over a token's signing input; prints ops/s.
if raw_worker then
  local jwkengine = require("jwkengine")
  local bench = require("jwkengine_bench")
  local e = assert(jwkengine.open({ logger = false, startup = false, environment = { HSM_ENABLED = "true",
    HSM_LIBRARY = SOFTHSM, HSM_TOKEN_LABEL = "hydra", HSM_PIN = "1234", SECRETS_SYSTEM = "bench-nginx-raw-secret",
    DSN = "memory" } }))
  local key = assert(e:signing_key(SET))
  local jwt = assert(e:sign_jwt(SET, { sub = "raw" }))
  print(bench.p11_sign(key, "ES256", jwt:match("^(.*)%."), raw_worker))
  e:close()
  os.exit(0)
end

sandbox.new_token("hydra")

-- The example as the specs render it, plus: the fault module's latency
-- variable and HSM_MAX_SESSIONS passed to the workers, and for the thread
-- modes thread-pool signing turned on as the README says for network HSMs.
local function render(threaded)
  return function(opts)
    local text = nginx.render_config(opts)
    text = nginx.replace_once(text, "env SOFTHSM2_CONF;",
      "env SOFTHSM2_CONF;\nenv JWKE_FAULT_LATENCY_US;\nenv HSM_MAX_SESSIONS;")
    text = nginx.replace_once(text, "error_log " .. opts.prefix .. "/logs/error.log notice;",
      "error_log " .. opts.prefix .. "/logs/error.log warn;")
    text = nginx.replace_once(text, "access_log " .. opts.prefix .. "/logs/access.log;", "access_log off;")
    if threaded then
      text = nginx.replace_once(text, '-- thread_pool = "jwkengine",', 'thread_pool = "jwkengine",')
      if options["in-flight"] > 0 then
        text = nginx.replace_once(text, "-- thread_queue = { in_flight = 4,",
          "thread_queue = { in_flight = " .. options["in-flight"] .. ",")
      end
    end
    return text
  end
end

-- Jiffies the whole machine spent busy and in total, from /proc/stat.
local function machine_cpu()
  local line = util.read_file("/proc/stat"):match("^cpu +([^\n]+)")
  local fields, total = {}, 0
  for n in line:gmatch("%d+") do
    fields[#fields + 1] = tonumber(n)
    total = total + tonumber(n)
  end
  return total - fields[4] - (fields[5] or 0), total -- idle and iowait are not busy
end

-- Jiffies (user + system) one stat file counts, 0 when it is gone.
local function stat_cpu(path)
  local stat = util.read_file(path)
  local after = stat and stat:match("^%d+ %b() (.*)$")
  if not after then return 0 end
  local f = {}
  for v in after:gmatch("%S+") do f[#f + 1] = v end
  return tonumber(f[12]) + tonumber(f[13]) -- fields 14 and 15 of stat
end

-- Jiffies the given nginx workers spent: in all, and in their event loops
-- (the main thread; the rest is the thread pool's threads).
local function process_cpu(pids)
  local sum, loops = 0, 0
  for _, pid in ipairs(pids) do
    sum = sum + stat_cpu("/proc/" .. pid .. "/stat")
    loops = loops + stat_cpu("/proc/" .. pid .. "/task/" .. pid .. "/stat")
  end
  return sum, loops
end

local function parse(text)
  local r = { statuses = {} }
  for name, value in text:gmatch("(%S+) (%S+)\n") do
    local status = name:match("^status_(%d+)$")
    if status then r.statuses[tonumber(status)] = tonumber(value) else r[name] = tonumber(value) end
  end
  assert(r.requests, "wrk printed no summary:\n" .. text)
  return r
end

-- script_arg: "post" (POST claims) or "rate=N" (N requests/s per connection)
local function wrk_command(connections, url, script_arg, threads)
  -- then the CPU wrk spent (jiffies), from its shell's counts of waited children
  return string.format("{ wrk -t %d -c %d -d %ds --latency -s %s %s%s 2>&1; " ..
    "echo \"wrk_cpu $(awk '{print $16 + $17}' /proc/$$/stat)\"; }",
    threads and threads > 0 and threads or math.min(connections, 2), connections,
    options.seconds, nginx.root() .. "/scripts/bench/wrk_count.lua", url, script_arg and " -- " .. script_arg or "")
end

local function run_mode(mode)
  local threaded = mode ~= "event" and mode ~= "event0"
  local latency = (mode == "thread0" or mode == "event0") and 0 or options["latency-us"]
  local server = nginx.new({ token = { label = "hydra", pin = "1234" }, workers = options.workers,
    startup_sets = "  hydra.openid.id-token: ES256\n  hydra.jwt.access-token: ES256\n",
    environment = { HSM_LIBRARY = mode == "event0" and SOFTHSM or faults.MODULE, HSM_MAX_SESSIONS = tostring(SESSIONS),
      JWKE_FAULT_LATENCY_US = latency > 0 and string.format("C_SignInit:%d;C_Sign:%d", latency, latency) or false },
    render = render(threaded) })
  server:start(120)
  local base = "http://127.0.0.1:" .. server.port
  -- warm up: every worker (and every thread VM) opens its engine
  os.execute(wrk_command(options.connections, base .. "/token", "post"):gsub("%-d %d+s", "-d 2s") .. " > /dev/null")

  local workers = server:worker_pids()
  local busy0, total0 = machine_cpu()
  local nginx0, loops0 = process_cpu(workers)
  -- --jwks-connections 0: no JWK Set reader (signing alone)
  local jwks_pipe = options["jwks-connections"] > 0 and io.popen(wrk_command(options["jwks-connections"],
    base .. "/.well-known/jwks.json",
    options["jwks-rate"] > 0 and "rate=" .. options["jwks-rate"] / options["jwks-connections"]))
  local token_pipe = io.popen(wrk_command(options.connections, base .. "/token", "post", options["wrk-threads"]))
  local token_out = token_pipe:read("a")
  local jwks_out = jwks_pipe and jwks_pipe:read("a") or "requests 0\nseconds 1\np99_ms 0\n"
  token_pipe:close()
  if jwks_pipe then jwks_pipe:close() end
  local busy1, total1 = machine_cpu()
  local nginx1, loops1 = process_cpu(workers)
  local log = server:log()
  server:dispose()

  local t, j = parse(token_out), parse(jwks_out)
  local ok = 0
  local other = 0
  for status, n in pairs(t.statuses) do
    if status >= 200 and status < 300 then ok = ok + n elseif status ~= 503 then other = other + n end
  end
  local signers = options.workers * (threaded and SESSIONS or 1)
  local ceiling = latency > 0 and signers / (2 * latency / 1e6) or nil
  local tokens_per_s = ok / t.seconds
  local hz = 100 -- USER_HZ on Linux
  return {
    mode = mode, latency = latency, signers = signers, ceiling = ceiling,
    tokens_per_s = tokens_per_s, ok = ok, requests = t.requests, unavailable = t.statuses[503] or 0,
    retry_after = t.retry_after, other = other, socket_errors = t.socket_errors, token_p99 = t.p99_ms,
    jwks_per_s = j.requests / j.seconds, jwks_p99 = j.p99_ms, jwks_non_2xx = j.requests - (j.statuses[200] or 0),
    machine_busy = (busy1 - busy0) / (total1 - total0),
    nginx_cpu_per_token_us = ok > 0 and (nginx1 - nginx0) / hz / (ok + j.requests) * 1e6 or nil,
    -- where it went: the event loops per request, the pool's threads per token, wrk per request
    loop_cpu_us = (loops1 - loops0) / hz / (ok + j.requests) * 1e6,
    pool_cpu_us = threaded and ok > 0 and ((nginx1 - nginx0) - (loops1 - loops0)) / hz / ok * 1e6 or nil,
    wrk_cpu_us = ((t.wrk_cpu or 0) + (j.wrk_cpu or 0)) / hz / (t.requests + j.requests) * 1e6,
    vm_pool_exhausted = nginx.count(log, "no available Lua vm"),
    overload_lines = nginx.count(log, "signing overloaded"),
  }
end

-- What a sleep of the configured latency really takes now: on a loaded
-- machine a woken thread waits for a CPU, and the fault module's latency
-- is a sleep, so this (not the nominal latency) bounds what signers reach.
local function real_sleep_ms()
  local out = sandbox.shell(string.format("%s -c 'import time\nn = 200\nt = time.monotonic()\n" ..
    "for _ in range(n): time.sleep(%g)\nprint((time.monotonic() - t) / n * 1000)'", nginx.PYTHON,
    options["latency-us"] / 1e6))
  return tonumber(out:match("[%d.]+"))
end

local function uptime_load()
  return (util.read_file("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)")
end

print(string.format("jwkengine nginx benchmark: %d workers, HSM_MAX_SESSIONS=%d, %d s, wrk -c %d on POST /token " ..
  "and -c %d on GET /.well-known/jwks.json; load average before: %s", options.workers, SESSIONS, options.seconds,
  options.connections, options["jwks-connections"], uptime_load()))
print("")
print("| mode | latency per call | signers | ceiling/s | tokens/s | of ceiling | 503 (with Retry-After) | " ..
  "other non-2xx | token p99 ms | JWKS/s | JWKS p99 ms | machine CPU busy | nginx CPU per request µs | " ..
  "of it event loops µs | pool threads per token µs | wrk CPU per request µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
local event0
for mode in options.modes:gmatch("[^,]+") do
  local r = run_mode(mode)
  if mode == "event0" then event0 = r.tokens_per_s end
  print(string.format("| %s | %d µs | %d | %s | %.0f | %s | %d (%d) | %d | %.1f | %.0f | %.2f | %.0f%% | %s | %.0f | %s | %.0f |",
    r.mode, r.latency, r.signers, r.ceiling and string.format("%.0f", r.ceiling) or "-", r.tokens_per_s,
    r.ceiling and string.format("%.2f", r.tokens_per_s / r.ceiling) or "-", r.unavailable, r.retry_after,
    r.other + r.jwks_non_2xx, r.token_p99, r.jwks_per_s, r.jwks_p99, r.machine_busy * 100,
    r.nginx_cpu_per_token_us and string.format("%.0f", r.nginx_cpu_per_token_us) or "-", r.loop_cpu_us,
    r.pool_cpu_us and string.format("%.0f", r.pool_cpu_us) or "-", r.wrk_cpu_us))
  if r.vm_pool_exhausted > 0 or r.socket_errors > 0 then
    print(string.format("  (%s: %d 'no available Lua vm' lines in the error log, %d socket errors)", mode,
      r.vm_pool_exhausted, r.socket_errors))
  end
end
-- The raw floor the event0 mode is held against: 2 processes, each a
-- C_SignInit + C_Sign loop, for as long as wrk ran.
local function raw_floor()
  local pipes = {}
  for i = 1, 2 do
    pipes[i] = assert(io.popen(string.format("%s %s --raw-worker %d", arg[-1], arg[0], options.seconds)))
  end
  local total = 0
  for _, pipe in ipairs(pipes) do
    total = total + assert(tonumber(pipe:read("a"):match("([%d.]+)")))
    pipe:close()
  end
  return total
end
if event0 and options.raw ~= 0 then
  local raw = raw_floor()
  print(string.format("\nevent0 against the raw floor: POST /token %.0f/s, raw C_SignInit + C_Sign loops in 2 " ..
    "processes %.0f/s on the same token and cores: %.2f", event0, raw, event0 / raw))
end
print("")
local slept = real_sleep_ms()
print(string.format("a sleep of %d µs takes %.2f ms on this machine now: the ceiling at that latency is %.0f/s " ..
  "for 16 signers, %.0f/s for 4", options["latency-us"], slept, 16 / (2 * slept / 1000), 4 / (2 * slept / 1000)))
print("load average after: " .. uptime_load())

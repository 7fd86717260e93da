-- A throwaway nginx (Debian's, with libnginx-mod-http-lua) for the specs:
-- its own prefix folder, a free loopback port, and the documented example
-- configuration (scripts/examples/nginx.conf) with only the paths, the port and a
-- few test hooks changed, so the spec runs what a reader copies.
local cjson = require("cjson")
local softhsm = require("helpers.softhsm")

local M = {}

local q = softhsm.quote
M.PYTHON = "/usr/bin/python3" -- python3-jwcrypto is Debian's, for Debian's python
M.CLIENT = "spec/nginx/client.py"
M.NGINX = os.getenv("NGINX") or "nginx"

local function run(command)
  return softhsm.run(command)
end

local read_file = require("jwkengine.util").read_file
M.read_file = read_file

local function sleep(seconds)
  os.execute("sleep " .. seconds)
end
M.sleep = sleep

-- SoftHSM fails a login that overlaps another process's: a tool, the CLI
-- or an engine started while nginx's workers refresh may need another try.
-- action() -> result | nil, err; the last err is raised after 20 tries.
function M.retried(action)
  local result, err
  for _ = 1, 20 do
    result, err = action()
    if result then return result end
    sleep(0.2)
  end
  error(err)
end

-- The repository root (the specs run from it) as an absolute path.
function M.root()
  local out = run("pwd")
  return (out:gsub("%s+$", ""))
end

-- A TCP port nobody listens on right now.
function M.free_port()
  local out, ok = run(M.PYTHON .. [[ -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  assert(ok, "cannot find a free port: " .. out)
  return tonumber(out:match("%d+"))
end

-- Replaces `old` (plain text) by `new`, which must occur exactly once: if
-- the example changes, this fails loudly instead of testing something else.
local function replace_once(text, old, new)
  local first = text:find(old, 1, true)
  assert(first, "the configuration no longer contains: " .. old)
  assert(not text:find(old, first + 1, true), "the configuration contains twice: " .. old)
  return text:sub(1, first - 1) .. new .. text:sub(first + #old)
end
M.replace_once = replace_once

-- The installed Lua paths of a documented configuration, pointed at this
-- checkout and build instead (as the documentation says to do).
function M.checkout_paths(text, opts)
  text = replace_once(text,
    [["/usr/local/share/lua/5.1/?.lua;/usr/local/share/lua/5.1/?/init.lua;;"]],
    string.format([["%s/lua/?.lua;%s/lua/?/init.lua;;"]], opts.root, opts.root))
  return replace_once(text, [["/usr/local/lib/lua/5.1/?.so;;"]], string.format([["%s/?.so;;"]], opts.lib))
end

-- The example configuration, adapted:
--   opts.prefix, opts.port, opts.workers, opts.root (repository),
--   opts.lib (folder holding jwkengine/core.so for LuaJIT)
function M.render_config(opts)
  local text = assert(read_file(opts.root .. "/scripts/examples/nginx.conf"), "scripts/examples/nginx.conf is missing")
  local prefix = opts.prefix
  text = replace_once(text, "user www-data;", "user root; # the test's token files belong to root")
  text = replace_once(text, "worker_processes 4;", "worker_processes " .. opts.workers .. ";")
  text = replace_once(text, "pid /run/jwkengine-nginx.pid;", "pid " .. prefix .. "/logs/nginx.pid;")
  text = replace_once(text, "error_log /var/log/nginx/jwkengine-error.log notice;",
    "error_log " .. prefix .. "/logs/error.log notice;")
  text = replace_once(text, "access_log /var/log/nginx/jwkengine-access.log;",
    "access_log " .. prefix .. "/logs/access.log;\n" ..
    "    client_body_temp_path " .. prefix .. "/tmp/body;\n" ..
    "    proxy_temp_path " .. prefix .. "/tmp/proxy;\n" ..
    "    fastcgi_temp_path " .. prefix .. "/tmp/fastcgi;\n" ..
    "    uwsgi_temp_path " .. prefix .. "/tmp/uwsgi;\n" ..
    "    scgi_temp_path " .. prefix .. "/tmp/scgi;")
  text = M.checkout_paths(text, opts)
  -- reuseport: the kernel spreads connections over every worker; the
  -- header tells the spec which worker answered
  text = replace_once(text, "listen 127.0.0.1:8080;",
    "listen 127.0.0.1:" .. opts.port .. " reuseport;\n        add_header X-Jwke-Worker $pid always;")
  text = replace_once(text, "refresh = 30,", "refresh = " .. (opts.refresh or 2) .. ",")
  if opts.sets then
    text = replace_once(text,
      [[-- sets = { "hydra.openid.id-token", "hydra.jwt.access-token" },  -- default: the startup sets]],
      "sets = { \"" .. table.concat(opts.sets, "\", \"") .. "\" },")
  end
  -- a second token endpoint that signs in the thread pool, with the RS256 set
  text = replace_once(text, "        location = /token {", [[
        location = /token-threaded {
            content_by_lua_block {
                if not ngx.run_worker_thread then return ngx.exit(501) end
                require("jwkengine.nginx").serve_token({ set = "hydra.openid.id-token", thread_pool = "jwkengine" })
            }
        }

        location = /token {]])
  return text
end

-- The example configuration for the rotation specs (opts as
-- render_config's): short publication settings (rotation.max_age), POST
-- /token signing with rotation.set for rotation.lifetime seconds, and the
-- key schedule run every second.
function M.render_rotation(opts, rotation)
  local text = M.render_config(opts)
  text = replace_once(text, "max_age = 300,", "max_age = " .. rotation.max_age .. ",")
  text = replace_once(text, 'set = "hydra.jwt.access-token",  --', 'set = "' .. rotation.set .. '",  --')
  text = replace_once(text, "lifetime = 300,", "lifetime = " .. rotation.lifetime .. ",")
  return replace_once(text, '-- thread_pool = "jwkengine",',
    'schedule_interval = 1,\n            -- thread_pool = "jwkengine",')
end

-- The startup sets and timings of the rotation specs' configuration file
-- (startup_sets of M.new): sets is a list of { set, period, prepublish,
-- retain } (no prepublish: no rotation table; no period: none in it),
-- timings { max_age, refresh, lifetime, cache_ttl }.
function M.rotation_config(sets, timings)
  local lines = {}
  for _, entry in ipairs(sets) do
    lines[#lines + 1] = "  - set: " .. entry.set
    lines[#lines + 1] = "    alg: ES256"
    if entry.prepublish then
      lines[#lines + 1] = string.format("    rotation: { %sprepublish: %d, retain: %d }",
        entry.period and string.format("period: %d, ", entry.period) or "", entry.prepublish, entry.retain)
    end
  end
  lines[#lines + 1] = string.format("publication: { max_age: %d, refresh: %d }", timings.max_age, timings.refresh)
  lines[#lines + 1] = string.format("tokens: { max_lifetime: %d, clock_tolerance: 0 }", timings.lifetime)
  lines[#lines + 1] = string.format("store: { cache_ttl: %d }", timings.cache_ttl)
  lines[#lines + 1] = ""
  return table.concat(lines, "\n")
end

M.contains = require("jwkengine.util").contains

local Server = {}
Server.__index = Server

-- opts: token (helpers.softhsm token), workers (4), startup_sets (YAML map
-- text lines), sets (published sets), refresh (seconds), render (function
-- of the render options returning the configuration; default: the example
-- adapted by render_config), environment (name -> value, or false to leave
-- the variable out, for every nginx command)
function M.new(opts)
  local root = M.root()
  local build = os.getenv("JWKE_BUILD_DIR") or "build"
  if build:sub(1, 1) ~= "/" then build = root .. "/" .. build end
  local lib = build .. "/lib-luajit"
  assert(read_file(lib .. "/jwkengine/core.so"),
    lib .. "/jwkengine/core.so is missing: build with libluajit2-5.1-dev installed (JWKE_BUILD_DIR=" ..
    build .. ")")
  local out, ok = run("mktemp -d /tmp/jwkengine-nginx.XXXXXX")
  assert(ok, out)
  local prefix = out:gsub("%s+$", "")
  assert(os.execute("mkdir -p " .. q(prefix .. "/logs") .. " " .. q(prefix .. "/tmp") .. " " .. q(prefix .. "/conf")))
  local self = setmetatable({
    prefix = prefix,
    conf = prefix .. "/conf/nginx.conf",
    error_log = prefix .. "/logs/error.log",
    port = M.free_port(),
    workers = opts.workers or 4,
    token = opts.token,
    pin = opts.pin,
    environment = opts.environment,
    root = root,
    lib = lib,
  }, Server)
  softhsm.write_file(prefix .. "/jwkengine.yaml", "startup_sets:\n" .. (opts.startup_sets or
    "  hydra.openid.id-token: RS256\n  hydra.jwt.access-token: ES256\n"))
  softhsm.write_file(self.conf, (opts.render or M.render_config)({ prefix = prefix, port = self.port,
    workers = self.workers, root = root, lib = lib, sets = opts.sets, refresh = opts.refresh }))
  return self
end

-- nginx with a clean environment holding only what the example passes on.
-- overrides: name -> value, or false to leave the variable out.
function Server:command(args, overrides)
  local values = {
    PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    HSM_ENABLED = "true",
    HSM_LIBRARY = softhsm.LIBRARY,
    HSM_TOKEN_LABEL = self.token and self.token.label,
    HSM_PIN = self.pin or (self.token and self.token.pin),
    JWKENGINE_CONFIG = self.prefix .. "/jwkengine.yaml",
    SOFTHSM2_CONF = assert(os.getenv("SOFTHSM2_CONF"), "SOFTHSM2_CONF is not set"),
  }
  for k, v in pairs(self.environment or {}) do values[k] = v or nil end
  for k, v in pairs(overrides or {}) do values[k] = v or nil end
  local env = {}
  for k, v in pairs(values) do env[#env + 1] = q(k .. "=" .. v) end
  return string.format("env -i %s %s -p %s -c %s -e %s %s", table.concat(env, " "), M.NGINX,
    q(self.prefix), q(self.conf), q(self.error_log), args or "")
end

function Server:master_pid()
  local text = read_file(self.prefix .. "/logs/nginx.pid")
  return text and tonumber(text:match("%d+"))
end

local function alive(pid)
  return pid ~= nil and read_file("/proc/" .. pid .. "/stat") ~= nil
end
M.alive = alive

-- Pids of the master's children whose title is exactly "nginx: worker
-- process" (not the old ones still "shutting down" after a reload).
function Server:worker_pids(include_shutting_down)
  local master = self:master_pid()
  local pids = {}
  if not master then return pids end
  local listing = run("ls /proc")
  for pid in listing:gmatch("%d+") do
    local stat = read_file("/proc/" .. pid .. "/stat")
    local ppid = stat and tonumber(stat:match("^%d+ %b() %S+ (%d+)"))
    if ppid == master then
      local cmdline = (read_file("/proc/" .. pid .. "/cmdline") or ""):gsub("%z", " ")
      if cmdline:find("worker process", 1, true) and
          (include_shutting_down or not cmdline:find("shutting down", 1, true)) then
        pids[#pids + 1] = tonumber(pid)
      end
    end
  end
  table.sort(pids)
  return pids
end

-- Starts nginx and waits until the JWK Set answers 200 (unless no_wait:
-- then only until the workers run).
function Server:start(timeout, no_wait)
  local out, ok = run(self:command())
  self.started = true
  assert(ok, "nginx did not start: " .. out .. "\n" .. (read_file(self.error_log) or ""))
  local deadline = os.time() + (timeout or 60)
  while not self:master_pid() do
    assert(os.time() < deadline, "nginx wrote no pid file:\n" .. (read_file(self.error_log) or ""))
    sleep(0.1)
  end
  self.master = self:master_pid()
  if no_wait then
    while #self:worker_pids() < self.workers do
      assert(os.time() < deadline, "the workers did not start:\n" .. (read_file(self.error_log) or ""))
      sleep(0.1)
    end
    return
  end
  local status = self:client({ "wait", self.port, "/.well-known/jwks.json", timeout or 60 })
  assert(status.status == 200, "the JWK Set never answered 200:\n" .. (read_file(self.error_log) or ""))
end

-- Waits until the master has replaced a killed worker: `workers` workers
-- run again and `killed` is not one of them.
function Server:wait_replaced(killed, timeout)
  local deadline = os.time() + (timeout or 30)
  while true do
    local pids = self:worker_pids()
    local back = #pids == self.workers
    for _, pid in ipairs(pids) do
      if pid == killed then back = false end
    end
    if back then return pids end
    assert(os.time() < deadline, "the killed worker was not replaced: " .. table.concat(pids, ","))
    sleep(0.1)
  end
end

function Server:signal(name)
  local out, ok = run(self:command("-s " .. name))
  assert(ok, "nginx -s " .. name .. ": " .. out)
end

-- Reloads, and waits until every worker is a new one and the old ones left.
function Server:reload(timeout)
  local old = self:worker_pids(true)
  local old_set = {}
  for _, pid in ipairs(old) do old_set[pid] = true end
  self:signal("reload")
  local deadline = os.time() + (timeout or 30)
  while true do
    local all = self:worker_pids(true)
    local lingering, fresh = false, 0
    for _, pid in ipairs(all) do
      if old_set[pid] then lingering = true else fresh = fresh + 1 end
    end
    if not lingering and fresh == self.workers then return all end
    assert(os.time() < deadline, "the reload did not replace the workers")
    sleep(0.1)
  end
end

-- Stops nginx (fast shutdown); kills what it started if that hangs.
function Server:stop()
  if not self.started then return end
  local master = self.master or self:master_pid()
  local workers = self:worker_pids(true)
  run(self:command("-s stop"))
  for _ = 1, 100 do
    if not alive(master) then break end
    sleep(0.1)
  end
  if alive(master) then
    run("kill -9 " .. master)
    for _, pid in ipairs(workers) do run("kill -9 " .. pid) end
  end
  self.started = false
end

function Server:remove()
  if self.prefix and self.prefix:match("^/tmp/jwkengine%-nginx%.") then
    os.execute("rm -rf " .. q(self.prefix))
  end
end

-- Stops the server and removes its folder (kept with JWKE_KEEP_NGINX=1,
-- for looking at the logs after a failure).
function Server:dispose()
  self:stop()
  if not os.getenv("JWKE_KEEP_NGINX") then self:remove() end
end

function Server:log()
  return read_file(self.error_log) or ""
end

-- Starts spec/nginx/client.py with args (a list; stdin text optional) and
-- returns at once, so the spec can act while the client runs; the
-- returned function waits for the client and returns its decoded JSON
-- output.
function Server:client_start(args, stdin)
  local parts = { M.PYTHON, M.CLIENT }
  for _, a in ipairs(args) do parts[#parts + 1] = q(tostring(a)) end
  local command = table.concat(parts, " ")
  local input_path
  if stdin then
    input_path = os.tmpname()
    softhsm.write_file(input_path, stdin)
    command = command .. " < " .. q(input_path)
  end
  local pipe = assert(io.popen(command))
  return function()
    local out = pipe:read("*a")
    local ok = pipe:close()
    if input_path then os.remove(input_path) end
    assert(ok, "client.py failed: " .. out)
    return cjson.decode(out)
  end
end

-- Runs spec/nginx/client.py with args (a list); stdin text optional.
-- Returns its decoded JSON output.
function Server:client(args, stdin)
  return self:client_start(args, stdin)()
end

-- One request per entry ({ method, path, headers, body }); returns
-- { status, headers (lower-case names), body } each.
function Server:requests(list)
  return self:client({ "requests", self.port }, cjson.encode(list))
end

-- Whether POST `path` (a location with thread_pool) signs in a worker
-- thread: false when this nginx Lua module has no ngx.run_worker_thread
-- (the handler answers 501).
-- When it does not and `skip` is given (busted's `pending`, which a helper
-- cannot reach itself), skip is called first:
--   if not server:signs_in_threads("/token-threaded", pending) then return end
function Server:signs_in_threads(path, skip)
  local probe = self:requests({ { method = "POST", path = path,
    headers = { ["Content-Type"] = "application/json" }, body = "{}" } })[1]
  if probe.status ~= 501 then return true end
  if skip then skip("this nginx Lua module has no ngx.run_worker_thread") end
  return false
end

-- n token requests on `threads` connections, verified with jwcrypto.
function Server:tokens(path, n, threads, lifetime)
  return self:client({ "tokens", self.port, path, n, threads, lifetime or 300 })
end

function Server:jwks(n, threads)
  return self:client({ "jwks", self.port, n, threads })
end

-- Lines of the error log matching a plain substring.
function M.count(text, needle)
  local n, from = 0, 1
  while true do
    local s, e = text:find(needle, from, true)
    if not s then return n end
    n = n + 1
    from = e + 1
  end
end

function M.lines_matching(text, needles)
  local found = {}
  for line in text:gmatch("[^\n]+") do
    for _, needle in ipairs(needles) do
      if line:find(needle, 1, true) then
        found[#found + 1] = line
        break
      end
    end
  end
  return found
end

return M

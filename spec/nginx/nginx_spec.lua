-- jwkengine in real nginx (Debian's nginx + libnginx-mod-http-lua, LuaJIT):
-- the documented scripts/examples/nginx.conf with 4 workers on a loopback port and
-- a throwaway SoftHSM token. The master must never touch PKCS#11; the
-- workers open the engine after the fork, generate the startup sets once,
-- serve the same JWK Set, and sign tokens that python3-jwcrypto accepts,
-- also after a reload and after a worker is killed.
--
-- Needs: nginx, libnginx-mod-http-lua, a LuaJIT build of the C module
-- ($JWKE_BUILD_DIR/lib-luajit, default build/), softhsm2, opensc
-- (pkcs11-tool), python3-jwcrypto.
local cjson = require("cjson")
local cli = require("helpers.cli")
local softhsm = require("helpers.softhsm")
local nginx = require("helpers.nginx")
local jose = require("helpers.jose")

local ID_SET, ACCESS_SET, EXTRA_SET = "hydra.openid.id-token", "hydra.jwt.access-token", "nginx.extra"
local PKCS11_ERRORS = { "CKR_", "PKCS#11" }

-- Objects of one class on the token, counted by label.
local function count_objects(token, class)
  local counts = {}
  for _, object in ipairs(softhsm.objects(token, class)) do
    counts[object.label] = (counts[object.label] or 0) + 1
  end
  return counts
end

local function maps_softhsm(pid)
  local maps = nginx.read_file("/proc/" .. pid .. "/maps") or ""
  return maps:find("libsofthsm2", 1, true) ~= nil
end

local function tail(text, n)
  local lines = {}
  for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
  return table.concat(lines, "\n", math.max(1, #lines - (n or 40) + 1))
end

describe("nginx integration (4 workers, SoftHSM)", function()
  local server, token

  local function no_pkcs11_errors(text, where)
    local bad = nginx.lines_matching(text, PKCS11_ERRORS)
    assert.are.same({}, bad, "PKCS#11 errors in the error log " .. where)
  end

  local function all_valid(result, n, what)
    assert.are.equal(n, result.valid, what .. ": " .. cjson.encode(result) .. "\n" .. tail(server:log()))
    assert.are.equal(0, result.problem_count)
  end

  setup(function()
    token = softhsm.new_token("nginx")
    server = nginx.new({ token = token, workers = 4, refresh = 2,
      sets = { ID_SET, ACCESS_SET, EXTRA_SET } })
    server:start(60)
    -- every worker has opened its engine (each logs it once)
    local deadline = os.time() + 30
    while nginx.count(server:log(), "the engine is open in worker") < 4 do
      assert(os.time() < deadline, "not every worker opened the engine:\n" .. tail(server:log()))
      nginx.sleep(0.1)
    end
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("never loads the PKCS#11 module in the master, only in the workers", function()
    assert.is_false(maps_softhsm(server.master), "the master process mapped libsofthsm2")
    local workers = server:worker_pids()
    assert.are.equal(4, #workers)
    for _, pid in ipairs(workers) do
      assert.is_true(maps_softhsm(pid), "worker " .. pid .. " has no PKCS#11 module")
    end
  end)

  it("generates each startup set exactly once when 4 workers start on an empty token", function()
    local log = server:log()
    assert.are.equal(1, nginx.count(log,
      "JSON Web Key Set '" .. ID_SET .. "' doesn't exist yet, generating new key pair..."), tail(log))
    assert.are.equal(1, nginx.count(log,
      "JSON Web Key Set '" .. ACCESS_SET .. "' doesn't exist yet, generating new key pair..."), tail(log))
    local private = count_objects(token, "privkey")
    local public = count_objects(token, "pubkey")
    assert.are.same({ [ID_SET] = 1, [ACCESS_SET] = 1 }, private)
    assert.are.same({ [ID_SET] = 1, [ACCESS_SET] = 1 }, public)
    no_pkcs11_errors(log, "at startup")
  end)

  it("signs 2,000 tokens for concurrent clients, each valid for jwcrypto under the served JWK Set", function()
    local started = os.time()
    local result = server:tokens("/token", 2000, 16, 300)
    all_valid(result, 2000, "POST /token")
    assert.are.same({ ["200"] = 2000 }, result.statuses)
    assert.are.same({ ES256 = 2000 }, result.algs) -- the access-token set, as configured
    assert.are.equal(4, #result.workers, "not every worker signed: " .. cjson.encode(result.workers))
    print(string.format("\n  nginx: 2000 tokens in %.2f s of requests (%d s with verification)",
      result.seconds, os.time() - started))
  end)

  it("serves the same JWK Set, byte for byte and with one ETag, from every worker", function()
    local result = server:jwks(400, 16)
    assert.are.same({ ["200"] = 400 }, result.statuses)
    assert.are.equal(4, #result.workers, "not every worker answered: " .. cjson.encode(result.workers))
    assert.are.equal(1, #result.bodies, cjson.encode(result))
    assert.are.equal(1, #result.etags, cjson.encode(result))
    local jwks = cjson.decode(server:requests({ { path = "/.well-known/jwks.json" } })[1].body)
    local algs = {}
    for _, key in ipairs(jwks.keys) do
      algs[#algs + 1] = key.alg
      assert.is_nil(key.d, "a private member is published")
    end
    table.sort(algs)
    assert.are.same({ "ES256", "RS256" }, algs)
  end)

  it("answers with Cache-Control and a strong ETag, and 304 to a matching If-None-Match", function()
    local first = server:requests({ { path = "/.well-known/jwks.json" } })[1]
    assert.are.equal(200, first.status)
    assert.are.equal("application/json", first.headers["content-type"])
    assert.are.equal("public, max-age=300", first.headers["cache-control"])
    local etag = first.headers["etag"]
    assert.is_truthy(etag and etag:match('^"[%w_%-]+"$'), "not a strong ETag: " .. tostring(etag))
    local r = server:requests({
      { path = "/.well-known/jwks.json", headers = { ["If-None-Match"] = etag } },
      { path = "/.well-known/jwks.json", headers = { ["If-None-Match"] = '"other", W/' .. etag } },
      { path = "/.well-known/jwks.json", headers = { ["If-None-Match"] = "*" } },
      { path = "/.well-known/jwks.json", headers = { ["If-None-Match"] = '"other"' } },
      { method = "HEAD", path = "/.well-known/jwks.json" },
    })
    assert.are.equal(304, r[1].status)
    assert.are.equal("", r[1].body)
    assert.are.equal(etag, r[1].headers["etag"])
    assert.are.equal("public, max-age=300", r[1].headers["cache-control"])
    assert.are.equal(304, r[2].status)
    assert.are.equal(304, r[3].status)
    assert.are.equal(200, r[4].status)
    assert.are.equal(first.body, r[4].body)
    assert.are.equal(200, r[5].status)
    assert.are.equal("", r[5].body)
    assert.are.equal(etag, r[5].headers["etag"])
  end)

  it("answers bad token requests with clear 4xx errors", function()
    local json = { ["Content-Type"] = "application/json" }
    local r = server:requests({
      { method = "GET", path = "/token" },
      { method = "POST", path = "/token", headers = { ["Content-Type"] = "text/plain" }, body = '{"sub":"a"}' },
      { method = "POST", path = "/token", body = '{"sub":"a"}' },
      { method = "POST", path = "/token", headers = json, body = "[1, 2]" },
      { method = "POST", path = "/token", headers = json, body = '"a string"' },
      { method = "POST", path = "/token", headers = json, body = '{"sub":' },
      { method = "POST", path = "/token", headers = json, body = "" },
      { method = "POST", path = "/token", headers = json, body = '{"pad":"' .. string.rep("x", 20000) .. '"}' },
      { method = "POST", path = "/token", headers = json, body = '{"pad":"' .. string.rep("x", 100000) .. '"}' },
      { method = "POST", path = "/.well-known/jwks.json", headers = json, body = "{}" },
      { method = "POST", path = "/token", headers = { ["Content-Type"] = "application/json; charset=utf-8" },
        body = ' {"sub":"ok"}' },
      -- the README refuses duplicate member names everywhere: request bodies too
      { method = "POST", path = "/token", headers = json, body = '{"sub":"a","sub":"b"}' },
    })
    local function check(i, status, pattern)
      assert.are.equal(status, r[i].status, "request " .. i .. ": " .. r[i].body)
      if pattern then
        assert.are.equal("application/json", r[i].headers["content-type"], "request " .. i)
        local body = cjson.decode(r[i].body)
        assert.is_truthy(body.error_description:find(pattern), "request " .. i .. ": " .. r[i].body)
      end
    end
    check(1, 405, "POST")
    assert.are.equal("POST", r[1].headers["allow"])
    check(2, 415, "application/json")
    check(3, 415, "application/json")
    check(4, 400, "JSON object")
    check(5, 400, "JSON object")
    check(6, 400, "JSON object of claims")
    check(7, 400, "empty")
    check(8, 413, "larger than 16384")
    check(9, 413) -- nginx's own client_max_body_size
    check(10, 405, "GET")
    check(11, 200)
    assert.are.equal("application/jwt", r[11].headers["content-type"])
    assert.are.equal("no-store", r[11].headers["cache-control"])
    check(12, 400, "duplicate")
    -- each refusal left a line at notice naming its status and code
    -- (README: "a refused request is logged at notice")
    local log = server:log()
    local function logged(what, needle, also)
      for _, line in ipairs(nginx.lines_matching(log, { needle })) do
        if line:find("[notice]", 1, true) and line:find(also or "", 1, true) then return end
      end
      error(what .. ": no line at notice with '" .. needle .. "':\n" .. tail(log))
    end
    logged("GET /token", "refused GET /token with 405 (ERR_HTTP_METHOD): use POST")
    logged("POST to the JWK Set", "refused POST /.well-known/jwks.json with 405 (ERR_HTTP_METHOD): use GET")
    logged("text/plain", "refused POST /token with 415 (ERR_HTTP_MEDIA_TYPE)")
    logged("a list", "refused POST /token with 400 (ERR_HTTP_BODY_INVALID): the body must be a JSON object")
    logged("an empty body", "refused POST /token with 400 (ERR_HTTP_BODY_INVALID): the body is empty")
    logged("a duplicate claim", "refused POST /token with 400 (ERR_HTTP_BODY_INVALID)", "duplicate")
    logged("too large", "refused POST /token with 413 (ERR_HTTP_BODY_TOO_LARGE): the body is larger than 16384")
  end)

  it("answers a hostile If-None-Match with the right status, under and over jwkengine's limit", function()
    local first = server:requests({ { path = "/.well-known/jwks.json" } })[1]
    local etag = first.headers["etag"]
    local spaces = string.rep(" ", 900)
    local r = server:requests({
      -- under the limit: parsed; a backtracking trim spends its time on "tag, spaces, something"
      { path = "/.well-known/jwks.json", headers = { ["If-None-Match"] = spaces .. etag .. spaces .. "," } },
      { path = "/.well-known/jwks.json",
        headers = { ["If-None-Match"] = '"a"' .. spaces .. "x," .. string.rep(" ,", 400) .. "W/" .. etag } },
      { path = "/.well-known/jwks.json", headers = { ["If-None-Match"] = '"a"' .. spaces .. "x" } },
      -- over the limit (7 KB, under nginx's 8 KB header line): jwkengine
      -- does not read it; nginx's own not-modified filter (linear, in C)
      -- still compares it with the ETag
      { path = "/.well-known/jwks.json",
        headers = { ["If-None-Match"] = etag .. string.rep(" ", 7000) .. "x" } },
    })
    assert.are.equal(304, r[1].status, r[1].body)
    assert.are.equal(304, r[2].status, r[2].body)
    assert.are.equal(200, r[3].status)
    assert.are.equal(first.body, r[3].body)
    assert.are.equal(200, r[4].status)
    assert.are.equal(first.body, r[4].body)
    assert.are.equal(etag, r[4].headers["etag"])
  end)

  it("answers claims the client got wrong with 400 and a JSON error, and logs them on one line", function()
    local json = { ["Content-Type"] = "application/json" }
    local r = server:requests({
      { method = "POST", path = "/token", headers = json, body = '{"exp":null}' },
      { method = "POST", path = "/token", headers = json, body = '{"exp":"x"}' },
      { method = "POST", path = "/token", headers = json, body = '{"sub":5}' },
      { method = "POST", path = "/token", headers = json, body = '{"aud":[1]}' },
      { method = "POST", path = "/token", headers = json, body = '{"iat":1e999}' },
      { method = "POST", path = "/token", headers = json, body = '{"x\\ninjected [emerg] fake":1e999}' },
      { method = "POST", path = "/token", headers = json, body_base64url = jose.b64('{"a":"\255\254"}') },
      { method = "POST", path = "/token", headers = json, body = '{"a":"\\ud800"}' }, -- a lone surrogate
      { method = "POST", path = "/token", headers = json, body = '{"a":1,"a":2}' },
      { method = "POST", path = "/token-threaded", headers = json, body = '{"exp":null}' },
      { method = "POST", path = "/token-threaded", headers = json, body = '{"x\\ninjected [emerg] fake":1e999}' },
    })
    for i, response in ipairs(r) do
      local threaded_unavailable = i >= 10 and response.status == 501 -- no ngx.run_worker_thread
      if not threaded_unavailable then
        assert.are.equal(400, response.status, "request " .. i .. ": " .. response.body)
        assert.are.equal("application/json", response.headers["content-type"], "request " .. i)
        local body = cjson.decode(response.body)
        assert.are.equal("invalid_request", body.error, "request " .. i)
        assert.is_string(body.error_description, "request " .. i)
      end
    end
    assert.matches("'exp' must be a NumericDate", cjson.decode(r[1].body).error_description)
    assert.matches("UTF%-8", cjson.decode(r[7].body).error_description)
    -- the claim name's newline did not start a line of its own
    local log = server:log()
    assert.is_truthy(log:find("injected [emerg] fake", 1, true), "the failure was not logged")
    for line in log:gmatch("[^\n]+") do
      assert.is_falsy(line:find("^injected"), "a request wrote a log line: " .. line)
    end
  end)

  it("publishes a key added to the token on the next refresh, with a new ETag, in every worker", function()
    local before = server:requests({ { path = "/.well-known/jwks.json" } })[1]
    local out, ok = softhsm.pkcs11_tool(token, "--login --keypairgen --key-type EC:prime256v1 --usage-sign " ..
      "--label " .. EXTRA_SET .. " --id " .. softhsm.hex("nginx-extra"))
    assert(ok, out)
    local deadline, result = os.time() + 20, nil
    repeat
      nginx.sleep(0.5)
      result = server:jwks(100, 8)
    until (#result.etags == 1 and result.etags[1] ~= before.headers["etag"]) or os.time() > deadline
    assert.are.equal(1, #result.etags, cjson.encode(result))
    assert.are_not.equal(before.headers["etag"], result.etags[1])
    assert.are.equal(4, #result.workers)
    local jwks = cjson.decode(server:requests({ { path = "/.well-known/jwks.json" } })[1].body)
    local kids = {}
    for _, key in ipairs(jwks.keys) do kids[key.kid] = true end
    assert.is_true(kids["nginx-extra"], "the new key is not published")
    assert.are.equal(3, #jwks.keys)
  end)

  it("serves x5c with '/' unescaped, as keys get prints it, in a body that parses", function()
    local env = softhsm.environment(token)
    local x5c
    for _ = 1, 8 do -- a certificate whose base64 holds a "/" (nearly every one does)
      local out, err, status = cli.keys(env, "cert " .. EXTRA_SET .. " nginx-extra --subject CN=slash")
      assert.are.equal(0, status, err)
      x5c = cjson.decode(out).x5c[1]
      if x5c:find("/", 1, true) then break end
    end
    assert.is_truthy(x5c:find("/", 1, true), "no certificate with a '/' in its base64")
    local deadline, body = os.time() + 20, nil
    repeat
      nginx.sleep(0.5)
      body = server:requests({ { path = "/.well-known/jwks.json" } })[1].body
    until body:find(x5c, 1, true) or os.time() > deadline
    assert.is_truthy(body:find(x5c, 1, true), "the certificate is not served: " .. body)
    assert.is_nil(body:find("\\/", 1, true), body)
    local served = {}
    for _, key in ipairs(cjson.decode(body).keys) do served[key.kid] = key end
    assert.are.same({ x5c }, served["nginx-extra"].x5c)
  end)

  it("signs in nginx's worker threads when thread_pool is set", function()
    if not server:signs_in_threads("/token-threaded", pending) then return end
    local result = server:tokens("/token-threaded", 200, 8, 300)
    all_valid(result, 200, "POST /token-threaded")
    assert.are.same({ RS256 = 200 }, result.algs) -- the id-token set, RSA 4096 on the token
    assert.is_truthy(server:log():find("a worker-thread Lua VM opened its engine", 1, true))
    no_pkcs11_errors(server:log(), "after thread signing")
  end)

  it("keeps signing valid tokens after nginx -s reload, without PKCS#11 errors", function()
    local offset = #server:log()
    local old = server:worker_pids()
    local new = server:reload(30)
    assert.are.equal(4, #new)
    for _, pid in ipairs(new) do
      for _, o in ipairs(old) do assert.are_not.equal(o, pid) end
    end
    assert.is_false(maps_softhsm(server.master), "the master mapped libsofthsm2 on reload")
    local result = server:tokens("/token", 300, 8, 300)
    all_valid(result, 300, "after reload")
    local since = server:log():sub(offset + 1)
    no_pkcs11_errors(since, "after the reload")
    assert.are.equal(0, nginx.count(since, "doesn't exist yet"), "the reload generated keys again")
  end)

  it("keeps signing valid tokens after a worker is killed with SIGKILL, without PKCS#11 errors", function()
    local offset = #server:log()
    local old = server:worker_pids()
    local victim = old[1]
    assert(os.execute("kill -9 " .. victim))
    local pids = server:wait_replaced(victim, 30)
    local was = {}
    for _, pid in ipairs(old) do was[pid] = true end
    local replacement
    for _, pid in ipairs(pids) do
      if not was[pid] then replacement = pid end
    end
    assert.is_not_nil(replacement, "no new worker")
    local result = server:tokens("/token", 300, 8, 300)
    all_valid(result, 300, "after SIGKILL")
    local served = false
    for _, w in ipairs(result.workers) do
      if tonumber(w) == replacement then served = true end
    end
    assert.is_true(served, "the replacement worker did not sign: " .. cjson.encode(result.workers))
    local since = server:log():sub(offset + 1)
    no_pkcs11_errors(since, "after SIGKILL")
    assert.is_truthy(since:find("exited on signal 9", 1, true), "nginx did not see the kill")
  end)

  it("logged no PKCS#11 error and generated nothing more during the whole run", function()
    local log = server:log()
    no_pkcs11_errors(log, "of the whole run")
    assert.are.equal(2, nginx.count(log, "doesn't exist yet, generating new key pair"))
    assert.are.same({ [ID_SET] = 1, [ACCESS_SET] = 1, [EXTRA_SET] = 1 }, count_objects(token, "privkey"))
  end)
end)

describe("nginx integration: configuration and PIN failures", function()
  local token, server

  setup(function()
    token = softhsm.new_token("nginx-pin")
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("refuses to start without a PIN, from the master, before any PKCS#11 call", function()
    server = nginx.new({ token = token, workers = 4 })
    local out, ok = softhsm.run(server:command("", { HSM_PIN = false }))
    assert.is_false(ok, out)
    local log = out .. server:log()
    assert.is_truthy(log:find("neither HSM_PIN nor HSM_PIN_FILE is set", 1, true), log)
    assert.is_nil(server:master_pid(), "nginx runs anyway")
    assert.are.equal(0, nginx.count(log, "Hardware Security Module is configured"))
    server:remove()
    server = nil
  end)

  it("refuses to start when the engine's publication or token settings disagree with what nginx serves", function()
    -- the example serves jwks.max_age = 300 and tokens of 300 s
    for _, case in ipairs({
      { "publication: { max_age: 60 }\n", "publication.max_age (60) differs from jwks.max_age (300)" },
      { "tokens: { max_lifetime: 100 }\n", "token.lifetime (300 s) is longer than tokens.max_lifetime (100 s)" },
    }) do
      server = nginx.new({ token = token, workers = 1,
        startup_sets = "  hydra.openid.id-token: RS256\n  hydra.jwt.access-token: ES256\n" .. case[1] })
      local out, ok = softhsm.run(server:command(""))
      server.started = ok -- stopped by the teardown if it ran after all
      assert.is_false(ok, out)
      local log = out .. server:log()
      assert.is_truthy(log:find(case[2], 1, true), log)
      assert.is_nil(server:master_pid(), "nginx runs anyway")
      server:remove()
      server = nil
    end
  end)

  it("names a variable jwkengine reads that nginx removed from the workers (HSM_TOKEN_SERIAL)", function()
    -- the example configuration has no `env HSM_TOKEN_SERIAL;`: the master
    -- sees the variable, the workers do not
    server = nginx.new({ token = token, workers = 1 })
    local out, ok = softhsm.run(server:command("", { HSM_TOKEN_SERIAL = "0123456789abcdef" }))
    assert(ok, out)
    server.started = true
    local deadline = os.time() + 20
    while not server:log():find("nginx removed variables", 1, true) do
      assert(os.time() < deadline, "no warning about removed variables:\n" .. tail(server:log()))
      nginx.sleep(0.1)
    end
    assert.is_truthy(server:log():find("add env HSM_TOKEN_SERIAL; to the main block", 1, true), tail(server:log()))
    server:dispose()
    server = nil
  end)

  -- issue 21: the example's `user www-data` and a token folder root owns
  -- answered /health with a bare "no token with label ..."
  it("names the worker's user and the fix in /health when that user cannot read the token's files", function()
    local unreadable = require("helpers.unreadable_token")
    local t = unreadable.new("ngxunreadable", pending)
    if not t then return end
    server = nginx.new({ token = { label = t.label, pin = unreadable.PIN }, workers = 1,
      environment = { SOFTHSM2_CONF = t.conf },
      render = function(opts)
        return nginx.replace_once(nginx.render_config(opts), "user root; # the test's token files belong to root",
          "user " .. unreadable.USER .. " " .. unreadable.GROUP .. ";")
      end })
    -- the worker reads JWKENGINE_CONFIG from the prefix folder
    assert(os.execute("chmod 755 " .. softhsm.quote(server.prefix) .. " && chmod 644 " ..
      softhsm.quote(server.prefix .. "/jwkengine.yaml")))
    server:start(30, true)
    local deadline, body = os.time() + 30, nil
    repeat -- "not open yet" until the worker has tried
      local response = server:requests({ { path = "/health" } })[1]
      assert.are.equal(503, response.status, response.body)
      body = cjson.decode(response.body)
      if body.failure ~= "not open yet" then break end
      nginx.sleep(0.2)
    until os.time() > deadline
    server:dispose()
    server = nil
    unreadable.remove(t)
    assert.are.equal("token not present", body.failure, cjson.encode(body))
    assert.matches("no token with label '" .. t.label .. "' (tokens present: '' in slot", body.checks.engine, 1, true)
    assert.matches("this process's user (" .. unreadable.USER .. " (uid ", body.checks.engine, 1, true)
    assert.matches("probably cannot read its files", body.checks.engine, 1, true)
    assert.matches("the `user` of nginx.conf", body.checks.engine, 1, true)
  end)

  it("tries a wrong PIN once per start or reload, not once per worker, and answers 503", function()
    server = nginx.new({ token = token, workers = 4, pin = "999999" })
    server:start(30, true)
    local function wait_for(needle, n)
      local deadline = os.time() + 20
      while nginx.count(server:log(), needle) < n do
        assert(os.time() < deadline, "waiting for " .. n .. " x " .. needle .. ":\n" .. tail(server:log()))
        nginx.sleep(0.1)
      end
    end
    local WRONG, SKIPPED = "C_Login: CKR_PIN_INCORRECT", "another worker's login was refused"
    wait_for(SKIPPED, 3)
    assert.are.equal(1, nginx.count(server:log(), WRONG), tail(server:log()))
    local r = server:requests({ { path = "/.well-known/jwks.json" },
      { method = "POST", path = "/token", headers = { ["Content-Type"] = "application/json" }, body = "{}" } })
    assert.are.equal(503, r[1].status)
    assert.are.equal(503, r[2].status)
    assert.matches("the key engine cannot be opened", r[2].body, 1, true)
    -- the worker tries no more until a reload: clients are asked to wait
    -- the longest time between the worker's attempts to open (30 s)
    assert.are.equal("30", r[1].headers["retry-after"])
    assert.are.equal("30", r[2].headers["retry-after"])
    assert.is_falsy(r[1].body:find("999999", 1, true))
    assert.is_falsy(server:log():find("999999", 1, true), "the PIN is in the error log")
    -- a reload may carry a fixed PIN: one more attempt
    server:reload(30)
    wait_for(SKIPPED, 6)
    assert.are.equal(2, nginx.count(server:log(), WRONG), tail(server:log()))
    -- a worker that replaces a dead one does not try it again
    local victim = server:worker_pids()[1]
    assert(os.execute("kill -9 " .. victim))
    server:wait_replaced(victim, 30)
    wait_for(SKIPPED, 7)
    assert.are.equal(2, nginx.count(server:log(), WRONG), tail(server:log()))
  end)
end)

-- scripts/keys.lua, run through the real runner as an operator would.
local cjson = require("cjson")
local cli = require("helpers.cli")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")

local function env_prefix(token, extra)
  return cli.env_prefix(softhsm.environment(token, extra))
end

local function keys(token, args, stdin, extra, cpu_seconds)
  return cli.keys(softhsm.environment(token, extra), args, stdin, cpu_seconds)
end

describe("keys.lua", function()
  local token
  setup(function() token = softhsm.new_token("cli") end)

  it("creates, gets, signs, verifies and deletes", function()
    local out, err, status = keys(token, "create app ES256 --kid cli-1")
    assert.equals(0, status, err)
    local jwk = cjson.decode(out)
    assert.same({ "alg", "crv", "kid", "kty", "use", "x", "y" }, (function()
      local names = {}
      for k in pairs(jwk) do names[#names + 1] = k end
      table.sort(names)
      return names
    end)())
    assert.equals("cli-1", jwk.kid)

    out, err, status = keys(token, "get app")
    assert.equals(0, status, err)
    local jwks = cjson.decode(out)
    assert.equals("cli-1", jwks.keys[1].kid)

    local jws
    jws, err, status = keys(token, "sign app --typ JWT", '{"sub":"cli"}')
    assert.equals(0, status, err)
    jws = jws:gsub("%s+$", "")
    assert.is_true((verifier.jwcrypto(out, jws)))

    out, err, status = keys(token, "verify app", jws)
    assert.equals(0, status, err)
    assert.equals('{"sub":"cli"}', out)

    out, err, status = keys(token, "verify app", jws:sub(1, -5) .. "AAAA")
    assert.equals(1, status)
    assert.matches("signature", err)
    assert.equals("", out)

    out, err, status = keys(token, "delete app cli-1")
    assert.equals(0, status, err)
    out, err, status = keys(token, "get app")
    assert.equals(1, status)
    assert.matches("key set 'app' not found", err)
  end)

  it("verify prints the payload's bytes exactly, and reads a token in whitespace in linear time", function()
    local _, err, status = keys(token, "create exact ES256 --kid exact-1")
    assert.equals(0, status, err)
    -- "abc" and "abc\n" are different payloads, and a payload need not be text
    for _, payload in ipairs({ "abc", "abc\n", "\0\255\r\n\n", " padded " }) do
      local jws
      jws, err, status = keys(token, "sign exact", payload)
      assert.equals(0, status, err)
      local out
      out, err, status = keys(token, "verify exact", jws)
      assert.equals(0, status, err)
      assert.equals(payload, out)
    end
    -- a token in 210 KB of whitespace: a backtracking trim ("%s+$") needs
    -- minutes of CPU for this, a linear one milliseconds; the CLI may use 10 s
    local jws = keys(token, "sign exact", "in whitespace")
    local padding = string.rep(" \n\t", 70000)
    local out
    out, err, status = keys(token, "verify exact", padding .. jws .. padding, nil, 10)
    assert.equals(0, status, err)
    assert.equals("in whitespace", out)
  end)

  it("fails with one clear line for bad input", function()
    local _, err, status = keys(token, "create app HS256")
    assert.equals(1, status)
    assert.matches("^keys.lua: the HSM cannot generate keys for algorithm 'HS256'", err)
    local _, nerr = err:gsub("\n", "")
    assert.equals(1, nerr)

    _, err, status = keys(token, "frobnicate")
    assert.equals(2, status)
    assert.matches("unknown command 'frobnicate'", err)

    _, err, status = keys(token, "get app", nil, { HSM_PIN = "4321" })
    assert.equals(1, status)
    assert.equals("keys.lua: C_Login: CKR_PIN_INCORRECT\n", err)
  end)

  -- 0 done, 1 the operation failed, 2 usage; a usage error is one line that
  -- points to --help, never the whole usage text
  it("answers usage errors with exit 2 and one line, and --help on stdout", function()
    local usage_errors = {
      { "", "no command given" },
      { "frobnicate", "unknown command 'frobnicate'" },
      { "get", "get takes SET" },
      { "create app ES256 --use foo", "option --use: 'foo' is not one of the values it takes" },
      { "create app ES256 --kid", "option --kid needs a value" },
      { "sign app --colour red", "unknown option --colour" },
    }
    for _, case in ipairs(usage_errors) do
      local out, err, status = keys(token, case[1])
      assert.equals(2, status, case[1])
      assert.equals("", out, case[1])
      assert.equals("keys.lua: " .. case[2] .. " (keys.lua --help for usage)\n", err)
    end
    local out, err, status = keys(token, "--help")
    assert.equals(0, status)
    assert.equals("", err)
    assert.matches("^usage: jwkengine keys COMMAND", out)
    assert.matches("rotate%-secrets", out)
  end)
end)

describe("keys.lua on a fresh token with rotating startup sets", function()
  local faults = require("helpers.faults")
  local SETS = { "boot.id-token", "boot.access-token" }
  local config

  setup(function()
    config = os.tmpname() .. ".yaml"
    local lines = { "startup_sets:" }
    for _, set in ipairs(SETS) do
      lines[#lines + 1] = "  - set: " .. set
      lines[#lines + 1] = "    alg: ES256"
      lines[#lines + 1] = "    rotation: { period: 7776000, prepublish: 86400, retain: 172800 }"
    end
    softhsm.write_file(config, table.concat(lines, "\n") .. "\n")
  end)
  teardown(function() os.remove(config) end)

  -- Private keys on the token, counted by set.
  local function pairs_by_set(token)
    local counts = {}
    for _, object in ipairs(softhsm.objects(token, "privkey")) do
      counts[object.label] = (counts[object.label] or 0) + 1
    end
    return counts
  end

  it("maintain creates the configured sets that are missing; reads name maintain until then", function()
    local token = softhsm.new_token("cli-boot")
    local env = softhsm.environment(token, { JWKENGINE_CONFIG = config })
    for _, command in ipairs({ "keys ", "get " }) do
      local out, err, status = cli.keys(env, command .. SETS[1])
      assert.equals(1, status, err)
      assert.equals("", out)
      assert.matches("key set 'boot.id-token' is configured (startup_sets) but not created yet: run "
        .. "`keys maintain`", err, 1, true)
      assert.matches("`keys create boot.id-token ES256`", err, 1, true)
    end
    assert.same({}, pairs_by_set(token)) -- a read generates nothing

    local _, err, status = cli.keys(env, "maintain")
    assert.equals(0, status, err)
    for _, set in ipairs(SETS) do
      assert.matches("created the configured key set '" .. set .. "'", err, 1, true)
    end
    assert.same({ [SETS[1]] = 1, [SETS[2]] = 1 }, pairs_by_set(token))
    for _, set in ipairs(SETS) do
      local out
      out, err, status = cli.keys(env, "keys " .. set)
      assert.equals(0, status, err)
      local key = cjson.decode(out)
      assert.equals("current", key.state)
      assert.equals("ES256", key.alg)
    end
    _, err, status = cli.keys(env, "maintain")
    assert.equals(0, status, err)
    assert.is_nil(err:find("created", 1, true), err)
    assert.same({ [SETS[1]] = 1, [SETS[2]] = 1 }, pairs_by_set(token))
  end)

  -- SoftHSM's file store answers CKR_GENERAL_ERROR to a process reading its
  -- token while another logs in, so the runs start 0.4 s apart: each has
  -- opened the engine and found the sets missing while the first one is
  -- still inside C_GenerateKeyPair (slowed to 3 s, before the real call).
  it("maintain creates them once when several run at once", function()
    local token = faults.fresh_token("cli-boot-race")
    local env = faults.environment(token, { JWKENGINE_CONFIG = config })
    faults.set({ latency = "C_GenerateKeyPair:3000000" })
    finally(function() faults.set({}) end)
    local dir = softhsm.run("mktemp -d /tmp/jwke-cli-boot.XXXXXX"):match("[^\n]+")
    finally(function() os.execute("rm -rf " .. softhsm.quote(dir)) end)
    local runs, stamps = {}, {}
    for i = 1, 4 do
      stamps[i] = dir .. "/time." .. i
      runs[i] = string.format("(%s; echo $? > %s/rc.%d) &", cli.timed(string.format(
        "%s %s/jwkengine scripts/keys.lua maintain > %s/out.%d 2> %s/err.%d", cli.env_prefix(env), softhsm.BUILD, dir,
        i, dir, i), stamps[i]), dir, i)
    end
    assert(os.execute(table.concat(runs, " sleep 0.4; ") .. " wait"))
    -- the race: all four were running at once (the first inside its slowed
    -- C_GenerateKeyPair while the last started), whatever the machine's load
    local together = cli.together(stamps)
    print(string.format("maintain: the 4 runs all running for %.2f s", together))
    assert.is_true(together > 0, "the maintain runs did not all run at once: no race")
    local created = 0
    for i = 1, 4 do
      local err = softhsm.read_file(dir .. "/err." .. i)
      assert.equals("0", softhsm.read_file(dir .. "/rc." .. i):match("%d+"), err)
      local _, n = err:gsub("created the configured key set", "")
      created = created + n
    end
    faults.set({})
    assert.same({ [SETS[1]] = 1, [SETS[2]] = 1 }, pairs_by_set(token))
    assert.equals(2, created)
  end)
end)

describe("the runner", function()
  it("prints versions, runs -e, passes arg, and reports errors with a traceback", function()
    local out = softhsm.run(softhsm.BUILD .. "/jwkengine -v")
    assert.matches("^jwkengine %d+%.%d+%.%d+\nLua 5%.4", out)
    assert.matches("OpenSSL 3", out)

    assert.equals(out, (softhsm.run(softhsm.BUILD .. "/jwkengine --version")))

    out = softhsm.run(softhsm.BUILD .. [[/jwkengine -e 'print(require("jwkengine")._VERSION)']])
    assert.matches("^%d+%.%d+%.%d+", out)

    local script = os.tmpname()
    softhsm.write_file(script, "print(arg[0], arg[1], arg[2], select('#', ...))\n")
    out = softhsm.run(softhsm.BUILD .. "/jwkengine " .. script .. " one two")
    assert.equals(script .. "\tone\ttwo\t2\n", out)

    -- "-" reads the script from standard input, as lua(1) does
    out = softhsm.run("printf 'print(arg[0], arg[1], ...)' | " .. softhsm.BUILD .. "/jwkengine - one two")
    assert.equals("-\tone\tone\ttwo\n", out)

    -- a script that does not compile reports its syntax error, whatever its arguments
    softhsm.write_file(script, "print('unfinished)\n")
    local compiled
    out, compiled = softhsm.run(softhsm.BUILD .. "/jwkengine " .. script .. " one two")
    assert.is_false(compiled)
    assert.matches("unfinished string", out, 1, true)

    softhsm.write_file(script, "local function inner() error('boom') end\ninner()\n")
    local ok
    out, ok = softhsm.run(softhsm.BUILD .. "/jwkengine " .. script)
    assert.is_false(ok)
    assert.matches("boom", out)
    assert.matches("stack traceback", out)
    os.remove(script)
  end)

  it("finds its Lua files and C module after cmake --install, with no LUA_PATH set", function()
    local prefix = os.tmpname()
    os.remove(prefix)
    local out, ok = softhsm.run("cmake --install " .. softhsm.BUILD .. " --prefix " .. prefix)
    assert.is_true(ok, out)
    out, ok = softhsm.run("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 "
      .. prefix .. [[/bin/jwkengine -e 'local j = require("jwkengine"); print(j._VERSION, package.searchpath("jwkengine", package.path))']])
    assert.is_true(ok, out)
    assert.matches(prefix .. "/bin/../share/lua/5.4/jwkengine/init.lua", out, 1, true)
    -- the installed C module loads in plain lua5.4 from the standard layout
    out, ok = softhsm.run(string.format([[cd / && LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;;' LUA_CPATH='%s/lib/lua/5.4/?.so;;' %s -e 'print(require("jwkengine")._VERSION)']],
      prefix, prefix, prefix, softhsm.LUA))
    assert.is_true(ok, out)
    -- and the admin CLI comes with it: `jwkengine keys ...` against a real token
    local token = softhsm.new_token("installed")
    out, ok = softhsm.run(string.format("cd / && %s %s/bin/jwkengine keys create app ES256 --kid inst-1",
      env_prefix(token), prefix))
    assert.is_true(ok, out)
    assert.equals("inst-1", cjson.decode(out).kid)
    out, ok = softhsm.run(string.format("cd / && %s %s/bin/jwkengine keys get app", env_prefix(token), prefix))
    assert.is_true(ok, out)
    assert.equals("inst-1", cjson.decode(out).keys[1].kid)
    softhsm.run("rm -rf " .. prefix)
  end)

  it("runs the admin CLI as `jwkengine keys` from the build tree", function()
    local out, ok = softhsm.run("cd / && " .. softhsm.run("pwd"):gsub("%s+$", "") .. "/" .. softhsm.BUILD
      .. "/jwkengine keys --help")
    assert.is_true(ok, out)
    assert.matches("^usage: jwkengine keys COMMAND", out)
  end)

  it("finds the module from plain lua5.4 with the paths set", function()
    local out, ok = softhsm.run([[LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH=']] .. softhsm.BUILD .. [[/lib/?.so;;' ]]
      .. softhsm.LUA .. [[ -e 'print(require("jwkengine")._VERSION)']])
    assert.is_true(ok, out)
    assert.matches("^%d+%.%d+%.%d+", out)
  end)
end)

-- The PKCS#11 layer under production conditions, on SoftHSM: threads
-- sharing a small session pool, a pre-forking host, PIN files.
local jwkengine = require "jwkengine"
local softhsm = require "helpers.softhsm"

local function open_engine(token, extra)
  return jwkengine.open({ environment = softhsm.environment(token, extra), logger = false,
    startup = false })
end

describe("session pool", function()
  it("bounds the sessions many threads share, makes them wait, and every signature verifies", function()
    local token = softhsm.new_token("pool")
    local out, ok = softhsm.pkcs11_tool(token,
      "--keypairgen --key-type EC:prime256v1 --usage-sign --label pooled --id 01")
    assert.is_true(ok, out)
    out, ok = softhsm.run(string.format("%s/pool_threads %s %s %s pooled 8 500 2", softhsm.BUILD,
      softhsm.LIBRARY, softhsm.quote(token.label), token.pin))
    assert.is_true(ok, out)
    assert.matches("signatures=4000 failures=0", out)
    local opened = tonumber(out:match("sessions_opened=(%d+)"))
    assert.is_true(opened <= 2, out)
    assert.is_true(tonumber(out:match("session_waits=(%d+)")) > 0, out)
  end)
end)

describe("a pre-forking host", function()
  local testproc = require "testproc"

  it("signs in 8 forked children and the parent at once, and every signature verifies", function()
    local token = softhsm.new_token("fork")
    local engine = assert(open_engine(token))
    assert(engine:generate("forked", "ES256", { kid = "f1" }))
    assert(engine:sign("forked", "warm-up")) -- sessions and handles exist before the fork

    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local children = {}
    for child = 1, 8 do
      local pid = testproc.fork()
      if pid == 0 then
        local f = io.open(dir .. "/child-" .. child, "w")
        local status = 0
        for i = 1, 1000 do
          local jws, err = engine:sign("forked", "child " .. child .. " #" .. i)
          if not jws then
            f:write("ERROR ", tostring(err), "\n")
            status = 1
            break
          end
          f:write(jws, "\n")
        end
        f:close()
        -- closing in the child must leave the parent's sessions alone
        engine:close()
        testproc._exit(status)
      end
      children[#children + 1] = pid
    end
    local parent_tokens = {}
    for i = 1, 2000 do parent_tokens[i] = assert(engine:sign("forked", "parent #" .. i)) end
    for _, pid in ipairs(children) do assert.equals(0, testproc.wait(pid)) end

    -- the parent's sessions survived the children's closes
    parent_tokens[#parent_tokens + 1] = assert(engine:sign("forked", "after the children"))
    local verified = 0
    for _, jws in ipairs(parent_tokens) do
      assert.truthy(engine:verify("forked", jws))
      verified = verified + 1
    end
    for child = 1, 8 do
      local count = 0
      for line in io.lines(dir .. "/child-" .. child) do
        assert.not_matches("^ERROR", line)
        local payload = assert(engine:verify("forked", line))
        assert.matches("^child " .. child .. " #", payload)
        count = count + 1
      end
      assert.equals(1000, count)
      verified = verified + count
    end
    assert.equals(10001, verified)
    os.execute("rm -rf " .. dir)
    engine:close()
  end)
end)

describe("PIN hygiene", function()
  local token
  setup(function() token = softhsm.new_token("pin") end)

  local function pin_file(content)
    local path = os.tmpname()
    softhsm.write_file(path, content)
    return path
  end

  it("logs in with HSM_PIN_FILE (trailing newline dropped)", function()
    local path = pin_file(token.pin .. "\n")
    local env = softhsm.environment(token, { HSM_PIN_FILE = path })
    env.HSM_PIN = nil
    local engine = assert(jwkengine.open({ environment = env, logger = false, startup = false }))
    assert(engine:generate("pinfile", "ES256"))
    engine:close()
    os.remove(path)
  end)

  it("says which PIN file cannot be read, and refuses a wrong PIN from a file", function()
    local env = softhsm.environment(token, { HSM_PIN_FILE = "/nonexistent/pin" })
    env.HSM_PIN = nil
    local engine, err = jwkengine.open({ environment = env, logger = false, startup = false })
    assert.is_nil(engine)
    assert.matches("cannot read the PIN file '/nonexistent/pin'", err, 1, true)

    local path = pin_file("55555\n")
    env.HSM_PIN_FILE = path
    engine, err = jwkengine.open({ environment = env, logger = false, startup = false })
    os.remove(path)
    assert.is_nil(engine)
    assert.equals("C_Login: CKR_PIN_INCORRECT", err)
    assert.not_matches("55555", err)
  end)

  it("refuses HSM_PIN and HSM_PIN_FILE together", function()
    local engine, err = open_engine(token, { HSM_PIN_FILE = "/tmp/x" })
    assert.is_nil(engine)
    assert.matches("not both", err)
  end)
end)

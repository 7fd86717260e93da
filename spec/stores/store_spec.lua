-- The AES-GCM software store and Hydra's fallback rules, on a real SQLite
-- file and a real PostgreSQL server (the same suite runs on both).
local cjson = require("cjson")
local jwkengine = require("jwkengine")
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local store_module = require("jwkengine.store")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")
local stores = require("helpers.stores")
local verifier = require("helpers.verifier")

local SECRET = "first-secret-0123456789"
local OLD_SECRET = "older-secret-0123456789"

local function open(dsn, extra, options)
  options = options or {}
  options.environment = extra
  return stores.open_engine(dsn, SECRET, options)
end

local function with_hsm(token, dsn, extra)
  local env = softhsm.environment(token, { SECRETS_SYSTEM = SECRET, DSN = dsn })
  for k, v in pairs(extra or {}) do env[k] = v end
  return jwkengine.open({ environment = env, logger = false, startup = false })
end

local hydra_aead = require("helpers.hydra_aead").run
local refused = require("helpers.refusal").refused

-- Runs the CLI with an environment; returns output and success.
local function keys_cli(env, args, stdin)
  local parts = {}
  for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. softhsm.quote(v) end
  local input = os.tmpname()
  softhsm.write_file(input, stdin or "")
  local out, ok = softhsm.run(string.format("env %s %s/jwkengine scripts/keys.lua %s < %s",
    table.concat(parts, " "), softhsm.BUILD, args, input))
  os.remove(input)
  return out, ok
end

stores.describe_each("software store", function(database, backend)
  it("re-reads a set after store.cache_ttl seconds of the engine's clock", function()
    local clock = 1000
    local cached = assert(open(database.dsn, nil, { now = function() return clock end, store = { cache_ttl = 60 } }))
    assert(cached:generate("cached", "ES256", { kid = "first" }))
    assert.equals(1, #assert(cached:key_set("cached")).keys)
    -- another instance sharing the store adds a key
    local other = assert(open(database.dsn))
    assert(other:generate("cached", "ES256", { kid = "second" }))
    other:close()
    clock = clock + 59
    assert.equals(1, #assert(cached:key_set("cached")).keys)
    clock = clock + 1
    assert.equals(2, #assert(cached:key_set("cached")).keys)
    cached:close()
  end)

  it("creates the table by versioned migrations, once", function()
    local s = assert(store_module.open(database.dsn))
    assert.equals(store_module.SCHEMA_VERSION, s:schema_version())
    s:close()
    s = assert(store_module.open(database.dsn))
    assert.equals(store_module.SCHEMA_VERSION, s:schema_version())
    assert.same({}, assert(s:rows("anything")))
    s:close()
  end)

  it("generates, signs, verifies and deletes software keys for every algorithm", function()
    local engine = assert(open(database.dsn))
    for _, alg in ipairs({ "RS256", "PS256", "ES256", "ES384", "ES512", "EdDSA" }) do
      local set = "sw-" .. alg
      local jwk = assert(engine:generate(set, alg, { kid = "k-" .. alg, rsa_bits = 2048 }))
      assert.equals(alg, jwk.alg)
      assert.is_nil(jwk.d)
      local token = assert(engine:sign_jwt(set, { sub = alg }))
      assert.truthy(engine:verify(set, token))
      assert.is_true((verifier.jwcrypto(engine:key_set_json(set), token)))
    end
    assert.is_true(engine:delete("sw-ES256", "k-ES256"))
    local _, _, code = engine:key_set("sw-ES256")
    assert.equals("ERR_KEY_SET_NOT_FOUND", code)
    engine:close()
  end)

  it("reads newest first and, in a set with no records, signs with the newest private row whatever its kid", function()
    local engine = assert(open(database.dsn))
    -- rows another writer of the table made (no key states): the legacy rule
    local rows = assert(store_module.open(database.dsn))
    for _, kid in ipairs({ "old", "new" }) do
      local jwk = assert(core.generate_software_key("ES256")):private_jwk()
      jwk.kid, jwk.alg, jwk.use = kid, "ES256", "sig"
      assert(rows:insert("rot", kid, hydra_aead("seal", SECRET, cjson.encode(jwk))))
    end
    rows:close()
    assert.same({ "new", "old" }, { engine:key_set("rot").keys[1].kid, engine:key_set("rot").keys[2].kid })
    local _, header = assert(engine:verify("rot", assert(engine:sign("rot", "x"))))
    assert.equals("new", header.kid)
    local states = {}
    for _, key in ipairs(assert(engine:key_states("rot"))) do states[key.kid] = key.state end
    assert.same({ new = "current", old = "previous" }, states)
    -- a public-only row newer than both (import refuses one; another
    -- writer of the table may not) does not sign
    local pub = assert(core.generate_software_key("ES256")):public_jwk()
    local _, _, import_code = engine:import("rot", pub, { kid = "public-only" })
    assert.equals("ERR_KEY_NOT_PRIVATE", import_code)
    pub.kid, pub.alg, pub.use = "public-only", "ES256", "sig"
    local s = assert(store_module.open(database.dsn))
    assert(s:insert("rot", "public-only", hydra_aead("seal", SECRET, cjson.encode(pub))))
    s:close()
    engine:refresh("rot")
    assert.equals("public-only", engine:key_set("rot").keys[1].kid)
    _, header = assert(engine:verify("rot", assert(engine:sign("rot", "x"))))
    assert.equals("new", header.kid)
    engine:close()
  end)

  it("decrypts rows sealed by an independent implementation, and they decrypt ours", function()
    local engine = assert(open(database.dsn))
    local key = assert(core.generate_software_key("ES256"))
    local jwk = key:private_jwk()
    jwk.kid, jwk.alg, jwk.use = "from-python", "ES256", "sig"
    local sealed = hydra_aead("seal", SECRET, cjson.encode(jwk))
    local s = assert(store_module.open(database.dsn))
    assert(s:insert("interop", "from-python", sealed))
    assert.equals(key:public_jwk().x, assert(engine:key("interop", "from-python")).x)
    assert.truthy(engine:verify("interop", assert(engine:sign("interop", "x"))))

    assert(engine:generate("interop", "ES256", { kid = "ours" }))
    local row
    for _, r in ipairs(assert(s:rows("interop"))) do if r.kid == "ours" then row = r end end
    local plain = cjson.decode(hydra_aead("open", SECRET, row.keydata))
    assert.equals("ours", plain.kid)
    assert.equals("ES256", plain.alg)
    assert.is_string(plain.d)
    s:close()
    engine:close()
  end)

  it("names the set and kid of a tampered row, and every other key still works", function()
    local engine = assert(open(database.dsn))
    assert(engine:generate("t", "ES256", { kid = "good" }))
    assert(engine:generate("t", "ES256", { kid = "bad" }))
    assert(engine:generate("other", "ES256", { kid = "fine" }))
    local s = assert(store_module.open(database.dsn))
    for _, row in ipairs(assert(s:rows("t"))) do
      if row.kid == "bad" then
        local i = 30
        local c = row.keydata:sub(i, i)
        local flipped = row.keydata:sub(1, i - 1) .. (c == "A" and "B" or "A") .. row.keydata:sub(i + 1)
        assert(s:update_keydata(row.pk, flipped))
      end
    end
    s:close()
    engine:close()
    engine = assert(open(database.dsn))
    local jwk, err, code = engine:key("t", "bad")
    assert.is_nil(jwk)
    assert.equals("ERR_KEY_DECRYPT", code)
    assert.matches("key set 't' key 'bad'", err, 1, true)
    local jwks
    jwks, err = engine:key_set("t")
    assert.is_nil(jwks)
    assert.matches("key 'bad'", err, 1, true)
    assert.truthy(engine:key("t", "good"))
    assert.truthy(engine:verify("t", assert(engine:sign("t", "x", { kid = "good" }))))
    assert.truthy(engine:verify("other", assert(engine:sign("other", "x"))))
    engine:close()
  end)

  it("reports a wrong secret clearly", function()
    local engine = assert(open(database.dsn))
    assert(engine:generate("w", "ES256", { kid = "k" }))
    engine:close()
    engine = assert(open(database.dsn, { SECRETS_SYSTEM = "some-other-secret-xyz" }))
    local jwk, err, code = engine:key("w", "k")
    assert.is_nil(jwk)
    assert.equals("ERR_KEY_DECRYPT", code)
    assert.matches("key set 'w' key 'k'", err, 1, true)
    assert.not_matches("some%-other%-secret", err)
    engine:close()
  end)

  it("refuses a secret under 16 characters", function()
    local engine, err, code = open(database.dsn, { SECRETS_SYSTEM = "short-secret" })
    assert.is_nil(engine)
    assert.equals("ERR_CONFIG", code)
    assert.matches("secret #1 is shorter than 16 characters", err, 1, true)
    assert.not_matches("short%-secret", err)
  end)

  it("rotates secrets: every row readable with the new first secret, also after the old one is dropped", function()
    local engine = assert(open(database.dsn, { SECRETS_SYSTEM = OLD_SECRET }))
    for i = 1, 5 do assert(engine:generate("r" .. (i % 2), "ES256", { kid = "k" .. i })) end
    engine:close()
    local out, ok = keys_cli({ SECRETS_SYSTEM = SECRET .. "," .. OLD_SECRET, DSN = database.dsn }, "rotate-secrets")
    assert.is_true(ok, out)
    assert.matches("re%-sealed 5 keys", out)
    engine = assert(open(database.dsn, { SECRETS_SYSTEM = SECRET }))
    for i = 1, 5 do assert.truthy(engine:key("r" .. (i % 2), "k" .. i)) end
    engine:close()
  end)

  it("leaves every row readable when rotate-secrets is killed with SIGKILL mid-transaction", function()
    local engine = assert(open(database.dsn, { SECRETS_SYSTEM = OLD_SECRET }))
    assert(engine:generate("bulk", "ES256", { kid = "seed" }))
    engine:close()
    -- many copies of the sealed row make the rotation last long enough to
    -- be caught inside its transaction
    local ROWS = 20000
    local s = assert(store_module.open(database.dsn))
    local keydata = s.driver:quote(s:rows("bulk")[1].keydata)
    for first = 1, ROWS, 1000 do
      local values = {}
      for i = first, first + 999 do
        values[#values + 1] = string.format("('bulk', 'copy-%d', 0, %s)", i, keydata)
      end
      assert(s.driver:exec("INSERT INTO hydra_jwk (sid, kid, version, keydata) VALUES " .. table.concat(values, ",")))
    end
    s:close()

    -- wait until the writer is provably inside its transaction, then kill it
    local in_transaction
    if backend.name == "SQLite" then
      in_transaction = string.format("[ -e %s ]", softhsm.quote(database.dsn:match("^sqlite://(.*)$") .. "-journal"))
    else
      in_transaction = string.format([=[[ "$(%s -Atc "SELECT count(*) FROM pg_stat_activity WHERE usename = 'jwke' AND query LIKE 'UPDATE hydra_jwk%%'")" -gt 0 ]]=],
        os.getenv("JWKE_TEST_POSTGRES_ADMIN"))
    end
    local env = string.format("SECRETS_SYSTEM=%s DSN=%s", softhsm.quote(SECRET .. "," .. OLD_SECRET),
      softhsm.quote(database.dsn))
    local out = softhsm.run(string.format([[env %s ]] .. softhsm.BUILD .. [[/jwkengine scripts/keys.lua rotate-secrets & pid=$!
      i=0; until %s || [ $i -ge 2000 ]; do i=$((i+1)); sleep 0.002; done
      if %s; then kill -9 $pid && echo killed-in-transaction; fi; wait $pid]], env, in_transaction, in_transaction))
    assert.matches("killed%-in%-transaction", out)

    -- the transaction rolled back: every row is still sealed with the old secret
    s = assert(store_module.open(database.dsn))
    local rows = assert(s:rows("bulk"))
    assert.equals(ROWS + 1, #rows)
    local unreadable = 0
    for _, row in ipairs(rows) do
      if not core.aes_gcm_open({ OLD_SECRET }, row.keydata) then unreadable = unreadable + 1 end
    end
    assert.equals(0, unreadable)
    s:close()

    -- and a rotation left to finish moves every row to the new secret
    local _, ok = softhsm.run("env " .. env .. " " .. softhsm.BUILD .. "/jwkengine scripts/keys.lua rotate-secrets")
    assert.is_true(ok)
    s = assert(store_module.open(database.dsn))
    for _, row in ipairs(assert(s:rows("bulk"))) do
      if not core.aes_gcm_open({ SECRET }, row.keydata) then unreadable = unreadable + 1 end
    end
    assert.equals(0, unreadable)
    s:close()
  end)

  it("ends with exactly one key per startup set when two processes start at once", function()
    local script = os.tmpname()
    softhsm.write_file(script, [[
local engine = assert(require("jwkengine").open({ logger = false,
startup_sets = { { set = "boot.a", alg = "ES256" }, { set = "boot.b", alg = "EdDSA" } } }))
engine:close()
]])
    local env = string.format("SECRETS_SYSTEM=%s DSN=%s", softhsm.quote(SECRET), softhsm.quote(database.dsn))
    local out, ok = softhsm.run(string.format(
      "env %s %s/jwkengine %s & a=$!; env %s %s/jwkengine %s & b=$!; wait $a && wait $b",
      env, softhsm.BUILD, script, env, softhsm.BUILD, script))
    os.remove(script)
    assert.is_true(ok, out)
    local s = assert(store_module.open(database.dsn))
    assert.equals(1, #assert(s:rows("boot.a")))
    assert.equals(1, #assert(s:rows("boot.b")))
    s:close()
  end)

  it("updates a software key in place, and refuses to update one that is not there", function()
    local engine = assert(open(database.dsn))
    local first = assert(core.generate_software_key("ES256"))
    assert(engine:import("upd", first:private_jwk(), { kid = "u" }))
    local second = assert(core.generate_software_key("ES256"))
    local jwk = assert(engine:update("upd", second:private_jwk(), { kid = "u" }))
    assert.equals(second:public_jwk().x, jwk.x)
    local jwks = assert(engine:key_set("upd"))
    assert.equals(1, #jwks.keys)
    assert.equals(second:public_jwk().x, jwks.keys[1].x)
    local _, header = assert(engine:verify("upd", assert(engine:sign("upd", "x"))))
    assert.equals("u", header.kid)
    local none, err, code = engine:update("upd", second:private_jwk(), { kid = "absent" })
    assert.is_nil(none)
    assert.equals("ERR_KEY_NOT_FOUND", code)
    assert.matches("key 'absent' not found", err, 1, true)
    engine:close()
  end)

  it("imports JWK and PEM keys through the CLI, and refuses bad input clearly", function()
    local env = { SECRETS_SYSTEM = SECRET, DSN = database.dsn }
    local pem = softhsm.run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384")
    local out, ok = keys_cli(env, "import imported --kid pem-1", pem)
    assert.is_true(ok, out)
    local jwk = cjson.decode(out)
    assert.equals("ES384", jwk.alg)
    assert.equals("pem-1", jwk.kid)
    local private = assert(core.generate_software_key("EdDSA")):private_jwk()
    private.kid = "jwk-1"
    out, ok = keys_cli(env, "import imported", cjson.encode(private))
    assert.is_true(ok, out)
    assert.equals("EdDSA", cjson.decode(out).alg)
    out, ok = keys_cli(env, "sign imported --kid jwk-1", "hello")
    assert.is_true(ok, out)
    out, ok = keys_cli(env, "import imported", "not a key")
    assert.is_false(ok)
    assert.matches("neither a PEM block nor a JSON Web Key", out)
    out, ok = keys_cli(env, "import imported --kid pem-1", pem)
    assert.is_false(ok)
    assert.matches("already exists", out)
  end)
end)

for _, backend in ipairs(stores.backends()) do
  describe("HSM fallback on " .. backend.name, function()
    local dsn, drop, token, engine

    setup(function()
      token = softhsm.new_token("fallback")
      dsn, drop = backend.fresh()
      engine = assert(with_hsm(token, dsn))
    end)
    teardown(function()
      engine:close()
      drop()
    end)

    it("finds a set held only in software with the HSM enabled", function()
      local software = assert(open(dsn))
      assert(software:generate("soft-only", "ES256", { kid = "s1" }))
      software:close()
      local jwks = assert(engine:key_set("soft-only"))
      assert.equals("s1", jwks.keys[1].kid)
      assert.truthy(engine:verify("soft-only", assert(engine:sign_jwt("soft-only", { sub = "x" }))))
    end)

    it("serves a set held in both from the HSM", function()
      local software = assert(open(dsn))
      assert(software:generate("both", "ES256", { kid = "in-software" }))
      software:close()
      assert(engine:generate("both", "ES256", { kid = "in-hsm" }))
      assert.equals("in-hsm", assert(engine:key_set("both")).keys[1].kid)
      local _, header = assert(engine:verify("both", assert(engine:sign("both", "x"))))
      assert.equals("in-hsm", header.kid)
    end)

    it("returns an HSM error other than not-found instead of falling back", function()
      local software = assert(open(dsn))
      assert(software:generate("masked", "ES256", { kid = "in-software" }))
      software:close()
      -- on the token the set exists but is broken: a private half with no public half
      softhsm.pkcs11_tool_ok(token, "--keypairgen --key-type EC:prime256v1 --usage-sign --label masked --id 01")
      softhsm.pkcs11_tool_ok(token, "--delete-object --type pubkey --label masked")
      local jwks, err = engine:key_set("masked")
      assert.is_nil(jwks)
      assert.matches("no public half", err)
      local jws
      jws, err = engine:sign("masked", "x")
      assert.is_nil(jws)
      assert.matches("no public half", err)
    end)

    it("returns a device error from the HSM (fault module) instead of the software copy", function()
      faults.set({})
      local software = assert(open(dsn))
      assert(software:generate("device-error", "ES256", { kid = "in-software" }))
      software:close()
      -- the same token through the fault module; a device error that stays
      -- is an outage (README: Outages), short here so the test goes on
      local faulty = assert(jwkengine.open({ logger = false, startup = false,
        hsm = { reinit_interval_ms = 50, reinit_interval_max_ms = 100 },
        environment = faults.environment(token, { SECRETS_SYSTEM = SECRET, DSN = dsn }) }))
      assert(faulty:generate("device-error", "ES256", { kid = "in-hsm" }))
      faulty:refresh("device-error")
      local function device_error(call, ...)
        return refused("ERR_HSM_UNAVAILABLE", call .. ": CKR_DEVICE_ERROR", ...)
      end
      -- the HSM answers again: the engine comes back by itself
      local function back()
        for _ = 1, 100 do
          local jwks = faulty:key_set("device-error")
          if jwks then return jwks end
          os.execute("sleep 0.1")
        end
        error("the engine did not come back within 10 s")
      end
      -- loading the set: every object search fails
      faults.set({ faults = "C_FindObjectsInit:CKR_DEVICE_ERROR" })
      device_error("C_FindObjectsInit", faulty:key_set("device-error"))
      device_error("C_FindObjectsInit", faulty:sign("device-error", "x"))
      device_error("C_FindObjectsInit", faulty:delete("device-error", "in-software"))
      -- signing with the set already loaded: every signature fails
      faults.set({})
      assert.equals("in-hsm", back().keys[1].kid)
      faults.set({ faults = "C_Sign:CKR_DEVICE_ERROR" })
      device_error("C_Sign", faulty:sign("device-error", "x"))
      faults.set({})
      back()
      -- the software copy was neither served nor deleted
      local s = assert(store_module.open(dsn))
      assert.equals(1, #assert(s:rows("device-error")))
      s:close()
      faulty:close()
    end)

    it("trusts the HSM's 'not found' for hsm.negative_cache_ttl seconds of the engine's clock", function()
      local clock = 1000
      local cached = assert(jwkengine.open({ logger = false, startup = false,
        now = function() return clock end, hsm = { negative_cache_ttl = 60 },
        environment = softhsm.environment(token, { SECRETS_SYSTEM = SECRET, DSN = dsn }) }))
      local software = assert(open(dsn))
      assert(software:generate("negative", "ES256", { kid = "in-software" }))
      software:close()
      assert.equals("in-software", assert(cached:key_set("negative")).keys[1].kid)
      -- an operator adds a pair to the token behind the engine's back (kid "op")
      softhsm.pkcs11_tool_ok(token,
        "--keypairgen --key-type EC:prime256v1 --usage-sign --label negative --id 6f70")
      clock = clock + 59
      assert.equals("in-software", assert(cached:key_set("negative")).keys[1].kid)
      clock = clock + 1
      assert.equals("op", assert(cached:key_set("negative")).keys[1].kid)
      cached:close()
    end)

    it("does not fall back when the HSM holds the set but no signing key in it", function()
      local software = assert(open(dsn))
      assert(software:generate("enc-only", "ES256", { kid = "soft-signer" }))
      software:close()
      assert(engine:generate("enc-only", "RS256", { use = "enc", kid = "hsm-enc" }))
      local jws, err, code = engine:sign("enc-only", "x")
      assert.is_nil(jws)
      assert.equals("ERR_NO_SIGNING_KEY", code)
      assert.matches("HSM key set 'enc-only' has no private signing key", err, 1, true)
    end)

    it("imports into software even with the HSM enabled, and the HSM side refuses imports", function()
      local pub = assert(core.generate_software_key("ES256")):private_jwk()
      assert(engine:import("imported", pub, { kid = "imp" }))
      local s = assert(store_module.open(dsn))
      assert.equals(1, #assert(s:rows("imported")))
      s:close()
      local listing = softhsm.pkcs11_tool(token, "--list-objects")
      assert.not_matches("imported", listing)
      -- the engine never routes an import to the HSM: its manager is asked directly
      local hsm_config = assert(require("jwkengine.config").load({
        environment = softhsm.environment(token) })).hsm
      local hsm_keys = assert(require("jwkengine.hsm").open(hsm_config))
      local ok, err, code = hsm_keys:import("imported", pub)
      hsm_keys:close()
      refused("ERR_HSM_IMPORT_UNSUPPORTED", "software store", ok, err, code)
    end)

    it("generates into the HSM when it is enabled and deletes from software on HSM not-found", function()
      assert(engine:generate("gen", "EdDSA", { kid = "g" }))
      assert.matches("label:%s+gen", (softhsm.pkcs11_tool(token, "--list-objects")))
      local s = assert(store_module.open(dsn))
      assert.equals(0, #assert(s:rows("gen")))
      local software = assert(open(dsn))
      assert(software:generate("soft-delete", "ES256", { kid = "d" }))
      software:close()
      assert.is_true(engine:delete("soft-delete", "d"))
      assert.equals(0, #assert(s:rows("soft-delete")))
      s:close()
    end)
  end)
end

describe("with no HSM at all", function()
  it("generates the startup sets in the store", function()
    local path = os.tmpname() .. ".sqlite"
    local lines = {}
    local engine = assert(open("sqlite://" .. path, nil, { startup = true,
      logger = function(_, m) lines[#lines + 1] = m end }))
    assert.same({
      "JSON Web Key Set 'hydra.openid.id-token' doesn't exist yet, generating new key pair...",
      "JSON Web Key Set 'hydra.jwt.access-token' doesn't exist yet, generating new key pair...",
    }, lines)
    assert.equals("RS256", assert(engine:key_set("hydra.openid.id-token")).keys[1].alg)
    engine:close()
    os.remove(path)
  end)

  -- Only processes generating into the same store wait for each other
  -- (the startup lock is per token or store, not per host).
  describe("the startup lock", function()
    local startup = require("jwkengine.startup")
    local saved_timeout
    before_each(function()
      saved_timeout = startup.LOCK_TIMEOUT
      startup.LOCK_TIMEOUT = 1
    end)
    after_each(function() startup.LOCK_TIMEOUT = saved_timeout end)

    local function held(dsn)
      return assert(core.try_lock_file(startup.lock_file(startup.identity({ hsm = {}, dsn = dsn }))))
    end

    it("is not waited for by a process generating into another store", function()
      local path = os.tmpname() .. ".sqlite"
      local lock = held("sqlite://" .. path .. "-other")
      local lines = {}
      local engine, err, code = open("sqlite://" .. path, nil, { startup = true,
        logger = function(_, m) lines[#lines + 1] = m end })
      lock:release()
      assert.is_truthy(engine, tostring(code) .. ": " .. tostring(err))
      for _, line in ipairs(lines) do assert.no.matches("another process", line, 1, true) end
      assert.equals(2, #lines)
      engine:close()
      -- and it is the one a process generating into the same store takes
      os.remove(path)
      lock = held("sqlite://" .. path)
      engine, err, code = open("sqlite://" .. path, nil, { startup = true, logger = false })
      lock:release()
      assert.is_nil(engine)
      assert.equals("ERR_STARTUP_LOCK", code, err)
      os.remove(path)
    end)

    it("is named by a hash: no password of the DSN, no PIN of the token in its path", function()
      local a = startup.lock_file(startup.identity({ hsm = {}, dsn = "postgresql://u:s3cret@db/keys?password=p4ss" }))
      local b = startup.lock_file(startup.identity({ hsm = {}, dsn = "postgresql://other:x@db/keys?password=other" }))
      assert.no.matches("s3cret", a, 1, true)
      assert.matches("/jwkengine%-startup%-%x+%.lock$", a)
      assert.equals(a, b) -- the same database, whoever logs in
      assert.no.equals(a, startup.lock_file(startup.identity({ hsm = {}, dsn = "postgresql://u@db/other" })))
      local t1 = startup.identity({ hsm = { enabled = true, library = "/l.so", uri = "pkcs11:token=t;pin-value=1234" } })
      assert.no.matches("1234", t1, 1, true)
      assert.no.equals(startup.lock_file(t1), startup.lock_file(startup.identity({ hsm = { enabled = true,
        library = "/l.so", uri = "pkcs11:token=u" } })))
    end)

    it("is not taken for a set whose key states are unreadable: it exists and refuses by itself", function()
      local path = os.tmpname() .. ".sqlite"
      local dsn = "sqlite://" .. path
      local engine = assert(open(dsn, nil, { startup = false }))
      assert(engine:generate("hydra.openid.id-token", "ES256", { kid = "a" }))
      assert(engine:generate("hydra.openid.id-token", "ES256", { kid = "b" }))
      assert(engine:generate("hydra.jwt.access-token", "ES256", { kid = "c" }))
      assert(engine:maintain())
      engine:close()
      local s = assert(store_module.open(dsn))
      assert(s.driver:exec([[UPDATE jwkengine_key_state SET records = '{"format":2,"records":7}']]))
      s:close()
      local lock = held(dsn)
      local lines = {}
      local err, code
      engine, err, code = open(dsn, nil, { startup = true, logger = function(_, m) lines[#lines + 1] = m end })
      lock:release()
      assert.is_truthy(engine, tostring(code) .. ": " .. tostring(err))
      local _, kerr, kcode = engine:key_set("hydra.openid.id-token")
      assert.equals("ERR_KEY_STATES_CORRUPT", kcode, kerr)
      local said = 0
      for _, line in ipairs(lines) do
        assert.no.matches("another process", line, 1, true)
        if line:find("startup key set 'hydra.openid.id-token'", 1, true) then said = said + 1 end
      end
      assert.equals(1, said)
      engine:close()
      os.remove(path)
    end)
  end)

  it("says what to configure when neither store is enabled", function()
    local engine, err = jwkengine.open({ environment = {}, logger = false })
    assert.is_nil(engine)
    assert.matches("HSM_ENABLED=true", err, 1, true)
    assert.matches("SECRETS_SYSTEM", err, 1, true)
  end)

  it("names the host's driver, not a DSN, when a store_driver comes without secrets", function()
    local driver = assert(require("jwkengine.store.luasql").sqlite(":memory:"))
    local engine, err, code = jwkengine.open({ environment = {}, store_driver = driver, logger = false })
    driver:close()
    assert.is_nil(engine)
    assert.equals("ERR_CONFIG", code)
    assert.equals("a store_driver is given but SECRETS_SYSTEM (secrets.system) is not set", err)
  end)

  it("uses a driver handed in by the host instead of the DSN", function()
    local luasql = require("jwkengine.store.luasql")
    local inner = assert(luasql.sqlite(":memory:"))
    local statements = 0
    local driver = {
      dialect = "sqlite",
      exec = function(_, sql) statements = statements + 1; return inner:exec(sql) end,
      query = function(_, sql) statements = statements + 1; return inner:query(sql) end,
      quote = function(_, text) return inner:quote(text) end,
      close = function() inner:close() end,
    }
    local engine = assert(jwkengine.open({ environment = { SECRETS_SYSTEM = SECRET }, store_driver = driver,
      logger = false, startup = false }))
    assert(engine:generate("hosted", "ES256", { kid = "h" }))
    assert.equals("h", assert(engine:key_set("hosted")).keys[1].kid)
    assert.is_true(statements > 3)
    engine:close()
  end)

  it("parses DSNs as Hydra writes them", function()
    assert.same({ kind = "sqlite", path = "/var/lib/jwk.sqlite" },
      store_module.parse_dsn("sqlite:///var/lib/jwk.sqlite?_fk=true"))
    assert.same({ kind = "sqlite", path = ":memory:" }, store_module.parse_dsn("memory"))
    local pg = store_module.parse_dsn("postgres://hydra:p%40ss@db.local:5433/hydra?sslmode=disable")
    assert.same({ kind = "postgres", user = "hydra", password = "p@ss", host = "db.local", port = "5433",
      database = "hydra", options = { sslmode = "disable" } }, pg)
    local bad, err = store_module.parse_dsn("mysql://x")
    assert.is_nil(bad)
    assert.matches("unsupported DSN", err)
  end)
end)

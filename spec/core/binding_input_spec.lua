-- About the binding (jwkengine.core): its answer to bad input from outside.
-- The binding never raises on bad input from outside (issue 19, Deliver 3):
-- every argument that can come from data (a set name or kid read from a
-- store or a token, a record's JSON that did not encode, a sealed row, a
-- file) is answered nil, err, ERR_INVALID_ARGUMENT; a closed token is
-- ERR_CLOSED. Only what no data can reach (self of another class, an
-- unknown algorithm name) still raises. Real SoftHSM token.
local core = require("jwkengine.core")
local config = require("jwkengine.config")
local hsm = require("jwkengine.hsm")
local refused = require("helpers.refusal").refused
local softhsm = require("helpers.softhsm")

-- Calls fn(...) under pcall: it must not raise, and must refuse with code.
local function answers(code, fragment, fn, ...)
  local results = table.pack(pcall(fn, ...))
  assert.is_true(results[1], "raised: " .. tostring(results[2]))
  refused(code, fragment, table.unpack(results, 2, results.n))
end

local BAD = { nil, false, {}, function() end }

describe("token methods answer bad input", function()
  local token, manager
  setup(function()
    token = softhsm.new_token("binding-input")
    local cfg = assert(config.load({ environment = softhsm.environment(token) }))
    manager = assert(hsm.open(cfg.hsm))
    assert(manager:generate("in", "ES256", { kid = "k" }))
  end)
  teardown(function() manager:close() end)

  it("create_data, destroy_data, data_objects: ERR_INVALID_ARGUMENT for each argument", function()
    local t = manager.token
    for i = 1, 4 do
      local bad = BAD[i]
      answers("ERR_INVALID_ARGUMENT", "the value", t.create_data, t, "app", "label", bad)
      answers("ERR_INVALID_ARGUMENT", "the label", t.create_data, t, "app", bad, "v")
      answers("ERR_INVALID_ARGUMENT", "the application", t.create_data, t, bad, "label", "v")
      answers("ERR_INVALID_ARGUMENT", "the value", t.destroy_data, t, "app", "label", bad)
      answers("ERR_INVALID_ARGUMENT", "the application", t.data_objects, t, bad)
      if bad ~= nil then -- nil: every label
        answers("ERR_INVALID_ARGUMENT", "the label", t.data_objects, t, "app", bad)
      end
    end
    answers("ERR_INVALID_ARGUMENT", "NUL", t.create_data, t, "a\0b", "label", "v")
    -- and the calls still work afterwards
    assert.is_true(t:create_data("app", "label", "v"))
    assert.same({ { label = "label", value = "v" } }, assert(t:data_objects("app", "label")))
    assert.equals(1, t:destroy_data("app", "label", "v"))
  end)

  it("load_set, generate, delete, set_id, store_certificate, logins: ERR_INVALID_ARGUMENT", function()
    local t = manager.token
    answers("ERR_INVALID_ARGUMENT", "the label", t.load_set, t, nil)
    answers("ERR_INVALID_ARGUMENT", "min_rsa_bits", t.load_set, t, "in", "many")
    answers("ERR_INVALID_ARGUMENT", "min_rsa_bits", t.load_set, t, "in", 2.5)
    answers("ERR_INVALID_ARGUMENT", "the kid", t.load_set, t, "in", 2048, {})
    answers("ERR_INVALID_ARGUMENT", "the kid", t.generate, t, "in", "ES256", nil)
    answers("ERR_INVALID_ARGUMENT", "use", t.generate, t, "in", "ES256", "x", "both")
    answers("ERR_INVALID_ARGUMENT", "rsa_bits", t.generate, t, "in", "RS256", "x", "sig", -1)
    answers("ERR_INVALID_ARGUMENT", "the label", t.delete, t, nil)
    answers("ERR_INVALID_ARGUMENT", "the kid", t.delete, t, "in", {})
    answers("ERR_INVALID_ARGUMENT", "the new kid", t.set_id, t, "in", "k", nil)
    answers("ERR_INVALID_ARGUMENT", "the certificate", t.store_certificate, t, "in", "k", nil)
    answers("ERR_INVALID_ARGUMENT", "the PIN", t.login, t, nil)
    answers("ERR_INVALID_ARGUMENT", "the PIN file", t.login_file, t, nil)
    answers("ERR_INVALID_ARGUMENT", "where the PIN is", t.login_env, t, {})
    answers("ERR_INVALID_ARGUMENT", "where the PIN is", t.login_uri, t, nil)
    answers("ERR_INVALID_ARGUMENT", "name", core.env_is_set, nil)
    assert.equals(1, #assert(t:load_set("in", 2048)))
  end)

  it("key methods: sign, sign_compact, self_signed_certificate, set_sign", function()
    local key = assert(manager.token:load_set("in", 2048))[1]
    answers("ERR_INVALID_ARGUMENT", "the signing input", key.sign, key, nil)
    answers("ERR_INVALID_ARGUMENT", "the payload", key.sign_compact, key, "e30", {})
    answers("ERR_INVALID_ARGUMENT", "the protected header", key.sign_compact, key, nil, "p")
    answers("ERR_INVALID_ARGUMENT", "the subject", key.self_signed_certificate, key, nil, 1)
    answers("ERR_INVALID_ARGUMENT", "days", key.self_signed_certificate, key, "CN=x", "ten")
    answers("ERR_INVALID_ARGUMENT", "boolean", key.set_sign, key, nil)
    assert(key:sign_compact("e30", "p"))
  end)

  -- issue 22, Deliver 3: one key class whatever holds the key; what a
  -- holder cannot do is answered, not raised
  it("token and software keys are one class; a method the holder cannot do answers ERR_KEY_USE", function()
    local hsm_key = assert(manager.token:load_set("in", 2048))[1]
    local sw_key = assert(core.generate_software_key("ES256"))
    assert.equals(getmetatable(hsm_key), getmetatable(sw_key))
    assert.equals("jwkengine.key", getmetatable(sw_key).__name)
    answers("ERR_KEY_USE", "HSM key cannot give its private members", hsm_key.private_jwk, hsm_key)
    answers("ERR_KEY_USE", "software key cannot be marked", sw_key.set_sign, sw_key, false)
    answers("ERR_KEY_USE", "software key cannot be retired", sw_key.retired, sw_key)
    answers("ERR_KEY_USE", "software key cannot hold a certificate", sw_key.certificate, sw_key)
    answers("ERR_JWS_SIGN", "name one", sw_key.sign_compact, sw_key, "e30", "p")
    -- the facts each holder has, through the same methods
    assert.same({ "k", "ES256", "sig", false }, { hsm_key:kid(), hsm_key:alg(), hsm_key:use(), hsm_key:retired() })
    assert.same({}, { sw_key:kid(), sw_key:alg(), sw_key:use() })
    assert.same({ "EC", 256, true }, { hsm_key:kty(), hsm_key:bits(), hsm_key:is_private() })
    assert.same({ "EC", 256, true }, { sw_key:kty(), sw_key:bits(), sw_key:is_private() })
    assert.equals("k", hsm_key:public_jwk().kid)
    assert.is_nil(sw_key:public_jwk().kid)
    assert.is_string(assert(sw_key:private_jwk()).d)
    for _, key in ipairs({ hsm_key, sw_key }) do
      assert.is_true(key:fits("ES256"))
      assert.is_string(assert(key:sign_compact("e30", "p", "ES256")))
      assert.is_string(assert(key:self_signed_certificate("CN=x", 1)))
      assert.equals(key:public_jwk().x, key:public_key():jwk().x)
    end
  end)

  it("a closed token answers ERR_CLOSED", function()
    local cfg = assert(config.load({ environment = softhsm.environment(token) }))
    local other = assert(hsm.open(cfg.hsm))
    local t = other.token
    local key = assert(t:load_set("in", 2048))[1]
    other:close()
    answers("ERR_CLOSED", "closed", t.data_objects, t, "app")
    answers("ERR_CLOSED", "closed", t.create_data, t, "app", "l", "v")
    answers("ERR_CLOSED", "closed", t.load_set, t, "in")
    answers("ERR_CLOSED", "closed", key.set_sign, key, true)
  end)

  it("still raises for what only a program gets wrong", function()
    local t = manager.token
    assert.has_error(function() t.data_objects({}, "app") end)
    assert.has_error(function() t:generate("in", "HS256", "x") end)
    -- self of another class (the check by the class's registry key, not by
    -- name): another class's object, another userdata, a table wearing the
    -- class's metatable, nothing
    local key = assert(t:load_set("in", 2048))[1]
    for _, wrong in ipairs({ key:public_key(), io.stdout, setmetatable({}, getmetatable(key)), 1 }) do
      assert.has_error(function() key.sign_timed(wrong, "e30", "p", "ES256") end, nil, tostring(wrong))
      assert.has_error(function() t.events(wrong) end)
    end
    assert.has_error(function() t.events(key) end)
    assert.has_error(function() key.sign_compact(t, "e30", "p") end)
    assert.is_nil(t:events())
    assert.equals("number", type(select(2, assert(key:sign_timed("e30", "p", "ES256")))))
  end)
end)

describe("software-key functions answer bad input", function()
  local SECRET = "a-secret-of-at-least-sixteen-bytes"
  it("sealed rows, secrets, JWKs, PEM, sizes: ERR_INVALID_ARGUMENT", function()
    local sealed = assert(core.aes_gcm_seal(SECRET, '{"kty":"oct"}'))
    for _, fn in ipairs({ core.open_sealed_key, core.aes_gcm_open, core.aes_gcm_reseal }) do
      answers("ERR_INVALID_ARGUMENT", "the sealed text", fn, { SECRET }, nil)
      answers("ERR_INVALID_ARGUMENT", "the secrets", fn, nil, sealed)
      answers("ERR_INVALID_ARGUMENT", "the secrets", fn, { SECRET, 5 }, sealed)
    end
    answers("ERR_INVALID_ARGUMENT", "the sealed text", core.sealed_key_mark, { SECRET }, {}, true)
    answers("ERR_INVALID_ARGUMENT", "the plaintext", core.aes_gcm_seal, SECRET, nil)
    answers("ERR_INVALID_ARGUMENT", "the secret", core.aes_gcm_seal, nil, "x")
    answers("ERR_INVALID_ARGUMENT", "the JWK", core.import_jwk, "{}")
    answers("ERR_INVALID_ARGUMENT", "the PEM text", core.import_pem, nil)
    answers("ERR_INVALID_ARGUMENT", "the options", core.generate_software_key, "RS256", 2048)
    answers("ERR_INVALID_ARGUMENT", "bits", core.generate_software_key, "RS256", { bits = 1e300 })
    local key = assert(core.generate_software_key("ES256"))
    answers("ERR_INVALID_ARGUMENT", "the payload", key.sign_compact, key, "e30", nil, "ES256")
  end)
end)

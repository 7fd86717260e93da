-- x5c and x5t#S256: X.509 certificates beside key pairs on the token
-- (CKO_CERTIFICATE, CKC_X_509, the pair's CKA_LABEL and CKA_ID) in the
-- public JWK, and `keys.lua cert`, whose certificate the HSM key signs.
-- Checked with openssl (verify, the public key, the DER's SHA-256),
-- python3-jwcrypto (the JWK's key as PEM) and pkcs11-tool (the seed
-- workflow: a certificate made elsewhere, written onto the token).
local cjson = require("cjson")
local cli = require("helpers.cli")
local faults = require("helpers.faults")
local softhsm = require("helpers.softhsm")
local q = softhsm.quote -- shell quoting, for the openssl and pkcs11-tool command lines
local verifier = require("helpers.verifier")
local stores = require("helpers.stores")
local refused = require("helpers.refusal").refused
local hydra_aead = require("helpers.hydra_aead").run
local store_module = require("jwkengine.store")
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding

local SECRET = "x5c-spec-secret-0123456789"

local function run_ok(command)
  local out, ok = softhsm.run(command)
  assert(ok, command .. ": " .. out)
  return out
end

-- RSA 2048 keeps generation quick; the mapping is the same for 4096.
local EXTRA = { HSM_MIN_RSA_BITS = "2048" }


-- The x5c certificate as a PEM file; returns its path.
local function pem_file(dir, name, x5c)
  local body = x5c:gsub(string.rep(".", 64), "%0\n"):gsub("\n$", "")
  local path = dir .. "/" .. name
  softhsm.write_file(path, "-----BEGIN CERTIFICATE-----\n" .. body .. "\n-----END CERTIFICATE-----\n")
  return path
end

-- The JWK's public key as PEM, converted by jwcrypto (not by jwkengine).
local function jwk_public_pem(dir, jwk)
  local path = dir .. "/jwk.json"
  softhsm.write_file(path, cjson.encode(jwk))
  return run_ok(string.format("/usr/bin/python3 -c %s %s", q(
    "import sys; from jwcrypto import jwk; "
    .. "sys.stdout.write(jwk.JWK.from_json(open(sys.argv[1]).read()).export_to_pem().decode())"),
    q(path)))
end

-- base64url of the SHA-256 of the certificate's DER, by openssl and coreutils.
local function openssl_x5t(pem)
  return (run_ok(string.format("openssl x509 -in %s -outform DER | openssl dgst -sha256 -binary "
    .. "| basenc --base64url | tr -d '=\\n'", q(pem))))
end

-- What openssl and jwcrypto say of a JWK's certificate, made by keys cert
-- with `subject` for `days` days.
local function check_certificate(dir, jwk, name, subject, days)
  assert.equals(1, #jwk.x5c)
  -- RFC 7517 4.7: standard base64, not base64url
  assert.matches("^[A-Za-z0-9+/]+=*$", jwk.x5c[1])
  local pem = pem_file(dir, name .. ".pem", jwk.x5c[1])
  -- self-signed: it is its own trust anchor, so its signature (made by
  -- the key itself) must verify
  local verified = run_ok(string.format("openssl verify -CAfile %s %s", q(pem), q(pem)))
  assert.matches(": OK", verified, 1, true)
  assert.equals(jwk_public_pem(dir, jwk),
    run_ok(string.format("openssl x509 -in %s -noout -pubkey", q(pem))))
  assert.equals(openssl_x5t(pem), jwk["x5t#S256"])
  assert.matches(subject,
    run_ok(string.format("openssl x509 -in %s -noout -subject -nameopt oneline", q(pem))), 1, true)
  -- valid for `days`: not expired a day before, expired a day after
  assert.matches("will not expire", run_ok(string.format("openssl x509 -in %s -noout -checkend %d",
    q(pem), (days - 1) * 86400)), 1, true)
  local expiring = softhsm.run(string.format("openssl x509 -in %s -noout -checkend %d", q(pem), (days + 1) * 86400))
  assert.matches("will expire", expiring, 1, true)
end

describe("x5c", function()
  local token, dir, hsm_env
  setup(function()
    token = softhsm.new_token("x5c")
    hsm_env = softhsm.environment(token, EXTRA)
    dir = run_ok("mktemp -d /tmp/jwke-x5c.XXXXXX"):match("[^\n]+")
  end)
  teardown(function()
    if dir then os.execute("rm -rf " .. q(dir)) end
  end)

  for _, case in ipairs({ { "ES256", "EC" }, { "RS256", "RSA" }, { "EdDSA", "OKP" } }) do
    local alg, kty = case[1], case[2]
    it("keys cert makes a self-signed certificate for a " .. alg .. " key that openssl and jwcrypto agree with", function()
      local set, kid = "cert-" .. alg, "k-" .. alg
      local engine = assert(softhsm.open_engine(hsm_env))
      assert(engine:generate(set, alg, { kid = kid, rsa_bits = 2048 }))
      assert.is_nil(engine:key(set, kid).x5c) -- none before keys cert
      engine:close()

      local out, err, status = cli.keys(hsm_env, string.format("cert %s %s --subject %s --days 30",
        set, kid, q("CN=x5c " .. alg .. ", O=jwkengine")))
      assert.equals(0, status, err)
      local printed = cjson.decode(out)
      assert.equals(kty, printed.kty)

      out, err, status = cli.keys(hsm_env, "get " .. set)
      assert.equals(0, status, err)
      local jwk = cjson.decode(out).keys[1]
      assert.equals(kid, jwk.kid)
      assert.same(printed, jwk)
      check_certificate(dir, jwk, alg, "CN = x5c " .. alg .. ", O = jwkengine", 30)

      -- the key still signs, and a verifier takes its JWK with x5c
      engine = assert(softhsm.open_engine(hsm_env))
      local jws = assert(engine:sign_jwt(set, { sub = "x5c" }))
      engine:close()
      assert.is_true((verifier.jwcrypto({ keys = { jwk } }, jws)))
    end)
  end

  it("prints JWKs and JWK Sets with '/' unescaped, from every command and key_set_json, and they parse", function()
    -- a kid holding "/" puts one in every line whatever the certificate's base64 holds
    local set, kid = "slash", "a/b"
    local outputs = {}
    local function keys(args)
      local out, err, status = cli.keys(hsm_env, args)
      assert.equals(0, status, err)
      outputs[#outputs + 1] = out
      return out
    end
    keys(string.format("create %s ES256 --kid %s", set, kid))
    local x5c
    for _ = 1, 8 do -- a certificate whose base64 holds a "/" too (nearly every one does)
      x5c = cjson.decode(keys(string.format("cert %s %s --subject CN=slash", set, kid))).x5c[1]
      if x5c:find("/", 1, true) then break end
    end
    assert.truthy(x5c:find("/", 1, true), "no certificate with a '/' in its base64")
    keys("get " .. set)
    keys("keys " .. set)
    local engine = assert(softhsm.open_engine(hsm_env))
    outputs[#outputs + 1] = assert(engine:key_set_json(set))
    engine:close()
    for _, out in ipairs(outputs) do
      assert.is_nil(out:find("\\/", 1, true), out)
      assert.matches("a/b", out, 1, true)
      for line in out:gmatch("[^\n]+") do assert.is_table(cjson.decode(line)) end
    end
    local jwk = cjson.decode(outputs[#outputs]).keys[1]
    assert.equals(kid, jwk.kid)
    assert.equals(x5c, jwk.x5c[1])
  end)

  it("replaces the pair's certificate on a second keys cert, leaving one on the token", function()
    local engine = assert(softhsm.open_engine(hsm_env))
    assert(engine:generate("again", "ES256", { kid = "a1" }))
    local first = assert(engine:certify("again", "a1", { subject = "CN=first" }))
    local second = assert(engine:certify("again", "a1", { subject = "CN=second", days = 2 }))
    engine:close()
    assert.are_not.equal(first["x5t#S256"], second["x5t#S256"])
    local certs = 0
    for _, object in ipairs(softhsm.objects(token, "cert")) do
      if object.label == "again" then certs = certs + 1 end
    end
    assert.equals(1, certs)
    local pem = pem_file(dir, "again.pem", second.x5c[1])
    assert.matches("CN = second",
      run_ok(string.format("openssl x509 -in %s -noout -subject -nameopt oneline", q(pem))), 1, true)
  end)

  it("keeps the pair's certificate when the new one cannot be stored, or the old one cannot be removed", function()
    local function certificates()
      local n = 0
      for _, object in ipairs(softhsm.objects(token, "cert")) do
        if object.label == "kept" then n = n + 1 end
      end
      return n
    end
    local engine = assert(softhsm.open_engine(hsm_env))
    assert(engine:generate("kept", "ES256", { kid = "k1" }))
    local first = assert(engine:certify("kept", "k1", { subject = "CN=first" }))
    engine:close()
    for _, case in ipairs({ { "C_CreateObject:CKR_DEVICE_MEMORY", "C_CreateObject: CKR_DEVICE_MEMORY" },
      { "C_DestroyObject:CKR_FUNCTION_FAILED@1", "C_DestroyObject: CKR_FUNCTION_FAILED" } }) do
      faults.set({ faults = case[1] })
      engine = assert(softhsm.open_engine(faults.environment(token, EXTRA)))
      local jwk, err = engine:certify("kept", "k1", { subject = "CN=second" })
      engine:close()
      faults.set({})
      assert.is_nil(jwk, case[1])
      assert.matches(case[2], err, 1, true)
      engine = assert(softhsm.open_engine(hsm_env))
      local kept = assert(engine:key("kept", "k1"))
      engine:close()
      assert.same(first.x5c, kept.x5c, case[1])
      assert.equals(1, certificates(), case[1])
    end
  end)

  it("maps a certificate made elsewhere and written with pkcs11-tool (the seed workflow)", function()
    local engine = assert(softhsm.open_engine(hsm_env))
    assert(engine:generate("seed", "ES256", { kid = "seed-1" }))
    engine:close()
    -- a CA outside the HSM issues a certificate for the token's public key
    local pub_der = dir .. "/seed-pub.der"
    run_ok(string.format("pkcs11-tool --module %s --token-label %s --read-object --type pubkey "
      .. "--label seed --id %s -o %s", q(softhsm.LIBRARY), q(token.label), softhsm.hex("seed-1"), q(pub_der)))
    run_ok(string.format("openssl pkey -pubin -inform DER -in %s -out %s/seed-pub.pem", q(pub_der), q(dir)))
    run_ok(string.format("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
      .. "-keyout %s/ca.key -out %s/ca.pem -subj /CN=seed-ca -days 2", q(dir), q(dir)))
    run_ok(string.format("openssl req -new -key %s/ca.key -subj /CN=seed-leaf -out %s/leaf.csr", q(dir), q(dir)))
    run_ok(string.format("openssl x509 -req -in %s/leaf.csr -force_pubkey %s/seed-pub.pem -CA %s/ca.pem "
      .. "-CAkey %s/ca.key -CAcreateserial -days 2 -outform DER -out %s/leaf.der", q(dir), q(dir), q(dir),
      q(dir), q(dir)))
    softhsm.pkcs11_tool(token, string.format("--login --write-object %s/leaf.der --type cert --label seed --id %s",
      q(dir), softhsm.hex("seed-1")))

    engine = assert(softhsm.open_engine(hsm_env))
    local jwk = assert(engine:key("seed", "seed-1"))
    engine:close()
    local der = softhsm.read_file(dir .. "/leaf.der")
    local b64 = run_ok(string.format("base64 -w0 %s/leaf.der", q(dir)))
    assert.equals(b64, jwk.x5c[1])
    assert.equals(#der > 0 and openssl_x5t(pem_file(dir, "leaf.pem", jwk.x5c[1])), jwk["x5t#S256"])
  end)

  it("keeps a key whose certificate holds another key signing, without x5c, and logs the mismatch naming the kid", function()
    local engine = assert(softhsm.open_engine(hsm_env))
    assert(engine:generate("mixed", "ES256", { kid = "mine" }))
    assert(engine:generate("mixed", "ES256", { kid = "other" }))
    local other = assert(engine:certify("mixed", "other", { subject = "CN=other" }))
    engine:close()
    -- other's certificate written beside "mine"
    local path = dir .. "/other.der"
    run_ok(string.format("printf %%s %s | base64 -d > %s", q(other.x5c[1]), q(path)))
    softhsm.pkcs11_tool(token, string.format("--login --write-object %s --type cert --label mixed --id %s",
      q(path), softhsm.hex("mine")))

    local lines = {}
    engine = assert(softhsm.open_engine(hsm_env,
      { logger = function(level, message) lines[#lines + 1] = level .. " " .. message end }))
    local jwks = assert(engine:key_set("mixed"))
    local by_kid = {}
    for _, k in ipairs(jwks.keys) do by_kid[k.kid] = k end
    assert.is_nil(by_kid.mine.x5c)
    assert.is_nil(by_kid.mine["x5t#S256"])
    assert.equals(other["x5t#S256"], by_kid.other["x5t#S256"])
    local logged = table.concat(lines, "\n")
    assert.matches("error key set 'mixed': key 'mine': the certificate's public key is not the key pair's "
      .. "(ERR_CERTIFICATE_MISMATCH)", logged, 1, true)
    local key = assert(engine:signing_key("mixed", "mine"))
    local der, err, code = key:certificate()
    assert.is_nil(der)
    assert.equals("ERR_CERTIFICATE_MISMATCH", code)
    assert.matches("'mine'", err, 1, true)
    local jws = assert(engine:sign_jwt("mixed", { sub = "still signs" }, { kid = "mine" }))
    engine:close()
    assert.is_true((verifier.jwcrypto(jwks, jws)))
  end)

  it("refuses a certificate value the token reports as larger than its buffer, and the key signs on", function()
    local engine = assert(softhsm.open_engine(hsm_env))
    assert(engine:generate("long", "ES256", { kid = "l1" }))
    assert(engine:certify("long", "l1", { subject = "CN=long" }))
    engine:close()
    local lines = {}
    engine = assert(softhsm.open_engine(faults.environment(token, EXTRA),
      { logger = function(level, message) lines[#lines + 1] = level .. " " .. message end }))
    -- read once before the fault: the fault garbles every CKA_VALUE, the
    -- set's key-state object's too, and a process that never read the
    -- states refuses the set (fail closed); one that did keeps them
    assert(engine:key_set("long"))
    faults.set({ lengths = "C_GetAttributeValue:CKA_VALUE=buffer+1,CKR_OK" })
    assert(engine:reload("long"))
    local ok, jwk = pcall(engine.key, engine, "long", "l1")
    local jws = ok and engine:sign_jwt("long", { sub = "long" })
    engine:close()
    faults.set({})
    assert.is_true(ok, jwk)
    assert.is_nil(jwk.x5c)
    assert.truthy(jws)
    assert.matches("CKA_VALUE is unreadable or larger than 16384 bytes (ERR_TOKEN_LENGTH)",
      table.concat(lines, "\n"), 1, true)
  end)

  it("names what is wrong in keys cert's input", function()
    local engine = assert(softhsm.open_engine(hsm_env))
    assert(engine:generate("input", "ES256", { kid = "i1" }))
    local jwk, err, code = engine:certify("input", "i1", { subject = "CN" })
    assert.is_nil(jwk)
    assert.equals("ERR_INVALID_ARGUMENT", code)
    assert.matches("subject part 'CN' is not TYPE=VALUE", err, 1, true)
    jwk, err, code = engine:certify("input", "i1", { subject = "XYZ=1" })
    assert.equals("ERR_INVALID_ARGUMENT", code)
    assert.matches("subject attribute 'XYZ'", err, 1, true)
    jwk, err, code = engine:certify("input", "i1", { subject = "CN=x", days = 0 })
    assert.equals("ERR_INVALID_ARGUMENT", code)
    assert.matches("1 to 36500 days, not 0", err, 1, true)
    jwk, err, code = engine:certify("input", "nope", { subject = "CN=x" })
    assert.equals("ERR_KEY_NOT_FOUND", code)
    assert.has_error(function() engine:certify("input", "i1", {}) end, "options.subject must be a string (\"CN=...\")")
    engine:close()

    local _, stderr, status = cli.keys(hsm_env, "cert input i1")
    assert.equals(2, status)
    assert.matches("cert needs --subject", stderr, 1, true)
    _, stderr, status = cli.keys(hsm_env, "cert input i1 --subject CN=x --days soon")
    assert.equals(2, status)
    assert.matches("option --days: 'soon' is not a whole number of days", stderr, 1, true)
  end)

  it("says which half of a subject part is wrong, refuses empty parts and NUL bytes, and takes openssl's spacing", function()
    local engine = assert(softhsm.open_engine(hsm_env))
    assert(engine:generate("subject", "ES256", { kid = "s1" }))
    local function refused_subject(subject, fragment)
      refused("ERR_INVALID_ARGUMENT", fragment, engine:certify("subject", "s1", { subject = subject }))
    end
    -- a known attribute with a value X.509 refuses (C is two letters)
    refused_subject("CN=x, C=USA", "subject attribute C: the value 'USA' is refused")
    -- an empty part is refused, not skipped (the certificate would not say what was typed)
    refused_subject("CN=a,,O=b", "subject part '' is not TYPE=VALUE")
    refused_subject("CN=a,", "subject part '' is not TYPE=VALUE")
    -- C would stop reading at the NUL: refused rather than shortened
    refused_subject("CN=a\0, O=hidden", "the subject holds a NUL byte")
    -- a whole number of days beyond what Lua's integers hold is a count out
    -- of range like any other, not a raise (keys cert --days 1e20 had a traceback)
    refused("ERR_INVALID_ARGUMENT", "1 to 36500 days",
      engine:certify("subject", "s1", { subject = "CN=x", days = 1e20 }))
    assert.is_nil(engine:key("subject", "s1").x5c) -- nothing was stored
    -- the way openssl prints a subject reads back as the same subject
    local jwk = assert(engine:certify("subject", "s1", { subject = " CN = spaced , O = Example " }))
    engine:close()
    check_certificate(dir, jwk, "spaced", "CN = spaced, O = Example", 365)
    local _, stderr, status = cli.keys(hsm_env, "cert subject s1 --subject CN=x --days 99999999999999999999")
    assert.equals(1, status, stderr)
    assert.matches("1 to 36500 days", stderr, 1, true)
    assert.is_nil(stderr:find("traceback", 1, true), stderr)
  end)

  for _, backend in ipairs(stores.backends()) do
    describe("software keys on " .. backend.name, function()
      local dsn, drop
      before_each(function() dsn, drop = backend.fresh() end)
      after_each(function() drop() end)
      local function soft_env()
        return { HSM_ENABLED = "false", DSN = dsn, SECRETS_SYSTEM = SECRET }
      end

      for _, alg in ipairs({ "ES256", "RS256", "EdDSA" }) do
        it("keys cert keeps the certificate of a " .. alg .. " key in its sealed row, and openssl agrees", function()
          local _, err, status = cli.keys(soft_env(), "create soft " .. alg .. " --kid s-" .. alg)
          assert.equals(0, status, err)
          _, err, status = cli.keys(soft_env(), string.format("cert soft s-%s --subject %s --days 10", alg,
            q("CN=soft " .. alg)))
          assert.equals(0, status, err)
          local out
          out, err, status = cli.keys(soft_env(), "get soft")
          assert.equals(0, status, err)
          local jwk = cjson.decode(out).keys[1]
          check_certificate(dir, jwk, "soft-" .. alg, "CN = soft " .. alg, 10)
          -- the row is Hydra's JWK with x5c, opened by the independent
          -- implementation; the private key is still there
          local s = assert(store_module.open(dsn))
          local row = assert(s:rows("soft"))[1]
          s:close()
          local plain = cjson.decode(hydra_aead("open", SECRET, row.keydata))
          assert.same(jwk.x5c, plain.x5c)
          assert.is_string(plain.d)
        end)
      end

      it("keeps a key whose stored x5c holds another key signing, without x5c, and logs it naming the kid", function()
        local lines = {}
        local engine = assert(softhsm.open_engine(soft_env(),
          { logger = function(level, message) lines[#lines + 1] = level .. " " .. message end }))
        assert(engine:generate("mixed", "ES256", { kid = "other" }))
        local other = assert(engine:certify("mixed", "other", { subject = "CN=other" }))
        local key = assert(core.generate_software_key("ES256"))
        local jwk = key:private_jwk()
        jwk.kid, jwk.alg, jwk.use, jwk.x5c = "mine", "ES256", "sig", other.x5c
        local s = assert(store_module.open(dsn))
        assert(s:insert("mixed", "mine", hydra_aead("seal", SECRET, cjson.encode(jwk))))
        s:close()
        engine:refresh("mixed")
        local mine = assert(engine:key("mixed", "mine"))
        assert.is_nil(mine.x5c)
        assert.equals(other["x5t#S256"], assert(engine:key("mixed", "other"))["x5t#S256"])
        assert.matches("error key set 'mixed': key 'mine': the certificate's public key is not the key pair's "
          .. "(ERR_CERTIFICATE_MISMATCH)", table.concat(lines, "\n"), 1, true)
        assert(engine:activate("mixed", "mine")) -- a row added by another writer is next at first
        local jws = assert(engine:sign("mixed", "still signs", { kid = "mine" }))
        assert.truthy(engine:verify("mixed", jws))
        engine:close()
      end)
    end)
  end
  -- NSS softokn wants CKA_ISSUER and CKA_SERIAL_NUMBER beside CKA_SUBJECT
  -- (CKR_TEMPLATE_INCOMPLETE without them); certutil then lists the
  -- certificate as one with its private key.
  it("keys cert stores a certificate NSS softokn accepts, and maps it back", function()
    local nss = dir .. "/nss"
    run_ok(string.format("mkdir -p %s && printf 'nss-x5c-password\\n' > %s/pw && certutil -N -d sql:%s -f %s/pw",
      q(nss), q(nss), q(nss), q(nss)))
    local env = { HSM_ENABLED = "true", HSM_LIBRARY = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
      HSM_TOKEN_LABEL = "NSS Certificate DB", HSM_PIN = "nss-x5c-password",
      HSM_INIT_ARGS = string.format("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", nss) }
    local engine = assert(softhsm.open_engine(env))
    assert(engine:generate("nss-set", "ES256", { kid = "nss-1" }))
    local made = assert(engine:certify("nss-set", "nss-1", { subject = "CN=nss" }))
    engine:close()
    engine = assert(softhsm.open_engine(env))
    local jwk = assert(engine:key("nss-set", "nss-1"))
    engine:close()
    assert.same(made.x5c, jwk.x5c)
    check_certificate(dir, jwk, "nss", "CN = nss", 365)
    assert.matches("nss%-set%s+u,u,u", run_ok(string.format("certutil -L -d sql:%s", q(nss))))
  end)
end)

-- Several HSMs of different implementations (issue 24): the primary a
-- SoftHSM token behind p11-kit's remoting (spec/helpers/p11kit.lua), the
-- second Mozilla's NSS softokn through its initialization arguments
-- (spec/helpers/nss.lua). While the primary's server is down, NSS's key
-- signs ES256 in the same call, and jwcrypto (against the published JWK
-- Set) and openssl (against the public key pkcs11-tool reads from NSS)
-- verify it; then the primary signs again.
--
-- NSS keeps no CKO_DATA objects, so no key states are recorded there
-- (ERR_KEY_STATES_UNSUPPORTED): a set of one key signs, a set of several,
-- a rotation, `keys activate` refuse. A rotation of the set rotates the
-- primary and is refused on NSS by name, leaving NSS's one key signing.
local cjson = require("cjson")
local jwkengine = require("jwkengine")
local jose = require("helpers.jose")
local nss = require("helpers.nss")
local p11kit = require("helpers.p11kit")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")
local util = require("jwkengine.util")

local SET = "multi-nss"
-- seconds the primary stays quiet before it signs again
local FAILBACK_AFTER = 1

local q = softhsm.quote

local function count(map)
  return #util.sorted_keys(map)
end

local function kid_of(jws)
  return softhsm.hex(jose.header(jws).kid)
end

-- An unsigned big-endian integer as a DER INTEGER.
local function der_integer(bytes)
  bytes = bytes:gsub("^%z+", "")
  if bytes == "" or bytes:byte(1) >= 0x80 then bytes = "\0" .. bytes end
  return "\2" .. string.char(#bytes) .. bytes
end

-- A JWS ES256 signature (r || s, 32 bytes each) as the DER ECDSA-Sig-Value
-- openssl verifies.
local function der_signature(raw)
  assert(#raw == 64, "an ES256 signature is 64 bytes, got " .. #raw)
  local body = der_integer(raw:sub(1, 32)) .. der_integer(raw:sub(33))
  return "\48" .. string.char(#body) .. body
end

describe("two HSMs: SoftHSM behind p11-kit, then NSS softokn", function()
  local server, dir, tool, engine

  local function stats_of(index)
    for _, token in ipairs(engine:stats().hsm_tokens) do
      if token.index == index then return token end
    end
    error("no token " .. index .. " in engine:stats().hsm_tokens: " .. cjson.encode(engine:stats()))
  end

  setup(function()
    server = p11kit.new({ label = "multi-nss" })
    -- the client module in this process reads the exported address only
    assert(server.in_process, "P11_KIT_SERVER_ADDRESS is not exported: run the spec through scripts/test.sh")
    dir, tool = nss.new_database()
    -- short publication settings: a failback may wait until the primary's
    -- keys have been published long enough (max_age + refresh + cache_ttl)
    engine = assert(jwkengine.open({ environment = {}, logger = false,
      startup_sets = { { set = SET, alg = "ES256" } },
      publication = { max_age = 1, refresh = 1 }, store = { cache_ttl = 1 },
      hsm = { enabled = true, failback_after = FAILBACK_AFTER, tokens = {
        { library = p11kit.CLIENT, token_label = server.token.label, pin = server.token.pin },
        { library = nss.SOFTOKN, token_label = nss.LABEL, pin = nss.PASSWORD, init_args = nss.init_args(dir) },
      } } }))
  end)

  teardown(function()
    if engine then engine:close() end
    if server then server:dispose() end
    if dir then os.execute("rm -rf " .. q(dir)) end
  end)

  local function primary_kids()
    return softhsm.ids(softhsm.objects(server.token, "privkey"), SET)
  end

  local function nss_kids()
    local out, ok = tool("--login --list-objects --type privkey")
    assert(ok, out)
    return softhsm.ids(softhsm.parse_objects(out), SET)
  end

  it("generates the startup set on both tokens, publishes both keys, and signs with the primary's", function()
    local on_primary, on_nss = primary_kids(), nss_kids()
    assert.are.equal(1, count(on_nss), "NSS holds one key of the set")
    local published = {}
    for _, jwk in ipairs(assert(engine:key_set(SET)).keys) do published[softhsm.hex(jwk.kid)] = true end
    for kid in pairs(on_primary) do assert.is_true(published[kid], "the primary's key is not published") end
    for kid in pairs(on_nss) do assert.is_true(published[kid], "NSS's key is not published") end
    local jws = assert(engine:sign_jwt(SET, { sub = "before" }))
    assert.is_true(on_primary[kid_of(jws)], "not signed by the primary")
    assert.is_true(stats_of(1).signing)
  end)

  it("rotates the set on the primary; NSS refuses by name and keeps its one key, which still signs", function()
    local before = nss_kids()
    local changes, err, code = engine:rotate(SET)
    assert.is_nil(changes)
    assert.are.equal("ERR_KEY_STATES_UNSUPPORTED", code, err)
    assert.matches("HSM token 2 (NSS Certificate DB)", err, 1, true)
    assert.matches("keeps no data objects", err, 1, true)
    -- the primary rotated: a next key beside its current one
    local states = {}
    for _, key in ipairs(assert(engine:key_states(SET, { token = 1 }))) do states[key.state] = key.kid end
    assert.is_string(states.next, "the primary did not rotate")
    assert.is_string(states.current)
    assert.are.equal(2, count(primary_kids()))
    -- NSS still holds exactly the key it had: a lone key, current
    assert.are.same(before, nss_kids())
    local nss_states = assert(engine:key_states(SET, { token = 2 }))
    assert.are.equal(1, #nss_states)
    assert.are.equal("current", nss_states[1].state)
  end)

  it("signs ES256 with NSS's key while the primary's server is down; jwcrypto and openssl verify it", function()
    server:stop()
    local jws, err, code = engine:sign_jwt(SET, { sub = "during" })
    assert.is_string(jws, tostring(err) .. " (" .. tostring(code) .. ")")
    local kid = kid_of(jws)
    assert.is_true(nss_kids()[kid], "not signed by NSS's key")
    assert.are.equal("ES256", jose.header(jws).alg)
    -- jwcrypto, against the JWK Set a client fetches
    local ok, out = verifier.jwcrypto(assert(engine:key_set_json(SET)), jws)
    assert.is_true(ok, out)
    -- openssl, against the public key as NSS itself gives it
    local pub = dir .. "/nss-pub.der"
    out, ok = tool(string.format("--read-object --type pubkey --id %s -o %s", kid, q(pub)))
    assert(ok, out)
    local input, sig64 = jws:match("^([^.]+%.[^.]+)%.(.+)$")
    softhsm.write_file(dir .. "/input", input)
    softhsm.write_file(dir .. "/sig.der", der_signature(jose.unb64(sig64)))
    out, ok = softhsm.run(string.format("openssl dgst -sha256 -binary -out %s %s && "
      .. "openssl pkeyutl -verify -pubin -keyform DER -inkey %s -sigfile %s -in %s", q(dir .. "/digest"),
      q(dir .. "/input"), q(pub), q(dir .. "/sig.der"), q(dir .. "/digest")))
    assert.is_true(ok, out)
    assert.matches("Signature Verified Successfully", out, 1, true)

    local primary, second = stats_of(1), stats_of(2)
    assert.are.equal("down", primary.state)
    assert.is_false(primary.signing)
    assert.are.equal("up", second.state)
    assert.is_true(second.signing)
    assert.is_true(engine:stats().hsm_failovers >= 1)
  end)

  it("signs with the primary again once its server has answered for failback_after", function()
    server:start()
    local deadline = os.time() + FAILBACK_AFTER + 30
    local on_primary = primary_kids()
    while true do
      local jws = assert(engine:sign_jwt(SET, { sub = "after" }))
      if on_primary[kid_of(jws)] then break end
      assert(os.time() < deadline, "the primary never signed again: " .. cjson.encode(engine:stats()))
      os.execute("sleep 0.1")
    end
    assert.are.equal("up", stats_of(1).state)
    assert.is_true(stats_of(1).signing)
  end)
end)

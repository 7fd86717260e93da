-- About the binding (jwkengine.core): the C key importers against hostile keys.
-- Keys built to break the importers rather than to sign: RSA moduli past
-- the supported maximum (they once overflowed the signature buffers) and
-- JWK tables whose metamethods run the garbage collector mid-read (they
-- once left C reading freed strings). Each must end in a clean
-- `nil, message[, code]`; the ASan build of scripts/test.sh turns any
-- stray read or write into a failure of this file.
local cjson = require("cjson")
local core = require("jwkengine.core")
local rsa_of_size = require("helpers.rsa_of_size")
local stores = require("helpers.stores")

local SECRET = "hostile-keys-secret-0123456789"
local MAX_BITS = 16384

local function b64(bytes)
  return (core.b64url_encode(bytes))
end

-- An engine on a fresh SQLite store, no HSM.
local function open_engine()
  local path = os.tmpname() .. ".sqlite"
  local engine = assert(stores.open_engine("sqlite://" .. path, SECRET))
  return engine, function() engine:close(); os.remove(path) end
end

describe("RSA keys past the supported maximum", function()
  local too_big, engine, close

  setup(function()
    too_big = rsa_of_size(MAX_BITS + 7) -- 2049 bytes: one more than a signature buffer
    engine, close = open_engine()
  end)

  teardown(function() close() end)

  local expected = string.format("RSA key of %d bits is larger than the supported maximum of %d bits",
    MAX_BITS + 7, MAX_BITS)

  it("are refused as PEM before anything signs with them", function()
    local key, err = core.import_pem(too_big.pem)
    assert.is_nil(key)
    assert.equals(expected, err)
  end)

  it("are refused as private and as public JWKs", function()
    local key, err = core.import_jwk(too_big.jwk)
    assert.is_nil(key)
    assert.equals(expected, err)
    key, err = core.public_key({ kty = "RSA", n = too_big.jwk.n, e = too_big.jwk.e })
    assert.is_nil(key)
    assert.equals(expected, err)
  end)

  it("are refused by engine:import with ERR_KEY_IMPORT, from PEM and from JWK", function()
    for _, input in ipairs({ too_big.pem, too_big.jwk, cjson.encode(too_big.jwk) }) do
      local ok, err, code = engine:import("too-big", input, { alg = "RS256" })
      assert.is_nil(ok)
      assert.equals("ERR_KEY_IMPORT", code)
      assert.matches(expected, err, 1, true)
    end
    local set, _, code = engine:key_set("too-big")
    assert.is_nil(set)
    assert.equals("ERR_KEY_SET_NOT_FOUND", code)
  end)

  it("stop exactly at the maximum", function()
    -- a public key needs no primes: any odd modulus of the size builds
    local odd = function(bytes) return "\128" .. string.rep("\7", bytes - 2) .. "\1" end
    local at_max = assert(core.public_key({ kty = "RSA", n = b64(odd(MAX_BITS // 8)), e = "AQAB" }))
    assert.equals(MAX_BITS, at_max:bits())
    local key, err = core.public_key({ kty = "RSA", n = b64("\1" .. odd(MAX_BITS // 8)), e = "AQAB" })
    assert.is_nil(key)
    assert.equals(string.format("RSA key of %d bits is larger than the supported maximum of %d bits",
      MAX_BITS + 1, MAX_BITS), err)
    -- a leading zero byte does not count
    assert.equals(MAX_BITS, assert(core.public_key({ kty = "RSA", n = b64("\0" .. odd(MAX_BITS // 8)),
      e = "AQAB" })):bits())
  end)
end)

describe("JWK tables with metamethods", function()
  local private, engine, close

  setup(function()
    private = assert(core.generate_software_key("ES256")):private_jwk()
    engine, close = open_engine()
  end)

  teardown(function() close() end)

  -- A table that holds nothing itself: each read goes through __index,
  -- which collects garbage and answers with a fresh long string, so a
  -- reader that kept a pointer after popping the value reads freed memory.
  local function proxy(jwk, counter)
    return setmetatable({}, { __index = function(_, name)
      counter.reads = counter.reads + 1
      collectgarbage()
      collectgarbage()
      local value = jwk[name]
      if name == "kty" or name == "crv" then
        return value .. string.rep(" ", 64)
      end
      return value
    end })
  end

  it("are read raw by core.public_key and core.import_jwk: metamethods never run", function()
    for _, read in ipairs({ core.public_key, core.import_jwk }) do
      local counter = { reads = 0 }
      local key, err = read(proxy(private, counter))
      assert.is_nil(key)
      assert.equals("JWK member 'kty' is missing", err)
      assert.equals(0, counter.reads)
    end
  end)

  it("are refused by engine:import with ERR_KEY_IMPORT", function()
    local counter = { reads = 0 }
    local ok, err, code = engine:import("proxied", proxy(private, counter), { alg = "ES256", kid = "k" })
    assert.is_nil(ok)
    assert.equals("ERR_KEY_IMPORT", code)
    assert.equals("cannot import key: JWK member 'kty' is missing", err)
  end)

  it("refuse kty and crv with a NUL byte instead of reading a shorter name", function()
    local public = { kty = "EC", crv = "P-256", x = private.x, y = private.y }
    for _, read in ipairs({ core.public_key, core.import_jwk }) do
      for name, value in pairs({ kty = "EC\0x", crv = "P-256\0" }) do
        local changed = {}
        for k, v in pairs(public) do changed[k] = v end
        changed[name] = value
        local key, err = read(changed)
        assert.is_nil(key)
        assert.equals("JWK member '" .. name .. "' holds a NUL byte", err)
      end
    end
  end)

  it("ignore members of other key types instead of decoding them", function()
    local junk = {}
    for k, v in pairs(private) do junk[k] = v end
    junk.n, junk.p, junk.qi = "not base64url!", 5, {}
    assert.same(assert(core.import_jwk(private)):public_jwk(), assert(core.import_jwk(junk)):public_jwk())
    assert.same(assert(core.public_key(private)):jwk(), assert(core.public_key(junk)):jwk())
  end)

  it("give the right key when the members are the table's own", function()
    local counter = { reads = 0 }
    local own = setmetatable({}, { __index = function() counter.reads = counter.reads + 1; collectgarbage() end })
    for k, v in pairs(private) do own[k] = v end
    local key = assert(core.import_jwk(own))
    assert.same(assert(core.import_jwk(private)):public_jwk(), key:public_jwk())
    assert.same(key:public_jwk(), assert(core.public_key(own)):jwk())
    assert.equals(0, counter.reads)
    assert(engine:import("owned", own, { alg = "ES256", kid = "k" }))
    local set = assert(engine:key_set("owned"))
    assert.equals(private.x, set.keys[1].x)
  end)
end)

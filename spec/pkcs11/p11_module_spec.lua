-- About the binding (jwkengine.core): the PKCS#11 module object and its C_Initialize count.
-- The PKCS#11 module object: one jwkengine.open() loads and initializes the
-- module once (listing slots and opening the token share it), and signing
-- never searches the token. Proven with OpenSC's pkcs11-spy, which logs
-- every call it forwards to SoftHSM.
local core = require("jwkengine.core")
local softhsm = require("helpers.softhsm")
local verifier = require("helpers.verifier")

local SPY_CANDIDATES = { "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
  "/usr/lib/aarch64-linux-gnu/pkcs11/pkcs11-spy.so", "/usr/lib/pkcs11/pkcs11-spy.so" }

local function find_spy()
  for _, path in ipairs(SPY_CANDIDATES) do
    local f = io.open(path, "rb")
    if f then f:close() return path end
  end
  error("OpenSC's pkcs11-spy.so is not installed (package opensc)")
end

-- Runs in a process of its own (the spy reads its settings from the
-- environment when it is loaded): opens an engine through the spy,
-- generates and loads a set, then signs, and prints where in the spy's log
-- the signing began and ended, the JWT and the JWK Set.
local SCRIPT = [[
local jwkengine = require("jwkengine")
local function log_size()
  local f = assert(io.open(os.getenv("PKCS11SPY_OUTPUT"), "rb"))
  local size = f:seek("end")
  f:close()
  return size
end
local engine = assert(jwkengine.open({ logger = false, startup = false }))
assert(engine:generate("spied", "ES256"))
assert(engine:key_set("spied"))
local before = log_size()
local jwt = assert(engine:sign_jwt("spied", { sub = "spy" }))
assert(engine:sign_jwt("spied", { sub = "spy again" }))
local after = log_size()
print(before, after, jwt)
print(assert(engine:key_set_json("spied")))
engine:close()
]]

local function count(text, call)
  local n = 0
  for _ in text:gmatch("\n%d+: " .. call .. "\n") do n = n + 1 end
  return n
end

describe("PKCS#11 module object", function()
  local token

  setup(function()
    token = softhsm.new_token("module")
  end)

  it("one jwkengine.open() calls C_Initialize once, and signing makes no C_FindObjects", function()
    local script, log = os.tmpname(), os.tmpname()
    softhsm.write_file(script, SCRIPT)
    local out, ok = softhsm.run(string.format(
      "env PKCS11SPY=%s PKCS11SPY_OUTPUT=%s HSM_ENABLED=true HSM_LIBRARY=%s HSM_TOKEN_LABEL=%s "
        .. "HSM_PIN=%s %s/jwkengine %s",
      softhsm.quote(softhsm.LIBRARY), softhsm.quote(log), softhsm.quote(find_spy()),
      softhsm.quote(token.label), softhsm.quote(token.pin), softhsm.BUILD, script))
    os.remove(script)
    local f = assert(io.open(log, "rb"))
    local calls = "\n" .. f:read("a")
    f:close()
    os.remove(log)
    assert.is_true(ok, out)

    assert.equals(1, count(calls, "C_Initialize"))
    assert.equals(1, count(calls, "C_Finalize"))

    local before, after, jwt, jwks = out:match("^(%d+)\t(%d+)\t(%S+)\n(.-)\n")
    assert.truthy(jwt, out)
    -- +1: the leading "\n" added above
    local signing = calls:sub(tonumber(before) + 1, tonumber(after) + 1)
    assert.equals(2, count(signing, "C_Sign"))
    assert.equals(0, count(signing, "C_FindObjectsInit"))
    assert.equals(0, count(signing, "C_FindObjects"))
    assert.is_true(verifier.jwcrypto(jwks, jwt))
  end)

  it("lists slots and opens the token through one module object", function()
    local module = assert(core.load_module(softhsm.LIBRARY))
    local chosen
    for _, slot in ipairs(assert(module:slots())) do
      if slot.label == token.label then chosen = slot end
    end
    assert.truthy(chosen)
    local opened = assert(module:open_token(chosen.id, { label = chosen.label, serial = chosen.serial }))
    module:close()
    -- the token keeps the module loaded after the module object lets go
    assert.is_true(opened:login(token.pin))
    assert.same({}, assert(opened:load_set("absent", 2048)))
    opened:close()
    assert.has_error(function() module:slots() end, "the PKCS#11 module is closed")
  end)

  it("refuses a module that cannot be loaded with nil, a message and ERR_CONFIG", function()
    local module, err, code = core.load_module("/nonexistent/libpkcs11.so")
    assert.is_nil(module)
    assert.matches("/nonexistent/libpkcs11.so", err, 1, true)
    assert.equals("ERR_CONFIG", code)
  end)
end)

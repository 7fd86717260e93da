-- Retirement written on the key itself (issue 19, Deliver 2): the private
-- half's CKA_SIGN false on the token, key_ops ["verify"] in a software row.
-- Such a key loads (flagged retired_mark), never signs, is never published,
-- whatever the set's records say; the token itself refuses C_SignInit. Real
-- SoftHSM, pkcs11-tool as the independent reader, the fault-injecting
-- module for a token that refuses the change, SQLite and PostgreSQL.
local core = require("helpers.binding") -- keys and stored bytes; the spec is not about the binding
local config = require("jwkengine.config")
local hsm = require("jwkengine.hsm")
local keyset = require("jwkengine.keyset")
local faults = require("helpers.faults")
local refused = require("helpers.refusal").refused
local softhsm = require("helpers.softhsm")
local stores = require("helpers.stores")

local function open_manager(token, library)
  local environment = softhsm.environment(token, { HSM_LIBRARY = library })
  local cfg = assert(config.load({ environment = environment }))
  cfg.hsm.min_rsa_bits = 2048
  return assert(hsm.open(cfg.hsm))
end

local function kids_of(jwks)
  local kids = {}
  for _, jwk in ipairs(jwks.keys) do kids[#kids + 1] = jwk.kid end
  table.sort(kids)
  return table.concat(kids, ",")
end

-- pkcs11-tool's account of one private key's usage (its "Usage:" line).
local function usage(token, label, kid)
  local out = softhsm.pkcs11_tool_ok(token, "--login --list-objects --type privkey")
  for block in (out .. "\nPrivate Key Object"):gmatch("Private Key Object(.-)\n%f[%S]") do
    if block:find("label:%s+" .. label:gsub("%p", "%%%0") .. "\n")
      and block:find("ID:%s+" .. softhsm.hex(kid) .. "\n") then
      return block:match("Usage:%s+([^\n]*)")
    end
  end
  error("no private key " .. kid .. " in\n" .. out)
end

describe("retirement written on an HSM key (CKA_SIGN)", function()
  local token, manager
  setup(function()
    token = softhsm.new_token("retiremark")
    manager = open_manager(token)
    assert(manager:generate("rm", "ES256", { kid = "a" }))
    assert(manager:generate("rm", "ES256", { kid = "b" }))
    assert(manager:generate("rm", "RS256", { kid = "r", rsa_bits = 2048 }))
    assert(manager:generate("enc", "RS256", { kid = "e", rsa_bits = 2048, use = "enc" }))
  end)
  teardown(function() manager:close() end)

  it("clears CKA_SIGN (pkcs11-tool reads it), and the token itself refuses to sign", function()
    assert.matches("sign", usage(token, "rm", "a"))
    local stale = assert(manager:load("rm")).by_kid.a.object
    assert.is_true(manager:mark_retired("rm", "a", true))
    assert.not_matches("sign", usage(token, "rm", "a"))
    assert.matches("sign", usage(token, "rm", "b"))
    -- another program on the same token: C_SignInit refused by SoftHSM
    local input = softhsm.tmpname()
    softhsm.write_file(input, string.rep("x", 32))
    local out, ok = softhsm.pkcs11_tool(token, "--login --sign -m ECDSA --id " .. softhsm.hex("a")
      .. " --input-file " .. input .. " --output-file " .. input .. ".sig")
    assert.is_false(ok, out)
    assert.matches("CKR_KEY_FUNCTION_NOT_PERMITTED", out)
    softhsm.pkcs11_tool_ok(token, "--login --sign -m ECDSA --id " .. softhsm.hex("b")
      .. " --input-file " .. input .. " --output-file " .. input .. ".sig")
    os.remove(input); os.remove(input .. ".sig")
    -- a key object loaded before the mark gets the token's refusal, named
    refused("ERR_KEY_STATE", "CKR_KEY_FUNCTION_NOT_PERMITTED", stale:sign_compact("e30", "p", "ES256"))
  end)

  it("loads a marked pair flagged retired_mark: never signs, not even by kid, never published", function()
    assert.is_true(manager:mark_retired("rm", "a", true))
    local entry = assert(manager:load("rm", true))
    assert.is_true(entry.by_kid.a.retired_mark)
    assert.is_nil(entry.by_kid.b.retired_mark)
    assert.equals("sig", entry.by_kid.a.use)
    assert.is_true(entry.by_kid.a.object:retired())
    refused("ERR_KEY_STATE", "retired on the key", manager:sign("rm", "p", { kid = "a" }))
    refused("ERR_KEY_STATE", "retired on the token", entry.by_kid.a.object:sign_compact("e30", "p", "ES256"))
    assert.equals("b,r", kids_of(assert(manager:key_set("rm"))))
    for _, candidate in ipairs(assert(manager:verification_keys("rm"))) do
      assert.are_not.equals("a", candidate.kid)
    end
    -- the records name the retired key current: the key's own mark wins
    entry.lifecycle = { evaluation = { signer = "a", keys = {} } }
    keyset.prepare(entry, "rm", "HSM")
    refused("ERR_KEY_STATE", "retired on the key", keyset.signing_key(entry, "rm", nil, "HSM"))
    manager:forget("rm")
  end)

  it("an RSA pair with neither CKA_SIGN nor CKA_DECRYPT is retired, not unusable", function()
    assert.is_true(manager:mark_retired("rm", "r", true))
    local entry = assert(manager:load("rm", true))
    assert.is_true(entry.by_kid.r.retired_mark)
    assert.equals("sig", entry.by_kid.r.use)
    refused("ERR_KEY_STATE", "retired on the key", manager:sign("rm", "p", { kid = "r" }))
    assert.is_true(manager:mark_retired("rm", "r", false))
    assert.matches("sign", usage(token, "rm", "r"))
    assert(manager:sign("rm", "p", { kid = "r" }))
  end)

  it("activate undoes it: CKA_SIGN true again, signing and published", function()
    assert.is_true(manager:mark_retired("rm", "a", true))
    assert.is_true(manager:mark_retired("rm", "a", false))
    assert.matches("sign", usage(token, "rm", "a"))
    assert.is_nil(assert(manager:load("rm", true)).by_kid.a.retired_mark)
    assert(manager:sign("rm", "p", { kid = "a" }))
    assert.equals("a,b,r", kids_of(assert(manager:key_set("rm"))))
  end)

  it("without records, a set whose only other keys are marked signs with the one left", function()
    assert.is_true(manager:mark_retired("rm", "a", true))
    assert.is_true(manager:mark_retired("rm", "r", true))
    -- "only": exactly one unmarked signing key
    local jws = assert(manager:sign("rm", "p"))
    assert.matches('"kid":"b"', core.b64url_decode(jws:match("^[^.]+")), 1, true)
    assert.is_true(manager:mark_retired("rm", "b", true))
    refused("ERR_NO_SIGNING_KEY", nil, manager:sign("rm", "p"))
    for _, kid in ipairs({ "a", "b", "r" }) do assert.is_true(manager:mark_retired("rm", kid, false)) end
  end)

  it("a process that loaded the set before another retired its signer on the token reads it again", function()
    assert(manager:generate("two", "ES256", { kid = "x" }))
    assert(manager:generate("two", "ES256", { kid = "y" }))
    assert.is_true(manager:mark_retired("two", "y", true))
    local other = open_manager(token)
    assert(other:sign("two", "p")) -- loaded: x signs
    assert.is_true(manager:mark_retired("two", "y", false))
    assert.is_true(manager:mark_retired("two", "x", true))
    -- other's entry still names x; the token refuses it; other reads again
    local jws = assert(other:sign("two", "p"))
    assert.matches('"kid":"y"', core.b64url_decode(jws:match("^[^.]+")), 1, true)
    other:close()
  end)

  it("refuses what it cannot mark, by name", function()
    refused("ERR_KEY_NOT_FOUND", "zz", manager:mark_retired("rm", "zz", true))
    refused("ERR_KEY_USE", "encryption key", manager:mark_retired("enc", "e", true))
    refused("ERR_KEY_SET_NOT_FOUND", nil, manager:mark_retired("none", "a", true))
    refused("ERR_INVALID_ARGUMENT", "boolean", assert(manager:load("rm")).by_kid.a.object:set_sign("no"))
    assert.has_error(function() manager:mark_retired("rm", "a", "yes") end)
  end)
end)

describe("a token that refuses to change CKA_SIGN", function()
  it("answers ERR_KEY_MARK_REFUSED, logs it, and leaves the key as it was", function()
    local token = faults.fresh_token("retiremark-refused")
    local manager = open_manager(token, faults.MODULE)
    local logged = {}
    manager.log = function(level, message) logged[#logged + 1] = level .. ": " .. message end
    assert(manager:generate("rm", "ES256", { kid = "a" }))
    faults.set({ faults = "C_SetAttributeValue:CKR_ATTRIBUTE_READ_ONLY" })
    refused("ERR_KEY_MARK_REFUSED", "CKR_ATTRIBUTE_READ_ONLY", manager:mark_retired("rm", "a", true))
    faults.set({})
    assert.matches("warn: key set 'rm' key 'a': token .* refused to set CKA_SIGN false", logged[1])
    assert.matches("sign", usage(token, "rm", "a"))
    assert(manager:sign("rm", "p", { kid = "a" }))
    manager:close()
  end)
end)

stores.describe_each("retirement written on a software key (key_ops)", function(database)
  local SECRET = "a-secret-of-at-least-sixteen-bytes"
  local manager
  before_each(function()
    manager = require("jwkengine.software").new(assert(require("jwkengine.store").open(database.dsn)), { SECRET })
    assert(manager:generate("rm", "ES256", { kid = "a" }))
    assert(manager:generate("rm", "ES256", { kid = "b" }))
  end)
  after_each(function() manager:close() end)

  local function stored_jwk(kid)
    local rows = assert(manager.store:rows("rm"))
    for _, row in ipairs(rows) do
      if row.kid == kid then
        local plaintext = assert(core.aes_gcm_open({ SECRET }, row.keydata))
        return require("cjson").decode(plaintext), row
      end
    end
  end

  it("re-seals the row in place with key_ops [\"verify\"]; the load flags it; activate removes it", function()
    local before, row_before = stored_jwk("a")
    assert.is_nil(before.key_ops)
    assert.is_true(manager:mark_retired("rm", "a", true))
    local after, row_after = stored_jwk("a")
    assert.same({ "verify" }, after.key_ops)
    assert.equals(row_before.pk, row_after.pk)
    for member, value in pairs(before) do assert.equals(value, after[member], member) end
    local entry = assert(manager:load("rm", true))
    assert.is_true(entry.by_kid.a.retired_mark)
    refused("ERR_KEY_STATE", "retired on the key", manager:sign("rm", "p", { kid = "a" }))
    assert.equals("b", kids_of(assert(manager:key_set("rm"))))
    assert.is_nil(assert(manager:key_set("rm")).keys[1].key_ops)
    refused("ERR_KEY_STATE", "retired on the key", manager:certify("rm", "a", { subject = "CN=a", days = 1 }))
    assert.is_true(manager:mark_retired("rm", "a", false))
    assert.is_nil(stored_jwk("a").key_ops)
    assert(manager:sign("rm", "p", { kid = "a" }))
    assert.equals("a,b", kids_of(assert(manager:key_set("rm"))))
  end)

  it("a row whose key_ops lists sign is not marked; one without sign is", function()
    local software = require("jwkengine.software")
    assert.is_false(software.retired_on_row({ key_ops = { "sign", "verify" } }, "sig"))
    assert.is_false(software.retired_on_row({}, "sig"))
    assert.is_true(software.retired_on_row({ key_ops = {} }, "sig"))
    assert.is_false(software.retired_on_row({ key_ops = { "verify" } }, "enc"))
  end)

  it("refuses what it cannot mark, by name", function()
    refused("ERR_KEY_NOT_FOUND", "zz", manager:mark_retired("rm", "zz", true))
    refused("ERR_KEY_DECRYPT", nil,
      require("jwkengine.software").new(manager.store, { "another-secret-of-sixteen-bytes" }):mark_retired("rm", "a", true))
    refused("ERR_INVALID_ARGUMENT", "boolean", core.sealed_key_mark({ SECRET }, "x", 1))
  end)
end)

-- The HSM part of the suite, for any PKCS#11 token implementation: mapping
-- of pairs an independent tool made, Hydra's label/kid/use/alg rules,
-- generation on startup, signing with every alg the engine puts on a token
-- (jwcrypto verifies), the JWK Set, keys another process adds, state
-- objects, and a named error for each mechanism the token lacks.
--
-- hsm_suite.define(implementation, _ENV) declares one busted `describe`
-- (busted's describe, it, assert, ... live in the spec's environment, so
-- the spec hands its _ENV over).
-- implementation = {
--   name = "NSS softokn 3.87",           -- the describe's title
--   new_token = function() -> token,     -- a fresh token, once per describe:
--     token = {
--       library, label, pin,             -- HSM_LIBRARY, HSM_TOKEN_LABEL, HSM_PIN
--       init_args = nil | string,        -- HSM_INIT_ARGS
--       environment = nil | { NAME = value }, -- more for the engine and its
--                                        -- child processes (HSM_MIN_RSA_BITS,
--                                        -- P11_KIT_SERVER_ADDRESS, ...)
--       tool = nil | function(args) -> output, ok,  -- pkcs11-tool on this token
--                                        -- (logged in: --pin given)
--       cleanup = nil | function(),
--     }
--   rsa_bits = 2048,                     -- RSA size the suite generates
--   lacks = { "EdDSA", ... },            -- algs this implementation is known
--                                        -- not to generate (checked against
--                                        -- the token's own mechanism list)
--   mechanisms = nil | { "CKM_..." },    -- the mechanism list, when there is
--                                        -- no tool to read it
--   state_objects = false,               -- the token refuses the CKO_DATA
--                                        -- objects key states live in (NSS)
--   allowed_mechanisms = false,          -- the token refuses the
--                                        -- CKA_ALLOWED_MECHANISMS mark PS256
--                                        -- keys carry (NSS)
--   sign_mark = "CKR_...",               -- the token refuses to change
--                                        -- CKA_SIGN (retirement on the key)
--                                        -- with this code
-- }
-- The engine's own settings only (never os.getenv): the same token can be
-- described to a child process through cli.env_prefix.
local cjson = require("cjson")
local core = require("helpers.binding")
local cli = require("helpers.cli")
local jose = require("helpers.jose")
local softhsm = require("helpers.softhsm")

local M = {}

-- The algs the engine generates and signs with on a token, from the one
-- algorithm table (RSA pairs on a token are RS256 by Hydra's rule).
local function token_algs()
  local list = {}
  for name, info in pairs(core.algorithms()) do
    if info.hsm_generates then list[#list + 1] = name end
  end
  table.sort(list)
  return list
end

-- pkcs11-tool -M spells CKM_EC_KEY_PAIR_GEN by its older alias.
local TOOL_SPELLING = { CKM_EC_KEY_PAIR_GEN = "ECDSA-KEY-PAIR-GEN" }

local function tool_name(ckm)
  return TOOL_SPELLING[ckm] or ckm:gsub("^CKM_", ""):gsub("_", "-")
end

-- The set of CKM_ names the token offers: read by the tool, else given.
local function mechanisms_of(implementation, token)
  local offered = {}
  if token.tool then
    local out, ok = token.tool("--list-mechanisms")
    assert(ok, "pkcs11-tool --list-mechanisms: " .. out)
    for _, info in pairs(core.algorithms()) do
      for _, ckm in ipairs({ info.generate_mechanism, info.mechanism }) do
        if out:find("\n%s*" .. tool_name(ckm):gsub("%-", "%%-") .. ",") then offered[ckm] = true end
      end
    end
  else
    for _, ckm in ipairs(assert(implementation.mechanisms, "give mechanisms or a tool")) do
      offered[ckm] = true
    end
  end
  return offered
end

-- The environment an engine (or a child process) is opened with.
function M.environment(token, extra)
  local env = { HSM_ENABLED = "true", HSM_LIBRARY = token.library, HSM_TOKEN_LABEL = token.label,
    HSM_PIN = token.pin, HSM_INIT_ARGS = token.init_args }
  for k, v in pairs(token.environment or {}) do env[k] = v end
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

-- pkcs11-tool pairs: key type, the alg and curve Hydra's rules give, CKA_ID.
local TOOL_PAIRS = {
  { key_type = "EC:prime256v1", alg = "ES256", crv = "P-256", id = "01" },
  { key_type = "EC:secp384r1", alg = "ES384", crv = "P-384", id = "02" },
  { key_type = "EC:secp521r1", alg = "ES512", crv = "P-521", id = "03" },
  { key_type = "EC:edwards25519", alg = "EdDSA", crv = "Ed25519", id = "04" },
}

function M.define(implementation, busted)
  local describe, it, setup, teardown, pending, assert =
    busted.describe, busted.it, busted.setup, busted.teardown, busted.pending, busted.assert
  describe(implementation.name, function()
    local token, engine, offered, env
    local logged = {} -- what the shared engine logged, shown when a test fails

    local function open(options) return softhsm.open_engine(env, options) end

    -- jwcrypto's verdict on a token under the set's published JWK Set.
    local function jwcrypto_accepts(set, jws, alg)
      local jwks = assert(engine:key_set(set))
      return jose.jwcrypto_verify({ { jwks = jwks, token = jws, alg = alg } })[1]
    end

    -- The line of a token that keeps no data objects (state_objects =
    -- false: no key states on it, ERR_KEY_STATES_UNSUPPORTED) is checked on
    -- its own: an engine says it once, at its first write, never per set;
    -- fresh: the lines are all of a fresh engine that wrote, so it is there.
    local UNSUPPORTED = "the token keeps no data objects %(.*C_CreateObject: CKR_.*%(ERR_KEY_STATES_UNSUPPORTED%)$"
    local function without_unrecorded(lines, fresh)
      local kept, said = {}, 0
      for _, line in ipairs(lines) do
        assert.no.matches("cannot be recorded (", line, 1, true) -- no warning per set
        assert.no.matches("not recorded yet", line, 1, true)
        if line:find(UNSUPPORTED) then said = said + 1 else kept[#kept + 1] = line end
      end
      local expected = implementation.state_objects == false and fresh and 1 or nil
      if implementation.state_objects ~= false then expected = 0 end
      if expected then
        assert.equals(expected, said, table.concat(lines, "\n"))
      else
        assert.is_true(said <= 1, table.concat(lines, "\n"))
      end
      return kept
    end

    local function supports(alg)
      local info = core.alg_info(alg)
      return offered[info.generate_mechanism] and offered[info.mechanism]
    end

    setup(function()
      token = implementation.new_token()
      env = M.environment(token)
      offered = mechanisms_of(implementation, token)
      engine = assert(open({ logger = function(_, message) logged[#logged + 1] = message end }))
    end)

    teardown(function()
      if engine then engine:close() end
      collectgarbage()
      if token and token.cleanup then token.cleanup() end
    end)

    it("offers the mechanisms it is known for, as its own mechanism list says", function()
      local lacking = {}
      for _, alg in ipairs(implementation.lacks or {}) do lacking[alg] = true end
      for _, alg in ipairs(token_algs()) do
        assert.equals(not lacking[alg], supports(alg) and true or false, alg)
      end
    end)

    for _, alg in ipairs(token_algs()) do
      it("generates " .. alg .. " where the token can, signs, and jwcrypto verifies; else names what is missing",
        function()
          local set = "suite-" .. alg:lower()
          local jwk, err, code = engine:generate(set, alg, { kid = set .. "-1", rsa_bits = implementation.rsa_bits })
          if implementation.allowed_mechanisms == false and alg:find("^PS") then
            assert.is_nil(jwk)
            assert.equals("ERR_UNSUPPORTED_ALG", code)
            assert.matches(string.format("token '%s' refused a key pair marked with CKA_ALLOWED_MECHANISMS",
              token.label), err, 1, true)
            return
          end
          if not supports(alg) then
            assert.is_nil(jwk)
            assert.equals("ERR_UNSUPPORTED_ALG", code)
            assert.matches(string.format("token '%s' has no %s", token.label,
              core.alg_info(alg).generate_mechanism), err, 1, true)
            return
          end
          assert.is_table(jwk, err)
          assert.same({ alg, "sig", set .. "-1" }, { jwk.alg, jwk.use, jwk.kid })
          assert.is_nil(jwk.d)
          local jws = assert(engine:sign_jwt(set, { sub = "suite-" .. alg }))
          local verdict = jwcrypto_accepts(set, jws, alg)
          assert.is_true(verdict.ok, verdict.error)
          assert.matches('"sub":"suite-' .. alg .. '"', verdict.payload, 1, true)
          -- a signature from another key of the same alg must not pass
          local other = jose.jwcrypto_sign({ { alg = alg, kid = set .. "-1", claims = { sub = "x" } } })[1]
          local forged = jws:match("^[^.]+%.[^.]+%.") .. other.token:match("[^.]+$")
          assert.is_false(jwcrypto_accepts(set, forged, alg).ok)
          local _, _, bad = engine:verify(set, forged)
          assert.equals("ERR_JWS_SIGNATURE_INVALID", bad)
        end)
    end

    it("maps pairs an independent tool made by Hydra's rules (label = set, kid = CKA_ID, use, alg)", function()
      if not token.tool then
        pending("no independent tool for this implementation: the second-process test reads keys back")
        return
      end
      local out, ok = token.tool(string.format(
        "--keypairgen --key-type rsa:%d --usage-sign --label hydra.openid.id-token --id 746573742d6b65792d6964",
        implementation.rsa_bits))
      assert.is_true(ok, out)
      local jwk = assert(engine:key_set("hydra.openid.id-token")).keys[1]
      assert.same({ "test-key-id", "RS256", "sig", "RSA", "AQAB" }, { jwk.kid, jwk.alg, jwk.use, jwk.kty, jwk.e })
      local verdict = jwcrypto_accepts("hydra.openid.id-token",
        assert(engine:sign_jwt("hydra.openid.id-token", { sub = "tool" })), "RS256")
      assert.is_true(verdict.ok, verdict.error)
      for _, pair in ipairs(TOOL_PAIRS) do
        if supports(pair.alg) then
          local label = "tool-" .. pair.alg:lower()
          out, ok = token.tool(string.format("--keypairgen --key-type %s --usage-sign --label %s --id %s",
            pair.key_type, label, pair.id))
          assert.is_true(ok, out)
          jwk = assert(engine:key_set(label)).keys[1]
          assert.same({ pair.alg, pair.crv, "sig", string.char(tonumber(pair.id, 16)) },
            { jwk.alg, jwk.crv, jwk.use, jwk.kid })
          verdict = jwcrypto_accepts(label, assert(engine:sign_jwt(label, { sub = "tool" })), pair.alg)
          assert.is_true(verdict.ok, pair.alg .. ": " .. tostring(verdict.error))
        end
      end
    end)

    it("generates the startup sets once, logging Hydra's line, and nothing on a second start", function()
      local sets = { { set = "suite.id-token", alg = "ES256" }, { set = "suite.access-token", alg = "ES512" } }
      local lines = {}
      local function logger(_, message) lines[#lines + 1] = message end
      local first = assert(open({ startup = true, startup_sets = sets, logger = logger }))
      for _, entry in ipairs(sets) do
        assert.equals(entry.alg, assert(first:key_set(entry.set)).keys[1].alg)
      end
      first:close()
      lines = without_unrecorded(lines, true)
      assert.same({ "Hardware Security Module is configured.",
        "JSON Web Key Set 'suite.id-token' doesn't exist yet, generating new key pair...",
        "JSON Web Key Set 'suite.access-token' doesn't exist yet, generating new key pair..." }, lines)
      lines = {}
      local second = assert(open({ startup = true, startup_sets = sets, logger = logger }))
      assert.equals(1, #assert(second:key_set("suite.id-token")).keys)
      second:close()
      assert.same({ "Hardware Security Module is configured." }, without_unrecorded(lines, true))
    end)

    it("lists a set's keys and records their states on the token, where another process reads them", function()
      local set = "suite-listing"
      logged = {}
      assert(engine:generate(set, "ES256", { kid = "first" }))
      assert.equals(1, #assert(engine:key_set(set)).keys) -- a lone key: current, recorded
      assert(engine:generate(set, "ES256", { kid = "second" }))
      local kids = {}
      for _, jwk in ipairs(assert(engine:reload(set)).keys) do kids[#kids + 1] = jwk.kid end
      table.sort(kids)
      assert.same({ "first", "second" }, kids)
      if implementation.state_objects == false then
        -- nothing can record which key signs: the set of two refuses by
        -- name (fail closed), and so does every write that would record it
        without_unrecorded(logged)
        local _, err, code = engine:sign(set, "x")
        assert.equals("ERR_KEY_STATES_UNSUPPORTED", code, err)
        assert.matches("keeps no data objects", err, 1, true)
        _, err, code = engine:activate(set, "first")
        assert.equals("ERR_KEY_STATES_UNSUPPORTED", code, err)
        _, err, code = engine:rotate(set)
        assert.equals("ERR_KEY_STATES_UNSUPPORTED", code, err)
        local out, cerr, status = cli.keys(env, "activate " .. set .. " first")
        assert.no.equals(0, status, out)
        assert.matches("keeps no data objects", tostring(out) .. tostring(cerr), 1, true)
        -- a set of one key goes on signing
        assert(engine:generate(set .. "-one", "ES256", { kid = "only" }))
        assert.equals("only", select(2, assert(engine:verify(set .. "-one",
          assert(engine:sign(set .. "-one", "x"))))).kid)
        return
      end
      -- the first key signs; the second is next until prepublish
      local _, header = assert(engine:verify(set, assert(engine:sign(set, "x"))))
      assert.equals("first", header.kid)
      without_unrecorded(logged)
      local ours = {}
      for _, key in ipairs(assert(engine:key_states(set))) do ours[key.kid] = key.state end
      assert.same({ first = "current", second = "next" }, ours)
      local out, err, status = cli.keys(env, "keys " .. set)
      assert.equals(0, status, err)
      local theirs = {}
      for line in out:gmatch("[^\n]+") do
        local key = cjson.decode(line)
        theirs[key.kid] = key.state
      end
      assert.same(ours, theirs)
      if token.tool then
        local listing = assert(token.tool("--login --list-objects --type data"))
        assert.matches("label:%s+'" .. set:gsub("%-", "%%-") .. "'", listing)
      end
    end)

    it("retires a key on the key itself (CKA_SIGN false): never signs, not published, the token refuses it", function()
      local set = "suite-retired"
      assert(engine:generate(set, "ES256", { kid = "gone" }))
      assert(engine:generate(set, "ES256", { kid = "kept" }))
      local manager = assert(require("jwkengine.hsm").open(
        assert(require("jwkengine.config").load({ environment = env })).hsm))
      local ok, err, code = manager:mark_retired(set, "gone", true)
      if implementation.sign_mark then
        assert.is_nil(ok)
        assert.equals("ERR_KEY_MARK_REFUSED", code, err)
        assert.matches(implementation.sign_mark, err, 1, true)
        manager:close()
        return
      end
      assert.is_true(ok, err)
      local entry = assert(manager:load(set, true))
      assert.is_true(entry.by_kid.gone.retired_mark)
      assert.equals("ERR_KEY_STATE", select(3, manager:sign(set, "x", { kid = "gone" })))
      -- the token's own refusal, to a key object loaded before the mark
      assert(manager:mark_retired(set, "gone", false))
      local before = assert(manager:load(set, true)).by_kid.gone.object
      assert(manager:mark_retired(set, "gone", true))
      local _, message, refusal = before:sign_compact("e30", "x", "ES256")
      assert.equals("ERR_KEY_STATE", refusal, message)
      assert.matches("is retired on the token", message, 1, true)
      local kids = {}
      for _, jwk in ipairs(assert(engine:reload(set)).keys) do kids[#kids + 1] = jwk.kid end
      assert.same({ "kept" }, kids)
      if token.tool then
        local listing = assert(token.tool("--login --list-objects --type privkey"))
        local usage = listing:match("label:%s+" .. set:gsub("%-", "%%-") .. "\n%s+ID:%s+676f6e65\n%s+Usage:%s+([^\n]*)")
        assert.is_string(usage, listing)
        assert.not_matches("sign", usage)
      end
      assert(manager:mark_retired(set, "gone", false))
      assert(manager:sign(set, "x", { kid = "gone" }))
      manager:close()
    end)

    it("reads keys another process added when the set is reloaded", function()
      local set = "suite-reload"
      assert(engine:generate(set, "ES256", { kid = "ours" }))
      assert.equals(1, #assert(engine:key_set(set)).keys)
      local out, err, status = cli.keys(env, "create " .. set .. " ES256 --kid theirs")
      assert.equals(0, status, err)
      local kids = {}
      for _, jwk in ipairs(assert(engine:reload(set)).keys) do kids[#kids + 1] = jwk.kid end
      table.sort(kids)
      assert.same({ "ours", "theirs" }, kids)
      -- and the other process reads ours back as the token holds it
      out, err, status = cli.keys(env, "get " .. set)
      assert.equals(0, status, err)
      local theirs = {}
      for _, jwk in ipairs(cjson.decode(out).keys) do theirs[jwk.kid] = jwk end
      local ours = assert(engine:key_set(set)).keys
      for _, jwk in ipairs(ours) do assert.same(jwk, theirs[jwk.kid]) end
    end)
  end)
end

return M

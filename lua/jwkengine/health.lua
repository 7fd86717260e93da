-- engine:health(): whether the engine can sign right now, checked the way
-- a client would find out: the token is still in its slot
-- (engine:token_check), and
-- a probe signature with each set's current key verifies within a time
-- budget. A caller that answers health checks caches the result (the
-- nginx integration does): each call signs once per set.
local clock = require("jwkengine.metrics").clock
local jws = require("jwkengine.jws")
local E = require("jwkengine.errors").E

local M = {}

M.PROBE_PAYLOAD = "jwkengine health probe"

-- The failing part, named for an operator, of a failure code.
local function part_of(code)
  if code == E.ERR_LOGIN_REFUSED or (type(code) == "string" and code:find("^CKR_PIN")) or
      code == "CKR_USER_NOT_LOGGED_IN" then
    return "login refused"
  end
  if code == "CKR_TOKEN_NOT_PRESENT" or code == "CKR_DEVICE_REMOVED" or code == E.ERR_TOKEN_NOT_FOUND then
    return "token not present"
  end
  return nil
end
M.part_of = part_of

-- The probe as a compact JWS, signed by the set's current key taken out
-- with engine:signing_key: a probe is not a signature the engine made for
-- a client, so it stays out of jwkengine_signatures_total and the signing
-- histogram (it has its own count, jwkengine_health_probes_total, in nginx).
-- A recovery the probe needed is logged with the engine's next read of a
-- set or signature (nginx re-reads its sets every jwks.refresh seconds).
local function sign_probe(engine, set)
  local key, err, code = engine:signing_key(set)
  if not key then return nil, err, code end
  local alg = key:alg()
  return key:sign_compact(jws.encode_header(alg, key:kid()), M.PROBE_PAYLOAD, alg)
end

-- Signs the probe with the set's current key and verifies it.
local function probe(engine, set, budget)
  local started = clock()
  local token, err, code = sign_probe(engine, set)
  local seconds = clock() - started
  local result = { ok = false, seconds = seconds }
  if not token then
    result.error = part_of(code) or string.format("probe failed (%s)", tostring(code))
    return result
  end
  local payload, header = engine:verify(set, token)
  if payload ~= M.PROBE_PAYLOAD then
    result.error = "probe did not verify"
    return result
  end
  result.kid, result.alg = header.kid, header.alg
  if seconds > budget then
    result.error = string.format("probe too slow (%.3f s, budget %.3f s)", seconds, budget)
    return result
  end
  result.ok = true
  return result
end

-- With several HSM tokens (hsm.tokens): "degraded" while the probes pass
-- (a token signs) but a token is down or was never reached; checks.tokens
-- lists each (engine:stats().hsm_tokens).
local function tokens_degraded(engine, result)
  local stats = engine:stats() -- nil without an HSM
  if not stats or #stats.hsm_tokens < 2 then return end
  result.checks.tokens = stats.hsm_tokens
  local signer, away
  for _, token in ipairs(stats.hsm_tokens) do
    if token.signing then signer = token end
    if token.state ~= "up" and not away then away = token end
  end
  if away and signer and result.status == "ok" then
    result.status = "degraded"
    result.failure = string.format("HSM token %d (%s) is %s; token %d (%s) signs", away.index, away.label,
      away.state, signer.index, signer.label)
  end
end

-- { status = "ok" | "degraded" | "unavailable", failure = the first
-- failing part (nil when ok), checks = { engine = "ok", token = "ok" |
-- "not used" | why, sets = { [set] = { ok, kid, alg, seconds, error } },
-- tokens = (several tokens) engine:stats().hsm_tokens } }.
-- sets: the set names to probe; budget: seconds a probe may take.
function M.check(engine, sets, budget)
  local checks = { engine = "ok", sets = {} }
  local result = { status = "ok", checks = checks }
  local token_ok, token_err = engine:token_check()
  checks.token = token_ok or token_err
  if not token_ok then
    result.status, result.failure = "unavailable", token_err
    return result
  end
  for _, set in ipairs(sets) do
    local r = probe(engine, set, budget)
    checks.sets[set] = r
    if not r.ok and not result.failure then
      result.status, result.failure = "unavailable", string.format("%s: %s", set, r.error)
    end
  end
  tokens_degraded(engine, result)
  return result
end

return M

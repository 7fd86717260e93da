-- verify-after-sign cost (BENCHMARKS.md): ALG=RS256|ES256 LABEL=token, N signatures per setting; SoftHSM, PIN 1234
local jwkengine = require("jwkengine")
local N = tonumber(arg[1]) or 200
local dir = os.getenv("SOFTHSM2_CONF")
local results = {}
for _, alg in ipairs({ (os.getenv("ALG")) }) do
  for _, verify in ipairs({ false, true }) do
    local e = assert(jwkengine.open({ environment = { HSM_ENABLED = "true", HSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so",
      HSM_TOKEN_LABEL = os.getenv("LABEL"), HSM_PIN = "1234" }, startup = false, logger = false,
      hsm = { verify_after_sign = verify, min_rsa_bits = 2048 } }))
    if not e:key_set("b-" .. alg) then assert(e:generate("b-" .. alg, alg, { kid = "b-" .. alg })) end
    assert(e:sign("b-" .. alg, "warm"))
    local t = os.clock()
    for i = 1, N do assert(e:sign("b-" .. alg, "payload " .. i)) end
    local cpu = os.clock() - t
    print(string.format("%s verify_after_sign=%s: %.1f us CPU per signature (%d signatures)", alg, tostring(verify), cpu / N * 1e6, N))
    e:close()
  end
end

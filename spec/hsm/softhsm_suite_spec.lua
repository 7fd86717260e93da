-- The HSM part of the suite (spec/helpers/hsm_suite.lua) on SoftHSM 2.6,
-- loaded directly; pkcs11-tool is the independent tool.
local hsm_suite = require("helpers.hsm_suite")
local softhsm = require("helpers.softhsm")

hsm_suite.define({
  name = "the HSM suite on SoftHSM (direct)",
  rsa_bits = 2048,
  lacks = {},
  new_token = function()
    local token = softhsm.new_token("suite")
    return { library = softhsm.LIBRARY, label = token.label, pin = token.pin,
      environment = { HSM_MIN_RSA_BITS = "2048" },
      tool = function(args) return softhsm.pkcs11_tool(token, args) end }
  end,
}, _ENV)

-- Independent verification with python3-jwcrypto.
local cjson = require("cjson")
local softhsm = require("helpers.softhsm")

local M = {}

-- true when jwcrypto accepts token under the JWK Set (a table or JSON).
function M.jwcrypto(jwks, token)
  local keys_path, token_path = os.tmpname(), os.tmpname()
  softhsm.write_file(keys_path, type(jwks) == "string" and jwks or cjson.encode(jwks))
  softhsm.write_file(token_path, token)
  local out, ok = softhsm.run(string.format("/usr/bin/python3 spec/helpers/jwcrypto_verify.py %s %s",
    keys_path, token_path))
  os.remove(keys_path)
  os.remove(token_path)
  return ok, out
end

return M

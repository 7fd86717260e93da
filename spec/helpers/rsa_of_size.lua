-- A key of exactly `bits` bits whose members agree although p and q are
-- not prime: { pem = ..., jwk = ... }, made by spec/helpers/rsa_of_size.py
-- (no library makes such a key, of such a size, on request).
local cjson = require("cjson")
local softhsm = require("helpers.softhsm")

return function(bits)
  local out, ok = softhsm.run("/usr/bin/python3 spec/helpers/rsa_of_size.py " .. bits)
  assert(ok, out)
  return cjson.decode(out)
end

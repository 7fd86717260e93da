-- Seals and opens key rows in Hydra's format with the independent
-- implementation in hydra_aead.py (python3-cryptography).
local softhsm = require("helpers.softhsm")

local M = {}

-- mode: "seal" (input is plaintext) or "open" (input is a sealed row);
-- returns the output, or raises with the helper's message.
function M.run(mode, secret, input)
  local path = os.tmpname()
  softhsm.write_file(path, input)
  local out, ok = softhsm.run(string.format("/usr/bin/python3 spec/helpers/hydra_aead.py %s %s < %s",
    mode, softhsm.quote(secret), path))
  os.remove(path)
  assert(ok, out)
  return out
end

return M

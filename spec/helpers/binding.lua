-- What specs and helpers that are not about the binding borrow from it, in
-- one place: making and importing keys (the public API has no key
-- generation outside an engine), looking at stored bytes (sealed rows,
-- their marks) and at a token's objects beside an engine (load_module),
-- the algorithm table, uuids, the file lock and a monotonic clock. A spec
-- about the binding itself requires jwkengine.core and says so in its
-- first line.
local core = require("jwkengine.core")

return {
  generate_software_key = core.generate_software_key,
  import_pem = core.import_pem,
  import_jwk = core.import_jwk,
  public_key = core.public_key,
  uuid = core.uuid,
  aes_gcm_open = core.aes_gcm_open,
  sealed_key_mark = core.sealed_key_mark,
  try_lock_file = core.try_lock_file,
  monotonic = core.monotonic,
  pause = core.pause,
  load_module = core.load_module,
  algorithms = core.algorithms,
  alg_info = core.alg_info,
  b64url_encode = core.b64url_encode,
  b64url_decode = core.b64url_decode,
}

-- Mozilla's NSS softokn (libsoftokn3.so from Debian's libnss3) as a
-- PKCS#11 token for the specs: a throwaway database, the initialization
-- arguments it loads with (CK_C_INITIALIZE_ARGS.pReserved), and pkcs11-tool
-- on it.
--
-- pkcs11-tool cannot pass init args; p11-kit's proxy module can
-- (x-init-reserved in a module config), but p11-kit reads a user's module
-- configs only for a user other than root: as root the tool runs as
-- `nobody` (setpriv), with HOME pointing at the config and the database
-- handed to that user.
--
-- NSS softokn is initialized with the configdir of the first C_Initialize;
-- the engine finalizes a module when its last engine closes, and the next
-- open initializes it again with its own configdir.
local softhsm = require("helpers.softhsm")

local M = {}

M.SOFTOKN = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
M.P11_KIT_PROXY = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"
M.PASSWORD = "nss-db-password-1"
M.LABEL = "NSS Certificate DB"

function M.init_args(dir)
  return string.format("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", dir)
end

-- A fresh NSS database in a temp folder, with what pkcs11-tool needs.
-- Returns its folder and tool(args) -> output, success.
function M.new_database()
  local dir = softhsm.run("mktemp -d /tmp/jwkengine-nss.XXXXXX"):gsub("%s+$", "")
  softhsm.write_file(dir .. "/pw", M.PASSWORD .. "\n")
  local out, ok = softhsm.run(string.format("certutil -N -d sql:%s -f %s/pw", dir, dir))
  assert(ok, "certutil -N: " .. out)
  assert(os.execute("mkdir -p " .. dir .. "/home/.config/pkcs11/modules"))
  softhsm.write_file(dir .. "/home/.config/pkcs11/modules/nss-softokn.module",
    string.format("module: %s\nx-init-reserved: %s\n", M.SOFTOKN, M.init_args(dir)))
  local as_user = ""
  if softhsm.run("id -u"):match("^0") then
    assert(os.execute("chown -R nobody:nogroup " .. dir))
    as_user = "setpriv --reuid=nobody --regid=nogroup --clear-groups "
  end
  local tool = string.format("%senv HOME=%s/home pkcs11-tool --module %s --token-label %s --pin %s",
    as_user, dir, M.P11_KIT_PROXY, softhsm.quote(M.LABEL), M.PASSWORD)
  return dir, function(args) return softhsm.run(tool .. " " .. args) end
end

return M

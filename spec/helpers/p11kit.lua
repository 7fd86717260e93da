-- p11-kit's remoting as a stand-in for a network HSM: `p11-kit server`
-- exports one throwaway SoftHSM token on a Unix socket, and the engine
-- loads p11-kit's client module, which forwards every call there.
--
--   local server = p11kit.new({ label = "remote" })  -- a new token, served
--   jwkengine.open({ environment = server:environment() })
--   server:stop()     -- the server and its per-connection p11-kit-remote
--   server:start()    -- again, on the same socket
--   server:dispose()  -- stopped, socket folder removed
--
-- The server runs in a session of its own (setsid), and the p11-kit-remote
-- it forks per connection stays in that process group: stopping kills the
-- group, so the remote side goes away at once, as a crashed HSM would.
-- p11-kit ignores per-user configuration as root: everything is given on
-- the command line and in the environment. The client module reads
-- P11_KIT_SERVER_ADDRESS from the environment of the process that loads
-- it, and Lua cannot set that: scripts/test.sh exports one socket path for
-- the specs' own process, used by the first server made; other servers get
-- a socket of their own, for child processes (shell_environment).
local softhsm = require "helpers.softhsm"

local M = {}

M.CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"

local Server = {}
Server.__index = Server

-- opts.label: the token's label prefix; opts.pin: its PIN (softhsm.PIN).
function M.new(opts)
  opts = opts or {}
  local token = softhsm.new_token(opts.label or "remote", opts.pin)
  local dir = softhsm.run("mktemp -d"):gsub("%s+$", "")
  local exported = (os.getenv("P11_KIT_SERVER_ADDRESS") or ""):match("^unix:path=(.+)$")
  local socket = exported and not M.exported_in_use and exported or dir .. "/pkcs11.sock"
  M.exported_in_use = M.exported_in_use or socket == exported
  local server = setmetatable({ token = token, dir = dir, socket = socket,
    in_process = socket == exported }, Server)
  server:start()
  return server
end

-- The address the client module reads (P11_KIT_SERVER_ADDRESS).
function Server:address()
  return "unix:path=" .. self.socket
end

-- The environment of an engine on the served token, through the client
-- module (see softhsm.environment for the rest).
function Server:environment(extra)
  local env = softhsm.environment(self.token, extra)
  env.HSM_LIBRARY = M.CLIENT
  return env
end

-- Shell assignments for a child process that loads the client module.
function Server:shell_environment()
  return "P11_KIT_SERVER_ADDRESS=" .. softhsm.quote(self:address())
end

local function is_socket(path)
  local ok = os.execute("test -S " .. softhsm.quote(path))
  return ok == true or ok == 0
end

-- Starts the server (again) and waits until its socket answers.
function Server:start()
  assert(not self.pid, "the p11-kit server is already running")
  os.remove(self.socket)
  local out = softhsm.run(string.format(
    "setsid p11-kit server -f -n %s --provider %s %s >%s 2>&1 </dev/null & echo $!",
    softhsm.quote(self.socket), softhsm.quote(softhsm.LIBRARY),
    softhsm.quote("pkcs11:token=" .. self.token.label), softhsm.quote(self.dir .. "/server.log")))
  self.pid = assert(tonumber(out:match("(%d+)")), "p11-kit server did not start: " .. out)
  for _ = 1, 200 do
    if is_socket(self.socket) then return self end
    softhsm.run("sleep 0.05")
  end
  error("p11-kit server did not create its socket: " .. softhsm.read_file(self.dir .. "/server.log"))
end

-- Kills the server and every p11-kit-remote it forked, at once (SIGKILL):
-- the connections break as when a network HSM goes away.
function Server:stop()
  if not self.pid then return self end
  softhsm.run(string.format("kill -s KILL -- -%d", self.pid))
  -- reaped by the shell that started it; wait until the group is gone
  for _ = 1, 200 do
    local _, alive = softhsm.run(string.format("kill -s 0 -- -%d", self.pid))
    if not alive then break end
    softhsm.run("sleep 0.05")
  end
  self.pid = nil
  return self
end

function Server:dispose()
  self:stop()
  if self.in_process then M.exported_in_use = false end
  os.execute("rm -rf " .. softhsm.quote(self.dir))
end

return M

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
-- group, so the remote side goes away at once, as a crashed HSM would. The
-- client module then writes to a dead socket: the engine keeps the SIGPIPE
-- that raises from ending the process (core/sigpipe_guard.c).
-- p11-kit ignores per-user configuration as root: everything is given on
-- the command line and in the environment. The client module reads
-- P11_KIT_SERVER_ADDRESS from the environment of the process that loads
-- it, and Lua cannot set that: scripts/test.sh exports one socket path for
-- the specs' own process, used by the first server made; other servers get
-- a socket of their own, for child processes (shell_environment).
local softhsm = require("helpers.softhsm")

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

-- The process group of a process, from /proc (nil when it is gone or a
-- zombie, which no signal reaches any more).
local function live_group(pid)
  local f = io.open(string.format("/proc/%d/stat", pid))
  if not f then return nil end
  local stat = f:read("a")
  f:close()
  -- after the command name in parentheses: state, ppid, pgrp
  local state, pgrp = stat:match("%) (%S) %d+ (%d+)")
  if not state or state == "Z" then return nil end
  return tonumber(pgrp)
end

-- The live processes of a process group: the server and its children.
local function group_members(pgid)
  local out = softhsm.run("ps -e -o pid=,pgid=,stat=")
  local members = {}
  for pid, group, stat in out:gmatch("(%d+)%s+(%d+)%s+(%S+)") do
    if tonumber(group) == pgid and not stat:match("^Z") then members[#members + 1] = tonumber(pid) end
  end
  return members
end

-- Starts the server (again) and waits until its socket answers. The shell
-- that setsid runs writes its own pid, then becomes the server (exec): that
-- pid leads a new session and process group whatever setsid did (it forks
-- when its caller leads a group), so `$!` of the starting shell is never
-- taken for the server.
function Server:start()
  assert(not self.pgid, "the p11-kit server is already running")
  os.remove(self.socket)
  local pid_file = self.dir .. "/server.pid"
  os.remove(pid_file)
  softhsm.run(string.format(
    "setsid sh -c 'echo $$ >%s; exec \"$@\"' p11-kit-server p11-kit server -f -n %s --provider %s %s >%s 2>&1 </dev/null &",
    softhsm.quote(pid_file), softhsm.quote(self.socket), softhsm.quote(softhsm.LIBRARY),
    softhsm.quote("pkcs11:token=" .. self.token.label), softhsm.quote(self.dir .. "/server.log")))
  for _ = 1, 200 do
    local f = io.open(pid_file)
    local pid = f and tonumber(f:read("l") or "")
    if f then f:close() end
    if pid and is_socket(self.socket) then
      -- only a group of its own is ever signalled, never this process's
      assert(live_group(pid) == pid, "the p11-kit server does not lead its own process group")
      assert(pid ~= live_group(M.own_pid()), "the p11-kit server shares this process's group")
      self.pgid = pid
      return self
    end
    softhsm.run("sleep 0.05")
  end
  error("p11-kit server did not create its socket: " .. softhsm.read_file(self.dir .. "/server.log"))
end

-- This process's pid (the parent of the shell a popen starts).
function M.own_pid()
  M.pid = M.pid or tonumber((softhsm.run("echo $PPID"):match("%d+")))
  return M.pid
end

-- Kills the server and every p11-kit-remote it forked, at once (SIGKILL):
-- the connections break as when a network HSM goes away. Waits until no
-- live process is left in the server's group.
function Server:stop()
  if not self.pgid then return self end
  assert(self.pgid ~= live_group(M.own_pid()), "refusing to signal this process's own group")
  softhsm.run(string.format("kill -s KILL -- -%d", self.pgid))
  local left
  for _ = 1, 200 do
    left = group_members(self.pgid)
    if #left == 0 then
      self.pgid = nil
      return self
    end
    softhsm.run("sleep 0.05")
  end
  error(string.format("the p11-kit server's group %d still has live processes: %s", self.pgid,
    table.concat(left, " ")))
end

function Server:dispose()
  self:stop()
  if self.in_process then M.exported_in_use = false end
  os.execute("rm -rf " .. softhsm.quote(self.dir))
end

return M

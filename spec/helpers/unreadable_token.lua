-- A SoftHSM token its user cannot read, as a root-owned token meets an
-- nginx worker running as `nobody`: a SoftHSM configuration of its own
-- whose folders anyone may enter, holding a token initialized by root
-- (softhsm2-util makes the token's own folder 0700 and its files 0600).
-- SoftHSM, run as nobody, then shows one slot with an empty, uninitialized
-- token instead of the real one. Needs root (the specs run as root) and
-- runuser.
local softhsm = require("helpers.softhsm")

local M = {}

M.USER = "nobody"
M.GROUP = "nogroup" -- Debian's group of nobody (nginx would look for a group "nobody")
M.PIN = softhsm.PIN

local q = softhsm.quote

-- Whether this process can run commands as another user (root).
local function available()
  local out = softhsm.run("id -u")
  return out:match("^0%s") ~= nil and softhsm.run("command -v runuser") ~= ""
end

-- { dir, conf, label }: the folder (removed by M.remove), its
-- softhsm2.conf and the token's label; or nil after calling skip
-- (busted's pending, which a helper cannot reach) when this process
-- cannot run another as M.USER.
function M.new(label, skip)
  if not available() then
    skip("needs root and runuser to run a process as " .. M.USER)
    return nil
  end
  local out, ok = softhsm.run("mktemp -d /tmp/jwkengine-unreadable.XXXXXX")
  assert(ok, out)
  local dir = out:gsub("%s+$", "")
  assert(os.execute("mkdir -p " .. q(dir .. "/tokens") .. " && chmod 755 " .. q(dir) .. " " .. q(dir .. "/tokens")))
  local conf = dir .. "/softhsm2.conf"
  softhsm.write_file(conf, "directories.tokendir = " .. dir .. "/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
  assert(os.execute("chmod 644 " .. q(conf)))
  out, ok = softhsm.run(string.format("SOFTHSM2_CONF=%s softhsm2-util --init-token --free --label %s " ..
    "--so-pin %s --pin %s", q(conf), q(label), softhsm.SO_PIN, M.PIN))
  assert(ok, "softhsm2-util failed: " .. out)
  return { dir = dir, conf = conf, label = label }
end

-- Runs a Lua chunk with lua5.4 as M.USER (as_root: as root instead, the
-- control), with this checkout's paths and SOFTHSM2_CONF; returns its
-- output and success. The chunk is written to a file M.USER can read.
function M.run_lua(token, chunk, as_root)
  local root = softhsm.run("pwd"):gsub("%s+$", "")
  local build = softhsm.BUILD:sub(1, 1) == "/" and softhsm.BUILD or root .. "/" .. softhsm.BUILD
  local path = token.dir .. "/chunk.lua"
  softhsm.write_file(path, string.format("package.path = %q .. package.path\npackage.cpath = %q .. package.cpath\n",
    root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;", build .. "/lib/?.so;") .. chunk)
  assert(os.execute("chmod 644 " .. q(path)))
  -- the sanitizer pass's settings (softhsm.LUA preloads its runtime) go along
  local keep = {}
  for _, name in ipairs({ "ASAN_OPTIONS", "UBSAN_OPTIONS" }) do
    if os.getenv(name) then keep[#keep + 1] = q(name .. "=" .. os.getenv(name)) end
  end
  return softhsm.run(string.format("%s env -i PATH=/usr/bin:/bin SOFTHSM2_CONF=%s %s %s %s",
    as_root and "" or ("runuser -u " .. M.USER .. " --"), q(token.conf), table.concat(keep, " "), softhsm.LUA,
    q(path)))
end

function M.remove(token)
  if token and token.dir:match("^/tmp/jwkengine%-unreadable%.") then os.execute("rm -rf " .. q(token.dir)) end
end

return M

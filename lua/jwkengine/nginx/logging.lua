-- Where the nginx integration and its engine log: nginx's error log (from a
-- worker-thread VM, which has no ngx.log, through stderr).
local log = require("jwkengine.log")

local M = {}

local LEVELS -- engine level -> ngx level, filled lazily (ngx.* constants)

-- Writes one line with ngx.log (which worker-thread VMs do not have).
function M.write(level, message)
  if not LEVELS then
    LEVELS = { debug = ngx.DEBUG, info = ngx.NOTICE, notice = ngx.NOTICE, warn = ngx.WARN,
      warning = ngx.WARN, error = ngx.ERR, err = ngx.ERR }
  end
  ngx.log(LEVELS[level] or ngx.NOTICE, "jwkengine: ", message)
end

-- Every line goes through log.new, which escapes newlines and other
-- control characters.
M.logger = log.new(M.write)

-- ngx.log does not exist in worker-thread VMs; nginx points stderr at its
-- error log, so a line shaped like nginx's own goes there.
local NGX_LEVEL_NAMES = { debug = "debug", info = "notice", notice = "notice", warn = "warn",
  warning = "warn", error = "error", err = "error" }
local getpid
M.thread_logger = log.new(function(level, message)
  if pcall(M.write, level, message) then return end
  if getpid == nil then
    local ok, ffi = pcall(require, "ffi")
    getpid = false
    if ok then
      pcall(ffi.cdef, "int getpid(void);")
      if pcall(function() return ffi.C.getpid end) then
        getpid = function() return ffi.C.getpid() end
      end
    end
  end
  io.stderr:write(string.format("%s [%s] %s#thread: jwkengine (worker thread): %s\n",
    os.date("%Y/%m/%d %H:%M:%S"), NGX_LEVEL_NAMES[level] or "notice",
    getpid and tostring(getpid()) or "?", message))
end)

return M

-- Where the nginx integration and its engine log: nginx's error log.
local log = require "jwkengine.log"

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

return M

-- Small helpers shared by the Lua modules. Written for Lua 5.1 through 5.4
-- (LuaJIT in OpenResty runs the same files).
local M = {}

M.unpack = table.unpack or unpack

-- Turns a failure into the `nil, message, code` triple every public
-- function returns. The code is stable (ERR_* or a CKR_* name); the message
-- is for people.
function M.fail(code, fmt, ...)
  local message = select("#", ...) > 0 and string.format(fmt, ...) or fmt
  return nil, message, code
end

-- Whether the list holds the value.
function M.contains(list, value)
  for _, v in ipairs(list) do
    if v == value then return true end
  end
  return false
end

function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

-- s:sub(i, j) without the whitespace (Lua's %s) at either end. A byte loop
-- from each end: linear in the length, where a pattern such as
-- "^%s*(.-)%s*$" or "%s+$" backtracks into quadratic time on a long run of
-- spaces (and input from outside may be nothing else).
local SPACE = { [9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true }
function M.trim(s, i, j)
  i, j = i or 1, j or #s
  local byte = string.byte
  while i <= j and SPACE[byte(s, i)] do i = i + 1 end
  while j >= i and SPACE[byte(s, j)] do j = j - 1 end
  return s:sub(i, j)
end

function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data = f:read("*a")
  f:close()
  return data
end

return M

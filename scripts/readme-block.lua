-- A block of the README made by a script (readme-toc.lua, readme-config.lua)
-- between two marker comments: finding it, replacing it, and the command
-- line both scripts share.
local M = {}

-- text with the block between begin_marker and end_marker replaced by
-- block (markers included), or nil, message when the markers are not there
-- once each, in order.
function M.rewrite(text, begin_marker, end_marker, block)
  local first = text:find(begin_marker, 1, true)
  local last = text:find(end_marker, 1, true)
  if not first or not last or last < first or text:find(begin_marker, first + 1, true) then
    return nil, "the README needs the two marker lines once each:\n" .. begin_marker .. "\n" .. end_marker
  end
  return text:sub(1, first - 1) .. block .. text:sub(last + #end_marker)
end

-- Run as a script: rewrites path (README.md) with rewrite(text), saying so
-- as `name: path: what rewritten`.
function M.main(name, path, rewrite, what)
  path = path or "README.md"
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  local new, err = rewrite(text)
  if not new then
    io.stderr:write(name, ": ", path, ": ", err, "\n")
    os.exit(1)
  end
  if new ~= text then
    f = assert(io.open(path, "wb"))
    f:write(new)
    f:close()
    print(name .. ": " .. path .. ": " .. what .. " rewritten")
  end
end

return M

-- A block of a text file made by a script, between two marker lines (the
-- README's table of contents, its table of error codes): the scripts that
-- make one rewrite it in place, and their specs compare it.
local M = {}

-- text with the block between begin_marker and end_marker (markers
-- included) replaced by block, or nil, message when the markers are not
-- there once each, in order.
function M.replace(text, begin_marker, end_marker, block)
  local first = text:find(begin_marker, 1, true)
  local last = text:find(end_marker, 1, true)
  if not first or not last or last < first or text:find(begin_marker, first + 1, true) then
    return nil, "the file needs the two marker lines once each:\n" .. begin_marker .. "\n" .. end_marker
  end
  return text:sub(1, first - 1) .. block .. text:sub(last + #end_marker)
end

-- Rewrites the file at path with make(text), which returns the new text or
-- nil, message; exits 1 with the message (named by script) on failure.
function M.rewrite_file(script, path, make)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  local new, err = make(text)
  if not new then
    io.stderr:write(script, ": ", path, ": ", err, "\n")
    os.exit(1)
  end
  if new == text then return false end
  f = assert(io.open(path, "wb"))
  f:write(new)
  f:close()
  return true
end

return M

-- The README's table of contents, made from its `##` headings: rewrites
-- the block between the two marker comments in place, so that a merge
-- that adds or renames a section needs only
--   lua5.4 scripts/readme-toc.lua [README.md]
-- spec/project/readme_toc_spec.lua fails while the block is not what this makes.
-- Headings inside fenced code blocks are not headings; anchors are the ones
-- GitHub gives (lowercase, punctuation dropped, spaces to "-", "-1", "-2"
-- for repeats).
local M = {}

-- beside this script when run as one; from the top of the tree for the spec
local script = arg and arg[0] and arg[0]:match("readme%-toc%.lua$") and arg[0]
local marked_block = dofile((script and (script:match("^(.*)/[^/]*$") or ".") or "scripts") .. "/lib/marked_block.lua")

M.BEGIN = "<!-- toc: made by scripts/readme-toc.lua; rerun it after editing headings -->"
M.END = "<!-- /toc -->"

-- Every "## " heading of text outside fences, in order.
function M.headings(text)
  local headings, fence = {}, nil
  for line in (text .. "\n"):gmatch("(.-)\n") do
    local marker = line:match("^%s*(```+)") or line:match("^%s*(~~~+)")
    if marker then
      if not fence then fence = marker
      elseif marker:sub(1, 1) == fence:sub(1, 1) and #marker >= #fence then fence = nil end
    elseif not fence then
      local title = line:match("^##%s+(.-)%s*#*%s*$")
      if title and not line:match("^###") then headings[#headings + 1] = title end
    end
  end
  return headings
end

-- GitHub's anchor of a heading (markdown marks dropped from the text).
function M.anchor(title)
  local text = title:gsub("`", ""):gsub("%*", ""):gsub("%[(.-)%]%b()", "%1"):lower()
  return (text:gsub("[^%w%- _]", ""):gsub(" ", "-"))
end

-- The block (markers included) for these headings.
function M.block(headings)
  local lines, seen = { M.BEGIN }, {}
  for _, title in ipairs(headings) do
    local anchor = M.anchor(title)
    local n = seen[anchor]
    seen[anchor] = (n or 0) + 1
    if n then anchor = anchor .. "-" .. n end
    lines[#lines + 1] = string.format("- [%s](#%s)", title:gsub("`", ""), anchor)
  end
  lines[#lines + 1] = M.END
  return table.concat(lines, "\n")
end

function M.rewrite(text)
  return marked_block.replace(text, M.BEGIN, M.END, M.block(M.headings(text)))
end

-- loadfile("scripts/readme-toc.lua")("module") returns M (the spec);
-- run as a script, it rewrites the file.
if ... ~= "module" then
  local path = ... or "README.md"
  if marked_block.rewrite_file("readme-toc.lua", path, M.rewrite) then
    print("readme-toc.lua: " .. path .. ": table of contents rewritten")
  end
end

return M

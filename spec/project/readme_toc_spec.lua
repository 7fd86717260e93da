-- The README's table of contents lists every `##` heading, in order, with
-- the anchor GitHub gives it, so later edits keep it true: when a heading
-- is added or renamed, rerun `lua5.4 scripts/readme-toc.lua`.
local toc = assert(loadfile("scripts/readme-toc.lua"))("module")

local function read(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

describe("the README's table of contents", function()
  local readme = read("README.md")

  it("lists every ## heading outside code blocks, in order, and nothing else", function()
    -- the headings, found here without the generator's help
    local headings, in_fence = {}, false
    for line in readme:gmatch("[^\n]*") do
      if line:match("^```") then in_fence = not in_fence
      elseif not in_fence and line:match("^## ") then headings[#headings + 1] = line:sub(4) end
    end
    local first = assert(readme:find(toc.BEGIN, 1, true), "no table of contents marker in README.md")
    local last = assert(readme:find(toc.END, first, true), "the table of contents has no end marker")
    local listed = {}
    for title, anchor in readme:sub(first, last):gmatch("\n%- %[(.-)%]%(#(.-)%)") do
      listed[#listed + 1] = title
      assert.equals(toc.anchor(title), anchor)
    end
    assert.is_true(#headings > 5)
    assert.same(headings, listed, "rerun: lua5.4 scripts/readme-toc.lua")
  end)

  it("is what scripts/readme-toc.lua makes", function()
    assert.equals(readme, (toc.rewrite(readme)), "rerun: lua5.4 scripts/readme-toc.lua")
  end)

  it("generator: skips fenced code, gives GitHub's anchors, numbers repeats, needs both markers", function()
    local text = table.concat({ "# Title", toc.BEGIN, "- stale", toc.END, "## One", "```sh", "## not a heading",
      "```", "### Sub", "## OpenResty / nginx", "## The PKCS#11 layer", "## One", "" }, "\n")
    local rewritten = assert(toc.rewrite(text))
    assert.matches(table.concat({ toc.BEGIN, "- [One](#one)", "- [OpenResty / nginx](#openresty--nginx)",
      "- [The PKCS#11 layer](#the-pkcs11-layer)", "- [One](#one-1)", toc.END }, "\n"), rewritten, 1, true)
    assert.is_nil(rewritten:find("stale", 1, true))
    assert.equals(rewritten, toc.rewrite(rewritten))
    local ok, err = toc.rewrite("## One\n")
    assert.is_nil(ok)
    assert.matches("marker", err)
  end)
end)

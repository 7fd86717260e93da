-- The error-code registry (jwkengine.errors) against what the code uses and
-- what the README documents: a code used but not registered, or registered
-- but never used, fails here; so do a literal code where the registry's
-- constant belongs, and a README table or C header that is not what
-- scripts/gen-error-codes.lua makes from the registry.
local errors = require("jwkengine.errors")
local util = require("jwkengine.util")
local gen = assert(loadfile("scripts/gen-error-codes.lua"))("module")

local HEADER = "core/error_codes.h"

local function lines_of(command)
  local found = {}
  local listing = assert(io.popen(command))
  for line in listing:lines() do found[#found + 1] = line end
  listing:close()
  return found
end

local function read(path)
  return assert(util.read_file(path))
end

-- Codes the code uses: E.ERR_X in Lua, JWKE_ERR_X in C, and any literal
-- left ("ERR_X": specs aside, the contract they check). OpenSSL's ERR_*
-- macros (ERR_GET_LIB) are neither.
local function codes_in_code()
  local found = {}
  local grep = "grep -rhoE '(E\\.|JWKE_)ERR_[A-Z0-9_]+|\"ERR_[A-Z0-9_]+\"' lua core scripts"
    .. " --exclude=errors.lua --exclude=error_codes.h"
  for _, hit in ipairs(lines_of(grep)) do found[hit:match("ERR_[A-Z0-9_]+")] = true end
  return found
end

-- "file: CODE" of every registered code written out in code (in a string
-- of its own or inside a message, a bare table key) rather than as E.CODE
-- or JWKE_CODE, outside the registry and its header; comments aside.
local function literal_codes()
  local hits = {}
  for _, path in ipairs(lines_of("find lua core scripts -name '*.lua' -o -name '*.c' -o -name '*.h'")) do
    if path ~= "lua/jwkengine/errors.lua" and path ~= HEADER then
      local text = read(path)
      if path:match("%.lua$") then
        text = text:gsub("%-%-%[(=*)%[.-%]%1%]", ""):gsub("%-%-[^\n]*", "")
      else
        text = text:gsub("/%*.-%*/", ""):gsub("//[^\n]*", "")
      end
      for before, name in text:gmatch("([%w_%.]?)(ERR_[%u%d_]+)") do
        if not before:match("[%w_%.]") and rawget(errors.E, name) ~= nil then
          hits[#hits + 1] = path .. ": " .. name
        end
      end
    end
  end
  return hits
end

local function codes_in_readme()
  local found = {}
  for code in read("README.md"):gmatch("ERR_[A-Z0-9_]+") do found[code] = true end
  return found
end

-- The names in `a` that are not in `b`, sorted.
local function missing(a, b)
  local names = {}
  for name in pairs(a) do
    if not b[name] then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

describe("error codes", function()
  local in_code, in_readme = codes_in_code(), codes_in_readme()

  it("finds the codes the project uses", function()
    -- a guard against a grep that silently matches nothing
    assert.is_true(in_code.ERR_CONFIG and in_code.ERR_JWS_INVALID and in_code.ERR_CLOSED
      and in_code.ERR_KEY_DECRYPT or false)
  end)

  it("registers every code the code uses, and only those", function()
    assert.same({}, missing(in_code, errors.codes))
    assert.same({}, missing(errors.codes, in_code))
  end)

  it("writes codes in Lua and C as the registry's names, not as literals", function()
    -- lua5.4 /work/wt/errsweep.lua (the lead's tool) rewrites them
    assert.same({}, literal_codes())
  end)

  it("documents every registered code in the README, and no other", function()
    assert.same({}, missing(errors.codes, in_readme))
    assert.same({}, missing(in_readme, errors.codes))
  end)

  it("has one table of codes in the README, the one the registry makes", function()
    local readme = read("README.md")
    local first = assert(readme:find(gen.BEGIN, 1, true), "no error-code table marker in README.md")
    local last = assert(readme:find(gen.END, first, true), "the error-code table has no end marker")
    assert.equals(gen.table(), readme:sub(first, last + #gen.END - 1),
      "rerun: lua5.4 scripts/gen-error-codes.lua readme")
    -- and no other table row gives a code a meaning of its own
    local rows = 0
    for _ in readme:gmatch("\n| `ERR_[A-Z0-9_]+[^\n]*") do rows = rows + 1 end
    local codes = 0
    for _ in pairs(errors.codes) do codes = codes + 1 end
    assert.equals(codes, rows)
  end)

  it("gives the C core the registry's names in core/error_codes.h", function()
    assert.equals(gen.header(), read(HEADER), "rerun: lua5.4 scripts/gen-error-codes.lua header")
  end)

  it("describes every code in one line", function()
    for code, meaning in pairs(errors.codes) do
      assert.is_string(meaning, code)
      assert.is_true(#meaning > 0 and not meaning:find("\n"), code)
    end
  end)

  it("raises on a name that is not registered, and cannot be changed", function()
    assert.equals("ERR_STORE", errors.E.ERR_STORE)
    assert.has_error(function() return errors.E.ERR_STOER end,
      "jwkengine.errors: no error code ERR_STOER is registered")
    assert.has_error(function() errors.E.ERR_NEW = "ERR_NEW" end)
  end)
end)

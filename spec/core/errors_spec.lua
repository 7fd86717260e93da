-- The error-code registry (jwkengine.errors) against what the code returns
-- and what the README documents: a code returned but not registered or not
-- documented, or registered but never returned, fails here.
local errors = require("jwkengine.errors")

-- Codes in the code are string literals ("ERR_CONFIG" in Lua and C), which
-- leaves out OpenSSL's ERR_* macros (ERR_GET_LIB) that are not ours.
local function codes_in_code()
  local found = {}
  local listing = assert(io.popen("grep -rhoE '\"ERR_[A-Z0-9_]+\"' lua core scripts"))
  for line in listing:lines() do found[line:gsub('"', "")] = true end
  listing:close()
  return found
end

local function codes_in_readme()
  local found = {}
  local f = assert(io.open("README.md", "rb"))
  for code in f:read("a"):gmatch("ERR_[A-Z0-9_]+") do found[code] = true end
  f:close()
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

  it("finds the codes the project returns", function()
    -- a guard against a grep that silently matches nothing
    assert.is_true(in_code.ERR_CONFIG and in_code.ERR_JWS_INVALID and in_code.ERR_CLOSED or false)
  end)

  it("registers every code the code returns, and only those", function()
    assert.same({}, missing(in_code, errors.codes))
    assert.same({}, missing(errors.codes, in_code))
  end)

  it("documents every registered code in the README, and no other", function()
    assert.same({}, missing(errors.codes, in_readme))
    assert.same({}, missing(in_readme, errors.codes))
  end)

  it("describes every code", function()
    for code, meaning in pairs(errors.codes) do
      assert.is_string(errors.codes[code], code)
      assert.is_true(#meaning > 0, code)
    end
  end)
end)

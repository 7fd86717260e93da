-- The fuzzers' seed corpus (spec/fuzz/corpus) is reproducible: spec/fuzz/make_corpus.py
-- writes the very bytes that are committed, so running it never dirties a
-- checkout. Seeds added by hand (regressions) are left alone.
local softhsm = require("helpers.softhsm")
local read_file = require("jwkengine.util").read_file

describe("spec/fuzz/make_corpus.py", function()
  it("writes exactly the committed seeds, the same on every run", function()
    local out = softhsm.run("mktemp -d"):gsub("%s+$", "")
    finally(function() os.execute("rm -rf " .. softhsm.quote(out)) end)
    for _ = 1, 2 do
      local log, ok = softhsm.run("/usr/bin/python3 spec/fuzz/make_corpus.py --out " .. softhsm.quote(out) .. " 2>&1")
      assert(ok, log)
      local listing = softhsm.run("cd " .. softhsm.quote(out) .. " && find . -type f | sort")
      local count = 0
      for path in listing:gmatch("[^\n]+") do
        count = count + 1
        local made = assert(read_file(out .. "/" .. path))
        local committed = read_file("spec/fuzz/corpus/" .. path)
        assert(committed, "make_corpus.py writes " .. path .. ", which is not committed")
        assert(made == committed, "spec/fuzz/corpus/" .. path .. " differs from what make_corpus.py writes")
      end
      assert.is_true(count > 50, "make_corpus.py wrote only " .. count .. " seeds")
    end
  end)
end)

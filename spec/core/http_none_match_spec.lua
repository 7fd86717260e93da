-- jwkengine's If-None-Match test (RFC 9110 13.1.2, jwkengine.http), called
-- directly: behind nginx, the not_modified filter answers 304 from the ETag
-- header first, so a request through nginx cannot tell whether this code works.
local http = require("jwkengine.http")

describe("If-None-Match against the JWK Set's ETag", function()
  local ETAG = '"MZs0ZJxP3y_3kTd5yGmUq0AMkyRcG9TkR3Tn4vyQwHc"'
  local none_match = http.not_modified

  local matching = {
    { "the same strong tag", ETAG },
    { "the same tag, weak (weak comparison)", "W/" .. ETAG },
    { "a list holding it", '"other", ' .. ETAG },
    { "a list holding it weak, without spaces", '"other",W/' .. ETAG .. ',"third"' },
    { "a list with spaces and tabs around it", ' \t"other" ,\t' .. ETAG .. ' \t' },
    { "*", "*" },
    { "* in a list", '"other", *' },
  }
  for _, case in ipairs(matching) do
    it("matches " .. case[1], function()
      assert.is_true(none_match(case[2], ETAG))
    end)
  end

  local different = {
    { "another tag", '"other"' },
    { "another weak tag", 'W/"other"' },
    { "an empty header", "" },
    { "only commas and spaces", " , ,, " },
    { "the tag without its quotes", ETAG:sub(2, -2) },
    { "a prefix of the tag", ETAG:sub(1, -3) .. '"' },
    { "the tag with a character more", ETAG:sub(1, -2) .. 'x"' },
    { "the tag inside another one", '"x' .. ETAG:sub(2) },
    { "a lowercase weak prefix", "w/" .. ETAG },
  }
  for _, case in ipairs(different) do
    it("does not match " .. case[1], function()
      assert.is_false(none_match(case[2], ETAG))
    end)
  end

  it("reads a header sent on several lines (a table of the lines) as one list", function()
    assert.is_true(none_match({ '"other"', "W/" .. ETAG }, ETAG))
    assert.is_false(none_match({ '"other"', '"third"' }, ETAG))
  end)
end)

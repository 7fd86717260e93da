-- The one definition of a valid record set (jwkengine.lifecycle.records):
-- every corruption the issue found is refused by name, never raised on, and
-- nothing a reader refuses can be written.
local records = require("jwkengine.lifecycle.records")
local sql_backend = require("jwkengine.lifecycle.sql_backend")

local GOOD = '{"version":3,"writer":"w","records":{"a":{"state":"current","times":{"current":10,"next":1}}},'
  .. '"policy":{"prepublish":400,"retain":4000}}'

local function refused(text)
  local ok, value, err, code = pcall(records.parse, text)
  assert.is_true(ok, "raised: " .. tostring(value))
  assert.is_nil(value, "accepted: " .. tostring(text))
  assert.equals("ERR_KEY_STATES_CORRUPT", code, err)
  return err
end

describe("key state records", function()
  it("accepts a valid value, with its policy", function()
    local value = assert(records.parse(GOOD))
    assert.equals(3, value.version)
    assert.equals("current", value.records.a.state)
    assert.equals(400, value.policy.prepublish)
    assert.equals(GOOD, value.raw)
  end)

  it("refuses every corruption of the issue's table by name, without raising", function()
    refused('{"version":1e999,"records":{}}')
    refused('{"version":"2","records":{}}')
    refused('{"version":2.5,"records":{}}')
    refused('{"version":0,"records":{}}')
    refused('{"version":9007199254740993,"records":{}}')
    refused('{"version":100000000000000,"records":{}}') -- 15 digits: cjson would write it back as 1e+14
    refused('{"version":2,"records":"x"}')
    refused('{"version":2,"records":[{"state":"current"}]}')
    assert.matches("list", refused('{"version":2,"records":[]}'))
    refused('{"version":2,"records":{"a":{"state":"current"}}}')
    refused('{"version":2,"records":{"a":{"state":"current","times":{}}}}')
    refused('{"version":2,"records":{"a":{"state":"current","times":{"current":"10"}}}}')
    refused('{"version":2,"records":{"a":{"state":"current","times":{"current":1e999}}}}')
    refused('{"version":2,"records":{"a":{"state":"sideways","times":{"sideways":1}}}}')
    refused('{"version":2,"records":{"a":7}}')
    refused(GOOD:sub(1, #GOOD - 9)) -- truncated
    refused('{"version":2,"records":{},"version":3}') -- duplicate member
    refused('[1,2]')
    refused("")
    refused(nil)
    refused('{"version":2,"records":{},"policy":{"prepublish":-1,"retain":1}}')
    refused('{"version":2,"records":{},"policy":{"prepublish":10,"retain":1,"period":5}}')
    refused(string.rep(" ", records.MAX_BYTES + 1) .. "{}")
  end)

  it("bounds the number of records", function()
    local parts = {}
    for i = 1, records.MAX_RECORDS + 1 do
      parts[i] = string.format('"k%d":{"state":"retired","times":{"retired":1}}', i)
    end
    refused('{"version":1,"records":{' .. table.concat(parts, ",") .. '}}')
  end)

  it("reads the version an unreadable value claims, so a reader can stop at a higher one", function()
    assert.equals(7, records.claimed_version('{"version":7,"records":[]}'))
    assert.equals(2, records.claimed_version('{"version":"2","records":{}}'))
    assert.equals(math.huge, records.claimed_version('{"version":1e999,"records":{}}'))
    assert.equals(9, records.claimed_version('{"version":9,"records":{"a":{"sta'))
    assert.is_nil(records.claimed_version('{"recor'))
    assert.is_nil(records.claimed_version(nil))
  end)

  it("encodes only what a reader accepts", function()
    local _, _, code = records.encode({ version = 1 / 0, records = {} })
    assert.equals("ERR_KEY_STATES_CORRUPT", code)
    _, _, code = records.encode({ version = 2, records = { a = { state = "next", times = {} } } })
    assert.equals("ERR_KEY_STATES_CORRUPT", code)
    assert.is_nil(records.encode({ version = records.MAX_VERSION + 1, records = {} }))
    local top = assert(records.parse(assert(records.encode({ version = records.MAX_VERSION, records = {} }))))
    assert.equals(records.MAX_VERSION, top.version)
    local text = assert(records.encode({ version = 2, writer = "w", records = {} }))
    assert.equals(2, assert(records.parse(text)).version)
    assert.matches('"records":{}', text, 1, true)
  end)

  it("reads a store row in the current format and in the one before the policy was recorded", function()
    local value = assert(sql_backend.value_of({ version = 4,
      records = '{"format":2,"records":{"a":{"state":"next","times":{"next":1}}},"policy":{"prepublish":1,"retain":2}}' }))
    assert.equals(4, value.version)
    assert.equals(2, value.policy.retain)
    value = assert(sql_backend.value_of({ version = "5", records = '{"a":{"state":"next","times":{"next":1}}}' }))
    assert.equals(5, value.version)
    assert.equals("next", value.records.a.state)
    assert.is_nil(sql_backend.value_of({ version = 5, records = '{"format":3,"records":{}}' }))
    assert.is_nil(sql_backend.value_of({ version = 5, records = '{"a":{"state":"next"}}' }))
    assert.is_nil(sql_backend.value_of({ version = "x", records = '{}' }))
    assert.is_nil(sql_backend.value_of({ version = 5, records = '[1]' }))
  end)
end)

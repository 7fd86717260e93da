-- jwkengine.http: the request headers the nginx endpoints read, parsed in
-- time linear in their length, and the one table from failures to statuses.
-- (spec/nginx/nginx_spec.lua sends the same inputs through real nginx.)
local http = require("jwkengine.http")
local errors = require("jwkengine.errors")

local ETAG = '"abcDEF_-123"'

-- Runs f and returns its result and the CPU time it took (os.clock: the
-- process's own time, which other load on the machine does not inflate).
local function cpu_time(f)
  local started = os.clock()
  local result = f()
  return result, os.clock() - started
end

describe("jwkengine.http", function()
  it("finds an ETag in If-None-Match lists, by the weak comparison", function()
    assert.is_true(http.lists_etag(ETAG, ETAG))
    assert.is_true(http.lists_etag(' "other" ,\tW/' .. ETAG .. ' ', ETAG))
    assert.is_true(http.lists_etag("*", ETAG))
    assert.is_true(http.lists_etag(" * ", ETAG))
    assert.is_false(http.lists_etag('"other", W/"abc"', ETAG))
    assert.is_false(http.lists_etag("", ETAG))
    assert.is_false(http.lists_etag(",,, ,", ETAG))
    assert.is_false(http.lists_etag(ETAG:sub(2, -2), ETAG)) -- the quotes are part of it
  end)

  it("reads an If-None-Match of 60,000 spaces or commas in linear time", function()
    -- "^%s*(.-)%s*$" backtracks over such runs (a tag, spaces, then
    -- anything: over 10 s of CPU); a linear scan takes milliseconds. 2 s of
    -- CPU is a generous bound.
    local n = 60000
    local cases = {
      { string.rep(" ", n) .. ETAG, true },
      { string.rep(" ", n) .. ETAG .. string.rep(" ", n), true },
      { ETAG .. string.rep(" ", n) .. "x", false },
      { string.rep(" ", n), false },
      { string.rep(" ,", n / 2) .. "W/" .. ETAG, true },
      { string.rep("\t", n) .. "*" .. string.rep("\t", n), true },
    }
    for i, c in ipairs(cases) do
      local found, seconds = cpu_time(function() return http.lists_etag(c[1], ETAG) end)
      assert.equals(c[2], found, "case " .. i)
      assert.is_true(seconds < 2, string.format("case %d took %.2f s of CPU", i, seconds))
    end
  end)

  it("treats an If-None-Match over the limit as absent, and joins repeated headers", function()
    local long = string.rep(" ", http.MAX_IF_NONE_MATCH) .. ETAG
    assert.is_false(http.not_modified(long, ETAG))
    assert.is_true(http.not_modified(long:sub(-http.MAX_IF_NONE_MATCH), ETAG))
    assert.is_true(http.not_modified({ '"other"', ETAG }, ETAG))
    assert.is_false(http.not_modified(nil, ETAG))
  end)

  it("recognizes application/json with parameters, in linear time", function()
    assert.is_true(http.is_json("application/json"))
    assert.is_true(http.is_json(" Application/JSON ; charset=utf-8"))
    assert.is_false(http.is_json("application/jsonx"))
    assert.is_false(http.is_json("text/plain"))
    assert.is_false(http.is_json(nil))
    local found, seconds = cpu_time(function()
      return http.is_json(string.rep(" ", 100000) .. "application/json" .. string.rep(" ", 100000))
    end)
    assert.is_true(found)
    assert.is_true(seconds < 2, string.format("took %.2f s of CPU", seconds))
  end)

  it("answers the request's mistakes with 4xx and the engine's failures with 5xx", function()
    local client = { ERR_HTTP_METHOD = 405, ERR_HTTP_MEDIA_TYPE = 415, ERR_HTTP_BODY_TOO_LARGE = 413,
      ERR_HTTP_BODY_INVALID = 400, ERR_JWT_CLAIMS = 400, ERR_JWT_CLAIM_INVALID = 400 }
    for code, status in pairs(client) do
      local got, error_code = http.status_of(code)
      assert.equals(status, got, code)
      assert.equals("invalid_request", error_code, code)
      assert.is_true(http.is_client_error(code), code)
    end
    -- the claim codes are the registry's own (a renamed code would fall to 500)
    assert.is_string(errors.codes["ERR_JWT_CLAIMS"])
    assert.is_string(errors.codes["ERR_JWT_CLAIM_INVALID"])
    for code, status in pairs({ CKR_DEVICE_REMOVED = 503, ERR_STORE = 503, ERR_THREAD = 503, ERR_OVERLOADED = 503,
      ERR_KEY_SET_NOT_FOUND = 500, ERR_NO_SIGNING_KEY = 500 }) do
      assert.equals(status, (http.status_of(code)), code)
      assert.is_false(http.is_client_error(code), code)
    end
    assert.equals(500, (http.status_of(nil)))
  end)
end)

-- The hostile-input corpus through real nginx (the documented example
-- configuration, one worker, a throwaway SoftHSM token): the requests of
-- issue 10's defects and their variations, one row each. /token must answer
-- each with the 4xx the row names and a JSON error body (never 200, never
-- 5xx); the JWK Set endpoint must answer hostile conditional requests with
-- the published set itself or 304, never an error. The Lua API and CLI half
-- of the corpus is spec/engine/hostile_input_spec.lua (nginx cannot load the
-- sanitizer build, so this half lives in a file that pass leaves out).
local cjson = require("cjson")
local jose = require("helpers.jose")
local nginx = require("helpers.nginx")
local softhsm = require("helpers.softhsm")

local JSON = { ["Content-Type"] = "application/json" }
local JWKS = "/.well-known/jwks.json"

local function nested(depth) return string.rep("[", depth) .. string.rep("]", depth) end

local function post(body, headers) return { method = "POST", path = "/token", headers = headers or JSON, body = body } end
local function post_bytes(bytes) return { method = "POST", path = "/token", headers = JSON, body_base64url = jose.b64(bytes) } end

-- { what, request, status }: jwkengine answers, with a JSON error body.
-- by_nginx = true: nginx itself refuses before any Lua runs (its own page).
local TOKEN_CASES = {
  { "exp null", post('{"exp":null}'), 400 },
  { "exp a string", post('{"exp":"x"}'), 400 },
  { "exp 1e999", post('{"exp":1e999}'), 400 },
  { "iat -1e999", post('{"iat":-1e999}'), 400 },
  { "nbf a boolean", post('{"nbf":true}'), 400 },
  { "sub a number", post('{"sub":5}'), 400 },
  { "iss null", post('{"iss":null}'), 400 },
  { "aud a list of numbers", post('{"aud":[1]}'), 400 },
  { "jti an object", post('{"jti":{}}'), 400 },
  { "a claim name with a newline", post('{"x\\ninjected [emerg] fake":1e999}'), 400 },
  { "a claim name with a NUL", post('{"x\\u0000y":1e999}'), 400 },
  { "a claim that is not UTF-8", post_bytes('{"a":"\255\254"}'), 400 },
  { "a claim name that is not UTF-8", post_bytes('{"\192\128":1}'), 400 },
  { "a lone surrogate", post('{"a":"\\ud800"}'), 400 },
  { "duplicate claims", post('{"a":1,"a":2}'), 400 },
  { "duplicate exp", post('{"exp":1,"exp":2}'), 400 },
  { "claims nested 5,000 deep", post('{"a":' .. nested(5000) .. "}"), 400 },
  { "an empty body", post(""), 400 },
  { "JSON null", post("null"), 400 },
  { "a JSON list", post("[]"), 400 },
  { "a JSON number 1e999", post("1e999"), 400 },
  { "a JSON string", post('"claims"'), 400 },
  { "a truncated object", post('{"sub":"a"'), 400 },
  { "trailing garbage", post('{"sub":"a"}x'), 400 },
  { "a NUL byte", post_bytes("\0"), 400 },
  { "a byte order mark", post_bytes("\239\187\191{}"), 400 },
  { "single-quoted JSON", post("{'sub':'a'}"), 400 },
  { "16 KB of whitespace before {}", post(string.rep(" ", 20000) .. "{}"), 413 },
  { "a body over max_body", post('{"pad":"' .. string.rep("x", 20000) .. '"}'), 413 },
  { "no Content-Type", post('{"sub":"a"}', {}), 415 },
  { "Content-Type text/plain", post('{"sub":"a"}', { ["Content-Type"] = "text/plain" }), 415 },
  { "Content-Type after 7 KB of spaces", post('{"sub":"a"}', { ["Content-Type"] = string.rep(" ", 7000) .. "text/plain" }), 415 },
  { "Content-Type application/jsonx", post('{"sub":"a"}', { ["Content-Type"] = "application/jsonx" }), 415 },
  { "GET /token", { method = "GET", path = "/token" }, 405 },
  { "PUT /token", { method = "PUT", path = "/token", headers = JSON, body = "{}" }, 405 },
  { "POST to the JWK Set", { method = "POST", path = JWKS, headers = JSON, body = "{}" }, 405 },
  { "DELETE the JWK Set", { method = "DELETE", path = JWKS }, 405 },
  { "a body of 1 MB", post('{"pad":"' .. string.rep("x", 1000000) .. '"}'), 413, by_nginx = true },
  { "a header of 20 KB", post("{}", { ["Content-Type"] = "application/json", ["X-Pad"] = string.rep("x", 20000) }),
    400, by_nginx = true },
}

-- { what, If-None-Match (or a function of the ETag), 200 or 304 }
local JWKS_CASES = {
  { "7,000 spaces", string.rep(" ", 7000), 200 },
  { "a tag, spaces and garbage", '"a"' .. string.rep(" ", 900) .. "x", 200 },
  { "commas only", string.rep(",", 2000), 200 },
  { "control characters", '"\1\127"', 200 },
  { "an unterminated tag", '"abc', 200 },
  { "W/ alone", "W/", 200 },
  { "the tag over jwkengine's limit, then garbage", function(etag) return etag .. string.rep(" ", 7000) .. "x" end, 200 },
  { "the tag after 900 spaces and commas", function(etag) return string.rep(" ,", 450) .. "W/" .. etag end, 304 },
  { "a star", "*", 304 },
}

describe("the hostile-input corpus through nginx", function()
  local server, baseline

  setup(function()
    local token = softhsm.new_token("hostile-nginx")
    server = nginx.new({ token = token, workers = 1,
      startup_sets = "  hydra.openid.id-token: ES256\n  hydra.jwt.access-token: ES256\n" })
    server:start(60)
    baseline = server:requests({ { path = JWKS } })[1]
    assert.equals(200, baseline.status)
  end)

  teardown(function()
    if server then server:dispose() end
  end)

  it("signs a plain request (the corpus is refused for what it holds, not for the endpoint)", function()
    local r = server:requests({ post('{"sub":"fine"}') })[1]
    assert.equals(200, r.status, r.body)
    assert.equals("application/jwt", r.headers["content-type"])
  end)

  it("answers every hostile token request with its 4xx and a JSON error", function()
    local list = {}
    for i, case in ipairs(TOKEN_CASES) do list[i] = case[2] end
    local responses = server:requests(list)
    for i, case in ipairs(TOKEN_CASES) do
      local what, status, r = case[1], case[3], responses[i]
      assert.equals(status, r.status, what .. ": " .. r.body)
      if not case.by_nginx then
        assert.equals("application/json", r.headers["content-type"], what)
        local ok, body = pcall(cjson.decode, r.body)
        assert.is_true(ok, what .. ": the body is not JSON: " .. r.body)
        assert.is_string(body.error, what)
        assert.is_string(body.error_description, what)
      end
    end
  end)

  it("answers every hostile If-None-Match with the published set or 304", function()
    local etag = baseline.headers["etag"]
    local list = {}
    for i, case in ipairs(JWKS_CASES) do
      local value = type(case[2]) == "function" and case[2](etag) or case[2]
      list[i] = { path = JWKS, headers = { ["If-None-Match"] = value } }
    end
    local responses = server:requests(list)
    for i, case in ipairs(JWKS_CASES) do
      local what, status, r = case[1], case[3], responses[i]
      assert.equals(status, r.status, what .. ": " .. r.body)
      assert.equals(etag, r.headers["etag"], what)
      if status == 200 then assert.equals(baseline.body, r.body, what) end
    end
  end)

  it("is still serving, and logged no Lua error, after the corpus", function()
    local r = server:requests({ { path = JWKS }, post('{"sub":"after"}') })
    assert.equals(baseline.body, r[1].body)
    assert.equals(200, r[2].status, r[2].body)
    local log = server:log()
    assert.is_falsy(log:find("stack traceback", 1, true), "a request raised:\n" .. log)
    assert.is_falsy(log:find("[alert]", 1, true), "a worker died:\n" .. log)
  end)
end)

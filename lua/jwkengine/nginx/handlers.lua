-- The content handlers: GET /.well-known/jwks.json from the worker's cache,
-- POST /token signed in the event loop or in nginx's thread pool. Requests
-- that arrive before their worker's engine is open wait for it (up to
-- ready_timeout seconds, then 503).
local cjson = require("cjson.safe")
local http = require("jwkengine.http")
local jwk = require("jwkengine.jwk")
local jwks = require("jwkengine.nginx.jwks")
local logging = require("jwkengine.nginx.logging")
local metrics = require("jwkengine.nginx.metrics")
local state = require("jwkengine.nginx.state")
local threads = require("jwkengine.nginx.threads")
local worker = require("jwkengine.nginx.worker")
local E = require("jwkengine.errors").E


-- The time now, not the time this event loop turn began (ngx.now()
-- alone): waiting for the engine or rebuilding the JWK Set blocks, and a
-- max-age counted from the turn's start reached past the next state change
-- by that long (seen: 2 s at a promotion under a loaded test run).
local function current_time()
  ngx.update_time()
  return ngx.now()
end
local M = {}

local function send(status, content_type, body, headers)
  ngx.status = status
  if content_type then ngx.header["Content-Type"] = content_type end
  if headers then for k, v in pairs(headers) do ngx.header[k] = v end end
  if body then
    ngx.header["Content-Length"] = #body
    ngx.print(body)
  end
  -- the response is complete: ngx.exit(status >= 300) would replace it with
  -- nginx's own error page (and drop ETag), so finish with HTTP_OK
  return ngx.exit(ngx.HTTP_OK)
end

local function send_error(status, error_code, description, headers)
  local h = headers or {}
  h["Cache-Control"] = "no-store"
  return send(status, "application/json",
    cjson.encode({ error = error_code, error_description = description }) .. "\n", h)
end

-- 503 with Retry-After: the one answer for "not now, try again soon"
-- (an engine not open yet, the HSM or store failing, signing overloaded).
local RETRY_AFTER_SECONDS = 1
function M.send_unavailable(description, retry_after)
  return send_error(503, "temporarily_unavailable", description,
    { ["Retry-After"] = tostring(retry_after or RETRY_AFTER_SECONDS) })
end
local send_unavailable = M.send_unavailable

-- An error response for a failure's code, with the status http.status_of
-- gives it (503 always with Retry-After). A request refused for its own
-- mistake (4xx) leaves one line at notice naming its code, so a client's
-- "why 400?" can be answered from the error log; the engine's failures are
-- logged where they happen, at error.
local function send_failure(code, description, headers)
  local status, error_code = http.status_of(code)
  if status < 500 then
    logging.logger("notice", string.format("refused %s %s with %d (%s): %s", ngx.req.get_method(),
      ngx.var.uri, status, tostring(code), description))
  end
  if status == 503 and not headers then return send_unavailable(description) end
  return send_error(status, error_code, description, headers)
end

-- Waits (yielding) until this worker's engine is open.
local function wait_ready()
  if state.engine then return true end
  local deadline = ngx.now() + state.settings.ready_timeout
  while not state.engine do
    if state.open_given_up or ngx.now() >= deadline then return false end
    ngx.sleep(0.02)
  end
  return true
end

-- 503 with Retry-After: the seconds until this worker next tries to open
-- its engine (worker.retry_after).
local function not_ready()
  if state.open_given_up then
    return send_unavailable("the key engine cannot be opened (see the error log)", worker.retry_after())
  end
  return send_unavailable(
    "the key engine is not open in this worker yet" .. (state.open_error and " (see the error log)" or ""),
    worker.retry_after())
end

function M.serve_jwks()
  local method = ngx.req.get_method()
  if method ~= "GET" and method ~= "HEAD" then
    return send_failure(E.ERR_HTTP_METHOD, "use GET", { Allow = "GET, HEAD" })
  end
  if not wait_ready() then return not_ready() end
  -- A worker whose sets refused when it opened (records that could not be
  -- read) has no JWK Set yet: built here as soon as they read again, so it
  -- never signs with a key it does not publish until the next refresh.
  if not state.jwks_cache then jwks.rebuild(false) end
  if not state.jwks_cache then return not_ready() end
  local max_age = jwks.max_age(current_time)
  local cache = state.jwks_cache
  local headers = {
    ETag = cache.etag,
    ["Cache-Control"] = "public, max-age=" .. max_age,
  }
  local status = http.not_modified(ngx.var.http_if_none_match, cache.etag) and 304 or 200
  metrics.count_jwks(status)
  if status == 304 then return send(304, nil, nil, headers) end
  return send(200, "application/json", cache.body, headers)
end

-- The claims body of POST /token, or nil and the error response sent.
local function read_claims()
  local max_body = state.settings.max_body
  if ngx.req.get_method() ~= "POST" then
    return nil, send_failure(E.ERR_HTTP_METHOD, "use POST with a JSON object of claims", { Allow = "POST" })
  end
  if not http.is_json(ngx.var.content_type) then
    return nil, send_failure(E.ERR_HTTP_MEDIA_TYPE, "the body must be application/json")
  end
  local too_large = "the body is larger than " .. max_body .. " bytes"
  local length = tonumber(ngx.var.content_length)
  if length and length > max_body then
    return nil, send_failure(E.ERR_HTTP_BODY_TOO_LARGE, too_large)
  end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    if ngx.req.get_body_file() then -- larger than client_body_buffer_size
      return nil, send_failure(E.ERR_HTTP_BODY_TOO_LARGE, too_large)
    end
    return nil, send_failure(E.ERR_HTTP_BODY_INVALID, "the body is empty: send a JSON object of claims")
  end
  if #body > max_body then
    return nil, send_failure(E.ERR_HTTP_BODY_TOO_LARGE, too_large)
  end
  -- as strict as every other JSON the engine reads (valid UTF-8, no
  -- duplicate claim names, no NaN), not resolved by whichever wins
  local claims, derr = jwk.decode_json(body)
  if not claims then
    return nil, send_failure(E.ERR_HTTP_BODY_INVALID, "the body must be a JSON object of claims: " .. tostring(derr))
  end
  return claims, body
end

-- Seconds a client should wait (at least 1): during an HSM outage, until
-- the engine that signed (the thread's, when it says: retry_in; else this
-- worker's) next tries to come back.
local function retry_after(code, retry_in)
  if code == E.ERR_HSM_UNAVAILABLE and not retry_in then
    local outage = state.engine and state.engine:hsm_outage()
    retry_in = outage and outage.retry_in
  end
  return tostring(retry_in and math.max(1, math.ceil(retry_in)) or 1)
end

function M.serve_token(options)
  local settings = state.settings
  local set, lifetime, pool = settings.token_set, settings.lifetime, settings.thread_pool
  if options then
    set = options.set or set
    lifetime = options.lifetime or lifetime
    if options.thread_pool ~= nil then pool = options.thread_pool or nil end
  end
  local claims, body = read_claims()
  if not claims then return body end
  if not wait_ready() then return not_ready() end

  local token, err, code, retry_in
  if pool then
    token, err, code, retry_in = threads.sign(pool, set, body, lifetime)
  else
    token, err, code = state.engine:sign_jwt(set, claims, { lifetime = lifetime })
  end
  if not token then
    -- a refusal of the claims is logged by send_failure; overload by the
    -- queue, once a second, not once a request
    if http.is_client_error(code) then return send_failure(code, tostring(err)) end
    local headers = http.status_of(code) == 503 and { ["Retry-After"] = retry_after(code, retry_in) } or nil
    if code == E.ERR_OVERLOADED then
      -- the queue's own words name the limit that was reached (no secret in them)
      return send_failure(code, "signing overloaded: " .. tostring(err) .. " (" .. code .. ")", headers)
    end
    logging.logger("error", string.format("signing with key set '%s' failed: %s (%s)", set, tostring(err),
      tostring(code)))
    return send_failure(code, "signing failed (" .. tostring(code) .. ")", headers)
  end
  return send(200, "application/jwt", token, { ["Cache-Control"] = "no-store" })
end

return M

-- HTTP for the nginx endpoints (jwkengine.nginx): reading the request
-- headers they use, and the one table from failures to response statuses.
--
-- Headers come from anyone: they are scanned with plain finds and byte
-- loops, never with patterns that can backtrack, so a request costs time
-- linear in its size. Written for LuaJIT / Lua 5.1 as well as Lua 5.4.
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}

-- An If-None-Match longer than this is not read (nginx's own not-modified
-- filter, in C, may still compare it with the ETag): a real cache sends a
-- few validators, not kilobytes of them.
M.MAX_IF_NONE_MATCH = 2048

-- True when a list of entity tags (an If-None-Match value) holds etag or
-- "*", by the weak comparison (RFC 9110 section 13.1.2).
function M.lists_etag(header, etag)
  local pos, last = 1, #header
  while pos <= last do
    local comma = header:find(",", pos, true) or last + 1
    local candidate = util.trim(header, pos, comma - 1)
    if candidate:sub(1, 2) == "W/" then candidate = candidate:sub(3) end
    if candidate == "*" or candidate == etag then return true end
    pos = comma + 1
  end
  return false
end

-- True when the request's If-None-Match (a string, a list of them when the
-- header came more than once, or nil) says the client has etag.
function M.not_modified(header, etag)
  if type(header) == "table" then header = table.concat(header, ",") end
  if type(header) ~= "string" or #header > M.MAX_IF_NONE_MATCH then return false end
  return M.lists_etag(header, etag)
end

-- True for a Content-Type of application/json (any parameters).
function M.is_json(content_type)
  if type(content_type) ~= "string" then return false end
  local semicolon = content_type:find(";", 1, true) or #content_type + 1
  return util.trim(content_type, 1, semicolon - 1):lower() == "application/json"
end

-- Failures and what a client is told: status and OAuth 2.0 error. The
-- request's mistakes are 4xx; the engine's own failures 5xx: 503 where
-- trying again may help (the token or the store), 500 otherwise.
local STATUS = {
  -- the request itself (the handlers' own checks)
  [E.ERR_HTTP_METHOD] = { 405, "invalid_request" },
  [E.ERR_HTTP_MEDIA_TYPE] = { 415, "invalid_request" },
  [E.ERR_HTTP_BODY_TOO_LARGE] = { 413, "invalid_request" },
  [E.ERR_HTTP_BODY_INVALID] = { 400, "invalid_request" },
  -- the claims it asked for (jwkengine.errors)
  [E.ERR_JWT_CLAIMS] = { 400, "invalid_request" },
  [E.ERR_JWT_CLAIM_INVALID] = { 400, "invalid_request" },
  -- the engine
  [E.ERR_THREAD] = { 503, "temporarily_unavailable" },
  [E.ERR_HSM_UNAVAILABLE] = { 503, "temporarily_unavailable" },
  [E.ERR_OVERLOADED] = { 503, "temporarily_unavailable" },
  [E.ERR_STORE] = { 503, "temporarily_unavailable" },
  [E.ERR_KEY_STATES_CORRUPT] = { 503, "temporarily_unavailable" },
  [E.ERR_KEY_STATES_UNSUPPORTED] = { 503, "temporarily_unavailable" },
  -- the set's signer is refused until an operator acts (several keys and
  -- no record of which signs) or another process just retired it
  [E.ERR_KEY_STATE] = { 503, "temporarily_unavailable" },
}
local TOKEN_FAILURE = { 503, "temporarily_unavailable" } -- every CKR_* code
local ENGINE_FAILURE = { 500, "server_error" }

-- status, error for a failure's code.
function M.status_of(code)
  local entry = STATUS[code]
    or (type(code) == "string" and code:sub(1, 4) == "CKR_" and TOKEN_FAILURE)
    or ENGINE_FAILURE
  return entry[1], entry[2]
end

-- True when the failure is the client's (a 4xx).
function M.is_client_error(code)
  return M.status_of(code) < 500
end

return M

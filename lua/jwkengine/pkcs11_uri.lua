-- RFC 7512 PKCS#11 URIs, parsed strictly, and mapped to the engine's `hsm`
-- settings.
--
--   local pkcs11_uri = require("jwkengine.pkcs11_uri")
--   local uri, err, code = pkcs11_uri.parse("pkcs11:token=hydra?pin-source=file:/run/pin")
--   local hsm, err, code = pkcs11_uri.to_hsm_config(uri)
--     --> { token_label = "hydra", pin_file = "/run/pin" }
--
-- parse(uri [, options]) returns a table keyed by the RFC's attribute names,
-- with percent-decoded values:
--
--   path:  token, manufacturer, serial, model, library-manufacturer,
--          library-description, library-version (string "1" or "1.23"),
--          object, type ("public", "private", "cert", "secret-key", "data"),
--          id (raw bytes), slot-description, slot-manufacturer,
--          slot-id (a number)
--   query: pin-source, pin-value, module-name, module-path
--   vendor = { ["x-name"] = value, ... } (always present, maybe empty)
--
-- or nil, message, "ERR_PKCS11_URI". Only a wrong argument type raises.
--
-- Strictness (RFC 7512 section 2.3 unless noted):
-- - "pkcs11:" first (the scheme is case-insensitive, RFC 3986 3.1); path
--   attributes separated by ";", then optionally "?" and query attributes
--   separated by "&". No empty attribute, no attribute without "=", no
--   whitespace or control character anywhere (the RFC's examples are wrapped
--   for display only), no "#" fragment.
-- - Values hold only the characters the RFC allows unencoded there
--   (unreserved, ":[]@!$'()*+,=" plus "&" in the path and "/?|" in the query)
--   and well-formed %XX escapes; everything else must be percent-encoded.
-- - Attribute names are matched case-insensitively (ABNF literals are, RFC
--   5234 2.3) and reported in lower case. Each may appear once. A query
--   attribute in the path (or the reverse) is an error that says where it
--   belongs. Unknown names are errors unless they start with "x-" (kept in
--   `vendor`); options.require_x_prefix = false accepts any name the RFC's
--   pk11-v-attr-nm-char allows, as the RFC's own example "vendor-aaa" does.
--   options.pin_stays_encoded = true checks pin-value but leaves it
--   undecoded (the result holds `true`): the engine decodes it in C.
-- - slot-id is 1*DIGIT (no escapes), at most 2^53 - 1; library-version is
--   DIGITS[.DIGITS]; type is one of the five names; these take no escapes.
-- - Text attributes must decode to valid UTF-8. (Lengths are checked by
--   to_hsm_config, not here: the RFC's own example token label is 34 bytes,
--   more than CK_TOKEN_INFO holds.)
-- - module-path must be absolute; module-name must not contain "/";
--   pin-source, pin-value, module-name and module-path must not be empty;
--   pin-value and pin-source are mutually exclusive.
--
-- Messages never contain the PIN: attribute values are never quoted in
-- them, and a bad character is shown only for attributes other than
-- pin-value.
--
-- Lua 5.1 syntax (OpenResty) and 5.4.

local E = require("jwkengine.errors").E
local M = { _VERSION = "0.1.0", ERR = E.ERR_PKCS11_URI }

local CODE = M.ERR
local MAX_SLOT_ID = 9007199254740991 -- 2^53 - 1, exact in every Lua

local function fail(fmt, ...)
  return nil, "invalid PKCS#11 URI: " .. string.format(fmt, ...), CODE
end

local function byte_set(chars, base)
  local set = {}
  if base then
    for k in pairs(base) do set[k] = true end
  end
  for i = 1, #chars do set[chars:byte(i)] = true end
  return set
end

local ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
local UNRESERVED = byte_set(ALNUM .. "-._~")
local RES_AVAIL = ":[]@!$'()*+,="
local PCHAR = byte_set(RES_AVAIL .. "&%", UNRESERVED)        -- pk11-pchar (with %XX)
local QCHAR = byte_set(RES_AVAIL .. "/?|%", UNRESERVED)      -- pk11-qchar (with %XX)
local NAME_CHAR = byte_set(ALNUM .. "-_")                    -- pk11-v-attr-nm-char

-- kind: text (UTF-8), bytes, slot, version, type
local PATH_ATTRS = {
  ["token"] = { kind = "text" },
  ["manufacturer"] = { kind = "text" },
  ["serial"] = { kind = "text" },
  ["model"] = { kind = "text" },
  ["library-manufacturer"] = { kind = "text" },
  ["library-description"] = { kind = "text" },
  ["library-version"] = { kind = "version" },
  ["object"] = { kind = "text" },
  ["type"] = { kind = "type" },
  ["id"] = { kind = "bytes" },
  ["slot-description"] = { kind = "text" },
  ["slot-manufacturer"] = { kind = "text" },
  ["slot-id"] = { kind = "slot" },
}

local QUERY_ATTRS = {
  ["pin-source"] = { kind = "nonempty" },
  ["pin-value"] = { kind = "secret" },
  ["module-name"] = { kind = "module-name" },
  ["module-path"] = { kind = "module-path" },
}

local OBJECT_TYPES = { public = true, private = true, cert = true, ["secret-key"] = true, data = true }

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    elseif c >= 0xC2 and c <= 0xDF then
      local c2 = s:byte(i + 1)
      if not c2 or c2 < 0x80 or c2 > 0xBF then return false end
      i = i + 2
    elseif c >= 0xE0 and c <= 0xEF then
      local c2, c3 = s:byte(i + 1, i + 2)
      if not c3 then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end -- overlong, surrogates
      if c2 < lo or c2 > hi or c3 < 0x80 or c3 > 0xBF then return false end
      i = i + 3
    elseif c >= 0xF0 and c <= 0xF4 then
      local c2, c3, c4 = s:byte(i + 1, i + 3)
      if not c4 then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end -- overlong, > U+10FFFF
      if c2 < lo or c2 > hi or c3 < 0x80 or c3 > 0xBF or c4 < 0x80 or c4 > 0xBF then
        return false
      end
      i = i + 4
    else
      return false
    end
  end
  return true
end

-- Splits s on the one-character separator sep, keeping empty pieces.
local function split(s, sep)
  local parts, start = {}, 1
  while true do
    local at = s:find(sep, start, true)
    if not at then
      parts[#parts + 1] = s:sub(start)
      return parts
    end
    parts[#parts + 1] = s:sub(start, at - 1)
    start = at + 1
  end
end

local function ordinal(n)
  local suffix = "th"
  if n % 100 < 11 or n % 100 > 13 then
    if n % 10 == 1 then suffix = "st" elseif n % 10 == 2 then suffix = "nd"
    elseif n % 10 == 3 then suffix = "rd" end
  end
  return n .. suffix
end

-- Checks value's characters against allowed and its percent-encoding,
-- making no new string. `secret`: never show a character of it.
local function check_encoding(value, allowed, name, secret)
  for i = 1, #value do
    local b = value:byte(i)
    if not allowed[b] then
      if secret then
        return fail("%s contains a character that must be percent-encoded", name)
      end
      local shown = (b >= 0x21 and b <= 0x7e) and string.format("'%s' ", string.char(b)) or ""
      return fail("%s contains %s(0x%02X), which must be percent-encoded as %%%02X",
        name, shown, b, b)
    end
  end
  local at = value:find("%", 1, true)
  while at do
    if not value:find("^%x%x", at + 1) then
      return fail("%s has a malformed percent-encoding (%% must be followed by two hex digits)", name)
    end
    at = value:find("%", at + 3, true)
  end
  return true
end

-- Percent-decodes value after check_encoding.
local function decode(value, allowed, name, secret)
  local ok, err, code = check_encoding(value, allowed, name, secret)
  if not ok then return nil, err, code end
  return (value:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

-- Checks and converts one value; `raw` is still percent-encoded.
local function convert(name, spec, raw, allowed)
  local kind = spec.kind
  if kind == "slot" then
    if not raw:find("^[0-9]+$") then
      return fail("slot-id must be a decimal integer (digits only)")
    end
    local n = tonumber(raw)
    if not n or n > MAX_SLOT_ID then
      return fail("slot-id is too large (at most %.0f)", MAX_SLOT_ID)
    end
    return n
  elseif kind == "version" then
    if not (raw:find("^[0-9]+$") or raw:find("^[0-9]+%.[0-9]+$")) then
      return fail("library-version must be digits, optionally '.' and digits (e.g. 1.23)")
    end
    return raw
  elseif kind == "type" then
    local t = raw:lower()
    if not OBJECT_TYPES[t] then
      return fail("type must be one of public, private, cert, secret-key, data")
    end
    return t
  end
  local value, err, code = decode(raw, allowed, name, kind == "secret")
  if not value then return nil, err, code end
  if kind == "text" then
    if not valid_utf8(value) then
      return fail("%s is not valid UTF-8 after percent-decoding", name)
    end
  elseif kind == "secret" then
    if value == "" then return fail("pin-value is empty") end
  elseif kind == "nonempty" then
    if value == "" then return fail("%s is empty", name) end
  elseif kind == "module-path" then
    if value:sub(1, 1) ~= "/" then
      return fail("module-path must be an absolute path")
    end
  elseif kind == "module-name" then
    if value == "" or value:find("/", 1, true) then
      return fail("module-name must be a module name (no '/'); use module-path for a path")
    end
  end
  return value
end

-- One component ("path" or "query"): its attributes into result.
local function parse_component(text, component, result, seen, options)
  if text == "" then return true end
  local own, other = PATH_ATTRS, QUERY_ATTRS
  local allowed, sep, sep_name = PCHAR, ";", "';'"
  if component == "query" then
    own, other = QUERY_ATTRS, PATH_ATTRS
    allowed, sep, sep_name = QCHAR, "&", "'&'"
  end
  local items = split(text, sep)
  for i, item in ipairs(items) do
    if item == "" then
      return fail("the %s %s attribute is empty (stray %s)", ordinal(i), component, sep_name)
    end
    local eq = item:find("=", 1, true)
    if not eq then
      return fail("the %s %s attribute has no '='", ordinal(i), component)
    end
    local raw_name, raw = item:sub(1, eq - 1), item:sub(eq + 1)
    if raw_name == "" then
      return fail("the %s %s attribute has no name", ordinal(i), component)
    end
    for j = 1, #raw_name do
      if not NAME_CHAR[raw_name:byte(j)] then
        return fail("the %s %s attribute's name has a character other than letters, digits, '-' and '_'",
          ordinal(i), component)
      end
    end
    local name = raw_name:lower()
    if seen[name] then
      return fail("attribute %s appears more than once", name)
    end
    seen[name] = true
    local spec = own[name]
    if not spec then
      if other[name] then
        if component == "path" then
          return fail("%s is a query attribute: put it after '?'", name)
        end
        return fail("%s is a path attribute: put it before '?'", name)
      end
      if options.require_x_prefix ~= false and name:sub(1, 2) ~= "x-" then
        return fail("unknown %s attribute %s (vendor attributes start with 'x-')", component, name)
      end
      local value, err, code = decode(raw, allowed, name, false)
      if not value then return nil, err, code end
      result.vendor[name] = value
    elseif spec.kind == "secret" and options.pin_stays_encoded then
      -- checked here, decoded only in C (token:login_uri): no Lua string of it
      local ok, err, code = check_encoding(raw, allowed, name, true)
      if not ok then return nil, err, code end
      if raw == "" then return fail("pin-value is empty") end
      result[name] = true
    else
      local value, err, code = convert(name, spec, raw, allowed)
      if value == nil then return nil, err, code end
      result[name] = value
    end
  end
  return true
end

-- True when s looks like a PKCS#11 URI (starts with "pkcs11:").
function M.is_uri(s)
  return type(s) == "string" and s:sub(1, 7):lower() == "pkcs11:"
end

function M.parse(uri, options)
  if type(uri) ~= "string" then
    error("pkcs11_uri.parse: the URI must be a string, got " .. type(uri), 2)
  end
  if options ~= nil and type(options) ~= "table" then
    error("pkcs11_uri.parse: options must be a table", 2)
  end
  options = options or {}
  if not M.is_uri(uri) then
    return fail("it must start with 'pkcs11:'")
  end
  local rest = uri:sub(8)
  if rest:find("[%c ]") then
    return fail("whitespace and control characters are not allowed (percent-encode them, e.g. %%20)")
  end
  if rest:find("#", 1, true) then
    return fail("'#' is not allowed (a PKCS#11 URI has no fragment; write %%23)")
  end
  local path, query = rest, nil
  local q = rest:find("?", 1, true)
  if q then
    path, query = rest:sub(1, q - 1), rest:sub(q + 1)
  end
  local result, seen = { vendor = {} }, {}
  local ok, err, code = parse_component(path, "path", result, seen, options)
  if not ok then return nil, err, code end
  if query then
    ok, err, code = parse_component(query, "query", result, seen, options)
    if not ok then return nil, err, code end
  end
  if result["pin-value"] and result["pin-source"] then
    return fail("pin-value and pin-source cannot be used together")
  end
  return result
end

-- pin-source as a file path: "file:/p", "file:///p", "file://localhost/p",
-- or a plain path.
local function pin_file(source)
  local scheme, rest = source:match("^([A-Za-z][A-Za-z0-9+.%-]*):(.*)$")
  if not scheme then
    if source:sub(1, 1) == "|" then
      return nil, "pin-source: running a program ('|...') is not supported; use a file"
    end
    return source
  end
  if scheme:lower() ~= "file" then
    return nil, "pin-source: only file: URIs and plain paths are supported"
  end
  if rest:sub(1, 2) == "//" then
    local authority, path = rest:match("^//([^/]*)(.*)$")
    if authority ~= "" and authority:lower() ~= "localhost" then
      return nil, "pin-source: a file: URI naming another host is not supported"
    end
    rest = path
  end
  if rest:sub(1, 1) ~= "/" then
    return nil, "pin-source: a file: URI needs an absolute path"
  end
  return rest
end

-- Attributes that name something other than the token and module, which
-- the HSM settings cannot express.
local UNSUPPORTED = {
  "object", "id", "type", "library-manufacturer", "library-description", "library-version",
  "slot-description", "slot-manufacturer", "module-name",
}

-- The engine's `hsm` settings named by a parsed URI:
--   token -> token_label, serial -> token_serial, manufacturer ->
--   token_manufacturer, model -> token_model, slot-id -> slot, module-path ->
--   library, pin-value -> pin, pin-source -> pin_file (a file: URI or a
--   plain path; "file:" stripped).
-- Only the attributes present appear. Vendor attributes are ignored; the
-- attributes in UNSUPPORTED are an error that names them.
function M.to_hsm_config(parsed)
  if type(parsed) ~= "table" then
    error("pkcs11_uri.to_hsm_config: expected the table parse() returns, got " .. type(parsed), 2)
  end
  local refused = {}
  for _, name in ipairs(UNSUPPORTED) do
    if parsed[name] ~= nil then refused[#refused + 1] = name end
  end
  if #refused > 0 then
    return nil, "PKCS#11 URI: " .. table.concat(refused, ", ")
      .. (#refused == 1 and " is" or " are")
      .. " not supported in the HSM setting (it names a token: token, serial, manufacturer, "
      .. "model, slot-id, module-path, pin-value or pin-source)", CODE
  end
  -- CK_TOKEN_INFO's fixed fields: a longer value can never match a token.
  local widths = { { "token", 32 }, { "manufacturer", 32 }, { "serial", 16 }, { "model", 16 } }
  for _, w in ipairs(widths) do
    local value = parsed[w[1]]
    if value ~= nil and #value > w[2] then
      return nil, string.format("PKCS#11 URI: %s is longer than the %d bytes of CK_TOKEN_INFO, "
        .. "so no token can match it", w[1], w[2]), CODE
    end
  end
  local hsm = {
    token_label = parsed.token,
    token_serial = parsed.serial,
    token_manufacturer = parsed.manufacturer,
    token_model = parsed.model,
    slot = parsed["slot-id"],
    library = parsed["module-path"],
    pin = parsed["pin-value"],
  }
  if parsed["pin-value"] and parsed["pin-source"] then
    return nil, "PKCS#11 URI: pin-value and pin-source cannot be used together", CODE
  end
  if parsed["pin-source"] then
    local path, err = pin_file(parsed["pin-source"])
    if not path then return nil, "PKCS#11 URI: " .. err, CODE end
    hsm.pin_file = path
  end
  return hsm
end

-- The URI with every pin-value replaced by "***", for logs. Works on
-- malformed input too.
function M.redact(uri)
  if type(uri) ~= "string" then
    error("pkcs11_uri.redact: the URI must be a string, got " .. type(uri), 2)
  end
  local out = uri:gsub("([?&;:][Pp][Ii][Nn]%-[Vv][Aa][Ll][Uu][Ee]=)[^&;#]*", "%1***")
  return out
end

-- The URI with its query's pin-value attribute left out (a URI whose PIN
-- is kept elsewhere); the URI as given when it has none.
function M.without_pin(uri)
  local path, query = uri:match("^([^?]*)%?(.*)$")
  if not path then return uri end
  local kept = {}
  for _, item in ipairs(split(query, "&")) do
    if item:sub(1, 10):lower() ~= "pin-value=" then kept[#kept + 1] = item end
  end
  if #kept == 0 then return path end
  return path .. "?" .. table.concat(kept, "&")
end

return M

-- Prometheus metrics of one engine (one process), in the text exposition
-- format 0.0.4. Counting on the signing path is table increments and one
-- clock read either side of the signature: no string is built per
-- signature; series names and label text are made only when the metrics
-- are read (Recorder:counters, M.text).
--
-- A series is keyed by its exposition text without the value:
-- `jwkengine_signatures_total{backend="hsm",set="s",kid="k",alg="ES256"}`.
-- A histogram bucket carries `le` as its last label, so series sort into
-- the order the format wants (see series_order). jwkengine.nginx.metrics
-- sums these keys over workers in a shared dict and writes them with M.text.
local core = require("jwkengine.core")
local E = require("jwkengine.errors").E

local M = {}

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

-- The clock signatures are timed with (monotonic, sub-microsecond).
M.clock = core.monotonic

-- Signing latency buckets in seconds: from a local token's ECDSA (tens of
-- microseconds) to a network HSM under load (a second).
M.BUCKETS = { 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1 }
-- The same with +Inf last, so the bucket search needs no bounds check: it
-- runs once per signature, one comparison per bucket passed.
local BOUNDS = {}
for i, bound in ipairs(M.BUCKETS) do BOUNDS[i] = bound end
BOUNDS[#BOUNDS + 1] = math.huge

-- Every family, in the order it is written: one a line, name, type and
-- help text. Labels: set and kid are the only ones whose values are not
-- from a short fixed list.
local FAMILY_LINES = [[
jwkengine_signatures_total counter Signatures made, by key set, kid, algorithm and backend (hsm or software).
jwkengine_signing_failures_total counter Signing calls that failed, by error code.
jwkengine_fallbacks_total counter Signing calls the HSM did not hold the set for, handed to the software store, by key set.
jwkengine_signing_duration_seconds histogram Time one signature took, by backend (hsm or software).
jwkengine_pkcs11_recoveries_total counter PKCS#11 failures recovered from, by kind (session, login, object, reinit).
jwkengine_pkcs11_failed_recoveries_total counter PKCS#11 recoveries that failed.
jwkengine_pkcs11_session_waits_total counter Times a signer waited for a free PKCS#11 session.
jwkengine_pkcs11_sessions_opened_total counter PKCS#11 sessions opened.
jwkengine_pkcs11_sessions_open gauge PKCS#11 sessions of the signing pool open now (the login session not counted).
jwkengine_pkcs11_max_sessions gauge Bound of the PKCS#11 session pool.
jwkengine_pkcs11_thread_sessions gauge PKCS#11 sessions held by the engines of nginx's thread-pool Lua VMs (one login session each; nginx only).
jwkengine_hsm_token_up gauge 1 while an HSM token answers, 0 while it is down or has never been reached, by token (its index in hsm.tokens) and label (nginx: the number of workers that see it up).
jwkengine_hsm_token_signing gauge 1 for the HSM token that signs, 0 for the others, by token and label (nginx: the number of workers signing with it).
jwkengine_hsm_failovers_total counter Signing calls another HSM token signed because the signing token could not.
jwkengine_key_state gauge 1 for each published key of a set in its lifecycle state (next, current, previous).
jwkengine_jwks_requests_total counter JWK Set requests answered, by HTTP status (200 or 304; nginx only).
jwkengine_health_probes_total counter Health probes run against the token (not served from the health cache), by result (ok or failed).
]]
M.FAMILIES = {}
for name, kind, help in FAMILY_LINES:gmatch("(%S+) (%S+) ([^\n]+)") do
  M.FAMILIES[#M.FAMILIES + 1] = { name, kind, help }
end

local BACKEND_OF = { HSM = "hsm", software = "software" }
local RECOVERY_KINDS = { "session", "login", "object", "reinit" }

-- A label value as the format writes it: backslash, double quote and
-- line feed escaped.
local function escape(value)
  return (tostring(value):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- The series key of name with labels given as a list of name, value, ...
function M.series(name, ...)
  local n = select("#", ...)
  if n == 0 then return name end
  local parts = {}
  for i = 1, n, 2 do
    local label, value = select(i, ...)
    parts[#parts + 1] = label .. '="' .. escape(value) .. '"'
  end
  return name .. "{" .. table.concat(parts, ",") .. "}"
end

-- `le` as the format writes it: %.17g is exact but long, so the shortest
-- form that reads back the same.
local function le_text(bound)
  if bound == math.huge then return "+Inf" end
  for digits = 1, 17 do
    local text = string.format("%." .. digits .. "g", bound)
    if tonumber(text) == bound then return text end
  end
end
M.le_text = le_text

-- A histogram: its bucket counts at 1 .. #BOUNDS (not cumulative), and the
-- sum of what it observed; the count is the buckets' total, added up when
-- read, so a signature updates two fields.
local function new_histogram()
  local histogram = { sum = 0 }
  for i = 1, #BOUNDS do histogram[i] = 0 end
  return histogram
end

local Recorder = {}
Recorder.__index = Recorder

function M.new()
  return setmetatable({
    signatures = {},  -- backend -> set -> kid -> alg -> count
    durations = { hsm = new_histogram(), software = new_histogram() },
    failures = {},    -- error code -> count
    fallbacks = {},   -- set -> count
  }, Recorder)
end

-- A signature made by backend `where` ("HSM" or "software", as the key
-- managers name themselves) in `seconds`.
function Recorder:signed(where, set, kid, alg, seconds)
  local backend = BACKEND_OF[where]
  local by_set = self.signatures[backend]
  if not by_set then by_set = {}; self.signatures[backend] = by_set end
  local by_kid = by_set[set]
  if not by_kid then by_kid = {}; by_set[set] = by_kid end
  local by_alg = by_kid[kid]
  if not by_alg then by_alg = {}; by_kid[kid] = by_alg end
  by_alg[alg] = (by_alg[alg] or 0) + 1
  local histogram = self.durations[backend]
  local i, bounds = 1, BOUNDS
  while seconds > bounds[i] do i = i + 1 end
  histogram[i] = histogram[i] + 1
  histogram.sum = histogram.sum + seconds
end

-- A vendor's own CKR values (CKR_0x8000...) are one label value: a token
-- answering with many of them must not make the label set grow without
-- bound (the error log has each one).
local function failure_label(code)
  if not code then return E.ERR_INTERNAL end
  if code:find("^CKR_0x") then return "CKR_VENDOR_DEFINED" end
  return code
end

function Recorder:failed(code)
  code = failure_label(code)
  self.failures[code] = (self.failures[code] or 0) + 1
end

function Recorder:fell_back(set)
  self.fallbacks[set] = (self.fallbacks[set] or 0) + 1
end

-- Counts one signing call made in another Lua VM (an nginx worker
-- thread's engine), as a LastCall recorder took it there: the same counts
-- as if the call had been made with this recorder.
function Recorder:add_call(set, where, kid, alg, seconds, failure, fell_back)
  if fell_back then self:fell_back(set) end
  if where then self:signed(where, set, kid, alg, seconds) end
  if failure then self:failed(failure) end
end

-- A recorder that keeps only what the last signing call did, for an engine
-- whose counts are kept elsewhere: nginx's worker-thread VMs hand each
-- call's to the worker (jwkengine.nginx.threads), whose recorder adds it
-- with add_call. It serves no metrics of its own.
local LastCall = {}
LastCall.__index = LastCall

function M.last_call()
  return setmetatable({}, LastCall)
end

function LastCall:signed(where, _, kid, alg, seconds)
  self.where, self.kid, self.alg, self.seconds = where, kid, alg, seconds
end

function LastCall:failed(code)
  self.failure = code or E.ERR_INTERNAL
end

function LastCall:fell_back()
  self.fallback = true
end

-- What the last call did, in add_call's order (after its set), forgotten
-- here.
function LastCall:take()
  local where, kid, alg, seconds, failure, fallback =
    self.where, self.kid, self.alg, self.seconds, self.failure, self.fallback
  self.where, self.kid, self.alg, self.seconds, self.failure, self.fallback = nil, nil, nil, nil, nil, nil
  return where, kid, alg, seconds, failure, fallback
end

-- The PKCS#11 counters of engine:stats() as one flat table (recovery
-- kinds by name beside the other counts): what a thread VM's engine hands
-- to its worker, and what Recorder:counters writes.
local PKCS11_COUNTS = { "failed_recoveries", "session_waits", "sessions_opened" }
local function pkcs11_counts(stats)
  local counts = {}
  for _, kind in ipairs(RECOVERY_KINDS) do counts[kind] = stats.recoveries[kind] or 0 end
  for _, name in ipairs(PKCS11_COUNTS) do counts[name] = stats[name] or 0 end
  return counts
end

-- What an engine's PKCS#11 counters (stats: engine:stats()) grew by since
-- `reported` (the counts last handed over, a table updated here), or false
-- when nothing did: nginx's thread VMs hand this to the worker with each
-- call's counts, so their recoveries and sessions reach its /metrics.
function M.pkcs11_since(stats, reported)
  local delta
  for name, count in pairs(pkcs11_counts(stats)) do
    local grown = count - (reported[name] or 0)
    if grown ~= 0 then
      delta = delta or {}
      delta[name] = grown
      reported[name] = count
    end
  end
  return delta or false
end

-- Adds what another VM's engine counted (M.pkcs11_since's table; its
-- thread_sessions: sessions it holds now more than before) to this
-- recorder's PKCS#11 series.
function Recorder:add_pkcs11(delta)
  local counts = self.pkcs11
  if not counts then counts = {}; self.pkcs11 = counts end
  for name, grown in pairs(delta) do counts[name] = (counts[name] or 0) + grown end
end

-- Sessions held by other VMs' engines (Recorder:add_pkcs11), or nil.
function Recorder:thread_sessions()
  return self.pkcs11 and self.pkcs11.thread_sessions
end

-- The sets signed with so far (for the key state gauge).
function Recorder:signed_sets(into)
  for _, by_set in pairs(self.signatures) do
    for set in pairs(by_set) do into[set] = true end
  end
  return into
end

local function count_of(histogram)
  local count = 0
  for i = 1, #BOUNDS do count = count + histogram[i] end
  return count
end

-- Adds a histogram's series (cumulative buckets, sum, count) to `out`.
local function add_histogram(out, name, histogram, label, value)
  local cumulative = 0
  for i = 1, #M.BUCKETS + 1 do
    cumulative = cumulative + histogram[i]
    out[M.series(name .. "_bucket", label, value, "le", le_text(M.BUCKETS[i] or math.huge))] = cumulative
  end
  out[M.series(name .. "_sum", label, value)] = histogram.sum
  out[M.series(name .. "_count", label, value)] = cumulative
end

-- Every counter (and histogram) series as key -> value, cumulative since
-- the engine opened. stats: engine:stats() (nil without an HSM).
function Recorder:counters(stats, out)
  out = out or {}
  for backend, by_set in pairs(self.signatures) do
    for set, by_kid in pairs(by_set) do
      for kid, by_alg in pairs(by_kid) do
        for alg, count in pairs(by_alg) do
          out[M.series("jwkengine_signatures_total", "set", set, "kid", kid, "alg", alg, "backend", backend)] = count
        end
      end
    end
  end
  for code, count in pairs(self.failures) do
    out[M.series("jwkengine_signing_failures_total", "code", code)] = count
  end
  for set, count in pairs(self.fallbacks) do
    out[M.series("jwkengine_fallbacks_total", "set", set)] = count
  end
  for backend, histogram in pairs(self.durations) do
    if count_of(histogram) > 0 then
      add_histogram(out, "jwkengine_signing_duration_seconds", histogram, "backend", backend)
    end
  end
  if stats or self.pkcs11 then
    local counts = stats and pkcs11_counts(stats) or {}
    for name, grown in pairs(self.pkcs11 or {}) do counts[name] = (counts[name] or 0) + grown end
    for _, kind in ipairs(RECOVERY_KINDS) do
      out[M.series("jwkengine_pkcs11_recoveries_total", "kind", kind)] = counts[kind] or 0
    end
    out["jwkengine_pkcs11_failed_recoveries_total"] = counts.failed_recoveries or 0
    out["jwkengine_pkcs11_session_waits_total"] = counts.session_waits or 0
    out["jwkengine_pkcs11_sessions_opened_total"] = counts.sessions_opened or 0
  end
  if stats and stats.hsm_failovers then out["jwkengine_hsm_failovers_total"] = stats.hsm_failovers end
  return out
end

-- Each HSM token's gauges (stats.hsm_tokens of engine:stats()): up and
-- signing, 0 or 1 (nginx adds them up over its workers: how many workers
-- see the token up, sign with it).
function M.token_gauges(stats, out)
  for _, token in ipairs(stats.hsm_tokens or {}) do
    local index = string.format("%d", token.index)
    out[M.series("jwkengine_hsm_token_up", "token", index, "label", token.label)] = token.state == "up" and 1 or 0
    out[M.series("jwkengine_hsm_token_signing", "token", index, "label", token.label)] = token.signing and 1 or 0
  end
  return out
end

-- The gauges of the moment: the session pool's, and the lifecycle state
-- of each published key of `sets` (a list of names).
function M.gauges(engine, stats, sets, out)
  out = out or {}
  if stats then
    out["jwkengine_pkcs11_sessions_open"] = stats.sessions_open
    out["jwkengine_pkcs11_max_sessions"] = stats.max_sessions
    M.token_gauges(stats, out)
  end
  for _, set in ipairs(sets) do
    local publication = engine:publication(set)
    if publication then
      for kid, state in pairs(publication.states) do
        out[M.series("jwkengine_key_state", "set", set, "kid", kid, "state", state)] = 1
      end
    end
  end
  return out
end

-- The family a series key belongs to (histogram suffixes taken off).
local function family_of(key, types)
  local name = key:match("^[^{]+")
  if types[name] then return name end
  local base = name:match("^(.-)_bucket$") or name:match("^(.-)_sum$") or name:match("^(.-)_count$")
  return base
end

-- Series of one family in a stable order: by their labels, buckets by
-- their bound (as text, "0.00005" would sort after "0.0001").
local function series_order(a, b)
  local a_base, a_le = a:match('^(.-)le="([^"]*)"}$')
  local b_base, b_le = b:match('^(.-)le="([^"]*)"}$')
  if a_base and b_base and a_base == b_base then
    return (tonumber(a_le) or math.huge) < (tonumber(b_le) or math.huge)
  end
  return a < b
end

local function number_text(value)
  if value == math.floor(value) and math.abs(value) < 2 ^ 53 then return string.format("%d", value) end
  return string.format("%.17g", value)
end

-- The exposition text of series (key -> value): HELP and TYPE for each
-- family that has a series, families in M.FAMILIES' order.
function M.text(values)
  local types, by_family = {}, {}
  for _, family in ipairs(M.FAMILIES) do types[family[1]] = family end
  for key in pairs(values) do
    local family = family_of(key, types)
    if family then
      by_family[family] = by_family[family] or {}
      table.insert(by_family[family], key)
    end
  end
  local lines = {}
  for _, family in ipairs(M.FAMILIES) do
    local keys = by_family[family[1]]
    if keys then
      lines[#lines + 1] = "# HELP " .. family[1] .. " " .. family[3]
      lines[#lines + 1] = "# TYPE " .. family[1] .. " " .. family[2]
      table.sort(keys, series_order)
      for _, key in ipairs(keys) do lines[#lines + 1] = key .. " " .. number_text(values[key]) end
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

return M

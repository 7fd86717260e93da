-- Deals the spec files out to N busted processes that run side by side
-- (scripts/test.sh), so that they end at about the same time: longest
-- first, each to the shard with the least work so far. A file's work is
-- its wall time from spec/timings.txt (refreshed by scripts/test.sh's
-- timing output; a file not listed there counts as DEFAULT_SECONDS).
--
--   lua5.4 scripts/deal-specs.lua SHARDS [EXCLUDE_PATTERN...] < file list
-- prints "shard<TAB>file" lines, shard 1..SHARDS; a file whose path matches
-- an exclude pattern (a Lua pattern, as busted's --exclude-pattern) is left
-- out.
local DEFAULT_SECONDS = 5
local TIMINGS = "spec/timings.txt"

local shards = tonumber(arg[1])
assert(shards and shards >= 1, "usage: deal-specs.lua SHARDS [EXCLUDE_PATTERN...] < files")
local excludes = { table.unpack(arg, 2) }

local seconds = {}
local timings = io.open(TIMINGS)
if timings then
  for line in timings:lines() do
    local took, file = line:match("^%s*([%d.]+)%s+(%S+)")
    if took then seconds[file] = tonumber(took) end
  end
  timings:close()
end

local files = {}
for file in io.stdin:lines() do
  local excluded = false
  for _, pattern in ipairs(excludes) do
    if file:find(pattern) then excluded = true end
  end
  if not excluded then files[#files + 1] = { name = file, seconds = seconds[file] or DEFAULT_SECONDS } end
end
-- ties by name: the same deal on every run
table.sort(files, function(a, b)
  if a.seconds ~= b.seconds then return a.seconds > b.seconds end
  return a.name < b.name
end)

local load = {}
for k = 1, shards do load[k] = 0 end
for _, file in ipairs(files) do
  local least = 1
  for k = 2, shards do
    if load[k] < load[least] then least = k end
  end
  load[least] = load[least] + file.seconds
  io.write(least, "\t", file.name, "\n")
end

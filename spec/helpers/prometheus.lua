-- Reads Prometheus text exposition with Debian's python3-prometheus-client
-- parser (prometheus_client.parser.text_string_to_metric_families), the
-- parser a scraper's side uses, rather than with a pattern of our own.
local jose = require("helpers.jose")

local M = {}

local PARSE = [=[
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = json.load(open(sys.argv[1]))["text"]
families = {}
for family in text_string_to_metric_families(text):
    families[family.name] = {
        "type": family.type,
        "help": family.documentation,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
    }
print(json.dumps(families))
]=]

-- name -> { type, help, samples = { { name, labels, value } } }. The
-- client names a counter family without its _total suffix.
function M.parse(text)
  return jose.python(PARSE, { text = text })
end

-- The sum of the samples called `sample` whose labels include `labels`
-- (0 when none): a count over the label sets a test does not pin.
function M.sum(families, sample, labels)
  local total = 0
  for _, family in pairs(families) do
    for _, s in ipairs(family.samples) do
      local match = s.name == sample
      for k, v in pairs(labels or {}) do
        if s.labels[k] ~= v then match = false end
      end
      if match then total = total + s.value end
    end
  end
  return total
end

-- The samples called `sample` (each { name, labels, value }).
function M.samples(families, sample)
  local list = {}
  for _, family in pairs(families) do
    for _, s in ipairs(family.samples) do
      if s.name == sample then list[#list + 1] = s end
    end
  end
  return list
end

return M

-- scripts/bench_nginx.lua run for real, short and light: nginx with the
-- fault module's latency in front of SoftHSM, wrk on both endpoints. It
-- checks what the benchmark reports, not how fast anything was: the JWK
-- Set reader keeps to --jwks-rate, and the CPU is split between the
-- event loops, the thread pool's threads and wrk.
local softhsm = require("helpers.softhsm")

-- The row of one mode in the benchmark's table, as a list of cells.
local function row(output, mode)
  local line = output:match("\n(| " .. mode .. " |[^\n]*)")
  if not line then return nil end
  local cells = {}
  for cell in line:gmatch("|%s*([^|]-)%s*%f[|]") do cells[#cells + 1] = cell end
  return cells
end

describe("scripts/bench_nginx.lua", function()
  it("caps the JWK Set reader at --jwks-rate, sets --in-flight and reports where the CPU went", function()
    local output = assert(io.popen(string.format("cd %s/.. && %s/jwkengine scripts/bench_nginx.lua --seconds 2 " ..
      "--connections 4 --jwks-connections 2 --jwks-rate 20 --modes thread --latency-us 2000 --in-flight 2 2>&1",
      softhsm.BUILD, softhsm.BUILD))):read("a")
    local cells = row(output, "thread")
    assert.is_table(cells, output)
    local header = row(output, "mode")
    assert.are.equal(#header, #cells, output)
    local by_name = {}
    for i, name in ipairs(header) do by_name[name] = cells[i] end
    assert.is_true(tonumber(by_name["tokens/s"]) > 0, output)
    assert.are.equal("0 (0)", by_name["503 (with Retry-After)"], output)
    assert.are.equal("0", by_name["other non-2xx"], output)
    -- 2 connections at 10 requests/s each for 2 s: 20/s, plus the first
    -- request of each connection; without the cap wrk reads thousands a second
    local jwks = tonumber(by_name["JWKS/s"])
    assert.is_true(jwks > 0 and jwks <= 22, output)
    -- thousands of signatures and requests cannot cost zero jiffies
    assert.is_true(tonumber(by_name["of it event loops µs"]) > 0, output)
    assert.is_true(tonumber(by_name["pool threads per token µs"]) > 0, output)
    assert.is_true(tonumber(by_name["wrk CPU per request µs"]) > 0, output)
  end)

  it("holds event0 (SoftHSM itself, no JWK Set reader) against 2 raw signing processes", function()
    local output = assert(io.popen(string.format("cd %s/.. && %s/jwkengine scripts/bench_nginx.lua --seconds 1 " ..
      "--connections 2 --jwks-connections 0 --modes event0 2>&1", softhsm.BUILD, softhsm.BUILD))):read("a")
    local cells = row(output, "event0")
    assert.is_table(cells, output)
    assert.are.equal("0 µs", cells[2], output)
    local tokens, raw, ratio = output:match(
      "event0 against the raw floor: POST /token (%d+)/s, raw C_SignInit %+ C_Sign loops in 2 processes (%d+)/s " ..
      "on the same token and cores: ([%d.]+)")
    assert.is_truthy(ratio, output)
    assert.is_true(tonumber(tokens) > 0 and tonumber(raw) > 0, output)
    -- printed from the unrounded rates
    assert.is_true(math.abs(tokens / raw - tonumber(ratio)) < 0.011, output)
  end)
end)

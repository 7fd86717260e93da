-- wrk -s scripts/bench/wrk_count.lua URL [-- post | -- rate=N]: counts the responses by
-- status (and the 503s that carry Retry-After) over all of wrk's threads,
-- and prints them with the 99th percentile latency as `name value` lines
-- for scripts/bench_nginx.lua. With `post`: POST a JSON object of claims;
-- with `rate=N`: at most N requests a second per connection.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  if args[1] == "post" then
    wrk.method = "POST"
    wrk.body = '{"sub":"bench-user","scope":"openid profile"}'
    wrk.headers["Content-Type"] = "application/json"
  end
  statuses = {}
  retry_after = 0
  local rate = tonumber((args[1] or ""):match("^rate=([%d.]+)$"))
  pause_ms = rate and 1000 / rate or nil
end

-- With rate=N: each connection waits 1/N s before its next request, so a
-- reader takes its share of the machine, not every idle cycle.
function delay()
  return pause_ms or 0
end

function response(status, headers)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["Retry-After"] then retry_after = retry_after + 1 end
end

function done(summary, latency)
  local totals, with_retry_after = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do totals[status] = (totals[status] or 0) + n end
    with_retry_after = with_retry_after + thread:get("retry_after")
  end
  for status, n in pairs(totals) do io.write(string.format("status_%d %d\n", status, n)) end
  io.write(string.format("retry_after %d\n", with_retry_after))
  io.write(string.format("requests %d\nseconds %.3f\n", summary.requests, summary.duration / 1e6))
  io.write(string.format("socket_errors %d\n", summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
  io.write(string.format("p99_ms %.3f\np50_ms %.3f\n", latency:percentile(99) / 1000, latency:percentile(50) / 1000))
end

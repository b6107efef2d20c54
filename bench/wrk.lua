-- wrk script: replays webhooks pre-signed by bench/load.py, one line each, never the same one twice
-- while the file lasts (a replayed webhook-id would be a duplicate delivery, not a new webhook).
-- Arguments (after `--`): the file, the number of wrk threads. Prints one JSON line when done.

local threads, created = {}, 0

function setup(thread)
  created = created + 1
  thread:set("index", created)
  table.insert(threads, thread)
end

function init(args)
  local path, stride = args[1], tonumber(args[2])
  requests, statuses, position, wrapped = {}, {}, 0, 0
  local n = 0
  for line in io.lines(path) do
    if n % stride == index - 1 then
      local id, timestamp, signature, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {["Content-Type"] = "application/json", ["webhook-id"] = id,
                       ["webhook-timestamp"] = timestamp, ["webhook-signature"] = signature}
      table.insert(requests, wrk.format("POST", nil, headers, body))
    end
    n = n + 1
  end
end

function request()
  position = position + 1
  if position > #requests then
    position, wrapped = 1, wrapped + 1
  end
  return requests[position]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts, wraps = {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
    wraps = wraps + thread:get("wrapped")
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  local errors = summary.errors
  io.write(string.format(
    '\nBENCH {"requests": %d, "duration_s": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, ' ..
    '"errors": %d, "wrapped": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, errors.connect + errors.read + errors.write + errors.timeout, wraps,
    table.concat(parts, ", ")))
end

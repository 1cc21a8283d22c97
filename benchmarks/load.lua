-- wrk script of benchmarks.load: POSTs prepared bodies, closed-loop or paced, and records latency by status.
--
-- wrk -t N -c N -d 10s -s benchmarks/load.lua http://127.0.0.1:PORT -- RATE LIMIT PATH CONTENT-TYPE BODY-FILE...
--
--   RATE          requests per second for each thread (0: closed loop, the next request as soon as one is
--                 answered); a paced thread sends on a fixed schedule, and catches up at once when an answer came late
--   LIMIT         requests each thread sends at most (the phase is also bounded by -d)
--   CONTENT-TYPE  the bodies' type, one argument: "application/json", or for forms
--                 "multipart/form-data; boundary=B" with the boundary the files were written with
--                 (benchmarks.harness.multipart_body)
--   BODY-FILE     sent byte for byte, in turn; each request carries its Content-Length
--
-- One connection per thread (-t equal to -c), so each response answers its thread's last request: that is
-- what lets latency be told apart by status. done() prints one line, "castream-wrk <JSON>", with each
-- thread's statuses and latencies (microseconds) in order, and its first send and last answer times.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } castream_timespec;
int clock_gettime(int clock, castream_timespec *now);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("castream_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local threads = {}

function setup(thread)
  thread:set("index", #threads)
  threads[#threads + 1] = thread
end

local bodies, interval, limit, next_at, sent_at

function init(args)
  local rate = tonumber(args[1])
  limit = tonumber(args[2])
  local path, content_type = args[3], args[4]
  bodies = {}
  for i = 5, #args do
    local file = assert(io.open(args[i], "rb"))
    bodies[#bodies + 1] = wrk.format("POST", path, { ["Content-Type"] = content_type }, file:read("*a"))
    file:close()
  end
  sent, answered, first_sent, last_answered, retry_after = 0, 0, 0, 0, ""
  -- Flat arrays: wrk copies only those between threads (a nested table crashes it).
  statuses, latencies = {}, {} -- per answer: its status and its latency in microseconds
  interval = rate > 0 and 1000000 / rate or 0
  if interval > 0 then
    delay = paced -- wrk only asks for delays when the script defines the function
  end
end

function paced()
  local now = now_us()
  if next_at == nil then
    next_at = now + interval * ((index or 0) % 16) / 16 -- threads spread over the first interval
  end
  local wait = next_at - now
  next_at = next_at + interval
  return wait > 0 and math.floor(wait / 1000) or 0
end

function request()
  sent = sent + 1
  sent_at = now_us()
  return bodies[(sent - 1) % #bodies + 1]
end

function response(status, headers, body)
  local now = now_us()
  answered = answered + 1
  statuses[answered] = status
  latencies[answered] = math.floor(now - sent_at)
  if status == 503 and retry_after == "" then
    retry_after = headers["retry-after"] or headers["Retry-After"] or ""
  end
  if first_sent == 0 then
    first_sent = sent_at -- here rather than in request(): wrk calls request() once before the run to check it
  end
  last_answered = now
  if answered >= limit then
    -- A stopped thread does not end the run (wrk sleeps out -d): this line lets the caller end it with SIGINT,
    -- on which wrk stops every thread and reports as at the end of -d.
    io.write("castream-thread-done\n")
    io.flush()
    wrk.thread:stop()
  end
end

local function list(values)
  local parts = {}
  for i = 1, #values do
    parts[i] = string.format("%.0f", values[i])
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

function done(summary, latency, requests)
  local out = {}
  for i, thread in ipairs(threads) do
    out[i] = string.format(
      '{"first_sent":%.0f,"last_answered":%.0f,"retry_after":"%s","statuses":%s,"latencies_us":%s}',
      thread:get("first_sent"),
      thread:get("last_answered"),
      (thread:get("retry_after"):gsub("[^%w]", "")),
      list(thread:get("statuses")),
      list(thread:get("latencies"))
    )
  end
  local e = summary.errors
  local socket = string.format(
    '{"connect":%d,"read":%d,"write":%d,"timeout":%d}', e.connect, e.read, e.write, e.timeout
  )
  io.write('castream-wrk {"threads":[', table.concat(out, ","), '],"socket_errors":', socket, "}\n")
end

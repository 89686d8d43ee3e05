-- wrk script for the ingest benchmark (driven by loadtests/bench.py; usable alone too).
--
-- POSTs SDK-shaped events to /v1/events: one event per request (BENCH_BATCH=1) or
-- {"batch": [...]} of BENCH_BATCH events. Every event has a unique message_id
-- (<run id>-<thread>-<counter>), so the rows stored must equal the events acknowledged.
--
-- Environment:
--   BENCH_WRITE_KEY   the project's write key (required)
--   BENCH_BATCH       events per request (default 1)
--   BENCH_RUN_ID      prefix of every message_id (default: a random one)
--   BENCH_SECONDS     how long to send; after that each connection only waits for its last
--                     answer, so nothing is in flight when wrk stops (run wrk with -d longer
--                     than this). Default: send until wrk stops.
--   BENCH_DONE_DIR    when set, a thread that has had every answer after BENCH_SECONDS stops
--                     and creates the file thread-<n> there; once all exist, bench.py sends
--                     wrk SIGINT, which ends the run at once and still calls done().
--
-- done() prints one line "BENCH_RESULT {json}" that bench.py parses: requests answered,
-- status counts, events acknowledged (sum of "accepted"), duplicates, latency percentiles (us),
-- and the measured sending window.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local write_key = os.getenv("BENCH_WRITE_KEY") or ""
local batch_size = tonumber(os.getenv("BENCH_BATCH") or "1")
local run_id = os.getenv("BENCH_RUN_ID") or string.format("r%d", math.random(1, 1e9))
local seconds = tonumber(os.getenv("BENCH_SECONDS") or "0")
local done_dir = os.getenv("BENCH_DONE_DIR")

local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. write_key,
}

local CONTEXT = '{"library":{"name":"analytics.js","version":"5.2.0"},"locale":"en-US",'
  .. '"timezone":"Europe/Paris","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 '
  .. '(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36","page":{"path":"/products/sku-1",'
  .. '"referrer":"https://www.example.com/","title":"Shoes","url":'
  .. '"https://shop.example.com/products/sku-1"}}'

-- -- the main state: one "thread" object per wrk thread --------------------------------------
local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

-- -- each thread's own state ----------------------------------------------------------------
-- Globals below live in each thread's Lua state; done() reads them with thread:get().
thread_no = 0
counter = 0
sent = 0
answered = 0
ok = 0
non200 = 0
s5xx = 0
accepted = 0
duplicates = 0
rejected_responses = 0
statuses = {}
first_sent = 0
last_answer = 0
deadline = 0
finished = false

-- One event, the same shapes bench.py builds for the raw COPY (keep the two in step):
-- nine "Product Viewed" tracks, then one identify whose traits carry an email and a phone.
local function event(n, timestamp, with_sent_at)
  local k = n % 10000
  local mid = string.format('"message_id":"%s-%d-%d"', run_id, thread_no, n)
  local who = string.format('"user_id":"user-%d-%d","anonymous_id":"anon-%d-%d"',
    thread_no, k, thread_no, k)
  local sent_at = with_sent_at and string.format(',"sent_at":"%s"', timestamp) or ""
  if n % 10 == 9 then
    return string.format(
      '{"type":"identify",%s,%s,"timestamp":"%s"%s,"app_id":"shop-web",'
        .. '"traits":{"email":"User.%d@Example.com","phone":"+1 415 555 %04d",'
        .. '"plan":"pro","name":"Bench User"},"context":%s}',
      mid, who, timestamp, sent_at, k, k, CONTEXT)
  end
  return string.format(
    '{"type":"track","event":"Product Viewed",%s,%s,"timestamp":"%s"%s,"app_id":"shop-web",'
      .. '"properties":{"product_id":"sku-%d","price":19.99,"currency":"USD",'
      .. '"category":"shoes","position":%d},"context":%s}',
    mid, who, timestamp, sent_at, k % 500, n % 20, CONTEXT)
end

local function started()
  if first_sent == 0 then
    first_sent = now()
    if seconds > 0 then
      deadline = first_sent + seconds
    end
  end
end

-- wrk calls delay() before every request a connection sends (and request() once more, at
-- start, only to check the script: so requests are counted here, not in request()).
-- After the deadline a connection is parked for an hour (wrk stops long before), so every
-- request sent gets its answer counted and none is in flight when wrk exits.
function delay()
  started()
  if deadline > 0 and now() >= deadline then
    return 3600000
  end
  sent = sent + 1
  return 0
end

function request()
  local timestamp = os.date("!%Y-%m-%dT%H:%M:%S.000Z")
  local body
  if batch_size <= 1 then
    counter = counter + 1
    body = event(counter, timestamp, true)
  else
    local parts = {}
    for i = 1, batch_size do
      counter = counter + 1
      parts[i] = event(counter, timestamp, false)
    end
    body = string.format('{"sent_at":"%s","batch":[%s]}', timestamp, table.concat(parts, ","))
  end
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
  answered = answered + 1
  last_answer = now()
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    ok = ok + 1
    local a = tonumber(string.match(body, '"accepted":(%d+)')) or 0
    local d = tonumber(string.match(body, '"duplicates":(%d+)')) or 0
    accepted = accepted + a
    duplicates = duplicates + d
    if not string.find(body, '"rejected":[]', 1, true) then
      rejected_responses = rejected_responses + 1
    end
  else
    non200 = non200 + 1
    if status >= 500 then
      s5xx = s5xx + 1
    end
  end
  if deadline > 0 and not finished and answered == sent and last_answer >= deadline then
    -- Past the deadline with nothing in flight: this thread is done.
    finished = true
    if done_dir then
      local marker = io.open(string.format("%s/thread-%d", done_dir, thread_no), "w")
      if marker then marker:close() end
    end
    wrk.thread:stop()
  end
end

-- -- the main state again, once every thread has stopped -----------------------------------
function done(summary, latency, requests)
  local totals = {
    sent = 0, answered = 0, ok = 0, non200 = 0, s5xx = 0, accepted = 0, duplicates = 0,
    rejected_responses = 0,
  }
  local status_counts = {}
  local t0, t1 = nil, nil
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
    for code, n in pairs(thread:get("statuses") or {}) do
      status_counts[code] = (status_counts[code] or 0) + n
    end
    local f, l = thread:get("first_sent") or 0, thread:get("last_answer") or 0
    if f > 0 and (t0 == nil or f < t0) then t0 = f end
    if l > 0 and (t1 == nil or l > t1) then t1 = l end
  end
  local codes = {}
  for code, n in pairs(status_counts) do
    table.insert(codes, string.format('"%d":%d', code, n))
  end
  local e = summary.errors
  local out = {
    string.format('"batch":%d', batch_size),
    string.format('"window_s":%.6f', (t0 and t1 and t1 > t0) and (t1 - t0) or 0),
    string.format('"wrk_duration_s":%.6f', summary.duration / 1e6),
    string.format('"wrk_requests":%d', summary.requests),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"statuses":{%s}', table.concat(codes, ",")),
    string.format('"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}',
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean),
  }
  for name, value in pairs(totals) do
    table.insert(out, string.format('"%s":%d', name, value))
  end
  io.write("BENCH_RESULT {" .. table.concat(out, ",") .. "}\n")
end

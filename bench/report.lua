-- report.lua - turns the RESULT lines of every round into one table of medians and ratios.
--
--   lua5.4 bench/report.lua RESULTS INFO EXPECT OUT.md
-- RESULTS: lines "RESULT <section> <name> <value> <unit>", any number per (section, name).
-- INFO:    lines "machine|<key>|<value>" and "param|<key>|<value>" (from bench/run.sh).
-- EXPECT:  lines "<section> <name>" that must have a number; a missing one fails the report.
-- Prints the table; writes OUT.md (machine, table, how measured). Exits 1 if anything is missing.
local results_path, info_path, expect_path, out_path = arg[1], arg[2], arg[3], arg[4]
assert(out_path, "usage: report.lua RESULTS INFO EXPECT OUT.md")

local ORDER = { "roundtrip", "cached", "concurrency", "memory", "openresty" }
local BASELINE = { roundtrip = "libcurl", cached = "floor", openresty = "without-lusidauth" }

local rows, by_key, sections = {}, {}, {}
local bad = {}
for line in io.lines(results_path) do
  local sec, name, value, unit = line:match("^RESULT%s+(%S+)%s+(%S+)%s+(%S+)%s+(%S+)%s*$")
  local v = tonumber(value)
  if not sec then
    bad[#bad + 1] = "malformed line: " .. line
  elseif not v or v ~= v or v == math.huge or v == -math.huge then
    bad[#bad + 1] = ("%s %s: not a number: %s"):format(sec, name, value)
  else
    local key = sec .. " " .. name
    local row = by_key[key]
    if not row then
      row = { section = sec, name = name, unit = unit, values = {} }
      by_key[key], rows[#rows + 1] = row, row
      sections[sec] = true
    end
    row.values[#row.values + 1] = v
  end
end

local info, params = {}, {}
for line in io.lines(info_path) do
  local kind, k, v = line:match("^(%a+)|([^|]*)|(.*)$")
  if kind == "machine" then info[#info + 1] = { k, v } elseif kind == "param" then params[k] = v end
end

for line in io.lines(expect_path) do
  local sec, name = line:match("^(%S+)%s+(%S+)")
  if sec and not by_key[sec .. " " .. name] then bad[#bad + 1] = ("%s %s: no result"):format(sec, name) end
end

local function median(t)
  local s = table.move(t, 1, #t, 1, {})
  table.sort(s)
  local m = #s // 2
  if #s % 2 == 1 then return s[m + 1] end
  return (s[m] + s[m + 1]) / 2
end

local function fmt(v)
  local a = math.abs(v)
  if v == math.floor(v) and a < 1e15 then return ("%d"):format(v)
  elseif a >= 1000 then return ("%.0f"):format(v)
  elseif a >= 100 then return ("%.1f"):format(v)
  elseif a >= 1 then return ("%.2f"):format(v)
  else return ("%.3f"):format(v) end
end

-- sections in the fixed order, then any other; the baseline first in its section
local order_idx = {}
for i, s in ipairs(ORDER) do order_idx[s] = i end
local first_seen = {}
for i, r in ipairs(rows) do
  r.seen = i
  first_seen[r.section] = first_seen[r.section] or i
end
table.sort(rows, function(a, b)
  if a.section ~= b.section then
    local ia, ib = order_idx[a.section] or 100, order_idx[b.section] or 100
    if ia ~= ib then return ia < ib end
    return first_seen[a.section] < first_seen[b.section]
  end
  local ba, bb = BASELINE[a.section] == a.name, BASELINE[b.section] == b.name
  if ba ~= bb then return ba end
  return a.seen < b.seen
end)

for _, r in ipairs(rows) do r.median = median(r.values) end
local header = { "section", "benchmark", "median", "unit", "ratio", "min … max", "runs" }
local lines = { "| " .. table.concat(header, " | ") .. " |", "|---|---|--:|---|--:|--:|--:|" }
for _, r in ipairs(rows) do
  local base = BASELINE[r.section] and by_key[r.section .. " " .. BASELINE[r.section]]
  local ratio = ""
  if base and base.median ~= 0 and base.unit == r.unit then -- only like against like
    ratio = base == r and "1.00 (baseline)" or ("%.2f"):format(r.median / base.median)
  end
  local lo, hi = math.min(table.unpack(r.values)), math.max(table.unpack(r.values))
  lines[#lines + 1] = ("| %s | %s | %s | %s | %s | %s … %s | %d |"):format(
    r.section, r.name, fmt(r.median), r.unit, ratio, fmt(lo), fmt(hi), #r.values)
end
local table_text = table.concat(lines, "\n")
local legend = "Ratio: roundtrip = µs / libcurl floor and cached = ns / C floor (lower is better); " ..
  "openresty = req/s / req/s without lusidauth (1.00 = no cost)."

print(table_text)
print(legend)

local p = function(k) return params[k] or "?" end
local md = {
  "# lusidauth benchmarks", "",
  ("Written by `%s` on %s: %s rounds; in each round every benchmark ran once, in turn. " ..
   "Each number is the median over its runs (the `runs` column; `bench/cached.lua` does rounds " ..
   "of its own, all pooled)."):format(p "command", p "date", p "rounds"), "",
  "## Machine", "", "| | |", "|---|---|",
}
for _, kv in ipairs(info) do md[#md + 1] = ("| %s | %s |"):format(kv[1], kv[2]) end
md[#md + 1] = ""
md[#md + 1] = "## Results"
md[#md + 1] = ""
md[#md + 1] = table_text
md[#md + 1] = ""
md[#md + 1] = legend
md[#md + 1] = ""
md[#md + 1] = "## How measured"
md[#md + 1] = ""
md[#md + 1] = ([[
Everything runs on loopback on this one machine. The token endpoint is Debian's nginx returning
a fixed Okta-shaped refresh-grant body (a %s-character access token, `expires_in`, `scope`,
`refresh_token`) with `return 200`, keep-alive on, one worker. **roundtrip**: %s timed refresh
grants per client and round (curl-process %s, python-requests %s), the median of the per-request
times: `lusidauth` is `c:refresh()` on a `shared = false, retries = 0` client; `libcurl` is
`bench/curl_floor.c`, the same POST with Basic auth through one reused easy handle (no JSON
parsing); `curl-process` is a new `curl -s -X POST -u … --data-urlencode …` process per request;
`python-requests` is `requests.post(..., auth=...)` plus `.json()` with no Session (a new
connection each time); `luasocket` is `socket.http.request` plus `cjson.decode` (a new
connection each time). **cached**: `bench/cached.lua`, if present. **concurrency**:
`build/embed/host -t 16` against the fake Okta (`spec/support/fake_okta.lua`) issuing %s-second
tokens, %s calls per thread %s µs apart; token requests per expiry = refresh grants / (distinct
tokens − 1); cached throughput = calls / elapsed of a `-i 0` run of %s calls per thread (the
first login included); p50/p99 are the host's per-call latencies including `lua_pcall`.
**memory**: `bench/memory.lua` in lua5.4: %s `shared = false` clients kept alive, the change in
RSS (`/proc/self/statm`) and in `collectgarbage("count")` divided by their number; then one
client's RSS after %s and after %s `c:refresh()` calls against the static endpoint, each after
two full collections. **openresty**: `examples/openresty/nginx.conf` templated as
`tools/nginx_test.sh` does, one worker, proxying `/api/` to a second static nginx server that
answers `200 {}`; `wrk -t1 -c%s -d%ss` against three copies, run in turn, the order reversed
every other round: `with-lusidauth` (the example as is), `without-lusidauth` (its
`access_by_lua_block` removed by sed) and `constant-headers` (the block kept, but setting the
`Authorization` value that `client:authorization()` returned on the first request: the cost of `access_by_lua`,
`ngx.req.set_header` and the larger upstream request, without lusidauth's per-request work).
`authorization()-call` and `cached()-call` are µs per call of a %s-call loop inside the worker
(`os.clock`, no network).]]):format(
  p "token_len", p "rt_n", p "rt_proc_n", p "rt_py_n", p "conc_exp", p "conc_n", p "conc_i",
  p "cached_n", p "mem_clients", p "mem_r1", p "mem_r2", p "wrk_c", p "wrk_d", p "hdr_n")
md[#md + 1] = ""
-- the hand-written reading of the targets, kept beside the script so a rerun keeps it
local tf = io.open((arg[0]:gsub("report%.lua$", "TARGETS.md")), "r")
if tf then
  md[#md + 1] = tf:read("*a")
  tf:close()
end
local f = assert(io.open(out_path, "w"))
f:write(table.concat(md, "\n"))
f:close()

if #bad > 0 then
  for _, b in ipairs(bad) do io.stderr:write("report: ", b, "\n") end
  os.exit(1)
end

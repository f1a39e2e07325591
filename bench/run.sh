#!/usr/bin/env bash
# bench/run.sh [--smoke] - every lusidauth benchmark, side by side, in rounds; then one table of
# medians and ratios (bench/report.lua), written to bench/RESULTS.md (--smoke: bench/work/).
#
# Expects the builds `make bench` does first: build/5.4 (lua5.4), build/jit (OpenResty) and
# build/embed/host. Installs the Debian packages it needs when missing (LUSIDAUTH_NO_DEPS=1 skips).
# Starts, on 127.0.0.1 only, a static nginx (the token endpoint and the upstream), the fake Okta
# and two gateway nginx; stops them on exit. --smoke: one round with tiny counts, for CI; exits 0
# only if every benchmark ran and produced numbers (timings are never judged).
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/bench/work
MODE=full
[ "${1:-}" = --smoke ] && MODE=smoke

if [ "$MODE" = full ]; then
  ROUNDS=5 RT_N=5000 RT_PROC_N=200 RT_PY_N=400 CONC_N=1500 CONC_I=3000 CONC_EXP=2
  CACHED_N=1000000 MEM_CLIENTS=10000 MEM_R1=1000 MEM_R2=100000 WRK_C=16 WRK_D=3 HDR_N=100000
  OUT_MD=$ROOT/bench/RESULTS.md CACHED_ARGS=()
else
  ROUNDS=1 RT_N=20 RT_PROC_N=3 RT_PY_N=5 CONC_N=400 CONC_I=2500 CONC_EXP=1
  CACHED_N=100000 MEM_CLIENTS=1000 MEM_R1=100 MEM_R2=1000 WRK_C=4 WRK_D=1 HDR_N=1000
  OUT_MD=$WORK/RESULTS-smoke.md CACHED_ARGS=(--smoke)
fi
ID=bench-client SECRET=bench-secret TOKEN_LEN=900
PY=/usr/bin/python3 # Debian's, with python3-requests

say() { echo "bench: $*" >&2; }
die() { say "$*"; exit 1; }

# --- what the benchmarks need --------------------------------------------------------------------
need_pkgs() {
  [ "${LUSIDAUTH_NO_DEPS:-0}" = 1 ] && return 0
  local p missing=""
  for p in gcc curl libcurl4-openssl-dev pkg-config lua5.4 lua-socket lua-sec lua-cjson openssl \
           luajit2 nginx libnginx-mod-http-lua lua-resty-core python3 python3-requests wrk; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
    die "apt-get install$missing failed"
}
need_pkgs
for f in build/5.4/lusidauth/core.so build/jit/lusidauth/core.so build/embed/host; do
  [ -f "$f" ] || die "$f is missing: run make, make LUA_VERSION=jit and make embed first (make bench does)"
done

rm -rf "$WORK"
mkdir -p "$WORK/logs"
RESULTS=$WORK/results.txt EXPECT=$WORK/expect.txt INFO=$WORK/info.txt FAILED=$WORK/failed.txt
: >"$RESULTS"; : >"$EXPECT"; : >"$FAILED"

cc -std=c99 -O2 -Wall -Wextra $(pkg-config --cflags libcurl) bench/curl_floor.c -o "$WORK/curl_floor" \
  $(pkg-config --libs libcurl) || die "cannot build bench/curl_floor.c"

export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" LUA_CPATH="$ROOT/build/5.4/?.so;;"
# bench/cached.lua's floor module (bench/floor.c): the build in build/bench if there is one, else ours
FLOOR_CPATH="$ROOT/build/bench/?.so"
if [ -f bench/cached.lua ] && [ ! -f build/bench/benchfloor.so ] && [ -f bench/floor.c ]; then
  mkdir -p "$WORK/cpath"
  cc -std=c99 -O2 -fPIC -shared $(pkg-config --cflags lua5.4) bench/floor.c -o "$WORK/cpath/benchfloor.so" ||
    die "cannot build bench/floor.c"
  FLOOR_CPATH="$WORK/cpath/?.so"
fi
export PAGESIZE=$(getconf PAGESIZE)

# --- servers -------------------------------------------------------------------------------------
PIDFILES=()
OKTA_DIR=$WORK/okta
cleanup() {
  local f
  for f in "${PIDFILES[@]}"; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  [ -f "$OKTA_DIR/fake_okta.pid" ] && sh spec/support/server.sh stop "$OKTA_DIR" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() { # N: N distinct free loopback ports, held open together while picked
  lua5.4 -e "n = $1" -e 'local socket = require "socket" local s = {}
    for i = 1, n do s[i] = assert(socket.bind("127.0.0.1", 0)) end
    for i = 1, #s do local _, p = s[i]:getsockname() print(p) end
    for i = 1, #s do s[i]:close() end'
}
wait_http() { # URL: until it answers, at most 5 s
  local i=0
  until curl -s -o /dev/null "$1"; do i=$((i + 1)); [ $i -gt 50 ] && return 1; sleep 0.1; done
}
start_nginx() { # DIR: runs DIR/nginx.conf with prefix DIR/p
  mkdir -p "$1/p"
  [ "$(id -u)" = 0 ] && sed -i '1i user root root;' "$1/nginx.conf"
  nginx -p "$1/p" -e "$1/p/error.log" -c "$1/nginx.conf" -g 'daemon on;' 2>"$1/start.err" ||
    die "nginx failed to start ($1): $(cat "$1/start.err")"
  PIDFILES+=("$1/p/nginx.pid")
}

read -r TOKEN_PORT API_PORT GW_WITH GW_CONST GW_WITHOUT < <(free_ports 5 | tr '\n' ' ')
TOKEN_URL="http://127.0.0.1:$TOKEN_PORT/oauth2/default/v1/token"
# a JWT-shaped opaque access token of TOKEN_LEN characters, as Okta's are
ACCESS_TOKEN=$(lua5.4 -e "n = $TOKEN_LEN" -e 'local s = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIn0." .. ("eyJzdWIiOiJiZW5jaEBleGFtcGxlLmNvbSJ9"):rep(40)
  print(s:sub(1, n - 44) .. "." .. ("c2lnbmF0dXJlXw"):rep(4):sub(1, 43))')
[ ${#ACCESS_TOKEN} = "$TOKEN_LEN" ] || die "token length ${#ACCESS_TOKEN}"
mkdir -p "$WORK/static"
sed -e "s|@PREFIX@|$WORK/static/p|g" -e "s|@TOKEN_LISTEN@|127.0.0.1:$TOKEN_PORT|" \
    -e "s|@API_LISTEN@|127.0.0.1:$API_PORT|" -e "s|@TOKEN@|$ACCESS_TOKEN|" -e "s|@USER@||" \
    bench/static.conf >"$WORK/static/nginx.conf"
start_nginx "$WORK/static"
wait_http "http://127.0.0.1:$API_PORT/api/x" || die "static nginx does not answer"

eval "$(sh spec/support/server.sh start "$OKTA_DIR")" || die "fake Okta did not start"
OKTA="http://127.0.0.1:$(awk '$1 == "http" { print $2 }' "$LUSIDAUTH_FAKE_OKTA_PORTS")"

CONST_BLOCK='        local a = package.loaded["bench.authorization"]
        if not a then
          a = assert(package.loaded["lusid.gateway"]:authorization())
          package.loaded["bench.authorization"] = a
        end
        ngx.req.set_header("Authorization", a)'
TIMING_LOCATION='    location = /bench/headers {
      content_by_lua_block {
        local client, n = package.loaded["lusid.gateway"], tonumber(ngx.var.arg_n) or 10000
        assert(client:authorization())
        local t0 = os.clock()
        for _ = 1, n do client:authorization() end
        local t1 = os.clock()
        for _ = 1, n do client:cached() end
        ngx.say(("%.3f %.3f"):format((t1 - t0) / n * 1e6, (os.clock() - t1) / n * 1e6))
      }
    }
'
# The gateway, templated as tools/nginx_test.sh does, one worker, proxying to the static upstream;
# the token endpoint is the static one. "without" has its access_by_lua_block cut out.
export FBN_TOKEN_URL=$TOKEN_URL FBN_CLIENT_ID=$ID FBN_CLIENT_SECRET=$SECRET
export FBN_USERNAME=bench@example.com FBN_PASSWORD=bench-password FBN_APP_NAME=bench
gw_port() { case $1 in with) echo "$GW_WITH" ;; constant) echo "$GW_CONST" ;; *) echo "$GW_WITHOUT" ;; esac; }
for v in with constant without; do
  port=$(gw_port $v) conf=$WORK/gw-$v/nginx.conf
  mkdir -p "$WORK/gw-$v"
  sed -e "s|@PREFIX@|$WORK/gw-$v/p|g" -e "s|@LUA_PATH@|$ROOT/lua/?.lua;$ROOT/lua/?/init.lua|" \
      -e "s|@LUA_CPATH@|$ROOT/build/jit/?.so|" -e "s|@CA_FILE@|$LUSIDAUTH_TEST_CA|" \
      -e "s|@LISTEN@|127.0.0.1:$port|" -e "s|@LUSID@|http://127.0.0.1:$API_PORT|" -e "s|@WORKERS@|1|" -e "s|@RESOLVER@|127.0.0.1|" -e "s|@STORE@|{}|" \
      examples/openresty/nginx.conf >"$conf"
  case $v in
  without) sed -i '/access_by_lua_block {/,/^      }$/d' "$conf" ;;
  constant) # the block's body replaced: set the Authorization of the first request on every request
    awk -v body="$CONST_BLOCK" 'skip && /^      }$/ { skip = 0 } skip { next }
      /access_by_lua_block \{/ { print; print body; skip = 1; next } { print }' "$conf" >"$conf.tmp" ;;
  with) # one more location, timing client:authorization() inside the worker (no network)
    awk -v loc="$TIMING_LOCATION" '/location = \/health/ { print loc } { print }' "$conf" >"$conf.tmp" ;;
  esac
  [ -f "$conf.tmp" ] && mv "$conf.tmp" "$conf"
  start_nginx "$WORK/gw-$v"
  wait_http "http://127.0.0.1:$port/health" || die "gateway ($v) does not answer"
done
grep -q access_by_lua "$WORK/gw-without/nginx.conf" && die "sed left access_by_lua in the 'without' config"
grep -q 'bench.authorization' "$WORK/gw-constant/nginx.conf" || die "the 'constant' config was not made"
# each gateway must do what it claims: the upstream sees a bearer token only through "with"
sleep 0.2 # the first token is fetched in a timer
for v in with:yes constant:yes without:no; do
  port=$(gw_port "${v%:*}")
  got=$(curl -s "http://127.0.0.1:$port/api/check")
  [ "$got" = "{\"authorization\":\"${v#*:}\"}" ] || die "gateway ${v%:*}: /api/check answered '$got'"
done

# --- benchmarks: each prints RESULT lines --------------------------------------------------------
median_us() { sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

curl_process() { # a new curl process per request, as the seed documents
  local i t0 t1 body
  body=$(curl -s -X POST -u "$ID:$SECRET" --data-urlencode grant_type=refresh_token \
         --data-urlencode refresh_token=rt.x "$TOKEN_URL")
  case $body in *'"access_token"'*) ;; *) echo "curl-process: no token: $body" >&2; return 1 ;; esac
  for ((i = 0; i < RT_PROC_N; i++)); do
    t0=${EPOCHREALTIME/./}
    curl -s -X POST -u "$ID:$SECRET" --data-urlencode grant_type=refresh_token \
      --data-urlencode refresh_token=rt.x "$TOKEN_URL" >/dev/null || return 1
    t1=${EPOCHREALTIME/./}
    echo $((t1 - t0))
  done | median_us | awk '{ print "RESULT roundtrip curl-process " $1 " us" }'
}

ctl() { curl -s -X POST -d "${2:-{\}}" "$OKTA/_control/$1" >/dev/null; }
okta_stats() { curl -s "$OKTA/_control/stats" | lua5.4 -e 'local j = require("cjson").decode(io.read("a"))
  print(("%d %d %d"):format(j.grants.password, j.grants.refresh_token, j.reuse))'; }
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }

concurrency() { # 16 threads sharing one token; then the cached path's throughput
  local out pw rt reuse tokens
  ctl reset; ctl config "{\"expires_in\":$CONC_EXP}"
  out=$(FBN_TOKEN_URL="$OKTA/oauth2/default/v1/token" FBN_CLIENT_ID=lusid-client FBN_CLIENT_SECRET='p+w%d:x' \
        FBN_USERNAME=alice@example.com FBN_PASSWORD='correct horse' \
        ./build/embed/host -t 16 -n "$CONC_N" -i "$CONC_I") || { echo "host: $out" >&2; return 1; }
  echo "host: $out" >&2
  read -r pw rt reuse < <(okta_stats)
  tokens=$(field "$out" tokens)
  [ "$(field "$out" failures)" = 0 ] && [ "$pw" = 1 ] && [ "${tokens:-0}" -ge 2 ] ||
    { echo "concurrency: failures=$(field "$out" failures) logins=$pw tokens=$tokens" >&2; return 1; }
  awk -v r="$rt" -v t="$tokens" 'BEGIN { printf "RESULT concurrency token-requests-per-expiry %.2f req\n", r / (t - 1) }'
  echo "RESULT concurrency refresh-token-reuses $reuse count"
  echo "RESULT concurrency token-p50 $(field "$out" p50_us) us"
  echo "RESULT concurrency token-p99 $(field "$out" p99_us) us"
  ctl reset
  out=$(FBN_TOKEN_URL="$OKTA/oauth2/default/v1/token" FBN_CLIENT_ID=lusid-client FBN_CLIENT_SECRET='p+w%d:x' \
        FBN_USERNAME=alice@example.com FBN_PASSWORD='correct horse' \
        ./build/embed/host -t 16 -n "$CACHED_N" -i 0) || { echo "host -i 0: $out" >&2; return 1; }
  echo "host -i 0: $out" >&2
  awk -v c="$(field "$out" calls)" -v e="$(field "$out" elapsed_s)" \
    'BEGIN { if (e > 0) printf "RESULT concurrency cached-throughput %.2f Mcalls/s\n", c / e / 1e6 }'
  echo "RESULT concurrency cached-p50 $(field "$out" p50_us) us"
}

gateway() { # with|constant|without: requests/s through that gateway, measured by wrk
  local port out rps
  port=$(gw_port "$1")
  out=$(wrk -t1 -c"$WRK_C" -d"${WRK_D}s" "http://127.0.0.1:$port/api/portfolios") || return 1
  echo "wrk $1: $(echo "$out" | grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' | tr -s ' ' | tr '\n' ';')" >&2
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then echo "gateway $1: errors" >&2; return 1; fi
  rps=$(echo "$out" | awk '$1 == "Requests/sec:" { print $2 }')
  case $1 in constant) echo "RESULT openresty constant-headers $rps req/s" ;;
             *) echo "RESULT openresty $1-lusidauth $rps req/s" ;; esac
}

headers_call() { # us per client:headers() and per client:cached() inside the "with" worker
  local out
  out=$(curl -s "http://127.0.0.1:$GW_WITH/bench/headers?n=$HDR_N")
  set -- $out
  [ $# = 2 ] || { echo "headers_call: $out" >&2; return 1; }
  echo "RESULT openresty authorization()-call $1 us"
  echo "RESULT openresty cached()-call $2 us"
}

cached() { LUA_CPATH="$FLOOR_CPATH;$LUA_CPATH" lua5.4 bench/cached.lua "${CACHED_ARGS[@]}"; }

# run_bench LABEL CMD...: runs one benchmark, keeps its RESULT lines; no line or a failure is recorded
run_bench() {
  local label=$1 out rc lines
  shift
  out=$("$@" 2>>"$WORK/logs/$label.log"); rc=$?
  lines=$(printf '%s\n' "$out" | grep '^RESULT ')
  if [ $rc != 0 ] || [ -z "$lines" ]; then
    echo "$label (round $round, exit $rc)" >>"$FAILED"
    printf ' %s:FAILED' "$label" >&2
  else
    printf '%s\n' "$lines" >>"$RESULTS"
    printf ' %s' "$label" >&2
  fi
}

# what must come out of the run
printf '%s\n' "roundtrip libcurl" "roundtrip lusidauth" "roundtrip curl-process" "roundtrip python-requests" \
  "roundtrip luasocket" "concurrency token-requests-per-expiry" "concurrency refresh-token-reuses" \
  "concurrency token-p50" "concurrency token-p99" "concurrency cached-throughput" "concurrency cached-p50" \
  "memory rss-per-client" "memory heap-per-client" "memory rss-after-$MEM_R1-refreshes" \
  "memory rss-after-$MEM_R2-refreshes" "memory rss-growth" "memory heap-growth" \
  "openresty with-lusidauth" "openresty without-lusidauth" "openresty constant-headers" \
  "openresty authorization()-call" "openresty cached()-call" >"$EXPECT"
[ -f bench/cached.lua ] && echo "cached floor" >>"$EXPECT"
[ -f bench/cached.lua ] || say "bench/cached.lua not present: section cached skipped"

started=$(date +%s)
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
for ((round = 1; round <= ROUNDS; round++)); do
  printf 'bench: round %d/%d:' "$round" "$ROUNDS" >&2
  run_bench libcurl "$WORK/curl_floor" "$TOKEN_URL" "$RT_N" "$ID" "$SECRET"
  run_bench lusidauth lua5.4 bench/roundtrip.lua lusidauth "$TOKEN_URL" "$RT_N" "$ID" "$SECRET"
  run_bench curl-process curl_process
  run_bench python-requests "$PY" bench/roundtrip_requests.py "$TOKEN_URL" "$RT_PY_N" "$ID" "$SECRET"
  run_bench luasocket lua5.4 bench/roundtrip.lua luasocket "$TOKEN_URL" "$RT_N" "$ID" "$SECRET"
  [ -f bench/cached.lua ] && run_bench cached cached
  run_bench concurrency concurrency
  run_bench memory-clients lua5.4 bench/memory.lua clients "$MEM_CLIENTS" "$TOKEN_URL"
  run_bench memory-refresh lua5.4 bench/memory.lua refresh "$MEM_R1" "$MEM_R2" "$TOKEN_URL"
  if ((round % 2)); then # alternate the order of the gateways
    run_bench gw-with gateway with; run_bench gw-constant gateway constant; run_bench gw-without gateway without
  else
    run_bench gw-without gateway without; run_bench gw-constant gateway constant; run_bench gw-with gateway with
  fi
  run_bench headers-call headers_call
  echo " ($(($(date +%s) - started)) s)" >&2
done

# --- the machine, and the report -----------------------------------------------------------------
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
{
  echo "machine|CPUs (nproc)|$(nproc)"
  echo "machine|CPU|$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "machine|kernel|$(uname -srm)"
  echo "machine|Debian|$(cat /etc/debian_version) ($(. /etc/os-release && echo "$PRETTY_NAME"))"
  echo "machine|gcc|$(gcc -dumpfullversion) (Debian gcc $(pkgver gcc))"
  echo "machine|lua5.4|$(lua5.4 -v 2>&1 | awk '{ print $2 }') (Debian $(pkgver lua5.4))"
  echo "machine|luajit|$(luajit -v | awk '{ print $2 }') (Debian luajit2 $(pkgver luajit2))"
  echo "machine|libcurl|$(pkg-config --modversion libcurl) (Debian libcurl4 $(pkgver libcurl4))"
  echo "machine|nginx|$(nginx -v 2>&1 | sed 's|.*nginx/||') (Debian $(pkgver nginx); libnginx-mod-http-lua $(pkgver libnginx-mod-http-lua))"
  echo "machine|python3-requests|$($PY -c 'import requests; print(requests.__version__)') (Debian $(pkgver python3-requests)), Python $($PY -c 'import platform; print(platform.python_version())')"
  echo "machine|lua-socket, lua-cjson|Debian $(pkgver lua-socket), $(pkgver lua-cjson)"
  echo "machine|wrk|Debian $(pkgver wrk)"
  echo "machine|load average (1 min), start / end|$LOAD_START / $(cut -d' ' -f1 /proc/loadavg) (other work on the machine adds noise)"
  echo "machine|lusidauth|$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- csrc lua 2>/dev/null || echo ' + uncommitted changes in csrc/ or lua/')"
  echo "param|date|$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "param|command|$([ "$MODE" = full ] && echo 'make bench' || echo 'make bench-smoke')"
  for k in HDR_N ROUNDS RT_N RT_PROC_N RT_PY_N CONC_N CONC_I CONC_EXP CACHED_N MEM_CLIENTS MEM_R1 MEM_R2 WRK_C WRK_D TOKEN_LEN; do
    echo "param|$(echo "$k" | tr 'A-Z' 'a-z')|${!k}"
  done
} >"$INFO"

echo
lua5.4 bench/report.lua "$RESULTS" "$INFO" "$EXPECT" "$OUT_MD"; rc=$?
echo
say "took $(($(date +%s) - started)) s; report in ${OUT_MD#"$ROOT"/}; logs in bench/work/logs"
if [ -s "$FAILED" ]; then
  say "FAILED:"; sed 's/^/  /' "$FAILED" >&2
  say "see bench/work/logs/"
  exit 1
fi
exit $rc

#!/bin/sh
# Real nginx with the Lua module on loopback, proxying to the fake LUSID API through
# examples/openresty/nginx.conf. Needs LUSIDAUTH_FAKE_OKTA_PORTS (tools/test.sh starts the fake
# Okta) and Debian's nginx, libnginx-mod-http-lua and lua-resty-core. Prints TAP-style lines.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
P=$(awk '$1 == "http" { print $2 }' "$LUSIDAUTH_FAKE_OKTA_PORTS")
BASE="http://127.0.0.1:$P"
WORK=$(mktemp -d /tmp/lusidauth-nginx.XXXXXX)
. tools/tap.sh
ctl() { curl -s -X POST -d "${2:-{\}}" "$BASE/_control/$1" >/dev/null; }
stat() { curl -s "$BASE/_control/stats" | lua5.4 -e 'local j = require("cjson").decode(io.read("a")) print(("%d %d %d %d"):format(j.grants.password, j.grants.refresh_token, j.reuse, j.api_requests))'; }
free_port() { lua5.4 -e 'local s = require("socket").bind("127.0.0.1", 0) local _, p = s:getsockname() print(p) s:close()'; }

make -s LUA_VERSION=jit >/dev/null || { notok "make LUA_VERSION=jit"; echo "1..$n"; exit 1; }
export FBN_TOKEN_URL="$BASE/oauth2/default/v1/token" FBN_CLIENT_ID=lusid-client FBN_CLIENT_SECRET='p+w%d:x'
export FBN_USERNAME=alice@example.com FBN_PASSWORD='correct horse' FBN_APP_NAME=gateway-test

start() { # start WORKERS
  PORT=$(free_port)
  mkdir -p "$WORK/p"
  sed -e "s|@PREFIX@|$WORK/p|g" -e "s|@LUA_PATH@|$ROOT/lua/?.lua;$ROOT/lua/?/init.lua|" \
      -e "s|@LUA_CPATH@|$ROOT/build/jit/?.so|" -e "s|@CA_FILE@|$LUSIDAUTH_TEST_CA|" \
      -e "s|@LISTEN@|127.0.0.1:$PORT|" -e "s|@LUSID@|$BASE|" -e "s|@WORKERS@|$1|" -e "s|@RESOLVER@|127.0.0.1|" \
      examples/openresty/nginx.conf > "$WORK/nginx.conf"
  [ "$(id -u)" = 0 ] && sed -i '1i user root root;' "$WORK/nginx.conf"
  : > "$WORK/p/error.log"
  nginx -p "$WORK/p" -c "$WORK/nginx.conf" -g 'daemon on;' 2>"$WORK/start.err" || { cat "$WORK/start.err"; return 1; }
  i=0; until curl -s "http://127.0.0.1:$PORT/health" >/dev/null; do i=$((i+1)); [ $i -gt 50 ] && return 1; sleep 0.1; done
}
stop() { [ -f "$WORK/p/nginx.pid" ] && kill "$(cat "$WORK/p/nginx.pid")" 2>/dev/null; sleep 0.3; }
trap 'stop; rm -rf "$WORK"' EXIT INT TERM
codes() { # N PARALLEL PATH: the status codes of N requests, counted
  seq "$1" | xargs -P "$2" -I{} curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$PORT$3" | sort | uniq -c | tr -s ' ' | tr '\n' ';'
}

# 1. 200 concurrent requests, 2 workers: every one proxied with a valid token; one login per worker
ctl reset
if start 2; then
  got=$(codes 200 100 /api/api/portfolios)
  set -- $(stat)
  if [ "$got" = " 200 200;" ] && [ "$1" -ge 1 ] && [ "$1" -le 2 ] && [ "$2" = 0 ] && [ "$3" = 0 ] && [ "$4" = 200 ]; then
    ok "200 concurrent requests through 2 workers: all 200, $1 login(s) (at most one per worker)"
  else
    notok "200 concurrent requests through 2 workers" "codes: $got" "password=$1 refresh=$2 reuse=$3 api=$4" "$(tail -5 "$WORK/p/error.log")"
  fi
  stop
else
  notok "nginx starts with examples/openresty/nginx.conf" "$(cat "$WORK/start.err" "$WORK/p/error.log" 2>/dev/null | tail -20)"
fi

# 2. one worker, 2 s tokens, requests for 5 s: one refresh per expiry (no reuse), all proxied
ctl reset; ctl config '{"expires_in":2}'
if start 1; then
  end=$(( $(date +%s) + 5 )); bad=0; total=0
  while [ "$(date +%s)" -lt "$end" ]; do
    got=$(codes 10 10 /api/api/portfolios)
    total=$((total + 10)); [ "$got" = " 10 200;" ] || bad=$((bad + 1))
    sleep 0.1
  done
  set -- $(stat)
  if [ "$bad" = 0 ] && [ "$1" = 1 ] && [ "$2" -ge 3 ] && [ "$3" = 0 ]; then
    ok "2 s tokens over 5 s in one worker: $total requests all 200, 1 login, $2 refreshes, no refresh token reused"
  else
    notok "one refresh per expiry per worker" "bad batches=$bad password=$1 refresh=$2 reuse=$3" "$(tail -5 "$WORK/p/error.log")"
  fi

  # 3. the token endpoint takes 5 s: /health in the same (only) worker answers at once
  ctl reset; ctl config '{"expires_in":1}'
  curl -s -o /dev/null "http://127.0.0.1:$PORT/api/api/portfolios"
  sleep 1.2 # the token has expired: the next proxied request must refresh
  ctl script '[{"pass":true,"delay":5,"grant":"refresh_token"}]'
  curl -s -o "$WORK/slow.out" -w '%{http_code}' "http://127.0.0.1:$PORT/api/api/portfolios" > "$WORK/slow.code" &
  slow=$!
  sleep 0.5
  t=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT/health")
  wait $slow
  if [ "$(cat "$WORK/slow.code")" = 200 ] && awk -v t="$t" 'BEGIN { exit !(t < 0.1) }'; then
    ok "a 5 s token request does not block the worker: /health answered in ${t} s, the slow request got 200"
  else
    notok "the event loop is not blocked during a slow refresh" "health took $t s; slow request: $(cat "$WORK/slow.code")"
  fi

  # 4. set_by_lua, header_filter and log phases read the cached token
  hdrs=$(curl -s -D - -o /dev/null "http://127.0.0.1:$PORT/token-state")
  sleep 0.2
  if echo "$hdrs" | grep -q "^X-Set-By-Lua: yes" && echo "$hdrs" | grep -q "^X-Header-Filter: valid [0-9]* s" &&
     grep -q "log phase: cached token present" "$WORK/p/error.log"; then
    ok "set_by_lua, header_filter_by_lua and log_by_lua read the cached token"
  else
    notok "the cached token in set_by_lua, header_filter and log" "$hdrs" "$(tail -5 "$WORK/p/error.log")"
  fi
  if grep -E "correct horse|correct\+horse|p\+w%d:x|at\.[A-Za-z0-9_-]{20}" "$WORK/p/error.log" >/dev/null; then
    notok "nginx's error log holds no secret"
  else
    ok "nginx's error log holds no secret or token"
  fi
  stop
else
  notok "nginx starts with one worker" "$(cat "$WORK/start.err" "$WORK/p/error.log" 2>/dev/null | tail -20)"
fi
echo "1..$n"

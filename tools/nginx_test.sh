#!/bin/sh
# Real nginx with the Lua module on loopback, proxying to the fake LUSID API through
# examples/openresty/nginx.conf, without a store and with the shdict and Redis stores. Needs
# LUSIDAUTH_FAKE_OKTA_PORTS and LUSIDAUTH_REDIS_* (tools/test.sh starts the fake Okta and
# redis-server) and Debian's nginx, libnginx-mod-http-lua and lua-resty-core. Prints TAP-style
# lines.
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

# The store, as the lusidauth.resty options the example's @STORE@ takes (a Lua table), the
# listen parameters after the address, and the trusted CAs.
STORE='{}' LISTEN_OPTS='' CA_FILE=$LUSIDAUTH_TEST_CA
launch() { # launch DIR WORKERS: an nginx with prefix DIR, listening on $PORT
  PORT=$(free_port)
  mkdir -p "$1"
  store=$(printf '%s' "$STORE" | sed 's/[&|\\]/\\&/g')
  sed -e "s|@PREFIX@|$1|g" -e "s|@LUA_PATH@|$ROOT/lua/?.lua;$ROOT/lua/?/init.lua|" \
      -e "s|@LUA_CPATH@|$ROOT/build/jit/?.so|" -e "s|@CA_FILE@|$CA_FILE|" -e "s|@STORE@|$store|" \
      -e "s|@LISTEN@|127.0.0.1:$PORT$LISTEN_OPTS|" -e "s|@LUSID@|$BASE|" -e "s|@WORKERS@|$2|" -e "s|@RESOLVER@|127.0.0.1|" \
      examples/openresty/nginx.conf > "$1/nginx.conf"
  [ "$(id -u)" = 0 ] && sed -i '1i user root root;' "$1/nginx.conf"
  : > "$1/error.log"
  STARTED="$STARTED $1"
  nginx -p "$1" -c "$1/nginx.conf" -g 'daemon on;' 2>"$WORK/start.err" || { cat "$WORK/start.err"; return 1; }
  i=0; until curl -s "http://127.0.0.1:$PORT/health" >/dev/null; do i=$((i+1)); [ $i -gt 50 ] && return 1; sleep 0.1; done
}
halt() { # halt DIR: stops that nginx and waits for its master to exit
  [ -f "$1/nginx.pid" ] || return 0
  pid=$(cat "$1/nginx.pid")
  kill "$pid" 2>/dev/null
  i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
}
STARTED=
start() { launch "$WORK/p" "$1"; } # start WORKERS: the main instance, $WORK/p
stop() { halt "$WORK/p"; }
trap 'for d in $STARTED; do halt "$d"; done; rm -rf "$WORK"' EXIT INT TERM
not_started() { notok "nginx starts $1" "$(cat "$WORK/start.err" "$WORK/p/error.log" 2>/dev/null | tail -20)"; }
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
  not_started "with examples/openresty/nginx.conf"
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
  not_started "with one worker"
fi

# The stores. reuseport spreads connections over every worker; each worker's init timer also
# fetches a token, so without a store a host of N workers makes N logins.
LISTEN_OPTS=' reuseport'
secret_free() { # secret_free FILE...: no password, client secret, Redis password or token in them
  ! grep -E "correct horse|correct\+horse|p\+w%d:x|${LUSIDAUTH_REDIS_PASSWORD:-wrong-redis-pw}|wrong-redis-pw|at\.[A-Za-z0-9_-]{20}" "$@" >/dev/null
}
traffic() { # traffic SECONDS PATH: batches of 40 requests (20 at a time) for SECONDS; sets bad
             # (batches not all 200) and total
  t_end=$(( $(date +%s) + $1 )); bad=0; total=0
  while [ "$(date +%s)" -lt "$t_end" ]; do
    got=$(codes 40 20 "$2")
    total=$((total + 40)); [ "$got" = " 40 200;" ] || bad=$((bad + 1))
  done
}

# 6. shdict, 4 workers: one login for the host, 200 concurrent requests all proxied
ctl reset; ctl config '{"expires_in":16}'
STORE='{ store = "shdict", shdict = "lusidauth" }'
if start 4; then
  t0=$(date +%s)
  got=$(codes 200 100 /api/api/portfolios)
  set -- $(stat)
  if [ "$got" = " 200 200;" ] && [ "$1" = 1 ] && [ "$2" = 0 ] && [ "$3" = 0 ]; then
    ok "shdict store, 4 workers, 200 concurrent requests: all 200, exactly 1 login for the host (4 without a store)"
  else
    notok "shdict store: 1 login for 4 workers" "codes: $got" "password=$1 refresh=$2 reuse=$3" "$(tail -5 "$WORK/p/error.log")"
  fi
  # 7. across one expiry: 16 s tokens are stale after 8 s, and the next refresh is 8 s later
  while [ "$(date +%s)" -lt $((t0 + 7)) ]; do sleep 0.2; done
  traffic 4 /api/api/portfolios
  set -- $(stat)
  if [ "$bad" = 0 ] && [ "$1" = 1 ] && [ "$2" = 1 ] && [ "$3" = 0 ]; then
    ok "shdict store across an expiry: $total requests through 4 workers all 200, exactly 1 refresh for the host, no reuse"
  else
    notok "shdict store: 1 refresh per expiry for the host" "bad batches=$bad password=$1 refresh=$2 reuse=$3" "$(tail -5 "$WORK/p/error.log")"
  fi
  hdrs=$(curl -s -D - -o /dev/null "http://127.0.0.1:$PORT/token-state")
  if echo "$hdrs" | grep -q "^X-Set-By-Lua: yes" && echo "$hdrs" | grep -q "^X-Header-Filter: valid [0-9]* s"; then
    ok "shdict store: set_by_lua and header_filter_by_lua read the cached token (no store I/O there)"
  else
    notok "shdict store: the cached token in phases that cannot yield" "$hdrs"
  fi
  if secret_free "$WORK/p/error.log" && ! grep -q "lusidauth" "$WORK/p/error.log"; then
    ok "shdict store: nothing logged (no warning, no secret)"
  else
    notok "shdict store: nothing logged" "$(grep lusidauth "$WORK/p/error.log" | tail -5)"
  fi
  stop
else
  not_started "with the shdict store"
fi

# 9. the same 4 workers without a store: one login each (what the store saves)
ctl reset; STORE='{}'
if start 4; then
  i=0; while [ $i -lt 30 ] && [ "$(stat | cut -d' ' -f1)" -lt 4 ]; do sleep 0.1; i=$((i+1)); done
  sleep 0.5
  set -- $(stat)
  if [ "$1" = 4 ]; then ok "without a store, 4 workers log in 4 times"; else notok "without a store, 4 workers log in 4 times" "password=$1"; fi
  stop
else
  not_started "with 4 workers"
fi

# Redis over cosockets (tools/test.sh starts redis-server with a password and a TLS port)
if [ -z "${LUSIDAUTH_REDIS_PORT:-}" ] || [ -z "${LUSIDAUTH_REDIS_PASSWORD:-}" ]; then
  notok "the Redis store tests need LUSIDAUTH_REDIS_* (eval \"\$(sh spec/support/redis.sh start DIR)\")"
  echo "1..$n"; exit 1
fi
rcli() { redis-cli -h 127.0.0.1 -p "$LUSIDAUTH_REDIS_PORT" -a "$LUSIDAUTH_REDIS_PASSWORD" --no-auth-warning "$@"; }
redis_store() { # redis_store FIELDS: the @STORE@ text for store = "redis" with those redis fields
  STORE="{ store = \"redis\", redis = { host = \"127.0.0.1\", $1 } }"
}
settle() { # settle PORT...: a batch through each nginx once its init timers are done
  sleep 0.5; for p in "$@"; do PORT=$p codes 40 20 /api/api/portfolios; done
}
# a C client (blocking, hiredis) with store = "redis" and the same identity: prints its token
c_client() {
  LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" LUA_CPATH="$ROOT/build/jit/?.so;;" luajit -e '
    local lusidauth = require "lusidauth"
    local c = assert(lusidauth.from_config { secrets = false, overrides = { store = "redis", redis = {
      host = "127.0.0.1", port = tonumber(os.getenv("LUSIDAUTH_REDIS_PORT")),
      password = os.getenv("LUSIDAUTH_REDIS_PASSWORD") } } })
    print((assert(c:token())))'
}
cat "$LUSIDAUTH_TEST_CA" "$LUSIDAUTH_REDIS_CA" > "$WORK/cas.pem"

# 10. two nginx (2 workers each) and a C client share one token through Redis
rcli flushall >/dev/null; ctl reset; ctl config '{"expires_in":60}'
redis_store "port = $LUSIDAUTH_REDIS_PORT, password = \"$LUSIDAUTH_REDIS_PASSWORD\""
if launch "$WORK/a" 2 && PA=$PORT && launch "$WORK/b" 2 && PB=$PORT; then
  got=$(settle "$PA" "$PB")
  ctoken=$(c_client 2>"$WORK/c_client.err")
  keys=$(rcli --scan --pattern 'lusidauth:*' | sort | tr '\n' ' ') # the state, then its chain
  set -- $keys; key=${1:-none}
  stored=$(rcli get "$key" | awk '$1 == "access_token" { print $2 }')
  set -- $(stat)
  if [ "$got" = " 40 200; 40 200;" ] && [ "$1" = 1 ] && [ "$2" = 0 ] && [ "$3" = 0 ] &&
     echo "$keys" | grep -Eq '^lusidauth:([0-9a-f]{32}) lusidauth:\1:chain $' && [ -n "$ctoken" ] && [ "$ctoken" = "$stored" ]; then
    ok "Redis store: 2 nginx x 2 workers and a C client (store = \"redis\") share 1 login, one state key (lusidauth:<32 hex>) and its :chain, the same token"
  else
    notok "Redis store: 2 nginx and a C client share one token" "codes: $got" "password=$1 refresh=$2 reuse=$3" \
      "keys: $keys" "C client token matches the stored one: $([ -n "$ctoken" ] && [ "$ctoken" = "$stored" ] && echo yes || echo no)" \
      "$(cat "$WORK/c_client.err")" "$(grep lusidauth "$WORK/a/error.log" "$WORK/b/error.log" | tail -5)"
  fi
  if secret_free "$WORK/a/error.log" "$WORK/b/error.log" && ! grep -q "lusidauth" "$WORK/a/error.log" "$WORK/b/error.log"; then
    ok "Redis store: nothing logged (no warning, no secret)"
  else
    notok "Redis store: nothing logged" "$(grep lusidauth "$WORK/a/error.log" "$WORK/b/error.log" | tail -5)"
  fi
else
  notok "nginx starts with the Redis store" "$(cat "$WORK/start.err" "$WORK/a/error.log" "$WORK/b/error.log" 2>/dev/null | tail -20)"
fi
halt "$WORK/a"; halt "$WORK/b"

# 11. TLS (verified against lua_ssl_trusted_certificate, for the name server_name)
rcli flushall >/dev/null; ctl reset
CA_FILE=$WORK/cas.pem
redis_store "port = $LUSIDAUTH_REDIS_TLS_PORT, password = \"$LUSIDAUTH_REDIS_PASSWORD\", tls = true, server_name = \"localhost\""
if start 2; then
  got=$(settle "$PORT")
  set -- $(stat)
  if [ "$got" = " 40 200;" ] && [ "$1" = 1 ] && [ -n "$(rcli --scan --pattern 'lusidauth:*')" ] &&
     ! grep -q "lusidauth" "$WORK/p/error.log"; then
    ok "Redis store over TLS: 2 workers, 1 login, the state written to Redis, nothing logged"
  else
    notok "Redis store over TLS" "codes: $got" "password=$1" "$(grep lusidauth "$WORK/p/error.log" | tail -5)"
  fi
  stop
else
  not_started "with the Redis store over TLS"
fi

# 12-14. a store that cannot be used: tokens keep flowing, error.log says why, and no secret
unusable() { # unusable NAME FIELDS EXPECTED: a line for a Redis store that fails with EXPECTED
  rcli flushall >/dev/null; ctl reset
  redis_store "$2"
  if start 2; then
    got=$(settle "$PORT")
    set -- "$@" $(stat)
    if [ "$got" = " 40 200;" ] && [ "$4" -ge 1 ] && [ "$6" = 0 ] && secret_free "$WORK/p/error.log" &&
       grep "token store unreachable" "$WORK/p/error.log" | grep -q "$3" &&
       grep -q "this worker refreshes on its own" "$WORK/p/error.log"; then
      ok "$1: all 40 requests 200 ($4 logins), error.log warns ($3), no secret in it"
    else
      notok "$1: tokens keep flowing and the warning is logged" "codes: $got" "password=$4 reuse=$6" "$(tail -5 "$WORK/p/error.log")"
    fi
    stop
  else
    not_started "($1)"
  fi
}
unusable "Redis with a wrong password" \
  "port = $LUSIDAUTH_REDIS_PORT, password = \"wrong-redis-pw\"" "AUTH was refused"
unusable "Redis port closed" "port = $(free_port), password = \"$LUSIDAUTH_REDIS_PASSWORD\"" "cannot connect"
unusable "Redis TLS certificate for another name" \
  "port = $LUSIDAUTH_REDIS_TLS_PORT, password = \"$LUSIDAUTH_REDIS_PASSWORD\", tls = true, server_name = \"wrong.invalid\"" \
  "TLS handshake failed"
echo "1..$n"

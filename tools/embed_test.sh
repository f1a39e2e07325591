#!/bin/sh
# The C host (examples/embed/host.c) against the fake Okta: many threads and Lua states, one
# token, one refresh per expiry; clean under ThreadSanitizer; recovery from a 503 outage.
# Needs LUSIDAUTH_FAKE_OKTA_PORTS (tools/test.sh starts the server). Prints TAP-style lines.
set -u
cd "$(dirname "$0")/.."
P=$(awk '$1 == "http" { print $2 }' "$LUSIDAUTH_FAKE_OKTA_PORTS")
BASE="http://127.0.0.1:$P"
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"
export FBN_TOKEN_URL="$BASE/oauth2/default/v1/token" FBN_CLIENT_ID=lusid-client FBN_CLIENT_SECRET='p+w%d:x'
export FBN_USERNAME=alice@example.com FBN_PASSWORD='correct horse'
export LUSIDAUTH_VALIDATE_URL="$BASE/_control/validate"
. tools/tap.sh
ctl() { curl -s -X POST -d "${2:-{\}}" "$BASE/_control/$1" >/dev/null; }
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
stat() { curl -s "$BASE/_control/stats" | lua5.4 -e 'local j = require("cjson").decode(io.read("a")) print(("%d %d %d"):format(j.grants.password, j.grants.refresh_token, j.reuse))'; }

make -s embed >/dev/null || { notok "make embed"; exit 1; }

# 1. 16 threads x 10,000 calls over more than three expiries of a 2 s token
ctl reset; ctl config '{"expires_in":2}'
out=$(LUA_CPATH="$PWD/build/5.4/?.so;;" ./build/embed/host -t 16 -n 10000 -i 700 -c 1000 2>&1); rc=$?
set -- $(stat); pw=$1 rt=$2 reuse=$3
tokens=$(field "$out" tokens)
if [ "$rc" = 0 ] && [ "$(field "$out" failures)" = 0 ] && [ "$(field "$out" invalid)" = 0 ] &&
   [ "$tokens" -ge 4 ] && [ "$pw" = 1 ] && [ "$rt" = $((tokens - 1)) ] && [ "$reuse" = 0 ]; then
  ok "16 threads x 10000 token() calls: one refresh per expiry ($rt refreshes, $tokens tokens), every checked token valid"
else
  notok "16 threads x 10000 token() calls: one refresh per expiry" "$out" "password=$pw refresh=$rt reuse=$reuse rc=$rc"
fi
echo "# $out"

# 2. the token endpoint answers 503 for a while: every thread recovers, none hangs past the deadline
ctl reset; ctl config '{"expires_in":2}'
ctl script '[{"status":503,"body":"<html>down</html>","grant":"refresh_token","times":12}]'
out=$(LUSIDAUTH_DEADLINE=3 LUA_CPATH="$PWD/build/5.4/?.so;;" timeout 60 ./build/embed/host -t 16 -n 4000 -i 2000 -c 500 2>&1); rc=$?
max=$(field "$out" max_us)
if [ "$rc" = 0 ] && [ "$(field "$out" unrecovered)" = 0 ] && [ "$(field "$out" invalid)" = 0 ] &&
   [ "${max%.*}" -lt 4000000 ]; then
  ok "503 outage: every thread recovered, no call waited past the 3 s deadline (max ${max} us)"
else
  notok "503 outage: every thread recovered, no call waited past the deadline" "$out" "rc=$rc"
fi
echo "# $out"

# 3. the same sharing under ThreadSanitizer
if make -s embed-tsan >/dev/null 2>&1; then
  ctl reset; ctl config '{"expires_in":2}'
  out=$(LUA_CPATH="$PWD/build/tsan/?.so;;" TSAN_OPTIONS="halt_on_error=1" ./build/tsan/host -t 16 -n 2000 -i 2000 -c 500 2>&1); rc=$?
  if [ "$rc" = 0 ] && ! echo "$out" | grep -q "ThreadSanitizer"; then
    ok "ThreadSanitizer: no data race in 16 threads sharing one entry"
  else
    notok "ThreadSanitizer: no data race" "$(echo "$out" | head -40)"
  fi
else
  notok "make embed-tsan"
fi
echo "1..$n"

#!/bin/sh
# The Redis store across processes and threads (examples/embed/host.c with LUSIDAUTH_STORE=redis)
# against the fake Okta and a real redis-server on loopback: one refresh per expiry for the
# whole fleet with the rotation chain intact; tokens keep flowing while Redis is down; sharing
# resumes when it is back. Needs LUSIDAUTH_FAKE_OKTA_PORTS and LUSIDAUTH_REDIS_* (tools/test.sh
# starts both). Prints TAP-style lines.
set -u
cd "$(dirname "$0")/.."
P=$(awk '$1 == "http" { print $2 }' "$LUSIDAUTH_FAKE_OKTA_PORTS")
BASE="http://127.0.0.1:$P"
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH="$PWD/build/5.4/?.so;;"
export FBN_TOKEN_URL="$BASE/oauth2/default/v1/token" FBN_CLIENT_ID=lusid-client FBN_CLIENT_SECRET='p+w%d:x'
export FBN_USERNAME=alice@example.com FBN_PASSWORD='correct horse'
export LUSIDAUTH_VALIDATE_URL="$BASE/_control/validate" LUSIDAUTH_STORE=redis
. tools/tap.sh
ctl() { curl -s -X POST -d "${2:-{\}}" "$BASE/_control/$1" >/dev/null; }
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
stat() { curl -s "$BASE/_control/stats" | lua5.4 -e 'local j = require("cjson").decode(io.read("a")) print(("%d %d %d"):format(j.grants.password, j.grants.refresh_token, j.reuse))'; }
rcli() { redis-cli -h 127.0.0.1 -p "$LUSIDAUTH_REDIS_PORT" -a "$LUSIDAUTH_REDIS_PASSWORD" --no-auth-warning "$@"; }
T=$(mktemp -d /tmp/lusidauth-redis.XXXXXX)
trap 'rm -rf "$T"' EXIT

make -s all embed >/dev/null || { notok "make all embed"; exit 1; }

# Starts 4 hosts of 8 threads with the given arguments; their outputs go to $T/host-N.
hosts() {
  for i in 1 2 3 4; do ./build/embed/host -t 8 "$@" >"$T/host-$i" 2>&1 & done
}
# Waits for the hosts; true when every one exited 0 with no failed, invalid or unrecovered call.
hosts_ok() {
  wait
  good=0
  for i in 1 2 3 4; do
    o=$(cat "$T/host-$i")
    if [ "$(field "$o" failures)" = 0 ] && [ "$(field "$o" invalid)" = 0 ] &&
       [ "$(field "$o" unrecovered)" = 0 ] && [ -n "$(field "$o" checked)" ]; then
      good=$((good + 1))
    fi
  done
  [ "$good" = 4 ]
}
show() { for i in 1 2 3 4; do echo "# host $i: $(cat "$T/host-$i")"; done; }

# 1. 4 processes x 8 threads across 3 expiries of a 4 s token: every thread runs until it has
#    seen 4 tokens (the login's and 3 refreshes'), so the fleet should make 1 + 3 requests.
rcli flushall >/dev/null
ctl reset; ctl config '{"expires_in":4}'
hosts -n 1000000 -i 1000 -c 200 -u 4 -d 60
if hosts_ok; then hok=1; else hok=0; fi
set -- $(stat); pw=$1 rt=$2 reuse=$3
if [ "$hok" = 1 ] && [ "$pw" = 1 ] && [ "$rt" = 3 ] && [ "$reuse" = 0 ]; then
  ok "4 processes x 8 threads, 3 expiries: 1 login and exactly 1 refresh per expiry for the fleet, no refresh-token reuse, every checked token valid"
else
  notok "4 processes x 8 threads, 3 expiries: 1 refresh per expiry" "password=$pw refresh=$rt reuse=$reuse hosts_ok=$hok"
fi
show

# 2. Redis stopped mid-run and started again (empty): every call still gets a valid token, the
#    chain is never reused, and once Redis is back the fleet shares one refresh again.
rcli flushall >/dev/null
ctl reset; ctl config '{"expires_in":4}'
hosts -n 1000000 -i 2000 -c 200 -d 30
sleep 5
sh spec/support/redis.sh stop "$LUSIDAUTH_REDIS_DIR"
sleep 6
set -- $(stat); down_pw=$1 down_rt=$2
sh spec/support/redis.sh start "$LUSIDAUTH_REDIS_DIR" >/dev/null
sleep 5 # a refresh per process at most, and they are sharing again
set -- $(stat); a_pw=$1 a_rt=$2
sleep 8
set -- $(stat); b_pw=$1 b_rt=$2 reuse=$3
if hosts_ok; then hok=1; else hok=0; fi
shared=$((b_pw + b_rt - a_pw - a_rt))
# a 4 s token is stale after 2 s: one fleet makes about 4 requests in 8 s; 4 processes alone, 16
if [ "$hok" = 1 ] && [ "$reuse" = 0 ] && [ "$down_pw" -ge 2 ]; then
  ok "Redis stopped mid-run: every caller still got a valid token ($((down_pw - 1)) processes logged in on their own, no refresh-token reuse)"
else
  notok "Redis stopped mid-run: every caller still got a valid token" "hosts_ok=$hok reuse=$reuse password during outage=$down_pw"
fi
if [ "$hok" = 1 ] && [ "$shared" -ge 2 ] && [ "$shared" -le 6 ]; then
  ok "Redis back: sharing resumed ($shared token requests for the fleet in 8 s; 4 processes alone make about 16)"
else
  notok "Redis back: sharing resumed" "token requests in the 8 s after recovery: $shared (password $a_pw->$b_pw, refresh $a_rt->$b_rt)"
fi
show
echo "1..$n"

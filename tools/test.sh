#!/bin/sh
# Runs the spec suite against the fake Okta on loopback, on every Lua version (or --lua V),
# and ends with one line: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
VERSIONS="5.4 5.1 5.2 5.3 jit"
[ "${1:-}" = "--lua" ] && VERSIONS="$2"

RUN=$(mktemp -d /tmp/lusidauth-test.XXXXXX)
cleanup() {
  sh spec/support/server.sh stop "$RUN" >/dev/null 2>&1
  sh spec/support/redis.sh stop "$RUN/redis" >/dev/null 2>&1
  rm -rf "$RUN"
}
trap cleanup EXIT INT TERM
# start WHAT SCRIPT DIR LOG: a server on loopback for the suites; its exports go to this shell
start() {
  if ! out=$(sh "$2" start "$3"); then
    echo "test: $1 did not start:" >&2
    cat "$4" >&2 2>/dev/null
    echo "0 passed, 1 failed"
    exit 1
  fi
  eval "$out"
}
start "the fake Okta" spec/support/server.sh "$RUN" "$RUN/fake_okta.log"
start "redis-server" spec/support/redis.sh "$RUN/redis" "$RUN/redis/redis.log" # the Redis store

passed=0 failed=0 skipped=0
for v in $VERSIONS; do
  if [ "$v" = jit ]; then lua=luajit; else lua=lua$v; fi
  if ! make -s LUA_VERSION="$v" >"$RUN/build-$v.log" 2>&1; then
    echo "== Lua $v: build failed"; cat "$RUN/build-$v.log"
    failed=$((failed + 1)); continue
  fi
  echo "== Lua $v"
  LUA_PATH="./lua/?.lua;./lua/?/init.lua;./?.lua;;" LUA_CPATH="./build/$v/?.so;;" \
    LUSIDAUTH_LUA="$lua" LUSIDAUTH_LUA_VERSION="$v" \
    $lua /usr/bin/busted -o TAP ${BUSTED_ARGS:-} spec >"$RUN/tap-$v.txt" 2>&1
  rc=$?
  p=$(grep -c '^ok ' "$RUN/tap-$v.txt" | tr -d ' ')
  s=$(grep -c '^ok .*# SKIP' "$RUN/tap-$v.txt" | tr -d ' ')
  f=$(grep -c '^not ok ' "$RUN/tap-$v.txt" | tr -d ' ')
  p=$((p - s))
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; echo "busted exited with $rc:"; tail -20 "$RUN/tap-$v.txt"; fi
  grep -A12 '^not ok ' "$RUN/tap-$v.txt" | head -200
  echo "Lua $v: $p passed, $f failed, $s skipped"
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
# suites that run once, not per Lua version: shell scripts printing TAP lines
EXTRA="${EXTRA_SUITES-tools/embed_test.sh tools/redis_test.sh tools/nginx_test.sh tools/static_test.sh tools/memcheck.sh}"
[ "$VERSIONS" = "5.4 5.1 5.2 5.3 jit" ] || EXTRA="${EXTRA_SUITES-}"
for suite in $EXTRA; do
  echo "== $suite"
  sh "$suite" >"$RUN/extra.txt" 2>&1
  cat "$RUN/extra.txt"
  p=$(grep -c '^ok ' "$RUN/extra.txt" | tr -d ' ')
  f=$(grep -c '^not ok ' "$RUN/extra.txt" | tr -d ' ')
  if [ "$p" = 0 ] && [ "$f" = 0 ]; then f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]

#!/bin/sh
# The whole spec suite on Lua 5.4 under valgrind memcheck (zero errors, zero definite leaks),
# then once more with the module built with -fsanitize=address,undefined, collecting garbage
# before every test. Needs LUSIDAUTH_FAKE_OKTA_PORTS (tools/test.sh starts the fake Okta).
# Under valgrind the tests tagged #timing are left out: they sleep against a 4 s token, and the
# store's 200,000-iteration KDF takes seconds there. They run everywhere else, ASan included.
# Prints TAP-style lines.
set -u
cd "$(dirname "$0")/.."
. tools/tap.sh
OUT=$(mktemp -d /tmp/lusidauth-memcheck.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export LUSIDAUTH_LUA=lua5.4 LUSIDAUTH_LUA_VERSION=5.4 LUA_PATH="./lua/?.lua;./lua/?/init.lua;./?.lua;;"
counts() { echo "$(grep -c '^ok ' "$1") passed, $(grep -c '^not ok ' "$1") failed"; }

WHAT=${1:-all} # all, valgrind or asan
make -s LUA_VERSION=5.4 >/dev/null
if [ "$WHAT" != asan ]; then
LUSIDAUTH_TEST_SLOW=20 LUA_CPATH="./build/5.4/?.so;;" valgrind -q --error-exitcode=99 --leak-check=full \
  --errors-for-leak-kinds=definite --show-leak-kinds=definite --log-file="$OUT/vg.%p" \
  lua5.4 /usr/bin/busted -o TAP --exclude-tags=timing --helper=spec/support/aggressive_gc.lua spec > "$OUT/vg.tap" 2>&1
rc=$?
errs=$(cat "$OUT"/vg.* 2>/dev/null | grep -c "^==[0-9]*== ")
if [ "$rc" = 0 ] && [ "$errs" = 0 ]; then
  ok "valgrind memcheck, Lua 5.4, whole suite but #timing ($(counts "$OUT/vg.tap")): 0 errors, 0 definite leaks"
else
  notok "valgrind memcheck, Lua 5.4, whole suite (rc=$rc)" "$(counts "$OUT/vg.tap")" \
    "$(grep -A8 '^not ok' "$OUT/vg.tap" | head -40)" "$(cat "$OUT"/vg.* 2>/dev/null | head -60)"
fi
fi
[ "$WHAT" = valgrind ] && { echo "1..$n"; exit 0; }

# ASan + UBSan: the module instrumented, the interpreter not, so the runtime is preloaded
make -s LUA_VERSION=5.4 BUILD=build/asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
  LDFLAGS="-fsanitize=address,undefined" >/dev/null
ASAN_LIB=$(gcc -print-file-name=libasan.so) UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=98" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" LUA_CPATH="./build/asan/?.so;;" \
  lua5.4 /usr/bin/busted -o TAP --helper=spec/support/aggressive_gc.lua spec > "$OUT/asan.tap" 2>&1
rc=$?
if [ "$rc" = 0 ] && ! grep -qE "ERROR: AddressSanitizer|runtime error:" "$OUT/asan.tap"; then
  ok "ASan + UBSan, Lua 5.4, whole suite with a collection before every test ($(counts "$OUT/asan.tap"))"
else
  notok "ASan + UBSan, Lua 5.4, whole suite (rc=$rc)" "$(counts "$OUT/asan.tap")" \
    "$(grep -B2 -A30 -E 'ERROR: AddressSanitizer|runtime error:|^not ok' "$OUT/asan.tap" | head -60)"
fi
echo "1..$n"

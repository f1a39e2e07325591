#!/bin/sh
# Static checks and the fuzzers' fixed budget, as TAP-style lines: cppcheck and clang-tidy on
# csrc/, luacheck on lua/, spec/, examples/ and bin/, and each libFuzzer harness for
# FUZZ_SECONDS (default 30) from the committed seed corpus.
set -u
cd "$(dirname "$0")/.."
. tools/tap.sh
OUT=$(mktemp -d /tmp/lusidauth-static.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
if sh tools/static.sh > "$OUT/static" 2>&1; then ok "cppcheck and clang-tidy: $(tail -1 "$OUT/static")"
else notok "cppcheck and clang-tidy" "$(tail -30 "$OUT/static")"; fi
if luacheck -q lua spec examples bin/lusidauth > "$OUT/luacheck" 2>&1; then ok "luacheck: no warnings"
else notok "luacheck" "$(tail -30 "$OUT/luacheck")"; fi
if make -s -f fuzz/Makefile fuzz-smoke FUZZ_SECONDS="${FUZZ_SECONDS:-30}" > "$OUT/fuzz" 2>&1; then
  ok "libFuzzer, $(grep -c 'Done' "$OUT/fuzz") harnesses x ${FUZZ_SECONDS:-30} s from the seed corpus: no crash, no invariant broken"
else notok "libFuzzer smoke run" "$(tail -40 "$OUT/fuzz")"; fi
if make -s -f fuzz/Makefile fuzz-gaps > "$OUT/gaps" 2>&1; then ok "redaction reproducers (fuzz/crashes): all closed"
else notok "redaction reproducers" "$(tail -20 "$OUT/gaps")"; fi
echo "1..$n"

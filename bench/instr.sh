#!/bin/sh
# Instructions per call on the cached path, counted by callgrind (repeatable whatever the load):
# the difference between runs of N and 2N calls, divided by N, so setup costs cancel out.
# Prints "RESULT cached-instr <name> <instructions> instr". Needs valgrind and `make bench-build`.
set -eu
cd "$(dirname "$0")/.."
N=${1:-200000}
export LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/bench/?.so;./build/5.4/?.so;;"
count() { # name calls -> total instructions
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" lua5.4 bench/cached.lua --only "$1" --n "$2" >/dev/null 2>&1
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'
  rm -f "$out"
}
for name in floor lusidauth pure-lua; do
  a=$(count "$name" "$N")
  b=$(count "$name" $((2 * N)))
  echo "RESULT cached-instr $name $(( (b - a) / N )) instr"
done

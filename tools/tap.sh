# tools/tap.sh - sourced by the shell suites: TAP-style "ok N - ..." / "not ok N - ..." lines,
# which tools/test.sh counts. notok's further arguments become "# " diagnostic lines, every line
# of them (a quoted "ok ..." from a nested suite must not count as a pass).
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() {
  n=$((n + 1))
  echo "not ok $n - $1"
  shift
  for l in "$@"; do printf '%s\n' "$l" | sed 's/^/# /'; done
}

#!/bin/sh
# tools/static.sh - static analysis of csrc/*.c for Lua 5.4: cppcheck, then clang-tidy.
# Exits non-zero on any finding (or a missing tool); prints a summary line at the end.
# Usage: sh tools/static.sh [file.c ...]   (default: every csrc/*.c)
# Needs: cppcheck, clang-tidy, pkg-config, liblua5.4-dev, libcurl4-*-dev.
set -u
cd "$(dirname "$0")/.." || exit 2

PKG_CONFIG=${PKG_CONFIG:-pkg-config}
CPPCHECK=${CPPCHECK:-cppcheck}
CLANG_TIDY=${CLANG_TIDY:-clang-tidy}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

for tool in "$CPPCHECK" "$CLANG_TIDY" "$PKG_CONFIG"; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "static: $tool not found (apt-get install cppcheck clang-tidy pkg-config)" >&2
    exit 2
  }
done
INCS="$($PKG_CONFIG --cflags lua5.4) $($PKG_CONFIG --cflags libcurl)" || {
  echo "static: pkg-config knows no lua5.4 or libcurl (apt-get install liblua5.4-dev libcurl4-openssl-dev)" >&2
  exit 2
}
if [ $# -gt 0 ]; then FILES="$*"; else FILES=$(ls csrc/*.c); fi
TMP=$(mktemp -d) || exit 2
trap 'rm -rf "$TMP"' EXIT INT TERM

# ---- cppcheck ----
# LLONG_MAX/LLONG_MIN: cppcheck does not read <limits.h>, and luaconf.h #errors without them
#   (which would silently skip every file that includes lua.h).
# Suppressions:
#   missingIncludeSystem     system headers are not analysed, by design.
#   varFuncNullUB:csrc/http.c  curl_easy_setopt(h, OPT, NULL): on the platforms we build for
#                            (glibc/musl with gcc/clang) NULL is ((void *)0), a pointer, which is
#                            what libcurl's va_arg reads; this is libcurl's documented idiom.
#   variableScope            a style preference (move a declaration into an inner block), never
#                            a defect; the code declares locals at the top of a function on purpose.
echo "static: cppcheck $($CPPCHECK --version | sed 's/^Cppcheck //')"
# shellcheck disable=SC2086
"$CPPCHECK" --enable=warning,style,performance,portability --error-exitcode=1 --inline-suppr \
  --std=c99 --platform=unix64 --library=posix --quiet \
  -DLUA_VERSION_NUM=504 -DLLONG_MAX=9223372036854775807LL '-DLLONG_MIN=(-9223372036854775807LL-1)' \
  $INCS \
  --suppress=missingIncludeSystem \
  --suppress=varFuncNullUB:csrc/http.c \
  --suppress=variableScope \
  --template='{file}:{line}:{column}: {severity}: {message} [{id}]' \
  $FILES >"$TMP/cppcheck.out" 2>&1
cppcheck_rc=$?
cat "$TMP/cppcheck.out"
cppcheck_n=$(grep -cE '^[^ ]+:[0-9]+:[0-9]+: [a-z]+: ' "$TMP/cppcheck.out")
[ "$cppcheck_rc" -ne 0 ] && [ "$cppcheck_n" -eq 0 ] && cppcheck_n=1 # failed without a finding line

# ---- clang-tidy ----
# Enabled: bugprone-*, clang-analyzer-*, cert-*, misc-*, with these exclusions:
#   bugprone-easily-swappable-parameters  a naming heuristic: every (ptr, len, ptr, len) C API
#                                         trips it; no defect to find.
#   bugprone-implicit-widening-of-multiplication-result  fires on constant sizes such as
#                                         LA_BODY_CAP (1024 * 1024), which cannot overflow.
#   bugprone-not-null-terminated-result   flags a memcpy whose NUL comes from the next one:
#                                         http.c copies "Authorization: ", then the auth
#                                         buffer with its terminating NUL (n + 1 bytes).
#   misc-unused-parameters                Lua C functions and libcurl callbacks have fixed
#                                         signatures.
#   cert-dcl51-cpp                        a C++ rule (alias of bugprone-reserved-identifier).
# Options:
#   reserved identifiers: the feature-test macros (_GNU_SOURCE...) are allowed, nothing else.
#   cert-err33-c: snprintf/vsnprintf may go unchecked: every call writes a bounded, always
#     terminated message where truncation is the intended behaviour. The rest of the CERT list
#     (malloc, strtod, ...) is still checked.
#   bugprone-narrowing-conversions: integer narrowing off (int -> char in byte loops is the C
#     idiom, e.g. `c ? ' ' : (char)ch`); floating-point narrowing stays on (times and waits).
# Each file gets its own clang-tidy run: with several files in one run, clang-tidy 14's
# analyzer reports a spurious valist.Uninitialized on va_start/vsnprintf pairs.
CHECKS='-*,bugprone-*,clang-analyzer-*,cert-*,misc-*'
CHECKS="$CHECKS,-bugprone-easily-swappable-parameters"
CHECKS="$CHECKS,-bugprone-implicit-widening-of-multiplication-result"
CHECKS="$CHECKS,-bugprone-not-null-terminated-result"
CHECKS="$CHECKS,-misc-unused-parameters,-cert-dcl51-cpp"
FEATURE_MACROS='_GNU_SOURCE;_DEFAULT_SOURCE;_POSIX_C_SOURCE;_XOPEN_SOURCE;_BSD_SOURCE'
ERR33=$("$CLANG_TIDY" --checks='-*,cert-err33-c' --dump-config -- 2>/dev/null |
  sed -n "s/^ *value: *'\(.*::vsnprintf.*\)'$/\1/p" | tr ';' '\n' |
  grep -vxE '::(v?snprintf)' | tr '\n' ';')
[ -n "$ERR33" ] || { echo "static: could not read cert-err33-c's function list" >&2; exit 2; }
cat >"$TMP/tidy.yaml" <<EOF
Checks: '$CHECKS'
WarningsAsErrors: '*'
HeaderFilterRegex: 'csrc/.*'
CheckOptions:
  - { key: bugprone-reserved-identifier.AllowedIdentifiers, value: '$FEATURE_MACROS' }
  - { key: cert-dcl37-c.AllowedIdentifiers, value: '$FEATURE_MACROS' }
  - { key: cert-err33-c.CheckedFunctions, value: '$ERR33' }
  - { key: bugprone-narrowing-conversions.WarnOnIntegerNarrowingConversion, value: 'false' }
EOF
# the build's own flags (Makefile), so clang's warnings count too
CFLAGS_TIDY="-std=c99 -fPIC -Wall -Wextra -Wshadow -Wpointer-arith -Wcast-qual -Wstrict-prototypes \
-Wmissing-prototypes -Wdeclaration-after-statement -Wformat=2 $INCS"
echo "static: $("$CLANG_TIDY" --version | grep -i version | head -1 | sed 's/^ *//')"
export CLANG_TIDY TMP CFLAGS_TIDY
# shellcheck disable=SC2016
printf '%s\n' $FILES | xargs -P "$JOBS" -I{} sh -c '
  out="$TMP/tidy.$(echo "{}" | tr / _).out"
  # shellcheck disable=SC2086
  "$CLANG_TIDY" --quiet --config-file="$TMP/tidy.yaml" --warnings-as-errors="*" "{}" -- $CFLAGS_TIDY >"$out" 2>&1
  echo $? >"$out.rc"'
tidy_n=0
tidy_failed=0
for f in "$TMP"/tidy.*.out; do
  grep -vE '^[0-9]+ (warning|error)s? (generated|treated as errors?)\.?$|^Error while processing ' "$f"
  n=$(grep -cE ': (warning|error): .*\[[A-Za-z0-9._,-]+\]$' "$f")
  tidy_n=$((tidy_n + n))
  if [ "$(cat "$f.rc")" != 0 ] && [ "$n" -eq 0 ]; then tidy_failed=$((tidy_failed + 1)); fi
done
tidy_n=$((tidy_n + tidy_failed))

nfiles=$(printf '%s\n' $FILES | wc -l)
if [ "$cppcheck_n" -eq 0 ] && [ "$tidy_n" -eq 0 ]; then
  echo "static: OK - $nfiles files, cppcheck 0 findings, clang-tidy 0 findings"
  exit 0
fi
echo "static: FAILED - $nfiles files, cppcheck $cppcheck_n finding(s), clang-tidy $tidy_n finding(s)"
exit 1

#!/bin/sh
# Installs the Debian packages lusidauth's build, tests and demo need, and says what it did.
# Set LUSIDAUTH_NO_DEPS=1 to skip (for machines managed some other way).
set -eu
[ "${LUSIDAUTH_NO_DEPS:-0}" = 1 ] && { echo "deps: skipped (LUSIDAUTH_NO_DEPS=1)"; exit 0; }

PKGS="gcc make pkg-config openssl curl ca-certificates
lua5.1 lua5.2 lua5.3 lua5.4 luajit2
liblua5.1-0-dev liblua5.2-dev liblua5.3-dev liblua5.4-dev libluajit2-5.1-dev
libcurl4-openssl-dev libssl-dev lua-cjson lua-socket lua-sec lua-busted luarocks lua-check
nginx libnginx-mod-http-lua lua-resty-core valgrind
clang libclang-rt-14-dev cppcheck clang-tidy python3
libhiredis-dev redis-server redis-tools"

missing=""
for p in $PKGS; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    :
  else
    missing="$missing $p"
  fi
done
if [ -z "$missing" ]; then
  echo "deps: all $(echo $PKGS | wc -w) Debian packages already installed"
  exit 0
fi
echo "deps: installing:$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "deps: not root and no sudo; run as root: apt-get install$missing" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps: installed:$missing"

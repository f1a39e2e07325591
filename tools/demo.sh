#!/bin/sh
# make demo: starts the fake Okta on loopback, runs examples/quickstart.lua against it, stops it.
set -eu
cd "$(dirname "$0")/.."
V="${1:-5.4}"
if [ "$V" = jit ]; then LUA=luajit; else LUA="lua$V"; fi
RUN=$(mktemp -d /tmp/lusidauth-demo.XXXXXX)
cleanup() { sh spec/support/server.sh stop "$RUN" >/dev/null 2>&1 || true; rm -rf "$RUN"; }
trap cleanup EXIT INT TERM
eval "$(sh spec/support/server.sh start "$RUN")"
PORT=$(awk '$1 == "http" { print $2 }' "$RUN/ports")
echo "fake Okta listening on http://127.0.0.1:$PORT (loopback only)"
export FBN_TOKEN_URL="http://127.0.0.1:$PORT/oauth2/default/v1/token"
export FBN_CLIENT_ID="lusid-client" FBN_CLIENT_SECRET="p+w%d:x"
export FBN_USERNAME="alice@example.com" FBN_PASSWORD="correct horse"
export LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/$V/?.so;;"
echo "--- examples/quickstart.lua (Lua $V)"
$LUA examples/quickstart.lua
echo "--- what the fake Okta saw"
curl -s "http://127.0.0.1:$PORT/_control/stats"
echo

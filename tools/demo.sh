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
export FBN_LUSID_URL="http://127.0.0.1:$PORT/api" FBN_APP_NAME="lusidauth-demo"
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH="$PWD/build/$V/?.so;;"
echo "--- examples/quickstart.lua (Lua $V)"
$LUA examples/quickstart.lua
LUSIDAUTH="$LUA bin/lusidauth"
export LUSIDAUTH
echo "--- examples/list_portfolios.lua (configuration from FBN_* variables)"
$LUA examples/list_portfolios.lua
echo "--- the command-line tool: lusidauth check"
$LUSIDAUTH check
echo "--- lusidauth get /api/portfolios"
$LUSIDAUTH get /api/portfolios
echo "--- examples/curl_header.sh: curl -H \"\$(lusidauth header)\" ..."
sh examples/curl_header.sh
echo "--- examples/persist_refresh_token.lua, twice (password login, then the stored refresh token)"
( cd "$RUN" && $LUA "$OLDPWD/examples/persist_refresh_token.lua" && \
  $LUA "$OLDPWD/examples/persist_refresh_token.lua" && ls -l refresh_token | cut -c1-10 )
echo "--- examples/pat.lua (a token from 'lusidauth token' standing in for a PAT)"
FBN_ACCESS_TOKEN=$($LUSIDAUTH token) $LUA examples/pat.lua
echo "--- what the fake Okta saw"
curl -s "http://127.0.0.1:$PORT/_control/stats"
echo

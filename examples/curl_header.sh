#!/bin/sh
# The shell way: lusidauth prints the header, curl makes the call.
# Needs FBN_* variables (or ./secrets.json) and FBN_LUSID_URL.
set -eu
LUSIDAUTH=${LUSIDAUTH:-lusidauth}
curl -sS --fail -H "$($LUSIDAUTH header)" -H "Accept: application/json" "$FBN_LUSID_URL/api/portfolios"
echo

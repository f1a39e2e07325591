#!/bin/sh
# Start or stop the fake Okta server for the specs.
#
#   eval "$(spec/support/server.sh start DIR)"   # exports LUSIDAUTH_FAKE_OKTA_PORTS, LUSIDAUTH_TEST_CA
#   spec/support/server.sh stop DIR
#
# start: certificates in DIR/certs (generated if missing), pid in DIR/fake_okta.pid,
# log in DIR/fake_okta.log, listener ports in DIR/ports. FAKE_OKTA_LUA picks the
# interpreter (default lua5.4).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
lua=${FAKE_OKTA_LUA:-lua5.4}

die() {
    echo "server.sh: $*" >&2
    exit 1
}

# Quote a value for the shell when it needs it.
shquote() {
    case $1 in
    *[!A-Za-z0-9_./:@%+=-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
    esac
}

# True if PID is alive and is a fake_okta.lua process.
is_ours() {
    kill -0 "$1" 2>/dev/null || return 1
    if [ -r "/proc/$1/cmdline" ]; then
        tr '\0' ' ' <"/proc/$1/cmdline" | grep -q fake_okta.lua || return 1
    fi
    return 0
}

# True once the http listener answers a stats request.
answers() {
    port=$(awk '$1 == "http" { print $2 }' "$dir/ports" 2>/dev/null)
    [ -n "$port" ] || return 1
    $lua -e "port = $port" -e '
        local socket = require "socket"
        local c = socket.tcp()
        c:settimeout(1)
        assert(c:connect("127.0.0.1", port))
        assert(c:send("GET /_control/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        local line = assert(c:receive("*l"))
        os.exit(line:match("^HTTP/1%.1 200 ") and 0 or 1)
    ' >/dev/null 2>&1
}

start() {
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    pidfile=$dir/fake_okta.pid
    if [ -f "$pidfile" ] && is_ours "$(cat "$pidfile")"; then
        die "already running (pid $(cat "$pidfile")); run: $0 stop $dir"
    fi
    command -v "${lua%% *}" >/dev/null 2>&1 || die "interpreter not found: $lua (set FAKE_OKTA_LUA)"
    command -v openssl >/dev/null 2>&1 || die "openssl not found"
    sh "$here/gen_certs.sh" "$dir/certs" || die "certificate generation failed"

    certs=$dir/certs
    rm -f "$dir/ports"
    # shellcheck disable=SC2086 # FAKE_OKTA_LUA may carry arguments
    $lua "$here/fake_okta.lua" \
        --listen http:http:0 \
        --listen "https:https:0:$certs/server.pem:$certs/server-key.pem" \
        --listen "https-wronghost:https:0:$certs/wronghost.pem:$certs/wronghost-key.pem" \
        --listen "https-untrusted:https:0:$certs/untrusted.pem:$certs/untrusted-key.pem" \
        --portfile "$dir/ports" \
        </dev/null >"$dir/fake_okta.log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"

    tries=0
    until [ -f "$dir/ports" ] && answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            tail -n 20 "$dir/fake_okta.log" >&2
            die "fake_okta exited during startup (log: $dir/fake_okta.log)"
        fi
        tries=$((tries + 1))
        if [ "$tries" -ge 50 ]; then
            kill "$pid" 2>/dev/null || true
            rm -f "$pidfile"
            tail -n 20 "$dir/fake_okta.log" >&2
            die "fake_okta did not answer within 5 s (log: $dir/fake_okta.log)"
        fi
        sleep 0.1
    done
    echo "export LUSIDAUTH_FAKE_OKTA_PORTS=$(shquote "$dir/ports") LUSIDAUTH_TEST_CA=$(shquote "$certs/ca.pem")"
}

stop() {
    pidfile=$dir/fake_okta.pid
    [ -f "$pidfile" ] || die "no pid file $pidfile (not started?)"
    pid=$(cat "$pidfile")
    if is_ours "$pid"; then
        kill "$pid" 2>/dev/null || true
        tries=0
        while kill -0 "$pid" 2>/dev/null; do
            tries=$((tries + 1))
            if [ "$tries" -ge 50 ]; then
                kill -9 "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    else
        echo "server.sh: pid $pid was not running" >&2
    fi
    rm -f "$pidfile" "$dir/ports"
}

[ $# -eq 2 ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
dir=$2
case $1 in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac

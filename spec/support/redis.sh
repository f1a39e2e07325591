#!/bin/sh
# Start or stop a real redis-server on loopback for the Redis store's specs: a plain port and a
# TLS port (certificates from gen_certs.sh), a password, no persistence.
#
#   eval "$(spec/support/redis.sh start DIR)"  # exports LUSIDAUTH_REDIS_PORT, _TLS_PORT, _PASSWORD, _DIR
#   spec/support/redis.sh stop DIR             # a later start reuses the same ports
set -eu

here=$(cd "$(dirname "$0")" && pwd)
PASSWORD=lusidauth-test-redis

die() {
    echo "redis.sh: $*" >&2
    exit 1
}

# True once the server answers PING on the plain port.
answers() {
    redis-cli -h 127.0.0.1 -p "$1" -a "$PASSWORD" --no-auth-warning ping 2>/dev/null | grep -q PONG
}

start() {
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found (apt-get install redis-server)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    sh "$here/gen_certs.sh" "$dir/certs" || die "certificate generation failed"
    tries=0
    while :; do
        if [ -f "$dir/redis-ports" ]; then
            read -r port tls_port <"$dir/redis-ports"
        else
            r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
            port=$((20000 + r % 20000))
            tls_port=$((port + 1))
        fi
        cat >"$dir/redis.conf" <<CONF
bind 127.0.0.1
port $port
tls-port $tls_port
tls-cert-file $dir/certs/server.pem
tls-key-file $dir/certs/server-key.pem
tls-ca-cert-file $dir/certs/ca.pem
tls-auth-clients no
requirepass $PASSWORD
save ""
appendonly no
dir $dir
pidfile $dir/redis.pid
logfile $dir/redis.log
daemonize yes
CONF
        redis-server "$dir/redis.conf" >/dev/null 2>&1 || true
        i=0
        while [ $i -lt 50 ] && ! answers "$port"; do sleep 0.1; i=$((i + 1)); done
        if answers "$port"; then break; fi
        tries=$((tries + 1))
        [ -f "$dir/redis-ports" ] && [ $tries -lt 20 ] && { sleep 0.5; continue; } # a restart: the port may linger
        [ $tries -ge 20 ] && { tail -5 "$dir/redis.log" >&2 2>/dev/null; die "redis-server did not start"; }
    done
    echo "$port $tls_port" >"$dir/redis-ports"
    echo "export LUSIDAUTH_REDIS_PORT=$port LUSIDAUTH_REDIS_TLS_PORT=$tls_port LUSIDAUTH_REDIS_PASSWORD=$PASSWORD LUSIDAUTH_REDIS_DIR=$dir LUSIDAUTH_REDIS_CA=$dir/certs/ca.pem"
}

stop() {
    [ -f "$dir/redis.pid" ] || return 0
    pid=$(cat "$dir/redis.pid")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/redis.pid"
}

[ $# -eq 2 ] || die "usage: $0 start|stop DIR"
dir=$2
case $1 in
start) start ;;
stop) stop ;;
*) die "usage: $0 start|stop DIR" ;;
esac

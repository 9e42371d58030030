#!/bin/sh
# chaos.sh — operations under keep-alive load, side by side with nginx.
#
# For each server: wrk -t2 -c64 (keep-alive) against 127.0.0.1 while one
# operation happens; prints requests, socket errors and non-2xx responses per
# operation. prefork-server (release build, 2 workers, reuseport) gets 10 reloads
# (HUP, one a second), TTIN, TTOU, a hot upgrade (USR2: a new master takes over
# the sockets) and a kill -9 of a worker; nginx (nginx-light,
# 2 workers, reuseport, `return 200`) gets 10 `nginx -s reload` and a kill -9 of
# a worker, in the same run. Traffic goes to 127.0.0.1 only; every wrk run is
# bounded (a few seconds) and the script stops both servers itself.
#
# Usage: scripts/chaos.sh        (installs wrk and nginx-light with apt-get if missing)
set -eu

cd "$(dirname "$0")/.."
. scripts/wrk-result.sh
if ! command -v wrk >/dev/null || ! [ -x /usr/sbin/nginx ]; then
    echo "chaos: installing wrk and nginx-light"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
cargo build --release --quiet --bins
tmp=$(mktemp -d)
prefork=""
nginx_master=""
cleanup() {
    [ -n "$prefork" ] && kill -TERM "$prefork" 2>/dev/null || true
    [ -s "$tmp/prefork.pid" ] && kill -TERM "$(cat "$tmp/prefork.pid")" 2>/dev/null || true
    [ -n "$nginx_master" ] && kill -QUIT "$nginx_master" 2>/dev/null || true
    sleep 1
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
children() { ps -o pid= --ppid "$1" | tr -d ' '; }

# measure NAME URL SECONDS ACTION...: wrk for SECONDS while ACTION runs 1 s in;
# prints one row: requests, socket errors, non-2xx.
measure() {
    name=$1 url=$2 seconds=$3; shift 3
    wrk -t2 -c64 -d"${seconds}s" "$url" > "$tmp/wrk" 2>&1 &
    wrk=$!
    sleep 1
    "$@"
    wait "$wrk"
    wrk_result "$tmp/wrk"
    printf '| %-28s | %9s | %13s | %7s |\n' "$name" "$requests" "$socket" "$non2xx"
}

nothing() { :; }
hup_prefork() { i=0; while [ $i -lt 10 ]; do kill -HUP "$prefork"; sleep 1; i=$((i + 1)); done; }
# USR2, then wait until the pid file names the new master (it is written once ready).
upgrade_prefork() {
    kill -USR2 "$prefork"
    while [ "$(cat "$tmp/prefork.pid")" = "$prefork" ]; do sleep 0.1; done
}
reload_nginx() { i=0; while [ $i -lt 10 ]; do /usr/sbin/nginx -p "$tmp/nginx" -c nginx.conf -s reload 2>/dev/null; sleep 1; i=$((i + 1)); done; }
kill_a_worker() { kill -KILL "$(children "$1" | head -1)"; sleep 1; }

# prefork-server
port=$(free_port)
target/release/prefork-server --host 127.0.0.1 --port "$port" --workers 2 --pid-file "$tmp/prefork.pid" \
    > "$tmp/prefork.out" 2> "$tmp/prefork.err" &
prefork=$!
until [ -s "$tmp/prefork.pid" ]; do sleep 0.1; done
url="http://127.0.0.1:$port/"
echo "## prefork-server $(target/release/prefork-server --version | cut -d' ' -f2), 2 workers, reuseport"
echo
echo "| operation under wrk -t2 -c64 | requests | socket errors | non-2xx |"
echo "|---|---:|---:|---:|"
measure "none (baseline)" "$url" 4 nothing
measure "10 reloads (HUP, 1/s)" "$url" 12 hup_prefork
measure "TTIN (2 -> 3 workers)" "$url" 4 kill -TTIN "$prefork"
measure "TTOU (3 -> 2 workers)" "$url" 4 kill -TTOU "$prefork"
measure "hot upgrade (USR2)" "$url" 4 upgrade_prefork
wait "$prefork" || echo "the old prefork-server master exited with $?"
prefork=$(cat "$tmp/prefork.pid")
measure "kill -9 a worker" "$url" 4 kill_a_worker "$prefork"
kill -TERM "$prefork"
while kill -0 "$prefork" 2>/dev/null; do sleep 0.1; done
prefork=""

# nginx
port=$(free_port)
mkdir -p "$tmp/nginx/logs"
cat > "$tmp/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$port reuseport;
        location / { return 200 "Hello from worker \$pid\n"; }
    }
}
CONF
/usr/sbin/nginx -p "$tmp/nginx" -c nginx.conf -g 'daemon off;' &
nginx_master=$!
until [ -s "$tmp/nginx/nginx.pid" ]; do sleep 0.1; done
url="http://127.0.0.1:$port/"
echo
echo "## nginx $(/usr/sbin/nginx -v 2>&1 | cut -d/ -f2), 2 workers, reuseport, return 200"
echo
echo "| operation under wrk -t2 -c64 | requests | socket errors | non-2xx |"
echo "|---|---:|---:|---:|"
measure "none (baseline)" "$url" 4 nothing
measure "10 reloads (nginx -s reload)" "$url" 12 reload_nginx
measure "kill -9 a worker" "$url" 4 kill_a_worker "$nginx_master"
kill -QUIT "$nginx_master"; wait "$nginx_master" || true
nginx_master=""

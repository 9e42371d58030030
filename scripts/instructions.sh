#!/bin/sh
# instructions.sh — user-space instructions per request of a prefork-server
# worker, counted by callgrind: repeatable whatever else the machine is doing,
# so it shows changes that wall-clock benchmarks on this shared box cannot.
#
# For each binary: one worker under `valgrind --tool=callgrind`, h2load sends
# exactly N and then 2N keep-alive requests (64 connections) in two runs, and
# the difference of the worker's totals divided by N is the cost of one request,
# without the start-up and shut-down. Also the same for Connection: close
# (one connection per request), with a smaller N. Traffic goes to 127.0.0.1.
#
# Usage: scripts/instructions.sh BINARY... [-- extra server flags]
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client; installed if missing).
set -eu

missing=""
command -v valgrind >/dev/null || missing="$missing valgrind"
command -v h2load >/dev/null || missing="$missing nghttp2-client"
if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
tmp=$(mktemp -d)
trap 'pkill -KILL -f "callgrind-out-file=$tmp" 2>/dev/null || true; rm -rf "$tmp"' EXIT

# worker_instructions BINARY REQUESTS CLOSE: the worker's total instructions.
worker_instructions() {
    rm -f "$tmp"/cg.* "$tmp/ready"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$tmp/cg.%p" \
        "$1" --host 127.0.0.1 --port "$port" --workers 1 > "$tmp/out" 2> "$tmp/err" &
    master=$!
    tries=0
    until grep -q "listening on" "$tmp/out"; do
        tries=$((tries + 1)); [ $tries -le 300 ] || { echo "instructions: $1 did not start" >&2; cat "$tmp/err" >&2; exit 1; }
        sleep 0.1
    done
    if [ "$3" = close ]; then header="-H connection:close"; clients=16; else header=""; clients=64; fi
    # shellcheck disable=SC2086
    h2load --h1 -n "$2" -c "$clients" $header "http://127.0.0.1:$port/" > "$tmp/h2load"
    grep -q "$2 succeeded" "$tmp/h2load" || { echo "instructions: not every request succeeded" >&2; cat "$tmp/h2load" >&2; exit 1; }
    kill -TERM "$master"
    wait "$master" || true
    # The master's file is cg.<master pid>; the worker's is the other one.
    for f in "$tmp"/cg.*; do
        [ "$f" = "$tmp/cg.$master" ] || sed -n 's/^totals: //p' "$f"
    done
}

binaries=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do binaries="$binaries $1"; shift; done
echo "| binary | keep-alive instructions/request | Connection: close instructions/request |"
echo "|---|---:|---:|"
for binary in $binaries; do
    a=$(worker_instructions "$binary" 20000 keep); b=$(worker_instructions "$binary" 40000 keep)
    c=$(worker_instructions "$binary" 4000 close); d=$(worker_instructions "$binary" 8000 close)
    printf '| %s | %d | %d |\n' "$binary" $(((b - a) / 20000)) $(((d - c) / 4000))
done

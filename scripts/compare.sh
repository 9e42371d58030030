#!/bin/sh
# compare.sh — A/B two prefork-server binaries on this machine, side by side.
#
# Each run pins the server (1 worker) to CPU 1 and wrk -t1 -c64 (keep-alive) to
# CPU 0, for 5 s after a 1 s warm-up, and reads the server's CPU time (utime and
# stime of the master and its worker, from /proc/<pid>/stat) before and after.
# The binaries alternate, RUNS times each (default 5): this machine's noise moves
# a single run by ±20%, so compare the medians. Traffic goes to 127.0.0.1 only.
#
# Usage: scripts/compare.sh OLD_BINARY NEW_BINARY [RUNS]
set -eu

old=$1 new=$2 runs=${3:-5}
command -v wrk >/dev/null || { echo "compare: needs wrk (apt-get install wrk)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tick=$(getconf CLK_TCK)

# ticks PID...: utime + stime of the given processes, in clock ticks.
ticks() {
    for pid in "$@"; do sed 's/.*) //' "/proc/$pid/stat"; done | awk '{ u += $12; s += $13 } END { print u, s }'
}

# run BINARY: prints "requests/s user_us_per_request system_us_per_request".
run() {
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    rm -f "$tmp/pid"
    taskset -c 1 "$1" --host 127.0.0.1 --port "$port" --workers 1 --pid-file "$tmp/pid" >/dev/null 2>&1 &
    while [ ! -s "$tmp/pid" ]; do sleep 0.05; done
    master=$(cat "$tmp/pid")
    worker=$(ps -o pid= --ppid "$master" | tr -d ' ')
    url="http://127.0.0.1:$port/"
    taskset -c 0 wrk -t1 -c64 -d1s "$url" >/dev/null
    set -- $(ticks "$master" "$worker"); u0=$1 s0=$2
    taskset -c 0 wrk -t1 -c64 -d5s "$url" > "$tmp/wrk"
    set -- $(ticks "$master" "$worker"); u1=$1 s1=$2
    kill -TERM "$master"
    while kill -0 "$master" 2>/dev/null; do sleep 0.05; done
    requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$tmp/wrk")
    awk -v r="$requests" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$tick" \
        'BEGIN { printf "%d %.2f %.2f\n", r / 5, u * 1e6 / t / r, s * 1e6 / t / r }'
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

i=0
while [ $i -lt "$runs" ]; do
    run "$old" >> "$tmp/old"
    run "$new" >> "$tmp/new"
    i=$((i + 1))
done
echo "| binary | runs | requests/s (median) | user µs/request | kernel µs/request |"
echo "|---|---:|---:|---:|---:|"
for side in old new; do
    eval "bin=\$$side"
    printf '| %s | %d | %s | %s | %s |\n' "$bin" "$runs" \
        "$(cut -d' ' -f1 "$tmp/$side" | median)" "$(cut -d' ' -f2 "$tmp/$side" | median)" "$(cut -d' ' -f3 "$tmp/$side" | median)"
done

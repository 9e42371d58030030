#!/bin/sh
# admin_flood.sh — what a flood of `/status` requests costs the main port.
#
# Starts BINARY (default: the release build) with --workers N (default 64) and
# --admin, then runs wrk -c64 keep-alive against the main port for D seconds
# (default 5) alone, and again while a second wrk floods /status on the admin
# port. Prints both request rates, the ratio, the /status rate, and what one
# /status costs the main port (requests lost per /status served). The admin
# views read each worker's resident memory from /proc at most once a second, and
# serve a rendering again for up to 250 ms while the master changed nothing, so a
# /status costs little even with many workers. Traffic goes to
# 127.0.0.1 only; every wrk run is bounded and the script stops the server.
#
# Usage: scripts/admin_flood.sh [BINARY] [WORKERS] [SECONDS]   (needs wrk; installed if missing)
set -eu

cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
binary=${1:-}
if [ -z "$binary" ]; then
    cargo build --release --quiet --bins
    binary=target/release/prefork-server
fi
workers=${2:-64}
seconds=${3:-5}
tmp=$(mktemp -d)
master=""
cleanup() {
    [ -n "$master" ] && kill -TERM "$master" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

"$binary" --host 127.0.0.1 --port 0 --workers "$workers" --admin 127.0.0.1:0 > "$tmp/out" 2> "$tmp/err" &
master=$!
tries=300
until grep -q "listening on" "$tmp/out"; do
    tries=$((tries - 1)); [ "$tries" -gt 0 ] || { echo "admin_flood: no ready line" >&2; cat "$tmp/err" >&2; exit 1; }
    sleep 0.1
done
line=$(grep "listening on" "$tmp/out")
port=$(echo "$line" | sed 's/.*listening on [0-9.]*:\([0-9]*\) .*/\1/')
admin=$(echo "$line" | sed 's/.*admin on //')

rate() { sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$1"; }
wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$port/" > "$tmp/alone"
wrk -t1 -c4 -d"$((seconds + 1))s" "http://$admin/status" > "$tmp/flood" &
flood=$!
sleep 0.5
wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$port/" > "$tmp/flooded"
wait "$flood"
alone=$(rate "$tmp/alone"); flooded=$(rate "$tmp/flooded"); status=$(rate "$tmp/flood")
echo "admin_flood: $binary, $workers workers, ${seconds}s runs"
echo "admin_flood: main port alone:            $alone requests/s"
echo "admin_flood: main port during the flood: $flooded requests/s ($(echo "$flooded $alone" | awk '{printf "%.2f", $1 / $2}')x)"
echo "admin_flood: /status served:             $status requests/s"
# wrk floods as fast as it is answered: a cheaper /status is asked for more
# often. The cost of one is what the main port loses per /status served.
echo "admin_flood: main-port requests lost per /status served: $(echo "$alone $flooded $status" | awk '{printf "%.2f", ($1 - $2) / $3}')"

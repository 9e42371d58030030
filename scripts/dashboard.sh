#!/bin/sh
# dashboard.sh — a screenshot of the admin dashboard in headless Chromium.
#
# Starts the release build with --admin on 127.0.0.1, sends it some traffic
# (curl, bounded), kills one worker so a restart shows, then renders the page
# at / in headless Chromium (Debian's package; installed if missing) for 14 s
# of real time, so it polls /status and draws that much history, and writes the PNG
# (scripts/screenshot.js drives Chromium; it needs Node.js).
# Usage: scripts/dashboard.sh [OUTPUT.png]     (default: docs/dashboard.png)
set -eu

cd "$(dirname "$0")/.."
out=${1:-docs/dashboard.png}
if ! command -v chromium >/dev/null; then
    echo "dashboard: installing chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
cargo build --release --quiet --bins
tmp=$(mktemp -d)
master=""
cleanup() {
    [ -n "$master" ] && kill -TERM "$master" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

target/release/prefork-server --host 127.0.0.1 --port 0 --workers 2 --admin 127.0.0.1:0 \
    > "$tmp/out" 2> "$tmp/err" &
master=$!
tries=0
until grep -q "admin on" "$tmp/out"; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || { echo "dashboard: server not ready in 10 s" >&2; cat "$tmp/err" >&2; exit 1; }
    sleep 0.1
done
url=$(sed -n 's/.*listening on \([^ ]*\) .*/\1/p' "$tmp/out")
admin=$(sed -n 's/.*admin on \(.*\)/\1/p' "$tmp/out")
echo "dashboard: server on $url, admin on $admin"

kill -KILL "$(ps -o pid= --ppid "$master" | head -1 | tr -d ' ')"
sleep 0.5
# Traffic while the page polls: 16 s of back-to-back requests, then it stops.
( end=$(($(date +%s) + 16)); while [ "$(date +%s)" -lt "$end" ]; do curl -s "http://$url/" >/dev/null; done ) &
traffic=$!
mkdir -p "$(dirname "$out")"
# Real time, not Chromium's virtual time: the page computes requests/s between polls.
node scripts/screenshot.js "http://$admin/" "$out" 14000 1280x760
wait "$traffic"
[ -s "$out" ] || { echo "dashboard: no screenshot written" >&2; exit 1; }
echo "dashboard: wrote $out ($(wc -c < "$out") bytes)"

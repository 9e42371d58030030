#!/bin/sh
# dashboard.sh — a screenshot of the admin dashboard in headless Chromium.
#
# Starts the release build with --admin on 127.0.0.1, sends it some traffic
# (curl, bounded), kills one worker so a restart shows, then renders the page
# at / in headless Chromium (Debian's package; installed if missing) long
# enough for it to poll /status twice, and writes the PNG.
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
until grep -q "admin on" "$tmp/out"; do sleep 0.1; done
url=$(sed -n 's/.*listening on \([^ ]*\) .*/\1/p' "$tmp/out")
admin=$(sed -n 's/.*admin on \(.*\)/\1/p' "$tmp/out")
echo "dashboard: server on $url, admin on $admin"

kill -KILL "$(ps -o pid= --ppid "$master" | head -1 | tr -d ' ')"
sleep 0.5
# Traffic while the page polls: 6 s of back-to-back requests, then it stops.
( end=$(($(date +%s) + 6)); while [ "$(date +%s)" -lt "$end" ]; do curl -s "http://$url/" >/dev/null; done ) &
traffic=$!
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$tmp/chrome" --hide-scrollbars --window-size=1280,420 \
    --virtual-time-budget=2500 --screenshot="$out" "http://$admin/" 2>/dev/null
wait "$traffic"
[ -s "$out" ] || { echo "dashboard: no screenshot written" >&2; exit 1; }
echo "dashboard: wrote $out ($(wc -c < "$out") bytes)"

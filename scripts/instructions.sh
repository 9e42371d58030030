#!/bin/sh
# instructions.sh — user-space instructions per request of prefork-server
# builds, counted by callgrind: repeatable whatever else the machine is doing,
# so it shows changes that wall-clock benchmarks on this shared box cannot.
#
# For each binary: one worker under `valgrind --tool=callgrind`; h2load sends
# N and then 2N requests (64 keep-alive connections, or 16 with
# Connection: close), and the difference of the worker's totals over N is the
# cost of one request without start-up and shut-down. The same phase of
# scripts/bench.py, which also runs it against nginx. Traffic goes to 127.0.0.1.
#
# Usage: scripts/instructions.sh BINARY...
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client; installed if missing).
set -eu

cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: scripts/instructions.sh BINARY..." >&2; exit 2; }
missing=""
command -v valgrind >/dev/null || missing="$missing valgrind"
command -v h2load >/dev/null || missing="$missing nghttp2-client"
if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
for binary in "$@"; do
    [ -x "$binary" ] || { echo "instructions: $binary is not an executable" >&2; exit 2; }
done
exec python3 scripts/bench.py --instructions "$@"

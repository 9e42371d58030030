#!/bin/sh
# smoke.sh — the README demo against the release binary, every step checked:
# start on a free port, curl, kill -9 a worker (a new one takes its slot and
# answers), TERM the master while a request is in flight (it completes, the master
# exits 0, nothing of the tree is left running).
# Usage: scripts/smoke.sh            (builds with cargo build --release --examples)
# Exits non-zero at the first check that does not hold. POSIX sh; needs curl.
set -eu

cd "$(dirname "$0")/.."
cargo build --release --quiet --bins --examples
bin=target/release/prefork-server
example=target/release/examples/fixture
tmp=$(mktemp -d)
master=""

fail() { echo "smoke: FAIL: $*" >&2; echo "--- master log ---" >&2; cat "$tmp/err" >&2 2>/dev/null || true; exit 1; }
step() { echo "smoke: $*"; }
cleanup() {
    if [ -n "$master" ] && kill -0 "$master" 2>/dev/null; then kill -KILL "$master" 2>/dev/null || true; fi
    for pid in ${workers:-}; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# until SECONDS COMMAND...: retries COMMAND every 0.1 s, fails after SECONDS.
until_ok() {
    tries=$(($1 * 10)); shift
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1)); [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}
ready() { grep -q "listening on" "$tmp/out"; }
children() { ps -o pid= --ppid "$master" | tr -d ' '; }
gone() { ! kill -0 "$1" 2>/dev/null || [ "$(ps -o stat= -p "$1" | cut -c1)" = Z ]; }

start() { # start BINARY ARGS...: starts a server, sets master and port
    : > "$tmp/out"; : > "$tmp/err"
    "$@" --host 127.0.0.1 --port 0 > "$tmp/out" 2> "$tmp/err" &
    master=$!
    until_ok 10 ready || fail "no ready line within 10 s"
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/out")
    step "$(cat "$tmp/out") (master pid $master)"
}

start "$bin" --workers 2
body=$(curl -sS --max-time 5 "http://127.0.0.1:$port/")
step "curl: $body"
pid=${body#Hello from worker }
[ "$body" = "Hello from worker $pid" ] || fail "unexpected body: $body"
workers=$(children)
echo "$workers" | grep -qx "$pid" || fail "pid $pid is not a child of the master ($workers)"
[ "$(echo "$workers" | wc -l)" -eq 2 ] || fail "expected 2 workers, have: $workers"

step "kill -9 $pid"
kill -KILL "$pid"
replaced() { [ "$(children | wc -l)" -eq 2 ] && ! children | grep -qx "$pid"; }
until_ok 5 replaced || fail "the slot was not refilled"
grep -q "(pid $pid) killed by SIGKILL" "$tmp/err" || fail "the master did not log the exit"
replacement=$(children | grep -vx "$(echo "$workers" | grep -vx "$pid")")
answers() { curl -sS --max-time 5 "http://127.0.0.1:$port/" | grep -qx "Hello from worker $replacement"; }
# Each connection is hashed to one slot's socket: a few tries reach the new worker.
until_ok 5 answers || fail "the new worker $replacement never answered"
step "the replacement (pid $replacement) answers; workers: $(children | tr '\n' ' ')"

step "kill -TERM $master"
workers=$(children)
kill -TERM "$master"
wait "$master" || fail "the master exited with $?"
for w in $workers; do until_ok 2 gone "$w" || fail "worker $w still running"; done
step "master exited 0; no worker left"

start "$example" --workers 2 --graceful-timeout 10
workers=$(children)
curl -sS --max-time 10 "http://127.0.0.1:$port/sleep?ms=1500" > "$tmp/slow" &
curl_pid=$!
until_ok 5 grep -q "sleeping 1500ms" "$tmp/err" || fail "the slow request did not start"
step "kill -TERM $master with a request in flight"
kill -TERM "$master"
wait "$curl_pid" || fail "the in-flight request failed"
grep -q "^slept 1500ms" "$tmp/slow" || fail "unexpected body: $(cat "$tmp/slow")"
wait "$master" || fail "the master exited with $?"
for w in $workers; do until_ok 2 gone "$w" || fail "worker $w still running"; done
step "in-flight request completed: $(cat "$tmp/slow"); master exited 0; no worker left"
step "OK"

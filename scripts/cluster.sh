#!/bin/sh
# cluster.sh — three nodes behind HAProxy, as a deploy would see them.
#
# Each node is a network namespace this script creates (pf-node1..3), with its
# own veth address (10.77.N.2; the host side is 10.77.N.1), running
# prefork-server (release build, 2 workers, the admin listener on :9100 of the
# node). HAProxy, on this host, balances 127.0.0.1:<port> over the three nodes
# and checks each node's /readyz every 200 ms. Under a steady keep-alive load
# through HAProxy (wrk -t2 -c32), each step prints requests, socket errors and
# non-2xx responses:
#
#   1. a rolling restart, node by node: TERM with --shutdown-delay 2s, wait for
#      the exit, start again, wait until HAProxy sees it ready;
#   2. the same with --shutdown-delay 0, to show what the delay buys;
#   3. a rolling hot upgrade (USR2 on each node);
#   4. one node killed outright (kill -9 of its master and workers).
#
# Exits non-zero if step 1 or 3 had any error. Traffic goes only to 127.0.0.1
# and to the namespaces this script made (it checks they exist first, and
# refuses otherwise); every load run is bounded; the script removes the
# namespaces and stops everything it started, also on failure.
#
# Usage: scripts/cluster.sh          (root: ip netns; installs haproxy and wrk if missing)
set -eu

cd "$(dirname "$0")/.."
. scripts/wrk-result.sh
[ "$(id -u)" -eq 0 ] || { echo "cluster: needs root (ip netns)" >&2; exit 2; }
missing=""
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v wrk >/dev/null || missing="$missing wrk"
command -v curl >/dev/null || missing="$missing curl"
if [ -n "$missing" ]; then
    echo "cluster: installing$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
cargo build --release --quiet --bins
bin=$(pwd)/target/release/prefork-server
tmp=$(mktemp -d)
nodes="1 2 3"
haproxy_pid=""

cleanup() {
    [ -n "$haproxy_pid" ] && kill "$haproxy_pid" 2>/dev/null || true
    for n in $nodes; do
        for pid in $(ip netns pids "pf-node$n" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "pf-node$n" 2>/dev/null || true
        ip link del "pf-veth$n" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# The namespaces, each with its own address.
for n in $nodes; do
    ip netns del "pf-node$n" 2>/dev/null || true
    ip link del "pf-veth$n" 2>/dev/null || true
    ip netns add "pf-node$n"
    ip link add "pf-veth$n" type veth peer name eth0 netns "pf-node$n"
    ip addr add "10.77.$n.1/24" dev "pf-veth$n"
    ip link set "pf-veth$n" up
    ip netns exec "pf-node$n" ip addr add "10.77.$n.2/24" dev eth0
    ip netns exec "pf-node$n" ip link set eth0 up
    ip netns exec "pf-node$n" ip link set lo up
done
# No traffic unless every namespace is there, with its address.
for n in $nodes; do
    ip netns exec "pf-node$n" ip -4 addr show dev eth0 | grep -q "10.77.$n.2/" ||
        { echo "cluster: namespace pf-node$n is missing or has no address; refusing to send traffic" >&2; exit 1; }
done

# start N: prefork-server in node N, its settings in a file (a HUP re-reads it).
start() {
    cat > "$tmp/node$1.toml" <<CONF
host = "10.77.$1.2"
port = 8000
workers = 2
admin = "10.77.$1.2:9100"
admin_allow_remote = true
shutdown_delay = "$delay"
graceful_timeout = "10s"
pid_file = "$tmp/node$1.pid"
CONF
    rm -f "$tmp/node$1.pid"
    ip netns exec "pf-node$1" "$bin" --config "$tmp/node$1.toml" > "$tmp/node$1.out" 2>> "$tmp/node$1.err" &
    until [ -s "$tmp/node$1.pid" ]; do sleep 0.05; done
}
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://10.77.$1.2:9100/readyz")" = 200 ]; }
# HAProxy marks a server up after 2 good checks 200 ms apart: wait for that too.
wait_up() { until ready "$1"; do sleep 0.05; done; sleep 0.6; }
master_of() { cat "$tmp/node$1.pid"; }
gone() { ! kill -0 "$1" 2>/dev/null; }

delay=2s
for n in $nodes; do start "$n"; done
for n in $nodes; do wait_up "$n"; done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/haproxy.cfg" <<CONF
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    # No retries: what the clients see is what the servers did.
    retries 0
frontend front
    bind 127.0.0.1:$port
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
    server node1 10.77.1.2:8000 check port 9100
    server node2 10.77.2.2:8000 check port 9100
    server node3 10.77.3.2:8000 check port 9100
CONF
"$haproxy" -f "$tmp/haproxy.cfg" -db > "$tmp/haproxy.log" 2>&1 &
haproxy_pid=$!
until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; do sleep 0.1; done

# measure NAME SECONDS ACTION...: wrk through HAProxy for SECONDS while ACTION
# runs 1 s in; prints a row and sets $errors (socket errors + non-2xx).
measure() {
    name=$1 seconds=$2; shift 2
    wrk -t2 -c32 -d"${seconds}s" "http://127.0.0.1:$port/" > "$tmp/wrk" 2>&1 &
    wrk=$!
    sleep 1
    "$@"
    wait "$wrk"
    wrk_result "$tmp/wrk"
    errors=$((socket + non2xx))
    printf '| %-46s | %9s | %13s | %7s |\n' "$name" "$requests" "$socket" "$non2xx"
}

rolling_restart() {
    for n in $nodes; do
        old=$(master_of "$n")
        kill -TERM "$old"
        while ! gone "$old"; do sleep 0.05; done
        start "$n"
        wait_up "$n"
    done
}
rolling_upgrade() {
    for n in $nodes; do
        old=$(master_of "$n")
        kill -USR2 "$old"
        # The pid file names the new master once it is ready; the old one drains.
        while [ "$(master_of "$n")" = "$old" ]; do sleep 0.05; done
        while ! gone "$old"; do sleep 0.05; done
        wait_up "$n"
    done
}
kill_node() {
    for pid in $(ip netns pids pf-node3); do kill -KILL "$pid"; done
    sleep 2
}
# Every node re-reads its file with the new delay (a HUP: nothing is lost).
set_delay() {
    delay=$1
    for n in $nodes; do
        sed -i "s/^shutdown_delay = .*/shutdown_delay = \"$delay\"/" "$tmp/node$n.toml"
        kill -HUP "$(master_of "$n")"
    done
    sleep 2
}

echo "## 3 nodes (network namespaces, 2 workers each) behind HAProxy $("$haproxy" -v | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p'), checking /readyz every 200 ms"
echo
echo "| step, under wrk -t2 -c32 through HAProxy | requests | socket errors | non-2xx |"
echo "|---|---:|---:|---:|"
failed=0
measure "none (baseline)" 4 true
measure "1. rolling restart, --shutdown-delay 2s" 20 rolling_restart
[ "$errors" -eq 0 ] || failed=1
set_delay 0
measure "2. rolling restart, --shutdown-delay 0" 12 rolling_restart
set_delay 2s
measure "3. rolling hot upgrade (USR2)" 12 rolling_upgrade
[ "$errors" -eq 0 ] || failed=1
measure "4. node 3 killed (kill -9 master and workers)" 6 kill_node
echo
if [ "$failed" -ne 0 ]; then
    echo "cluster: FAIL: a rolling restart with the delay, or a rolling upgrade, lost requests" >&2
    exit 1
fi
echo "cluster: OK"

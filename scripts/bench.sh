#!/bin/sh
# bench.sh — prefork-server side by side with nginx, Node.js cluster and a
# single-process tokio/hyper server, in one run; writes docs/benchmarks.md.
#
# Installs what is missing (wrk, nginx-light, h2o, strace, valgrind, h2load from Debian; oha from
# crates.io for the fixed-rate latency phase), builds the release binaries,
# then runs scripts/bench.py (its --help lists the phases and options). All
# traffic goes to 127.0.0.1; every phase is bounded. The defaults (5 alternating
# runs of 5 s per server and layout, 20 respawns) take about 8 minutes.
#
# Usage: scripts/bench.sh [bench.py options]    e.g. --runs 3 --seconds 3 --out -
set -eu

cd "$(dirname "$0")/.."
missing=""
command -v wrk >/dev/null || missing="$missing wrk"
command -v nginx >/dev/null || missing="$missing nginx-light"
command -v h2o >/dev/null || missing="$missing h2o"
command -v strace >/dev/null || missing="$missing strace"
command -v valgrind >/dev/null || missing="$missing valgrind"
command -v h2load >/dev/null || missing="$missing nghttp2-client"
command -v taskset >/dev/null || missing="$missing util-linux"
if [ -n "$missing" ]; then
    echo "bench: installing$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
command -v node >/dev/null || { echo "bench: needs Node.js (node) for the cluster comparison" >&2; exit 1; }
if ! command -v oha >/dev/null; then
    echo "bench: installing oha (cargo install; a few minutes, once)"
    cargo install --quiet --locked oha
fi
# The binary on its own, as `cargo build --release` makes it: built in one
# invocation with an example, it would get the features the dev-dependencies
# (axum, tonic, hyper's client) turn on, and cost more per HTTP/2 request.
cargo build --release --quiet --bins
cargo build --release --quiet --example tokio_hyper
exec python3 scripts/bench.py "$@"

#!/usr/bin/env python3
"""tls_bench.py — prefork-server's TLS beside nginx's, in one run, same certificates.

    python3 scripts/tls_bench.py [--runs 3] [--seconds 5] [--connections 10000]

Needs the release build (cargo build --release), nginx (nginx-light), wrk, h2load
(nghttp2-client) and openssl; traffic stays on 127.0.0.1 and every phase is
bounded in time. Pinned as scripts/bench.py pins: 1 worker on CPU 1, the load on
CPU 0. Each figure is per second of the server's CPU (its whole process tree,
utime + stime from /proc), the median of the runs, the servers alternating.

  full       a new connection per request (wrk -t1 -c64, `Connection: close`):
             a full TLS 1.3 handshake each, ECDSA P-256, then RSA 2048
  resumed    `openssl s_time -reuse -www /`: TLS 1.3 resumption with a ticket,
             one connection after another, each with a request
  keep-alive HTTPS, HTTP/1.1 keep-alive (wrk -t1 -c64): requests/s, user CPU
  h2         HTTP/2 over TLS (h2load -c64 -m10): requests/s, CPU per request
  idle       memory (PSS) per idle TLS keep-alive connection, N connections
             with one request each, 3 s idle (prefork-server parks them)
"""

import argparse
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the servers, the CPU and memory readings)
from bench import CLK_TCK, ROOT, TMP, log  # noqa: E402

CERTS = os.path.join(TMP, "certs")


def cert(kind):
    name = {"ecdsa": "server", "rsa": "rsa"}[kind]
    return os.path.join(CERTS, f"{name}.pem"), os.path.join(CERTS, f"{name}.key")


class Prefork(bench.Prefork):
    name = "prefork-server"
    kind = "ecdsa"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe_port = bench.free_port()

    def command(self):
        pem, key = cert(self.kind)
        # The start-up probe (bench.Server.start) speaks plain HTTP/1.1: it asks
        # the admin listener, which the workers serve.
        return super().command() + ["--tls-cert", pem, "--tls-key", key, "--admin", f"127.0.0.1:{self.probe_port}"]


class Nginx(bench.Nginx):
    name = "nginx"
    kind = "ecdsa"
    http2 = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe_port = bench.free_port()

    def listen(self):
        pem, key = cert(self.kind)
        return (f"listen 127.0.0.1:{self.port} reuseport ssl {self.http2}; listen 127.0.0.1:{self.probe_port};\n"
                f"        ssl_certificate {pem}; ssl_certificate_key {key};\n"
                f"        ssl_protocols TLSv1.2 TLSv1.3;\n"
                f"        ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h;")

    def extra(self):
        # As in bench.py: h2load does not reconnect, and nginx closes a connection
        # after 1,000 requests by default.
        return "keepalive_requests 100000000;"


class NginxMany(Nginx):
    connections = 30000

    def limits(self):
        return "worker_rlimit_nofile 65536;"


def of_kind(cls, kind, http2=False):
    attrs = {"kind": kind}
    if http2:
        attrs["http2"] = "http2"
    return type(f"{cls.__name__}_{kind}", (cls,), attrs)


def measured(server, load):
    """Runs `load()` (-> requests, failures) and reads the server tree's CPU
    around it: (requests, failures, user s, system s)."""
    pids = server.pids()
    before = bench.cpu_ticks(pids)
    requests, failures = load()
    after = bench.cpu_ticks(pids)
    user = sum(after[p][0] - before[p][0] for p in pids) / CLK_TCK
    system = sum(after[p][1] - before[p][1] for p in pids) / CLK_TCK
    return requests, failures, user, system


def wrk(port, seconds, close):
    cmd = ["taskset", "-c", "0", "wrk", "-t1", "-c64", "-d", f"{seconds}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [f"https://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    found = re.search(r"(\d+) requests in", out)
    if not found:
        raise RuntimeError(f"wrk: {out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = (sum(int(n) for n in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return int(found.group(1)), failed


def s_time_reuse(port, seconds):
    """Resumed TLS 1.3 handshakes, one after another: (connections, 0)."""
    # -www: it reads an answer, and so the ticket that TLS 1.3 sends after the handshake.
    out = subprocess.run(["taskset", "-c", "0", "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-reuse",
                          "-tls1_3", "-www", "/", "-time", str(seconds)], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    found = re.search(r"(\d+) connections in \d+ real seconds", out)
    # s_time prints one `r` per reused connection (`*` per new one) on its progress lines.
    progress = "".join(line for line in out.splitlines() if line and set(line) <= set("r*"))
    if found and progress.count("r") < int(found.group(1)) // 2:
        raise RuntimeError("openssl s_time: most connections were not resumed")
    if not found:
        raise RuntimeError(f"openssl s_time: {out}")
    return int(found.group(1)), 0


def h2load(port, seconds):
    out = subprocess.run(["taskset", "-c", "0", "h2load", "-c64", "-m10", "-D", str(seconds), "--warm-up-time", "0",
                          f"https://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    if "Application protocol: h2" not in out:
        raise RuntimeError(f"h2load did not get h2: {out}")
    found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not found:
        raise RuntimeError(f"h2load: {out}")
    return int(found.group(1)), int(found.group(2)) + int(found.group(3))


def check_resumption(port):
    """That s_time's -reuse really resumes: one s_client with a saved session."""
    session = os.path.join(TMP, f"session-{port}.pem")
    request = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    run = lambda *extra: subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-ign_eof",
                                         "-sess_out", session, *extra], input=request, capture_output=True, text=True,
                                        timeout=10).stdout
    run()
    return "Reused, TLSv1.3" in run("-sess_in", session)


def phase(name, pair, load, runs, seconds):
    """Alternates the servers of `pair` for `runs` rounds of `load`."""
    results = {cls.name: [] for cls in pair}
    for round_ in range(runs):
        order = pair if round_ % 2 == 0 else pair[::-1]
        for cls in order:
            server = cls(1, "1").start()
            try:
                if name == "resumed" and not check_resumption(server.port):
                    raise RuntimeError(f"{cls.name} did not resume a TLS 1.3 session")
                time.sleep(1)
                load(server.port, 1)  # warm-up
                results[cls.name].append(measured(server, lambda: load(server.port, seconds)))
            finally:
                server.stop()
            r = results[cls.name][-1]
            log(f"{name} {cls.name}: {r[0]:,} in {seconds}s, {r[1]} failed, CPU user {r[2]:.2f} s + sys {r[3]:.2f} s")
    summary = {}
    for cls in pair:
        rows = results[cls.name]
        per_cpu = statistics.median(r[0] / max(r[2] + r[3], 1e-9) for r in rows)
        summary[cls.name] = dict(
            rate=statistics.median(r[0] / seconds for r in rows),
            per_cpu=per_cpu,
            user_us=statistics.median(r[2] * 1e6 / max(r[0], 1) for r in rows),
            total_us=statistics.median((r[2] + r[3]) * 1e6 / max(r[0], 1) for r in rows),
            failed=sum(r[1] for r in rows),
        )
    return summary


def idle_memory(n):
    """PSS per idle TLS keep-alive connection: n connections, one request each
    (bench.py's phase, over TLS)."""
    context = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    context.set_alpn_protocols(["http/1.1"])
    connect = lambda port: context.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                               server_hostname="localhost")
    out = bench.idle_connections(n, (Prefork, NginxMany), connect, "idle TLS connections")
    return {name: result["per_connection"] for name, result in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--only", help="comma-separated phases: full,resumed,keepalive,h2,idle")
    args = parser.parse_args()
    phases = set((args.only or "full,resumed,keepalive,h2,idle").split(","))
    subprocess.run(["sh", os.path.join(ROOT, "scripts/make-certs.sh"), CERTS], check=True, stdout=subprocess.DEVNULL)
    rows = []
    if "full" in phases:
        for kind in ("ecdsa", "rsa"):
            pair = [of_kind(Prefork, kind), of_kind(Nginx, kind)]
            result = phase("full", pair, lambda port, s: wrk(port, s, close=True), args.runs, args.seconds)
            rows.append((f"full TLS 1.3 handshakes ({kind}), per CPU-second", result, "per_cpu"))
    if "resumed" in phases:
        result = phase("resumed", [Prefork, Nginx], s_time_reuse, args.runs, args.seconds)
        rows.append(("resumed TLS 1.3 handshakes (tickets), per CPU-second", result, "per_cpu"))
    if "keepalive" in phases:
        result = phase("keep-alive", [Prefork, Nginx], lambda port, s: wrk(port, s, close=False), args.runs,
                       args.seconds)
        rows.append(("HTTPS keep-alive, requests/s", result, "rate"))
        rows.append(("HTTPS keep-alive, user µs per request", result, "user_us"))
    if "h2" in phases:
        pair = [Prefork, of_kind(Nginx, "ecdsa", http2=True)]
        result = phase("h2", pair, h2load, args.runs, args.seconds)
        rows.append(("HTTP/2 over TLS (h2load -c64 -m10), requests/s", result, "rate"))
        rows.append(("HTTP/2 over TLS, user + system µs per request", result, "total_us"))
    if "idle" in phases:
        idle = idle_memory(args.connections)
        rows.append((f"memory per idle TLS connection ({args.connections:,}), bytes",
                     {name: {"v": v} for name, v in idle.items()}, "v"))
    print("| measure | prefork-server | nginx | ratio |")
    print("|---|---:|---:|---:|")
    for title, result, key in rows:
        ours, theirs = result["prefork-server"][key], result["nginx"][key]
        print(f"| {title} | {ours:,.2f} | {theirs:,.2f} | {ours / theirs:.2f} |")
    failed = {name: r.get("failed", 0) for _, result, _ in rows for name, r in result.items()}
    print(f"\nfailed requests: {failed}")


if __name__ == "__main__":
    try:
        main()
    finally:
        bench.cleanup()

#!/usr/bin/env python3
"""steering.py — how new connections reach the workers, side by side in one run.

`--balance steered` (the default: by load, in the kernel), `lending`,
`reuseport` (the kernel's hash) and `shared`, each with 2 workers of
examples/fixture.rs (release build), on 127.0.0.1. Every phase is bounded in
time; the runs of each phase alternate the modes, and the tables give medians.

  mixed   a new connection per request (`wrk -t1 -c16`, `Connection: close`),
          10% of requests `/spin?ms=10` (10 ms of CPU): p50/p90/p99/p99.9 and
          requests/s, closed loop
  rate    the same mix at a fixed rate, 70% of the best requests/s of `mixed`
          (oha -q, latency-corrected, a new connection per request)
  hello   the default app's `GET /`: user CPU per request and requests/s, one
          worker pinned to CPU 1 and wrk on CPU 0, keep-alive and
          `Connection: close`; the split of requests between 2 unpinned
          workers (keep-alive; wrk shares their CPUs, so this is the
          scheduler's split as much as the placement's), and of 64 keep-alive
          connections opened one after another (the placement alone)

Usage: python3 scripts/steering.py [--runs N] [--seconds S]
Needs wrk and oha (scripts/bench.sh installs them) and root, to load the
steering program (without it `steered` runs as `lending`, and says so).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the same harness as scripts/bench.py)

MODES = ["steered", "lending", "reuseport", "shared"]

MIXED_LUA = """
request = function()
  if math.random() < 0.1 then return wrk.format(nil, "/spin?ms=10") end
  return wrk.format(nil, "/")
end
done = function(summary, latency, requests)
  io.write(string.format("p999 %d\\n", latency:percentile(99.9)))
end
"""


class Fixture(bench.Server):
    """examples/fixture.rs (it has /spin) with a given --balance."""

    binary = os.path.join(bench.ROOT, "target/release/examples/fixture")

    def __init__(self, balance, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.balance = balance
        self.name = f"fixture --balance {balance}"

    def command(self):
        return [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
                "--balance", self.balance]

    def ready_line(self):
        with open(self.stderr.name) as f:
            text = f.read()
        found = re.search(r"not steered by load: (.*)", text)
        return found.group(1) if found else None


class Hello(bench.Prefork):
    """The default app with a given --balance."""

    def __init__(self, balance, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.balance = balance
        self.name = f"prefork-server --balance {balance}"

    def command(self):
        return super().command() + ["--balance", self.balance]


def ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def mixed_run(mode, seconds, script):
    server = Fixture(mode, 2, None).start()
    try:
        why = server.ready_line()
        if why:
            bench.log(f"{mode}: {why}")
        bench.run_wrk(["wrk", "-t1", "-c16"], server.port, 1, close=True, script=script)  # warm-up
        result = bench.run_wrk(["wrk", "-t1", "-c16"], server.port, seconds, close=True, script=script)
    finally:
        server.stop()
    out = result["output"]
    pct = {p: ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in ("50", "90", "99")}
    pct["99.9"] = int(re.search(r"^p999 (\d+)$", out, re.M).group(1)) / 1e3
    return dict(rps=result["requests"] / seconds, errors=result["errors"], **pct)


def rate_run(mode, seconds, rate):
    server = Fixture(mode, 2, None).start()
    try:
        url = f"http://127.0.0.1:{server.port}/(spin\\?ms=10|a|b|c|d|e|f|g|h|i)"
        cmd = bench.oha_command() + ["-z", f"{seconds}s", "-c", "64", "-q", str(rate), "--disable-keepalive",
                                     "--rand-regex-url", url]
        report = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                                           check=True).stdout)
    finally:
        server.stop()
    pct = report["latencyPercentiles"]
    errors = sum(report.get("errorDistribution", {}).values())
    return dict(rps=report["summary"]["requestsPerSec"], errors=errors,
                **{p: pct[f"p{p}"] * 1e3 for p in ("50", "90", "99", "99.9")})


def medians(runs):
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def rounds(modes, runs, one):
    """`one(mode)` for every mode, `runs` times, the order rotating each round."""
    results = {mode: [] for mode in modes}
    for n in range(runs):
        for mode in modes[n % len(modes):] + modes[:n % len(modes)]:
            results[mode].append(one(mode))
    return {mode: medians(values) for mode, values in results.items()}


def hello_run(mode, layout, seconds):
    spec = bench.LAYOUTS[layout]
    server = Hello(mode, spec["workers"], spec["server_cpus"]).start()
    try:
        bench.run_wrk(spec["wrk"], server.port, 1, spec["close"])  # warm-up
        pids = server.pids()
        before = bench.cpu_ticks(pids)
        result = bench.run_wrk(spec["wrk"], server.port, seconds, spec["close"])
        after = bench.cpu_ticks(pids)
    finally:
        server.stop()
    n = result["requests"]
    user = sum(after[p][0] - before[p][0] for p in pids)
    return dict(rps=n / seconds, user_us=user * 1e6 / bench.CLK_TCK / n, errors=result["errors"])


def split(mode, seconds):
    script = os.path.join(bench.TMP, "split.lua")
    with open(script, "w") as f:
        f.write(bench.SPLIT_LUA)
    server = Hello(mode, 2, None).start()
    try:
        result = bench.run_wrk(bench.LAYOUTS["unpinned"]["wrk"], server.port, seconds, script=script)
    finally:
        server.stop()
    counts = [int(n) for n in re.findall(r"^split \d+ (\d+)$", result["output"], re.M)]
    counts += [0] * (2 - len(counts))
    return max(counts) / max(1, sum(counts))


def connection_split(mode):
    """The busiest worker's share of 64 keep-alive connections opened one after another."""
    import socket
    import urllib.request
    admin = bench.free_port()
    server = Hello(mode, 2, None)
    server.command = lambda: Hello.command(server) + ["--admin", f"127.0.0.1:{admin}"]
    server.start()
    try:
        held = []
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            s.recv(4096)
            held.append(s)
        status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5))
        counts = [w["connections"] for w in status["slots"]]
        for s in held:
            s.close()
    finally:
        server.stop()
    return max(counts) / max(1, sum(counts))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    script = os.path.join(bench.TMP, "mixed.lua")
    with open(script, "w") as f:
        f.write(MIXED_LUA)
    try:
        mixed = rounds(MODES, args.runs, lambda mode: mixed_run(mode, args.seconds, script))
        print("## Mixed cost, a new connection per request (wrk -t1 -c16, 10% /spin?ms=10, 2 workers)\n")
        print("| --balance | p50 ms | p90 ms | p99 ms | p99.9 ms | requests/s | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mode, r in mixed.items():
            print(f"| {mode} | {r['50']:.2f} | {r['90']:.2f} | {r['99']:.2f} | {r['99.9']:.2f} | "
                  f"{r['rps']:,.0f} | {r['errors']:.0f} |")
        rate = int(0.7 * max(r["rps"] for r in mixed.values()))
        fixed = rounds(MODES, 1, lambda mode: rate_run(mode, args.seconds, rate))
        print(f"\n## The same at a fixed {rate:,} requests/s (70% of the best above; oha, latency-corrected)\n")
        print("| --balance | p50 ms | p90 ms | p99 ms | p99.9 ms | requests/s | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mode, r in fixed.items():
            print(f"| {mode} | {r['50']:.2f} | {r['90']:.2f} | {r['99']:.2f} | {r['99.9']:.2f} | "
                  f"{r['rps']:,.0f} | {r['errors']:.0f} |")
        print("\n## Uniform hello: user CPU per request (µs) and requests/s, 1 worker pinned\n")
        print("| --balance | keep-alive µs | keep-alive req/s | close µs | close req/s | busiest of 2 workers: "
              "requests | connections |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        pair = ["steered", "reuseport"]
        keep = rounds(pair, args.runs, lambda mode: hello_run(mode, "pinned", args.seconds))
        close = rounds(pair, args.runs, lambda mode: hello_run(mode, "close", args.seconds))
        shares = rounds(pair, 1, lambda mode: {"share": split(mode, args.seconds), "conns": connection_split(mode)})
        for mode in pair:
            k, c, s = keep[mode], close[mode], shares[mode]
            print(f"| {mode} | {k['user_us']:.2f} | {k['rps']:,.0f} | {c['user_us']:.2f} | {c['rps']:,.0f} | "
                  f"{s['share']:.1%} | {s['conns']:.1%} |")
        ratio = lambda table, key: table["steered"][key] / table["reuseport"][key]  # noqa: E731
        print(f"\nsteered / reuseport: keep-alive CPU {ratio(keep, 'user_us'):.3f}, "
              f"req/s {ratio(keep, 'rps'):.3f}; close CPU {ratio(close, 'user_us'):.3f}, "
              f"req/s {ratio(close, 'rps'):.3f}")
    finally:
        for server in list(bench.LIVE):
            server.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""bench.py — prefork-server beside nginx, Node.js cluster and a tokio/hyper process.

Run through scripts/bench.sh, which installs the tools and builds the binaries.
Every server answers `GET /` with `Hello from worker <pid>\\n` on 127.0.0.1; all
traffic stays on loopback, and every phase is bounded in time.

Throughput (wrk), three layouts (../shared/research/pitfalls.md §7):
  pinned     1 worker on CPU 1, `wrk -t1 -c64` on CPU 0, keep-alive
  close      the same with `Connection: close` (accept-heavy)
  unpinned   2 workers, wrk -t2 -c64 unpinned
Each run starts the server, warms it for 1 s, then measures one wrk run and the
CPU time (utime, stime) of the server's whole process tree from /proc/<pid>/stat
before and after. The runs alternate the servers (the order rotates each round),
and the tables give medians, because this machine's noise moves one run by ±20%.

Also: latency at a fixed rate below saturation (oha -q, latency-corrected,
pinned layout), syscalls per request (strace -c -f, pinned), user-space
instructions per request (callgrind: repeatable where CPU time is not), the
request split between 2 workers (a wrk Lua counter of the pid in each body),
idle memory per worker (RSS and PSS from /proc/<pid>/smaps_rollup), and respawn
latency (SIGKILL of the only worker until a replacement answers).
"""

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
TMP = tempfile.mkdtemp(prefix="bench-")
LIVE = []  # servers started and not yet stopped, for the cleanup on any exit


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of():
    """ppid -> [pid] for every process, read once from /proc."""
    tree = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(pid):
    tree, found, todo = children_of(), [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(tree.get(p, []))
    return found


def cpu_ticks(pids):
    """{pid: (utime, stime)} in clock ticks; a process that is gone counts 0."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # comm may hold spaces
            out[pid] = (int(fields[11]), int(fields[12]))
        except OSError:
            out[pid] = (0, 0)
    return out


def cpu_stat():
    """{cpu number: (busy ticks, available ticks)} from /proc/stat. Busy is
    user, nice, system, irq and softirq; available leaves out steal, the time
    a virtual machine's host ran something else on that CPU (so a CPU that was
    stolen from does not read as busy)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                user, nice, system, idle, iowait, irq, softirq, steal = (int(t) for t in ticks[:8])
                busy = user + nice + system + irq + softirq
                out[int(name[3:])] = (busy, busy + idle + iowait, steal)
    return out


def busy_shares(before, after, cpus=(0, 1)):
    """{cpu: share of its available time busy} between two `cpu_stat()`
    readings, and under "steal" {cpu: share of all its time the host took}."""
    shares, steal = {}, {}
    for cpu in cpus:
        busy = after[cpu][0] - before[cpu][0]
        available = after[cpu][1] - before[cpu][1]
        stolen = after[cpu][2] - before[cpu][2]
        shares[cpu] = busy / available if available else 0.0
        steal[cpu] = stolen / (available + stolen) if available + stolen else 0.0
    shares["steal"] = steal
    return shares


def busy_text(busy):
    """The log's note of a pinned run's CPU shares; warns when the host took
    more than 5% of a CPU (its time figures then say little)."""
    steal = busy["steal"]
    if max(steal.values()) > 0.05:
        log(f"warning: the host took {max(steal.values()):.0%} of a CPU's time in this run (steal): "
            "its time figures say little")
    return f", CPU 0/1 busy {busy[0]:.0%}/{busy[1]:.0%}, steal {steal[0]:.0%}/{steal[1]:.0%}"


def http_get(port, timeout=2.0):
    """(status, body) of one `GET /` on a fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")


def wait_until(what, check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class Server:
    """One server under test. Subclasses say how to start it."""

    name = ""
    h2c = True  # speaks HTTP/2 with prior knowledge (nginx on a port of its own: NginxH2)

    def __init__(self, workers, cpus, wrapper=()):
        self.workers, self.cpus, self.port = workers, cpus, free_port()
        self.probe_port = self.port  # where start() checks for an HTTP/1.1 answer
        self.wrapper = list(wrapper)  # e.g. valgrind
        self.proc = None

    def command(self):
        raise NotImplementedError

    def start(self):
        cmd = self.wrapper + self.command()
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus] + cmd
        self.stderr = open(os.path.join(TMP, re.sub(r"\W+", "-", self.name) + ".err"), "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True)
        LIVE.append(self)
        patience = 60 if self.wrapper else 15
        wait_until(f"{self.name} to answer on port {self.probe_port}", lambda: http_get(self.probe_port, 2)[0] == 200,
                   patience)
        wait_until(f"{self.name}'s {self.workers} workers", lambda: len(self.worker_pids()) >= self.workers, patience)
        return self

    def pids(self):
        return descendants(self.proc.pid)

    def worker_pids(self):
        """The processes that serve; the whole process for a single-process server."""
        return [p for p in self.pids() if p != self.proc.pid]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=60 if self.wrapper else 10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self in LIVE:
            LIVE.remove(self)
        self.stderr.close()


class Prefork(Server):
    name = "prefork-server"
    binary = os.path.join(ROOT, "target/release/prefork-server")

    def command(self):
        return [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]


class Nginx(Server):
    name = "nginx"
    connections = 4096  # per worker; nginx preallocates them, so this is its idle memory too

    def limits(self):
        return ""

    def listen(self):
        return f"listen 127.0.0.1:{self.port} reuseport;"

    def extra(self):
        return ""

    def access_log(self):
        return "access_log off;"

    def command(self):
        prefix = os.path.join(TMP, f"nginx-{self.port}")
        os.makedirs(prefix, exist_ok=True)
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
daemon off;
worker_processes {self.workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
{self.limits()}
events {{ worker_connections {self.connections}; }}
http {{
    {self.access_log()}
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        {self.listen()}
        {self.extra()}
        location / {{
            default_type "text/plain; charset=utf-8";
            return 200 "Hello from worker $pid\\n";
        }}
    }}
}}
""")
        return ["nginx", "-p", prefix, "-c", conf]


class NginxH2(Nginx):
    """nginx with HTTP/2 with prior knowledge (h2c) on its port: nginx 1.22 then
    speaks only HTTP/2 there, so the start-up probe uses a second, HTTP/1.1 port."""
    name = "nginx"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe_port = free_port()

    def listen(self):
        return f"listen 127.0.0.1:{self.port} reuseport http2; listen 127.0.0.1:{self.probe_port};"

    def extra(self):
        # nginx closes a connection after 1,000 requests by default, and h2load does
        # not reconnect: its streams would count as failed. prefork-server has no
        # such limit; lift nginx's for the comparison.
        return "keepalive_requests 100000000;"


class H2o(Server):
    """h2o, the fastest C server here (Debian's 2.2.5), serving a file with the
    body prefork-server's hello has (24 bytes): `file.file`, `num-threads` as the
    workers, no access log. One process; HTTP/1.1 and HTTP/2 with prior
    knowledge (h2c) on the same port."""
    name = "h2o"

    def __init__(self, workers, cpus, wrapper=()):
        super().__init__(workers, cpus, wrapper)
        # One process with a thread per worker: start() waits for that one.
        self.threads, self.workers = workers, 1

    def command(self):
        prefix = os.path.join(TMP, f"h2o-{self.port}")
        os.makedirs(prefix, exist_ok=True)
        # Started as root, h2o serves as nobody: it must reach the file.
        os.chmod(TMP, 0o711)
        os.chmod(prefix, 0o755)
        body = os.path.join(prefix, "hello.txt")
        with open(body, "w") as f:
            f.write("Hello from worker 00000\n")
        conf = os.path.join(prefix, "h2o.conf")
        # Under callgrind, h2o must not drop to nobody: valgrind writes its
        # output file, opened as root, when h2o exits.
        user = "user: root\n" if self.wrapper else ""
        with open(conf, "w") as f:
            f.write(f"""{user}{self.limits()}num-threads: {self.threads}
listen:
  host: 127.0.0.1
  port: {self.port}
hosts:
  default:
    paths:
      /:
        file.file: {body}
""")
        return ["h2o", "-c", conf]

    def limits(self):
        return ""

    def worker_pids(self):
        return [self.proc.pid]


class H2oMany(H2o):
    """h2o with room for the connection-memory phase's 10,000 connections (its
    default `max-connections` is 1,024)."""

    def limits(self):
        return "max-connections: 30000\n"


class PreforkAccessLog(Prefork):
    """prefork-server writing its combined access log to a file."""
    name = "prefork-server, access log on"

    def command(self):
        return super().command() + ["--access-log", os.path.join(TMP, f"access-{self.port}.log")]


class NginxAccessLog(Nginx):
    """nginx writing its combined access log to a file (buffered, as
    prefork-server's is, and flushed as often)."""
    name = "nginx, access log on"

    def access_log(self):
        return f"access_log {TMP}/nginx-access-{self.port}.log combined buffer=64k flush=250ms;"


class NginxMany(Nginx):
    """nginx with room for the connection-memory phase's 10,000 connections."""

    connections = 30000

    def limits(self):
        return "worker_rlimit_nofile 65536;"


class NodeCluster(Server):
    name = "node cluster"

    def command(self):
        return ["node", os.path.join(ROOT, "scripts/node-cluster.js"), str(self.port), str(self.workers)]


class PreforkNode(Prefork):
    """prefork-server's exec mode running the Node.js example in every slot."""
    name = "prefork-server -- node hello.js"

    def command(self):
        return super().command() + ["--", "node", os.path.join(ROOT, "examples/exec/hello.js")]


class TokioHyper(Server):
    name = "tokio hyper (1 process)"
    h2c = False  # examples/tokio_hyper.rs serves HTTP/1.1 only

    def command(self):
        return [os.path.join(ROOT, "target/release/examples/tokio_hyper"), str(self.port)]

    def worker_pids(self):
        return [self.proc.pid]

    def start(self):
        # Its thread count follows the CPUs it may use: 1 pinned, 2 unpinned.
        self.workers = 1
        return super().start()


SERVERS = [Prefork, Nginx, H2o, NodeCluster, TokioHyper]
RESPAWNING = [Prefork, Nginx, NodeCluster]

LAYOUTS = {
    "pinned": dict(workers=1, server_cpus="1", wrk=["taskset", "-c", "0", "wrk", "-t1", "-c64"], close=False),
    "close": dict(workers=1, server_cpus="1", wrk=["taskset", "-c", "0", "wrk", "-t1", "-c64"], close=True),
    "unpinned": dict(workers=2, server_cpus=None, wrk=["wrk", "-t2", "-c64"], close=False),
}


def run_wrk(cmd, port, seconds, close=False, script=None):
    args = cmd + [f"-d{seconds}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return dict(requests=requests, errors=errors + (int(non2xx.group(1)) if non2xx else 0), output=out)


def throughput_run(cls, layout, seconds):
    spec = LAYOUTS[layout]
    server = cls(spec["workers"], spec["server_cpus"]).start()
    try:
        run_wrk(spec["wrk"], server.port, 1, spec["close"])  # warm-up
        pids = server.pids()
        before, cpus_before = cpu_ticks(pids), cpu_stat()
        result = run_wrk(spec["wrk"], server.port, seconds, spec["close"])
        after, cpus_after = cpu_ticks(pids), cpu_stat()
    finally:
        server.stop()
    n = result["requests"]
    user = sum(after[p][0] - before[p][0] for p in pids)
    kernel = sum(after[p][1] - before[p][1] for p in pids)
    return dict(
        rps=n / seconds,
        user_us=user * 1e6 / CLK_TCK / n,
        kernel_us=kernel * 1e6 / CLK_TCK / n,
        errors=result["errors"],
        busy=busy_shares(cpus_before, cpus_after),
    )


def is_pinned(layout):
    """Whether the server has CPU 1 to itself and the load CPU 0 (h2c is)."""
    return layout == "h2" or LAYOUTS.get(layout, {}).get("server_cpus") == "1"


def throughput(layouts, runs, seconds, servers=None):
    servers = servers or SERVERS
    results = {layout: {cls.name: [] for cls in servers} for layout in layouts}
    for layout in layouts:
        for round_ in range(runs):
            order = servers[round_ % len(servers):] + servers[:round_ % len(servers)]
            for cls in order:
                r = throughput_run(cls, layout, seconds)
                results[layout][cls.name].append(r)
                busy = busy_text(r["busy"]) if is_pinned(layout) else ""
                log(f"{layout} run {round_ + 1}/{runs} {cls.name}: {r['rps']:,.0f} req/s, "
                    f"{r['user_us']:.2f} user + {r['kernel_us']:.2f} kernel µs/req, {r['errors']} errors{busy}")
    return results


def run_h2load(port, seconds):
    """h2load -c64 -m10 on CPU 0 for `seconds`: (requests answered, failures)."""
    out = subprocess.run(["taskset", "-c", "0", "h2load", "-c64", "-m10", "-D", str(seconds), "--warm-up-time", "0",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 60).stdout
    found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not found:
        raise RuntimeError(f"h2load: {out}")
    return int(found.group(1)), int(found.group(2)) + int(found.group(3))


def http2(runs, seconds):
    """HTTP/2 with prior knowledge, pinned: 1 worker on CPU 1, h2load -c64 -m10 on CPU 0."""
    servers = (Prefork, NginxH2, H2o)
    results = {cls.name: [] for cls in servers}
    for round_ in range(runs):
        for cls in servers[round_ % 3:] + servers[:round_ % 3]:
            server = cls(1, "1").start()
            try:
                run_h2load(server.port, 1)  # warm-up
                pids = server.pids()
                before, cpus_before = cpu_ticks(pids), cpu_stat()
                n, failed = run_h2load(server.port, seconds)
                after, cpus_after = cpu_ticks(pids), cpu_stat()
            finally:
                server.stop()
            user = sum(after[p][0] - before[p][0] for p in pids)
            kernel = sum(after[p][1] - before[p][1] for p in pids)
            r = dict(rps=n / seconds, user_us=user * 1e6 / CLK_TCK / n, kernel_us=kernel * 1e6 / CLK_TCK / n,
                     errors=failed, busy=busy_shares(cpus_before, cpus_after))
            results[cls.name].append(r)
            log(f"h2 run {round_ + 1}/{runs} {cls.name}: {r['rps']:,.0f} req/s, "
                f"{r['user_us']:.2f} user + {r['kernel_us']:.2f} kernel µs/req, {failed} failed"
                f"{busy_text(r['busy'])}")
    return results


SPLIT_LUA = """
counts = {}  -- a global: done() reads it from each thread with get()
response = function(status, headers, body)
  local pid = body:match("(%d+)")
  if pid then counts[pid] = (counts[pid] or 0) + 1 end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function()
  local total = {}
  for _, t in ipairs(threads) do
    for pid, n in pairs(t:get("counts")) do total[pid] = (total[pid] or 0) + n end
  end
  for pid, n in pairs(total) do io.write(string.format("split %s %d\\n", pid, n)) end
end
"""


def request_split(seconds):
    """Share of the busiest worker, from the pid in each body (2 workers, unpinned)."""
    script = os.path.join(TMP, "split.lua")
    with open(script, "w") as f:
        f.write(SPLIT_LUA)
    out = {}
    for cls in RESPAWNING:
        server = cls(2, None).start()
        try:
            result = run_wrk(LAYOUTS["unpinned"]["wrk"], server.port, seconds, script=script)
        finally:
            server.stop()
        counts = [int(n) for n in re.findall(r"^split \d+ (\d+)$", result["output"], re.M)]
        counts += [0] * (2 - len(counts))
        out[cls.name] = max(counts) / max(1, sum(counts))
        log(f"split {cls.name}: {sorted(counts)}")
    return out


def oha_command():
    help_text = subprocess.run(["oha", "--help"], capture_output=True, text=True).stdout
    json_flag = ["--output-format", "json"] if "--output-format" in help_text else ["--json"]
    return ["oha", "--no-tui", "--latency-correction"] + json_flag


def latency(rate, seconds):
    """p50/p99 in ms at a fixed rate, pinned keep-alive layout, oha on CPU 0."""
    out = {}
    base = oha_command()
    for cls in SERVERS:
        server = cls(1, "1").start()
        try:
            run_wrk(LAYOUTS["pinned"]["wrk"], server.port, 1)  # warm-up
            cmd = ["taskset", "-c", "0"] + base + ["-z", f"{seconds}s", "-c", "64", "-q", str(rate),
                                                  f"http://127.0.0.1:{server.port}/"]
            report = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                                               check=True).stdout)
        finally:
            server.stop()
        pct = report["latencyPercentiles"]
        codes = report.get("statusCodeDistribution", {})
        # A request in flight when oha stops at its deadline is "aborted due
        # to deadline": the load's end, not the server's error.
        errors = sum(n for why, n in report.get("errorDistribution", {}).items() if "deadline" not in why) + sum(
            n for code, n in codes.items() if not code.startswith("2"))
        out[cls.name] = dict(p50=pct["p50"] * 1e3, p99=pct["p99"] * 1e3,
                             rps=report["summary"]["requestsPerSec"], errors=errors)
        log(f"latency {cls.name}: p50 {out[cls.name]['p50']:.3f} ms, p99 {out[cls.name]['p99']:.3f} ms")
    return out


def syscalls(seconds, layout):
    """System calls per request under strace -c -f, pinned, keep-alive or close."""
    out = {}
    close = LAYOUTS[layout]["close"]
    for cls in SERVERS:
        server = cls(1, "1").start()
        try:
            run_wrk(LAYOUTS["pinned"]["wrk"], server.port, 1)  # warm-up
            summary = os.path.join(TMP, "strace.txt")
            args = ["strace", "-c", "-f", "-o", summary]
            for pid in server.pids():
                args += ["-p", str(pid)]
            strace = subprocess.Popen(args, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # attached
            result = run_wrk(LAYOUTS["pinned"]["wrk"], server.port, seconds, close)
            strace.send_signal(signal.SIGINT)
            strace.wait(timeout=30)
        finally:
            server.stop()
        with open(summary) as f:
            text = f.read()
        total = re.search(r"^[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total$", text, re.M)
        calls = {m.group(2): int(m.group(1)) for m in
                 re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", text, re.M)}
        calls.pop("total", None)
        n = result["requests"]
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:8 if close else 3]
        out[cls.name] = dict(per_request=int(total.group(1)) / n,
                             top=", ".join(f"{name} {count / n:.2f}" for name, count in top))
        log(f"syscalls {layout} {cls.name}: {out[cls.name]['per_request']:.2f}/request ({out[cls.name]['top']})")
    return out


MODES = {  # instructions phase: (requests N, h2load arguments)
    "keep": (20000, ["--h1", "-c", "64"]),
    "close": (4000, ["--h1", "-c", "16", "-H", "connection: close"]),
    "h2": (20000, ["-c", "64", "-m", "10"]),
}


def callgrind_total(cls, requests, mode):
    """User-space instructions of the workers of `cls` that served `requests`
    (h2load as `mode` says), and the callgrind files they wrote."""
    out_dir = tempfile.mkdtemp(dir=TMP)
    os.chmod(TMP, 0o711)  # nginx's worker runs as nobody: it must reach out_dir
    os.chmod(out_dir, 0o777)
    valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out_dir}/cg.%p"]
    server = cls(1, None, wrapper=valgrind).start()
    try:
        workers = server.worker_pids()
        cmd = ["h2load", "-n", str(requests), *MODES[mode][1], f"http://127.0.0.1:{server.port}/"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
        if f"{requests} succeeded" not in result:
            raise RuntimeError(f"h2load against {cls.name} under callgrind: {result}")
    finally:
        server.stop()
    def totals(pid):
        try:
            with open(f"{out_dir}/cg.{pid}") as f:
                found = re.search(r"^totals: (\d+)", f.read(), re.M)
        except FileNotFoundError:
            return None
        return int(found.group(1)) if found else None

    # A worker can outlive its master for a moment while valgrind writes its file.
    wait_until(f"callgrind's output for {cls.name}", lambda: all(totals(p) is not None for p in workers), 60)
    return sum(totals(p) for p in workers), [f"{out_dir}/cg.{p}" for p in workers]


def where(path, obj):
    """The part of the program a function belongs to, from callgrind's file
    name: the Rust crate of its source, the standard library, or the object
    (the C library, the server's binary)."""
    crate = re.search(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+[^/]*/", path)
    if crate:
        return crate.group(1)
    vendored = re.search(r"(?:^|/)vendor/([A-Za-z0-9_\-]+)/", path)  # a crate carried with a patch
    if vendored:
        return vendored.group(1)
    if path.startswith("/rustc/"):
        return "std, core, alloc"
    if path.startswith(ROOT) or path.startswith("src/"):  # the binary's own sources, relative
        return "prefork-server"
    return os.path.basename(obj) if obj else "?"


def self_costs(files):
    """Self instructions in `files`, by (source file, function, object) as
    callgrind_annotate lists them (code inlined from another file is its own line)."""
    out = {}
    for cg in files:
        text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", cg],
                              capture_output=True, text=True, timeout=300).stdout
        for line in text.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S*?):(.*?)(?:\s+\[(.*)\])?$", line)
            if m:
                key = (m.group(2), m.group(3).strip(), m.group(4))
                out[key] = out.get(key, 0) + int(m.group(1).replace(",", ""))
    return out


def by_part(costs):
    """Self instructions of `self_costs`, summed by `where`."""
    out = {}
    for (path, _, obj), n in costs.items():
        part = where(path, obj)
        out[part] = out.get(part, 0) + n
    return out


def short_name(function):
    """A Rust function's path without its generic arguments, e.g.
    `h2::proto::streams::send::Send::send_headers`, `<H2Stream as Future>::poll`."""
    # `drop_in_place<h2::...::StreamRef<B>>` -> `drop_in_place<StreamRef>`: what is dropped
    dropped = re.match(r"(.*drop_in_place)<(?:&mut )?(?:[\w:]*::)?(\w+)", function)
    if dropped:
        return f"{dropped.group(1)}<{dropped.group(2)}>"
    while True:  # generic arguments, innermost first; `<T as Trait>` stays
        shorter = re.sub(r"<(?![^<>]* as )[^<>]*>", "", function)
        if shorter == function:
            break
        function = shorter
    # `<hyper::...::H2Stream as core::future::future::Future>::poll` -> `<H2Stream as Future>::poll`
    function = re.sub(r"<(?:[\w:]*::)?(\w+) as (?:[\w:]*::)?(\w+)>", r"<\1 as \2>", function)
    return function.replace("::{{closure}}", "'s closure")


def by_function(costs):
    """Self instructions of `self_costs`, summed by function (wherever its
    lines came from: inlined code counts in the function it was inlined into)."""
    out = {}
    for (path, function, obj), n in costs.items():
        name = short_name(function)
        if obj and ".so" in obj:
            name += f" ({os.path.basename(obj)})"
        out[name] = out.get(name, 0) + n
    return out


def instructions(servers=None, modes=("keep", "close", "h2"), parts=False):
    """User-space instructions per request (callgrind), keep-alive, close and
    h2c: the difference between a run of N and of 2N requests, over N, so
    start-up and shut-down cancel out. Repeatable, unlike CPU time on a shared
    machine. With `parts`, the same difference by crate (see `where`)."""
    out = {}
    for cls in servers or (Prefork, Nginx, H2o, TokioHyper):
        out[cls.name] = {}
        for mode in (m for m in modes if m != "h2" or cls.h2c):
            n = MODES[mode][0]
            # nginx 1.22 speaks h2c on a port that speaks nothing else.
            runs = NginxH2 if mode == "h2" and cls is Nginx else cls
            (small, small_files), (large, large_files) = (callgrind_total(runs, k, mode) for k in (n, 2 * n))
            out[cls.name][mode] = (large - small) / n
            if parts:
                small_costs, large_costs = self_costs(small_files), self_costs(large_files)
                for kind, group in (("_parts", by_part), ("_functions", by_function)):
                    a, b = group(small_costs), group(large_costs)
                    out[cls.name][mode + kind] = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
        log(f"instructions {cls.name}: " + ", ".join(f"{out[cls.name][m]:,.0f} {m}" for m in modes
                                                       if m in out[cls.name]))
    return out


def parts_table(instr, name=Prefork.name):
    """Where the instructions per request of build `name` go, by crate, per mode."""
    mine = instr.get(name, {})
    modes = [m for m in MODES if m + "_parts" in mine]
    if not modes:
        return []
    names = {"keep": "keep-alive", "close": "`Connection: close`", "h2": "h2c"}
    parts = sorted({p for m in modes for p in mine[m + "_parts"]},
                   key=lambda p: -max(mine[m + "_parts"].get(p, 0) for m in modes))
    rows = [[p] + [f"{mine[m + '_parts'].get(p, 0):,.0f}" for m in modes] for p in parts
            if max(abs(mine[m + "_parts"].get(p, 0)) for m in modes) >= 20]
    rows.append(["**total**"] + [f"**{mine[m]:,.0f}**" for m in modes])
    for anchor in ANCHORS:
        if anchor in instr:
            rows.append([f"{anchor}'s total"] + [f"{instr[anchor][m]:,.0f}" if m in instr[anchor] else "–"
                                                 for m in modes])
    return table(f"Where {name}'s user-space instructions per request go (callgrind, self cost by crate "
                 "or object, the difference of runs of N and 2N requests; parts under 20 left out)",
                 ["part"] + [names[m] for m in modes], rows) + functions_table(instr, name)


def functions_table(instr, name, top=15):
    """The functions of build `name` that cost most per request, per mode."""
    mine = instr.get(name, {})
    lines = []
    names = {"keep": "keep-alive", "close": "`Connection: close`", "h2": "h2c"}
    for m in (m for m in MODES if m + "_functions" in mine):
        costs = sorted(mine[m + "_functions"].items(), key=lambda kv: -kv[1])[:top]
        anchors = "; ".join(f"{a}'s whole request: {instr[a][m]:,.0f}" for a in ANCHORS if m in instr.get(a, {}))
        lines += table(f"{name}, {names[m]}: the {top} functions that cost most per request (self cost, with "
                       f"the code inlined into them; total {mine[m]:,.0f}{'; ' + anchors if anchors else ''})",
                       ["function", "instructions"],
                       [[f"`{f}`", f"{v:,.0f}"] for f, v in costs])
    return lines


def smaps(pid):
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(Rss|Pss):\s+(\d+) kB", line)
            if m:
                values[m.group(1)] = int(m.group(2))
    return values["Rss"], values["Pss"]


def memory():
    """Idle RSS and PSS (KiB) per worker, 2 workers, 1 s after they answer."""
    out = {}
    for cls in SERVERS:
        server = cls(2, None).start()
        try:
            time.sleep(1)
            workers = [smaps(p) for p in server.worker_pids()]
            master = smaps(server.proc.pid) if cls is not TokioHyper else None
        finally:
            server.stop()
        out[cls.name] = dict(rss=max(w[0] for w in workers), pss=max(w[1] for w in workers), master=master)
        log(f"memory {cls.name}: workers (RSS, PSS) KiB {workers}, master {master}")
    return out


def idle_connections(n, servers=None, connect=None, what="idle connections"):
    """Memory per idle keep-alive connection: `n` connections, one request each,
    then idle; PSS (KiB) of the whole tree before and 3 s after (so that
    prefork-server has parked them), per connection. 1 worker. `connect(port)`
    opens one connection (a plain socket by default)."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    connect = connect or (lambda port: socket.create_connection(("127.0.0.1", port)))
    out = {}
    for cls in servers or (Prefork, NginxMany, H2oMany):
        server = cls(1, None).start()
        try:
            time.sleep(1)
            before = sum(smaps(p)[1] for p in server.pids())
            conns = []
            for _ in range(n):
                c = connect(server.port)
                c.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                conns.append(c)
            for c in conns:
                c.settimeout(10)
                if not c.recv(4096).startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{cls.name}: a connection was not answered")
            time.sleep(3)
            after = sum(smaps(p)[1] for p in server.pids())
            for c in conns:
                c.close()
        finally:
            server.stop()
        # (nginx's preallocated connection array counts in "before": only what
        # the connections add is compared.)
        out[cls.name] = dict(per_connection=(after - before) * 1024 / n, before=before, after=after)
        log(f"{what} {cls.name}: PSS {before} -> {after} KiB for {n}: "
            f"{out[cls.name]['per_connection']:,.0f} B each")
    return out


def respawn(kills, servers=None):
    """Milliseconds from SIGKILL of the only worker to a reply from its replacement."""
    out = {}
    for cls in servers or RESPAWNING:
        server = cls(1, None).start()
        times, lost = [], 0
        try:
            for _ in range(kills):
                # prefork-server respawns at once a worker that lived 1 s (a younger one
                # backs off): wait as long for every server.
                time.sleep(1.2)
                (victim,) = server.worker_pids()
                start = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                while True:
                    # A short timeout per attempt: a connection the server lost with
                    # its worker must not stand for the respawn time.
                    try:
                        status, body = http_get(server.port, timeout=0.25)
                        if status == 200 and str(victim) not in body:
                            break
                    except socket.timeout:
                        lost += 1
                    except OSError:
                        time.sleep(0.001)
                    if time.monotonic() - start > 10:
                        raise RuntimeError(f"{cls.name}: no replacement answered within 10 s")
                times.append((time.monotonic() - start) * 1e3)
                wait_until(f"{cls.name}'s replacement worker", lambda: len(server.worker_pids()) == 1)
        finally:
            server.stop()
        out[cls.name] = dict(median=statistics.median(times), max=max(times), lost=lost)
        log(f"respawn {cls.name}: median {out[cls.name]['median']:.1f} ms of {len(times)}")
    return out


def reload_losses(cls, reloads):
    """Requests lost to `reloads` reloads (SIGHUP every 2 s) under `wrk -t2 -c64`, 2 workers."""
    server = cls(2, None).start()
    try:
        seconds = 2 * reloads + 2
        args = ["wrk", "-t2", "-c64", f"-d{seconds}s", f"http://127.0.0.1:{server.port}/"]
        wrk = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        for _ in range(reloads):
            os.kill(server.proc.pid, signal.SIGHUP)
            time.sleep(2)
        out = wrk.communicate(timeout=seconds + 30)[0]
    finally:
        server.stop()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return dict(requests=requests, errors=errors + (int(non2xx.group(1)) if non2xx else 0))


def exec_mode(runs, seconds, kills, reloads):
    """The Node.js example under prefork-server (exec mode) against Node's own cluster:
    throughput (unpinned, 2 workers), respawn, and requests lost to reloads."""
    servers = [PreforkNode, NodeCluster]
    tput = throughput(["unpinned"], runs, seconds, servers)["unpinned"]
    resp = respawn(kills, servers)
    lost = {}
    for cls in servers:
        lost[cls.name] = reload_losses(cls, reloads)
        log(f"reloads {cls.name}: {lost[cls.name]['errors']} errors in {lost[cls.name]['requests']:,} requests")
    return dict(tput=tput, resp=resp, lost=lost, reloads=reloads)


def exec_table(ex):
    med = statistics.median
    rows = []
    for name, runs in ex["tput"].items():
        lost = ex["lost"][name]
        rows.append([name, f"{med(r['rps'] for r in runs):,.0f}",
                     f"{med(r['user_us'] + r['kernel_us'] for r in runs):.2f}",
                     f"{ex['resp'][name]['median']:.1f}", f"{lost['errors']:,} in {lost['requests']:,}",
                     f"{lost['errors'] / ex['reloads']:,.1f}"])
    return table("Exec mode: the Node.js example (`examples/exec/hello.js`) under prefork-server against "
                 "Node's cluster module (`scripts/node-cluster.js`, reloaded as `pm2 reload` does); 2 workers, "
                 f"`wrk -t2 -c64`, unpinned; {ex['reloads']} reloads (HUP every 2 s) under the same load",
                 ["server", "requests/s", "CPU µs/req", "respawn ms (median)", "errors across reloads",
                  "errors per reload"], rows)


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        f"{os.cpu_count()} × {model}, Linux {platform.release()}",
        f"{version(['nginx', '-v'])}; Node.js {version(['node', '--version'])}; {' '.join(version(['wrk', '-v']).split()[:2])}; "
        f"{version(['oha', '--version'])}; {version(['rustc', '--version'])}",
    ]


def ratio(value, base):
    return f"{value / base:.2f}×" if base else "–"


ANCHORS = ("nginx", "h2o")


def targets(tput, split, calls, instr, mem, resp, h2=None):
    """The targets, each with the figure from this run: (target, measured, met).
    Ratios are to the better of nginx and h2o (the higher requests/s, the lower
    cost), where both ran."""
    med = statistics.median
    name = Prefork.name

    def against(results, key, higher_is_better):
        if not results or not results.get(name):
            return None
        theirs = [med(r[key] for r in results[a]) for a in ANCHORS if results.get(a)]
        if not theirs:
            return None
        return med(r[key] for r in results[name]) / (max(theirs) if higher_is_better else min(theirs))

    def per(layout, key):
        return against(tput.get(layout, {}), key, key == "rps")

    def load_bound(results):
        """" (load-bound: the load's CPU N% busy)" when the load generator's
        CPU was (nearly) saturated in every server's runs, whose requests/s
        then measure the load more than the server; "" otherwise."""
        shares = [med(r["busy"][0] for r in runs) for runs in results.values() if runs]
        if not shares or min(shares) < 0.95:
            return ""
        low, high = (f"{share * 100:.0f}" for share in (min(shares), max(shares)))
        return f" (load-bound: the load's CPU {low if low == high else f'{low}–{high}'}% busy)"

    rows = []

    def row(target, value, met, shown):
        if value is not None:
            rows.append((target, shown, "yes" if met else "**no**"))

    best = "the better of nginx and h2o"
    v = per("pinned", "user_us")
    row(f"pinned keep-alive: user CPU/request ≤ 1.05× {best}", v, v is not None and v <= 1.05, f"{v:.2f}×" if v else "")
    if instr:
        anchors = [instr[a]["keep"] for a in ANCHORS if a in instr]
        v = instr[name]["keep"] / min(anchors)
        row("(the same in user-space instructions, callgrind)", v, v <= 1.05, f"{v:.2f}×")
    v = per("pinned", "rps")
    row(f"pinned keep-alive: requests/s ≥ 0.97× {best}", v, v is not None and v >= 0.97, f"{v:.2f}×" if v else "")
    if h2:
        total = {n: [dict(cpu=r["user_us"] + r["kernel_us"]) for r in runs] for n, runs in h2.items()}
        v = against(total, "cpu", False)
        row(f"HTTP/2 h2c: user + kernel CPU/request ≤ 1.5× {best}", v, v is not None and v <= 1.5, f"{v:.2f}×" if v else "")
        v = against(h2, "rps", True)
        row(f"HTTP/2 h2c: requests/s ≥ 0.7× {best}", v, v is not None and v >= 0.7, f"{v:.2f}×" if v else "")
    v = per("close", "user_us")
    row(f"`Connection: close`: user CPU/request ≤ 1.25× {best}", v, v is not None and v <= 1.25, f"{v:.2f}×" if v else "")
    if calls:
        mine, theirs = calls["pinned"][name]["per_request"], calls["pinned"]["nginx"]["per_request"]
        row("pinned keep-alive: syscalls/request ≤ nginx", mine, mine <= theirs + 0.005, f"{mine:.2f} vs {theirs:.2f}")
    v = per("close", "rps")
    anchors_and_mine = {n: r for n, r in tput.get("close", {}).items() if n in ANCHORS + (name,)}
    row(f"`Connection: close`: requests/s ≥ 1.0× {best}", v, v is not None and v >= 1.0,
        f"{v:.2f}×{load_bound(anchors_and_mine)}" if v else "")
    v = per("unpinned", "rps")
    row(f"unpinned 2 workers: requests/s ≥ 1.0× {best}", v, v is not None and v >= 1.0, f"{v:.2f}×" if v else "")
    if split:
        v = split[name]
        row("unpinned: per-worker request split within 40/60", v, v <= 0.60, f"{v * 100:.0f}/{100 - v * 100:.0f}")
    if mem:
        v = mem[name]
        row("idle worker PSS ≤ 1 MiB", v["pss"], v["pss"] <= 1024, f"{v['pss'] / 1024:.2f} MiB")
        row("idle worker RSS ≤ 4 MiB", v["rss"], v["rss"] <= 4096, f"{v['rss'] / 1024:.2f} MiB")
    if resp:
        mine, theirs = resp[name]["median"], resp["nginx"]["median"]
        row("respawn median ≤ nginx", mine, mine <= theirs, f"{mine:.1f} ms vs {theirs:.1f} ms")
    return rows


def table(title, header, rows):
    """A markdown section: the first column left-aligned, the others right."""
    return [f"## {title}", "", "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1), *("| " + " | ".join(map(str, row)) + " |" for row in rows), ""]


def report(args, tput, split, lat, calls, instr, mem, resp, h2=None, idle=None, ex=None):
    med = statistics.median
    lines = ["# Benchmarks", "",
             f"Written by `scripts/bench.sh` on {time.strftime('%Y-%m-%d')}; machine: {machine()[0]}.", "",
             f"Versions: {machine()[1]}.", "",
             f"Throughput: medians of {args.runs} alternating runs of {args.seconds} s each, after a 1 s warm-up; "
             "CPU is utime and stime of each server's whole process tree, per request. Pinned, "
             "\"server's CPU busy\" and \"load's CPU busy\" are the shares of the run CPU 1 (the server's) "
             "and CPU 0 (the load generator's) were not idle (/proc/stat): a server whose CPU was below "
             "100% while the load's was at it was waiting for its load, and its requests/s measure the "
             "load generator more than the server.", ""]
    rows = targets(tput, split, calls, instr, mem, resp, h2)
    if rows:
        lines += table("Targets (prefork-server, ratios from this run)", ["target", "measured", "met"], rows)
    if h2:
        tput = dict(tput, h2=h2)
    titles = {"h2": "HTTP/2 (h2c, prior knowledge), pinned: 1 worker on CPU 1, `h2load -c64 -m10` on CPU 0",
              "pinned": "Pinned, keep-alive: 1 worker on CPU 1, `wrk -t1 -c64` on CPU 0",
              "close": "Pinned, `Connection: close`: 1 worker on CPU 1, `wrk -t1 -c64` on CPU 0",
              "unpinned": "Unpinned: 2 workers, `wrk -t2 -c64`, all on both CPUs"}
    keys = ("rps", "user_us", "kernel_us")
    for layout, per_server in tput.items():
        base = [med(r[k] for r in per_server["nginx"]) for k in keys]
        # Pinned, the load generator has CPU 0 and the server CPU 1: how busy
        # each was tells which of the two set the requests/s (a CPU below
        # 100% was waiting for the other).
        pinned = is_pinned(layout)
        rows = []
        for name, runs in per_server.items():
            rps, user, kern = (med(r[k] for r in runs) for k in keys)
            row = [name, f"{rps:,.0f}", ratio(rps, base[0]), f"{user:.2f}", ratio(user, base[1]),
                   f"{kern:.2f}", ratio(kern, base[2])]
            if pinned:
                row += [f"{med(r['busy'][1] for r in runs) * 100:.0f}%",
                        f"{med(r['busy'][0] for r in runs) * 100:.0f}%"]
            rows.append(row + [sum(r["errors"] for r in runs)])
        header = ["server", "requests/s", "vs nginx", "user µs/req", "vs nginx", "kernel µs/req", "vs nginx"]
        if pinned:
            header += ["server's CPU busy", "load's CPU busy"]
        lines += table(titles[layout], header + ["socket errors" if layout != "h2" else "failed streams"], rows)
        if pinned:
            # A virtual machine's host may take its CPUs (steal): the noise of a run.
            stolen = [r["busy"]["steal"][cpu] for runs in per_server.values() for r in runs for cpu in (0, 1)]
            lines += [f"Steal (time the host took from these CPUs) in this phase's runs: "
                      f"{min(stolen) * 100:.1f}–{max(stolen) * 100:.1f}%, median {med(stolen) * 100:.1f}%.", ""]
    if split:
        lines += ["Request split between the 2 workers (share of the busier one; a wrk Lua counter of the pid "
                  f"in each body, {args.seconds} s): " +
                  ", ".join(f"{name} {share * 100:.0f}/{100 - share * 100:.0f}" for name, share in split.items()), ""]
    if lat:
        lines += table(f"Latency at {args.rate:,} requests/s (pinned, keep-alive, 64 connections, oha "
                       f"latency-corrected, {args.seconds} s)",
                       ["server", "p50 ms", "p99 ms", "p99 vs nginx", "achieved req/s", "errors"],
                       [[name, f"{r['p50']:.3f}", f"{r['p99']:.3f}", ratio(r["p99"], lat["nginx"]["p99"]),
                         f"{r['rps']:,.0f}", r["errors"]] for name, r in lat.items()])
    for layout, per_server in (calls or {}).items():
        how = "keep-alive" if layout == "pinned" else "`Connection: close`"
        lines += table(f"System calls per request (strace -c -f, pinned, {how}; strace slows the run)",
                       ["server", "syscalls/request", "most frequent, per request"],
                       [[name, f"{r['per_request']:.2f}", r["top"]] for name, r in per_server.items()])
    if instr:
        lines += instructions_table(instr)
    if mem:
        lines += table("Idle memory per worker (2 workers, /proc/<pid>/smaps_rollup; the largest worker)",
                       ["server", "worker RSS MiB", "worker PSS MiB", "master RSS / PSS MiB"],
                       [[name, f"{r['rss'] / 1024:.2f}", f"{r['pss'] / 1024:.2f}",
                         f"{r['master'][0] / 1024:.1f} / {r['master'][1] / 1024:.1f}" if r["master"] else "–"]
                        for name, r in mem.items()])
    if idle:
        lines += table(f"Memory per idle keep-alive connection ({args.connections:,} connections, one request "
                       "each, then 3 s idle; PSS of the whole tree, 1 worker)",
                       ["server", "bytes per connection", "vs nginx", "PSS before → after KiB"],
                       [[name, f"{r['per_connection']:,.0f}", ratio(r["per_connection"], idle["nginx"]["per_connection"]),
                         f"{r['before']:,} → {r['after']:,}"] for name, r in idle.items()])
    if resp:
        lines += table(f"Respawn: SIGKILL of the only worker until its replacement answers ({args.kills} kills)",
                       ["server", "median ms", "vs nginx", "max ms", "attempts that hung 250 ms"],
                       [[name, f"{r['median']:.1f}", ratio(r["median"], resp["nginx"]["median"]), f"{r['max']:.1f}",
                         r["lost"]] for name, r in resp.items()])
        lines.append("h2o is not in this table: it is one process, with a thread per worker, and nothing to respawn it.\n")
    if ex:
        lines += exec_table(ex)
    return "\n".join(lines)


def instructions_table(instr, builds=(Prefork.name,)):
    base = instr.get("nginx")
    modes = [m for m in MODES if any(m in r for r in instr.values())]
    names = {"keep": "keep-alive", "close": "`Connection: close`", "h2": "h2c"}
    header, rows = ["server"], []
    for m in modes:
        header += [names[m], "vs nginx"]
    for name, r in instr.items():
        row = [name]
        for m in modes:
            row += [f"{r[m]:,.0f}", ratio(r[m], base[m]) if base and m in base else "–"] if m in r else ["–", "–"]
        rows.append(row)
    return table("User-space instructions per request (callgrind, 1 worker, h2load: 64 keep-alive "
                 "connections, 16 with `Connection: close`, or 64 h2c connections with 10 streams each)",
                 header, rows) + [line for name in builds for line in parts_table(instr, name)]


def compare_builds(binaries, modes):
    """`--instructions BINARY...`: the instructions phase alone, for builds of
    prefork-server, and the anchors named in `binaries` ("nginx", "h2o")."""
    anchors = {cls.name: cls for cls in (Nginx, H2o)}
    builds = [b for b in binaries if b not in anchors]
    servers = [anchors.get(b) or type("Build", (Prefork,), {"name": b, "binary": os.path.abspath(b)})
               for b in binaries]
    print("\n".join(instructions_table(instructions(servers, modes, parts=True), builds=builds)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="alternating runs per server and layout (default 5)")
    p.add_argument("--seconds", type=int, default=5, help="length of each measured run (default 5)")
    p.add_argument("--rate", type=int, default=10000, help="fixed rate for the latency phase (default 10000)")
    p.add_argument("--kills", type=int, default=20, help="kills for the respawn phase (default 20)")
    p.add_argument("--connections", type=int, default=10000,
                   help="idle keep-alive connections for the connection-memory phase (default 10000)")
    p.add_argument("--layouts", default="pinned,close,unpinned")
    p.add_argument("--skip", default="",
                   help="phases to skip: h2,latency,syscalls,instructions,accesslog,memory,connections,respawn,split,exec")
    p.add_argument("--reloads", type=int, default=5, help="reloads for the exec-mode phase (default 5)")
    p.add_argument("--exec-only", action="store_true",
                   help="only the exec-mode phase: the Node.js example under prefork-server against Node's cluster")
    p.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"), help="where to write the tables ('-': none)")
    p.add_argument("--instructions", nargs="+", metavar="BINARY",
                   help="only count instructions per request of these prefork-server builds (A/B); "
                   "'nginx' or 'h2o' among them counts that server's too")
    p.add_argument("--modes", default="keep,close,h2", help="with --instructions: which of keep,close,h2")
    args = p.parse_args()
    if args.instructions:
        modes = [m for m in args.modes.split(",") if m]
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            p.error(f"--modes: unknown {', '.join(unknown)} (known: {', '.join(MODES)})")
        return compare_builds(args.instructions, modes)
    if args.exec_only:
        print("\n".join(exec_table(exec_mode(args.runs, args.seconds, args.kills, args.reloads))))
        return
    skip = set(filter(None, args.skip.split(",")))
    layouts = [layout for layout in args.layouts.split(",") if layout]
    for layout in layouts:
        if layout not in LAYOUTS:
            p.error(f"unknown layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    if os.cpu_count() < 2:
        p.error("the pinned layouts need 2 CPUs (server on CPU 1, client on CPU 0)")

    tput = throughput(layouts, args.runs, args.seconds)
    if "pinned" in tput and "accesslog" not in skip:
        # The same pinned keep-alive load with each server writing its access log.
        logged = throughput(["pinned"], args.runs, args.seconds, [PreforkAccessLog, NginxAccessLog])
        tput["pinned"].update(logged["pinned"])
    h2 = http2(args.runs, args.seconds) if "h2" not in skip else None
    split = request_split(args.seconds) if "split" not in skip else None
    lat = latency(args.rate, args.seconds) if "latency" not in skip else None
    calls = {layout: syscalls(3, layout) for layout in ("pinned", "close")} if "syscalls" not in skip else None
    instr = instructions(parts=True) if "instructions" not in skip else None
    if instr is not None and "accesslog" not in skip:
        instr.update(instructions((PreforkAccessLog, NginxAccessLog), modes=("keep", "close")))
    mem = memory() if "memory" not in skip else None
    idle = idle_connections(args.connections) if "connections" not in skip else None
    resp = respawn(args.kills) if "respawn" not in skip else None
    ex = exec_mode(args.runs, args.seconds, args.kills, args.reloads) if "exec" not in skip else None
    text = report(args, tput, split, lat, calls, instr, mem, resp, h2, idle, ex)
    print(text)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text + "\n")
        log(f"wrote {args.out}")


def cleanup(*_):
    for server in list(LIVE):
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["rm", "-rf", TMP])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        main()
    finally:
        cleanup()

#!/usr/bin/env python3
"""frameworks.py — real frameworks under prefork-server, side by side.

1. uvicorn's keep-alive latency: uvicorn alone (binding its own port, one
   process) against the same app under prefork-server with one worker, run as
   `uvicorn --fd 3` and as the recipe (`python3 examples/exec/uvicorn_app.py`).
   `wrk -t1 -c8 -d5s` on each, one after the other; prints the average
   latency, req/s, and the ratio to uvicorn alone.
2. What 5 reloads cost each framework, stock against its recipe in
   `examples/exec/`: 2 workers, `wrk -t2 -c16` keep-alive for the whole run, a
   HUP every time the previous reload has completed (at least 2 s apart);
   prints wrk's socket errors (a connection cut under a client) and non-2xx.
3. How long a graceful stop (TERM) takes each recipe with 4 idle keep-alive
   connections open: their grace, not `--graceful-timeout`.

Traffic goes to 127.0.0.1 only; every run is bounded (wrk's duration, 60 s
per server at most) and every server is stopped.

Usage: python3 scripts/frameworks.py [--binary target/release/prefork-server]
       [--only latency|reloads|stops]
Needs wrk, uvicorn, node with `npm ci --prefix examples/exec`, go.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXEC = os.path.join(ROOT, "examples", "exec")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url, threads, connections, seconds):
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    return out


def parse(out):
    def number(pattern, default=0.0):
        found = re.search(pattern, out)
        return float(found.group(1)) if found else default

    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    avg_ms = float(latency.group(1)) * scale[latency.group(2)] if latency else float("nan")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {
        "avg_ms": avg_ms,
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "errors": errors,
        "non2xx": int(number(r"Non-2xx or 3xx responses: (\d+)")),
    }


class Master:
    """prefork-server on 127.0.0.1, port 0, running `command`."""

    def __init__(self, binary, workers, command):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", "0", "--workers", str(workers), "--"] + command,
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()  # the ready line
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not found:
            self.stop()
            raise SystemExit(f"no ready line from {command}: {line!r}\n{self.logs()}")
        self.url = f"http://127.0.0.1:{found.group(1)}/"

    def logs(self):
        self.log.seek(0)
        return self.log.read()

    def reload_and_wait(self, n, within=30):
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + within
        while self.logs().count("reload complete") < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"reload {n} not complete within {within}s\n{self.logs()}")
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def uvicorn_alone(port):
    proc = subprocess.Popen(["uvicorn", "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                             "--app-dir", EXEC, "uvicorn_app:app"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("uvicorn alone did not start")


def latency(binary):
    print("== uvicorn keep-alive latency (wrk -t1 -c8 -d5s)")
    rows = []
    port = free_port()
    alone = uvicorn_alone(port)
    try:
        rows.append(("uvicorn alone", parse(wrk(f"http://127.0.0.1:{port}/", 1, 8, 5))))
    finally:
        alone.terminate()
        alone.wait()
    for name, command in [
        ("prefork-server -- uvicorn --fd 3", ["uvicorn", "--fd", "3", "--no-access-log", "--app-dir", EXEC,
                                               "uvicorn_app:app"]),
        ("prefork-server -- python3 uvicorn_app.py", ["python3", os.path.join(EXEC, "uvicorn_app.py")]),
    ]:
        master = Master(binary, 1, command)
        try:
            rows.append((name, parse(wrk(master.url, 1, 8, 5))))
        finally:
            master.stop()
    base = rows[0][1]["avg_ms"]
    print(f"{'server':44} {'avg latency':>12} {'req/s':>9} {'ratio':>6}")
    for name, row in rows:
        print(f"{name:44} {row['avg_ms']:>10.2f}ms {row['rps']:>9.0f} {row['avg_ms'] / base:>6.2f}")


def go_build(directory, out):
    """`go build` of `directory` into `out`, offline (standard library only)."""
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off")
    subprocess.run(["go", "build", "-o", out, "."], cwd=directory, env=env, check=True)
    return out


def go_binary(directory):
    out = os.path.join(tempfile.gettempdir(), "prefork-" + directory.replace("/", "-"))
    return go_build(os.path.join(ROOT, directory), out)


STOCK_EXPRESS = """
const express = require(process.argv[1] + '/node_modules/express');
const app = express();
app.use((req, res) => res.type('text/plain').send(`Hello from worker ${process.pid}\\n`));
const server = app.listen({ fd: 3 });
process.on('SIGTERM', () => server.close());  // the usual handler
"""

STOCK_GO = """package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from worker %d\\n", os.Getpid())
	})}
	go srv.Serve(ln)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	srv.Shutdown(ctx) // the documented graceful shutdown
}
"""


def stock_go():
    directory = tempfile.mkdtemp(prefix="prefork-stock-go-")
    with open(os.path.join(directory, "go.mod"), "w") as f:
        f.write("module stock\n\ngo 1.19\n")
    with open(os.path.join(directory, "main.go"), "w") as f:
        f.write(STOCK_GO)
    return go_build(directory, os.path.join(directory, "stock_go"))


def reloads(binary):
    print("== 5 HUPs under wrk -t2 -c16 keep-alive, 2 workers")
    recipe_go = go_binary("examples/exec/go_app")
    cases = [
        ("uvicorn --fd 3 (stock)", ["uvicorn", "--fd", "3", "--no-access-log", "--app-dir", EXEC,
                                    "uvicorn_app:app"]),
        ("python3 uvicorn_app.py (recipe)", ["python3", os.path.join(EXEC, "uvicorn_app.py")]),
        ("Express, server.close() on TERM (stock)", ["node", "-e", STOCK_EXPRESS, EXEC]),
        ("node express_app.js (recipe)", ["node", os.path.join(EXEC, "express_app.js")]),
        ("Go, Server.Shutdown on TERM (stock)", [stock_go()]),
        ("go_app (recipe)", [recipe_go]),
    ]
    print(f"{'command':44} {'requests':>9} {'errors':>7} {'non-2xx':>8}")
    for name, command in cases:
        master = Master(binary, 2, command)
        try:
            load = subprocess.Popen(["wrk", "-t2", "-c16", "-d16s", master.url],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(2)
            for n in range(1, 6):
                started = time.monotonic()
                master.reload_and_wait(n)
                time.sleep(max(0.0, 2 - (time.monotonic() - started)))
            out, _ = load.communicate(timeout=60)
        finally:
            master.stop()
        row = parse(out)
        requests = re.search(r"(\d+) requests in", out)
        print(f"{name:44} {requests.group(1) if requests else '?':>9} {row['errors']:>7} {row['non2xx']:>8}")


def stops(binary):
    print("== TERM with 4 idle keep-alive connections open, 2 workers")
    for name, command in [
        ("python3 uvicorn_app.py", ["python3", os.path.join(EXEC, "uvicorn_app.py")]),
        ("node express_app.js", ["node", os.path.join(EXEC, "express_app.js")]),
        ("go_app", [go_binary("examples/exec/go_app")]),
    ]:
        master = Master(binary, 2, command)
        port = int(master.url.rsplit(":", 1)[1].strip("/"))
        idle = []
        for _ in range(4):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            conn.recv(4096)
            idle.append(conn)
        started = time.monotonic()
        master.stop()
        print(f"{name:44} stopped in {time.monotonic() - started:.2f}s (exit {master.proc.returncode})")
        for conn in idle:
            conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "prefork-server"))
    parser.add_argument("--only", choices=["latency", "reloads", "stops"])
    args = parser.parse_args()
    for tool in ["wrk", "uvicorn", "node", "go"]:
        if not shutil.which(tool):
            raise SystemExit(f"frameworks.py needs {tool}")
    if not os.path.isdir(os.path.join(EXEC, "node_modules", "express")):
        raise SystemExit("frameworks.py needs Express: npm ci --prefix examples/exec")
    if args.only in (None, "latency"):
        latency(args.binary)
    if args.only in (None, "reloads"):
        reloads(args.binary)
    if args.only in (None, "stops"):
        stops(args.binary)


if __name__ == "__main__":
    sys.exit(main())

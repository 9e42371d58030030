#!/usr/bin/env python3
"""storm.py — a kill -9 storm, side by side with nginx.

For each server (prefork-server's release build and nginx-light, 2 workers
each, reuseport, on 127.0.0.1): 4 client threads send GET / on a new
connection each (0.25 s timeout) while a worker, picked at random, gets
SIGKILL every 100 ms for 10 s. Prints, per server: requests answered, failed,
workers killed, and the longest stretch with no answer (the target for
prefork-server: under 0.5 s). Traffic goes to 127.0.0.1 only; the storm and
the clients stop by themselves, and the script stops both servers.

Usage: python3 scripts/storm.py [--seconds 10] [--every-ms 100]
(needs nginx: apt-get install nginx-light; builds prefork-server with cargo)
"""

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def get(port):
    """True if GET / answered 200 within 0.25 s."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.25) as s:
            s.settimeout(0.25)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def storm(name, port, master, seconds, every):
    answered, failed, kills = [], [0], [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client():
        while time.monotonic() < stop:
            ok = get(port)
            with lock:
                if ok:
                    answered.append(time.monotonic())
                else:
                    failed[0] += 1
            if not ok:
                time.sleep(0.005)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.5)  # load first, then the storm
    while time.monotonic() < stop - 0.5:
        workers = children(master)
        if workers:
            try:
                os.kill(random.choice(workers), signal.SIGKILL)
                kills[0] += 1
            except ProcessLookupError:
                pass
        time.sleep(every)
    for t in threads:
        t.join()
    times = [start] + sorted(answered) + [stop]
    gap = max(b - a for a, b in zip(times, times[1:]))
    print(f"| {name} | {len(answered):,} | {failed[0]:,} | {kills[0]} | {gap * 1000:,.0f} |")
    sys.stdout.flush()
    return gap


def wait_for(port, within=10):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if get(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--every-ms", type=float, default=100)
    args = p.parse_args()
    every = args.every_ms / 1000
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins"], cwd=ROOT, check=True)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    tmp = tempfile.mkdtemp()
    print(f"kill -9 of a random worker every {args.every_ms:.0f} ms for {args.seconds:.0f} s, "
          f"{CLIENTS} clients sending GET / on new connections (0.25 s timeout)\n")
    print("| server, 2 workers | answered | failed | workers killed | longest stretch with no answer, ms |")
    print("|---|---:|---:|---:|---:|")
    procs = []
    try:
        port = free_port()
        server = subprocess.Popen(
            [os.environ.get("PREFORK_BINARY", os.path.join(ROOT, "target/release/prefork-server")), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prefork.err"), "w"))
        procs.append(server)
        wait_for(port)
        gap = storm("prefork-server", port, server.pid, args.seconds, every)
        server.terminate()
        server.wait(10)
        err = open(os.path.join(tmp, "prefork.err")).read()
        if "every worker has exited" not in err:
            print("prefork-server did not stop cleanly:\n" + err[-2000:])
        if nginx:
            port = free_port()
            os.makedirs(os.path.join(tmp, "nginx/logs"))
            with open(os.path.join(tmp, "nginx/nginx.conf"), "w") as f:
                f.write(f"""worker_processes 2;
pid {tmp}/nginx/nginx.pid;
error_log {tmp}/nginx/logs/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ return 200 "Hello from worker $pid\\n"; }}
    }}
}}
""")
            server = subprocess.Popen([nginx, "-p", os.path.join(tmp, "nginx"), "-c", "nginx.conf", "-g",
                                       "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(server)
            wait_for(port)
            storm("nginx", port, server.pid, args.seconds, every)
            server.send_signal(signal.SIGQUIT)
            server.wait(10)
        else:
            print("| nginx | not installed (apt-get install nginx-light) | | | |")
        target = "met" if gap < 0.5 else "MISSED"
        print(f"\nprefork-server's longest stretch with no answer: {gap * 1000:.0f} ms (target < 500 ms: {target})")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

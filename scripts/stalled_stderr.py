#!/usr/bin/env python3
"""stalled_stderr.py — how long a respawn takes while the master's stderr pipe
is full and its reader stalled, for each binary given, side by side.

For each binary: start it (2 workers, 127.0.0.1, port 0) with stderr a pipe of
this script's; read the ready line; fill the pipe through a description of the
script's own; wait until the workers are over a second old (no backoff); kill -9
one; time until the master has two workers again, without reading the pipe (at
most 3 s). Then read the pipe and stop the server. Traffic: none.

Usage: python3 scripts/stalled_stderr.py BINARY... [--runs N]
"""
import fcntl
import os
import signal
import subprocess
import sys
import time


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(n) for n in f.read().split()}


def drain(fd):
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass


def respawn_ms(binary):
    r, w = os.pipe()
    server = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=w)
    try:
        server.stdout.readline()
        fcntl.fcntl(r, fcntl.F_SETFL, os.O_NONBLOCK)
        drain(r)
        filler = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            while True:
                os.write(filler, b"\0" * 4096)
        except BlockingIOError:
            pass
        time.sleep(1.5)  # the workers are over a second old: replaced at once
        victim = min(children(server.pid))
        started = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while time.monotonic() - started < 3:
            now = children(server.pid)
            if victim not in now and len(now) == 2:
                return (time.monotonic() - started) * 1000
            time.sleep(0.0005)
        return None
    finally:
        server.terminate()
        deadline = time.monotonic() + 10
        while server.poll() is None and time.monotonic() < deadline:
            drain(r)
            time.sleep(0.01)
        if server.poll() is None:
            server.kill()
        os.close(r)
        os.close(w)


def main():
    args = sys.argv[1:]
    runs = 3
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    print("| binary | respawn with stderr full (ms), each run |")
    print("|---|---|")
    for binary in args:
        times = [respawn_ms(binary) for _ in range(runs)]
        shown = ", ".join("none within 3 s" if t is None else f"{t:.1f}" for t in times)
        print(f"| {binary} | {shown} |")


if __name__ == "__main__":
    main()

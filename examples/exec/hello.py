#!/usr/bin/env python3
"""A worker for prefork-server's exec mode, in Python's standard library only.

    prefork-server --port 8000 --workers 4 -- python3 examples/exec/hello.py

The listening socket is fd 3 (systemd's socket activation: LISTEN_FDS=1), so
the program binds nothing. It tells the master it is ready, beats the
watchdog and shows a status line over NOTIFY_SOCKET (sd_notify), and drains on
SIGTERM: it stops accepting, answers each open connection's next request with
`Connection: close` (a keep-alive client then reconnects, to another worker),
and exits once they are all closed (idle ones close after 5 s).
"""

import http.server
import os
import signal
import socket
import socketserver
import threading
import time
import urllib.parse

BODY = f"Hello from worker {os.getpid()}\n".encode()
draining = threading.Event()
connections_lock = threading.Lock()
connections = 0
busy = {}  # thread -> when its /block began


def notify(message):
    """sd_notify(3): one datagram to $NOTIFY_SOCKET; nothing without it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 5  # an idle keep-alive connection is closed after this
    disable_nagle_algorithm = True  # headers and body are two writes

    def setup(self):
        global connections
        with connections_lock:
            connections += 1
        super().setup()

    def finish(self):
        global connections
        super().finish()
        with connections_lock:
            connections -= 1

    def do_GET(self):
        if self.path.startswith("/block"):
            # A synchronous call that takes ms (a slow query): with more than
            # the watchdog's time, the beat stops and the master's --timeout
            # takes this worker for hung (and PYTHONFAULTHANDLER, which the
            # master sets, prints where it hung).
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            busy[threading.get_ident()] = time.monotonic()
            try:
                time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
            finally:
                busy.pop(threading.get_ident(), None)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        if draining.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(BODY)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass  # no line per request


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self):
        # The socket is already bound and listening: take it, do not bind.
        super().__init__(None, Handler, bind_and_activate=False)
        self.socket = socket.socket(fileno=3)
        self.server_address = self.socket.getsockname()


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        raise SystemExit("hello.py: run me under prefork-server (no socket on fd 3)")
    server = Server()
    # SIGTERM: stop accepting (the master keeps the socket), drain, exit.
    def drain(*_):
        draining.set()
        threading.Thread(target=server.shutdown).start()
    signal.signal(signal.SIGTERM, drain)
    watchdog = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
    if watchdog:
        def beat():
            # Only while no request has been running for the watchdog's time.
            if all(time.monotonic() - began < watchdog for began in list(busy.values())):
                notify("WATCHDOG=1")
            timer = threading.Timer(watchdog / 2, beat)
            timer.daemon = True
            timer.start()
        beat()
    notify(f"READY=1\nSTATUS=serving on {server.server_address[0]}:{server.server_address[1]}")
    server.serve_forever()
    notify("STOPPING=1")
    deadline = time.monotonic() + 30
    while connections and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()

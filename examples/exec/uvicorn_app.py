#!/usr/bin/env python3
"""An ASGI app served by uvicorn, draining keep-alive connections on SIGTERM.

    prefork-server --port 8000 --workers 4 -- python3 examples/exec/uvicorn_app.py
    prefork-server --port 8000 --workers 4 -- python3 examples/exec/uvicorn_app.py main:app

With an argument, it serves that app instead of its own, as uvicorn names one
(`module:attribute`, imported from the current directory): a FastAPI or
Starlette app, say, or any other ASGI app, unchanged.

Run it this way, not as `uvicorn --fd 3 --app-dir examples/exec
uvicorn_app:app`. That command serves the same app, but on SIGTERM or SIGINT stock uvicorn (uvicorn/server.py,
`Server.shutdown`) calls `connection.shutdown()` on every connection at once.
An idle keep-alive connection is closed on the spot, and the client's next
request may already be on its way: it gets a reset. A connection with a
request in flight is closed right after that response, with no
`Connection: close` in it (the h11 protocol), so the client may send into a
closing socket. Each reload then costs a few requests.

Here `DrainingServer` replaces that shutdown:
  1. stop accepting: close this process's own copy of the listening socket.
     The master keeps its copy, so connections waiting in the queue stay there
     for the next worker;
  2. answer the next request on every open connection with
     `Connection: close`, then close it. The client sees the header and
     reconnects, to another worker;
  3. close a connection only once it has been idle for IDLE_GRACE seconds
     since the drain began, or at DRAIN_TIMEOUT;
  4. exit once no connection is left.
SIGTERM (prefork-server's stop signal) and SIGINT both start the drain.
uvicorn's own signal handler does that; a second SIGINT forces the exit.
"""

import asyncio
import os
import socket
import sys

import uvicorn

IDLE_GRACE = 3.0  # seconds a connection may sit idle during the drain
DRAIN_TIMEOUT = 25.0  # then close whatever is left (under the master's 30 s)


async def app(scope, receive, send):
    """The application: any ASGI app works here."""
    if scope["type"] == "lifespan":  # nothing to set up or tear down
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"Hello from worker {os.getpid()}\n".encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


class CloseWhenDraining:
    """ASGI middleware: once the drain has begun, every response says
    `Connection: close`, and uvicorn closes the connection after sending it.
    The client knows not to reuse it, so it cannot race the close."""

    def __init__(self, app, server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message):
            # Checked when the response starts, so a request that was
            # already running when the drain began gets the header too.
            if message["type"] == "http.response.start" and self.server.draining:
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"connection"]
                message = {**message, "headers": headers + [(b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    draining = False

    async def shutdown(self, sockets=None):
        # uvicorn's main loop has seen should_exit (SIGTERM/SIGINT).
        self.draining = True
        # 1. Stop accepting. server.close() closes only our fd; the master's
        #    copy keeps the socket and its queue alive.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # A connection accepted just before the close reaches connection_made
        # a loop turn later: give it time to be counted below.
        await asyncio.sleep(0.1)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        idle_since = {}  # connection -> (its request cycle, when first seen idle)
        connections = self.server_state.connections
        while connections and not self.force_exit and loop.time() < deadline:
            now = loop.time()
            seen = {}
            for conn in list(connections):
                # The HTTP protocols keep their current request in `.cycle`;
                # a new request makes a new cycle object.
                cycle = getattr(conn, "cycle", None)
                if cycle is not None and not cycle.response_complete:
                    continue  # 2. busy: its response will say close
                first_idle = idle_since.get(conn)
                if first_idle is None or first_idle[0] is not cycle:
                    seen[conn] = (cycle, now)  # newly idle: start its clock
                elif now - first_idle[1] >= IDLE_GRACE:
                    conn.shutdown()  # 3. idle past the grace: close it
                else:
                    seen[conn] = first_idle
            idle_since = seen
            await asyncio.sleep(0.05)

        # 4. uvicorn's own shutdown closes whatever is left (nothing, or what
        #    outlived DRAIN_TIMEOUT), waits for app tasks, runs lifespan shutdown.
        await super().shutdown(sockets=sockets)
        # uvicorn (0.29 and later) raises the caught signal again once it is
        # done, so the process would die "killed by SIGTERM". The drain went
        # well: forget the signal and exit 0.
        if hasattr(self, "_captured_signals"):
            self._captured_signals.clear()


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        sys.exit("uvicorn_app.py: run me under prefork-server (no socket on fd 3)")
    # The master's listening socket. socket.socket(fileno=3) detects its
    # family (AF_INET/AF_INET6). uvicorn's --fd uses socket.fromfd(fd,
    # AF_UNIX, ...), so asyncio never sets TCP_NODELAY on accepted
    # connections. asyncio makes the socket non-blocking itself.
    listener = socket.socket(fileno=3)
    # The app: the one named on the command line (`main:app`, as uvicorn
    # takes it), else this file's own.
    sys.path.insert(0, os.getcwd())
    config = uvicorn.Config(
        sys.argv[1] if len(sys.argv) > 1 else app,
        access_log=False,
        timeout_keep_alive=5,  # idle keep-alive limit while serving
        timeout_graceful_shutdown=3,  # app tasks still running after the drain
    )
    server = DrainingServer(config)
    config.load()
    config.loaded_app = CloseWhenDraining(config.loaded_app, server)
    server.run(sockets=[listener])


if __name__ == "__main__":
    main()

#!/usr/bin/env node
// An Express 5 app under prefork-server's exec mode, draining keep-alive
// connections on SIGTERM:
//
//     npm ci --prefix examples/exec     # express@5, from package-lock.json
//     prefork-server --port 8000 --workers 4 -- node examples/exec/express_app.js
//
// The listening socket is fd 3 (systemd's socket activation), so the program
// binds nothing: `listen({ fd: 3 })`.
//
// Why not `server.close()` on SIGTERM? Since Node 19, http.Server#close() also
// calls closeIdleConnections(), which destroys every keep-alive connection
// that has no request in flight at that moment. The client's next request may
// already be on its way, so it gets a reset instead of an answer. Without any
// handler, SIGTERM kills the process at once, in-flight requests included.
// This drain instead:
//   1. stops accepting with net.Server#close(). That closes only this
//      process's fd. The master keeps its copy, so connections waiting in the
//      queue stay there for the next worker;
//   2. answers the next request on every open connection with
//      `Connection: close`. Node closes the connection after that response,
//      and the client, having seen the header, reconnects to another worker;
//   3. closes a connection only once it has been idle for IDLE_GRACE_MS since
//      the drain began, or at DRAIN_TIMEOUT_MS;
//   4. exits once no connection is left.
"use strict";

const http = require("node:http");
const net = require("node:net");
const express = require("express");

const IDLE_GRACE_MS = 3000; // how long a connection may sit idle during the drain
const DRAIN_TIMEOUT_MS = 25000; // then close whatever is left (under the master's 30 s)

if (process.env.LISTEN_PID !== String(process.pid) || process.env.LISTEN_FDS !== "1") {
  console.error("express_app.js: run me under prefork-server (no socket on fd 3)");
  process.exit(1);
}

let draining = false;
const app = express();

// First middleware: once the drain has begun, every response says close (2).
app.use((req, res, next) => {
  if (draining) res.set("Connection", "close");
  next();
});

// The application: any routes work here.
app.use((req, res) => {
  res.type("text/plain").send(`Hello from worker ${process.pid}\n`);
});

// Keep track of each connection: the responses it has in flight, and since
// when it has had none (a new connection counts as idle until its first
// request arrives).
const connections = new Map(); // socket -> { inFlight: Set<res>, idleSince }
const server = http.createServer();
server.on("connection", (socket) => {
  connections.set(socket, { inFlight: new Set(), idleSince: Date.now() });
  socket.on("close", () => connections.delete(socket));
});
server.on("request", (req, res) => {
  const conn = connections.get(req.socket);
  if (conn) {
    conn.inFlight.add(res);
    res.on("close", () => {
      conn.inFlight.delete(res);
      conn.idleSince = Date.now();
    });
  }
  app(req, res);
});

server.listen({ fd: 3 });

function drain() {
  // A second signal (Ctrl-C twice): give up on the drain.
  if (draining) {
    server.closeAllConnections();
    process.exit(1);
  }
  draining = true;
  const drainStart = Date.now();

  // 1. Stop accepting, without http.Server#close's closeIdleConnections().
  //    The callback runs once every connection has closed (4). Close your
  //    other resources (database pools, ...) there.
  net.Server.prototype.close.call(server, () => process.exit(0));

  // 2. A request already in flight whose headers are not sent yet says close
  //    too. One whose headers are out keeps its connection open, and the next
  //    request on it gets the header from the middleware.
  for (const conn of connections.values()) {
    for (const res of conn.inFlight) {
      if (!res.headersSent) res.setHeader("Connection", "close");
    }
  }

  // 3. Close connections idle past the grace, counted from the drain's start
  //    at the earliest.
  setInterval(() => {
    const now = Date.now();
    for (const [socket, conn] of connections) {
      if (conn.inFlight.size === 0 && now - Math.max(conn.idleSince, drainStart) >= IDLE_GRACE_MS) {
        socket.destroy();
      }
    }
  }, 100).unref();

  // The hard deadline, for connections that stay busy: they are cut, so the
  // exit code says the drain was not clean.
  setTimeout(() => {
    console.error(`express_app.js: ${connections.size} connections still open after ${DRAIN_TIMEOUT_MS} ms; closing them`);
    server.closeAllConnections();
    process.exit(1);
  }, DRAIN_TIMEOUT_MS).unref();
}

// SIGTERM is prefork-server's stop signal; Ctrl-C drains the same way.
process.on("SIGTERM", drain);
process.on("SIGINT", drain);

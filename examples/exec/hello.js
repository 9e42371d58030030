#!/usr/bin/env node
// A worker for prefork-server's exec mode, in Node.js with no packages:
//
//     prefork-server --port 8000 --workers 4 -- node examples/exec/hello.js
//
// The listening socket is fd 3 (systemd's socket activation: LISTEN_FDS=1), so
// the program binds nothing: `listen({ fd: 3 })`. Node has no datagram sockets
// for NOTIFY_SOCKET, so it does not say READY=1: the master sees it accepting
// (`--exec-ready accepting`, the default). On SIGTERM it stops accepting,
// answers each open connection's next request with `Connection: close` (a
// keep-alive client then reconnects, to another worker), and exits once they
// are all closed (idle ones close after Node's 5 s keep-alive timeout).
"use strict";

const http = require("node:http");

if (process.env.LISTEN_PID !== String(process.pid) || process.env.LISTEN_FDS !== "1") {
  console.error("hello.js: run me under prefork-server (no socket on fd 3)");
  process.exit(1);
}

const body = `Hello from worker ${process.pid}\n`;
let draining = false;
const server = http.createServer((request, response) => {
  response.writeHead(200, {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    ...(draining ? { Connection: "close" } : {}),
  });
  response.end(request.method === "HEAD" ? undefined : body);
});

server.listen({ fd: 3 });

process.on("SIGTERM", () => {
  // Stop accepting (the master keeps the socket open); exit once every
  // connection has closed. Not `server.close()`: since Node 19 it also cuts
  // idle keep-alive connections at once, and a client whose next request is
  // already on its way would get a reset instead of an answer.
  draining = true;
  require("node:net").Server.prototype.close.call(server, () => process.exit(0));
});

// node-cluster.js — what a Node.js user runs instead of a supervisor: the
// `cluster` module's primary forks WORKERS workers (one per CPU by default),
// each answering the same body as prefork-server's default app, and forks a
// replacement when one exits (what PM2 adds on top, in its simplest form).
// The primary owns the listening socket and hands connections to the workers
// (round-robin, Node's default on Linux).
//
// SIGHUP reloads as `pm2 reload` does: for each worker in turn, a new one is
// forked, and once it listens the old one gets SIGINT, then SIGKILL 1.6 s
// later (PM2's kill_timeout); the workers close their server on SIGINT, as
// PM2's documentation tells apps to.
//
// Usage: node scripts/node-cluster.js PORT [WORKERS]
// Prints `listening on 127.0.0.1:PORT` once every worker listens.
"use strict";
const cluster = require("cluster");
const http = require("http");
const os = require("os");

const port = Number(process.argv[2]);
const workers = Number(process.argv[3] || os.availableParallelism());
if (!Number.isInteger(port) || !Number.isInteger(workers) || workers < 1) {
  console.error("usage: node scripts/node-cluster.js PORT [WORKERS]");
  process.exit(2);
}

if (cluster.isPrimary) {
  let listening = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on("listening", () => {
    if (++listening === workers) console.log(`listening on 127.0.0.1:${port}`);
  });
  const retired = new Set();
  cluster.on("exit", (worker, code, signal) => {
    if (retired.delete(worker.id)) return;
    console.error(`worker ${worker.process.pid} exited (${signal || code}); forking a replacement`);
    cluster.fork();
  });
  let reloading = false;
  process.on("SIGHUP", async () => {
    if (reloading) return;
    reloading = true;
    for (const old of Object.values(cluster.workers)) {
      const next = cluster.fork();
      await new Promise((resolve) => next.once("listening", resolve));
      retired.add(old.id);
      old.process.kill("SIGINT");
      setTimeout(() => old.process.kill("SIGKILL"), 1600).unref();
    }
    reloading = false;
    console.error("reload complete");
  });
  process.on("SIGTERM", () => {
    cluster.removeAllListeners("exit");
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  const body = `Hello from worker ${process.pid}\n`;
  const server = http
    .createServer((req, res) => {
      res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8", "Content-Length": Buffer.byteLength(body) });
      res.end(body);
    })
    .listen(port, "127.0.0.1");
  process.on("SIGINT", () => server.close(() => process.exit(0)));
}

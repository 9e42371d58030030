// chromium.js — headless Chromium (Debian's package) driven over the DevTools
// protocol on a pipe, for scripts/screenshot.js and scripts/page-check.js.
//
// --remote-debugging-pipe: commands on fd 3, replies and events on fd 4, each a
// JSON text ended by NUL. No npm packages needed. Chromium leads its own
// process group (its renderers die with it), keeps its temp files inside its
// own temp profile, and both are removed however the run ends; the whole run
// is bounded by `timeoutMs`.
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// `name` prefixes messages and the profile; `onEvent(method, params)` gets the
// protocol's events. Returns `send(method, params, sessionId)`, `page()` (a
// new tab of `width`x`height`, its session id) and `finish(code, line,
// message)`, which stops Chromium, removes its profile, prints `line` to
// stdout and `message` to stderr, and exits with `code`.
function launch({ name, width, height, timeoutMs, extraArgs = [], onEvent = () => {} }) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), `${name}-`));
  const chrome = spawn(
    "chromium",
    ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--remote-debugging-pipe", ...extraArgs,
      `--user-data-dir=${profile}`, `--window-size=${width},${height}`, "about:blank"],
    // TMPDIR inside the profile: Chromium's singleton-socket dir then goes with it.
    { stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"], detached: true, env: { ...process.env, TMPDIR: profile } },
  );
  const kill = () => { try { if (chrome.pid) process.kill(-chrome.pid, "SIGKILL"); } catch { /* already gone */ } };
  const removeProfile = () => {
    try { fs.rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }); } catch { /* best effort */ }
  };
  process.on("exit", () => { kill(); removeProfile(); });  // last resort; finish() normally did it
  let finishing = false;
  async function finish(code, line, message) {
    if (finishing) return;
    finishing = true;
    clearTimeout(deadline);
    kill();
    // Let the killed processes go before removing the profile they were writing to.
    if (chrome.pid && chrome.exitCode === null && chrome.signalCode === null)
      await Promise.race([new Promise(resolve => chrome.once("exit", resolve)), sleep(3000)]);
    removeProfile();
    if (message) console.error(`${name}: ${message}`);
    if (line) process.stdout.write(line + "\n");
    process.exit(code);
  }
  const deadline = setTimeout(() => finish(1, null, "timed out"), timeoutMs);
  for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => finish(1, null, `got ${signal}`));
  chrome.on("error", err => finish(1, null, `cannot start chromium: ${err.message}`));
  chrome.on("exit", (code, signal) => finish(1, null, `chromium exited early (${signal || code})`));

  let nextId = 1;
  const pending = new Map();
  let buffered = "";
  chrome.stdio[3].on("error", err => finish(1, null, `devtools pipe: ${err.message}`));
  chrome.stdio[4].on("data", chunk => {
    buffered += chunk.toString();
    let end;
    while ((end = buffered.indexOf("\0")) >= 0) {
      let message;
      try { message = JSON.parse(buffered.slice(0, end)); } catch { message = {}; }
      buffered = buffered.slice(end + 1);
      if (!message.id) { if (message.method) onEvent(message.method, message.params); continue; }
      const waiter = pending.get(message.id);
      if (!waiter) continue;
      pending.delete(message.id);
      if (message.error) waiter.reject(new Error(`${waiter.method}: ${message.error.message}`));
      else waiter.resolve(message.result);
    }
  });
  const send = (method, params = {}, sessionId) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject, method });
      chrome.stdio[3].write(JSON.stringify({ id, method, params, sessionId }) + "\0");
    });
  async function page() {
    const { targetId } = await send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
    await send("Emulation.setDeviceMetricsOverride", { width, height, deviceScaleFactor: 1, mobile: false }, sessionId);
    return sessionId;
  }
  return { send, page, finish };
}

module.exports = { launch, sleep };

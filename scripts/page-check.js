// page-check.js — load a live page in headless Chromium, let it run WAIT_MS of real time,
// and report what went wrong in it plus what it says about itself (window.dashboard).
//
// Drives Chromium over the DevTools protocol on a pipe, as screenshot.js does
// (--remote-debugging-pipe: commands on fd 3, replies and events on fd 4, each a
// JSON text ended by NUL). Collects uncaught exceptions, console.error calls and
// error log entries (network failures among them; a favicon.ico 404 is ignored).
// No npm packages needed.
//
// Usage: node scripts/page-check.js URL WAIT_MS
// Prints one JSON line: {"errors": [...], "dashboard": {...} or null}.
// Exit 0 if the page was driven (errors or not: the caller judges), 1 if Chromium
// could not be driven, 2 on bad usage. Chromium and its temp profile are always removed.
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const [url, waitArg] = process.argv.slice(2);
const waitMs = Number(waitArg);
if (!url || !(waitMs >= 0)) {
  console.error("usage: node scripts/page-check.js URL WAIT_MS");
  process.exit(2);
}
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "page-check-"));
// detached: Chromium leads its own process group, so its renderers die with it.
const chrome = spawn(
  "chromium",
  ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--remote-debugging-pipe",
    `--user-data-dir=${profile}`, "--window-size=1280,900", "about:blank"],
  // TMPDIR inside the profile: Chromium's singleton-socket dir then goes with it.
  { stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"], detached: true, env: { ...process.env, TMPDIR: profile } },
);
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
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
  if (message) console.error(`page-check: ${message}`);
  if (line) process.stdout.write(line + "\n");
  process.exit(code);
}
// The whole run is bounded: a stuck browser does not hang the caller.
const deadline = setTimeout(() => finish(1, null, "timed out"), waitMs + 20000);
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => finish(1, null, `got ${signal}`));
chrome.on("error", err => finish(1, null, `cannot start chromium: ${err.message}`));
chrome.on("exit", (code, signal) => finish(1, null, `chromium exited early (${signal || code})`));

const errors = [];
function onEvent(method, p = {}) {
  if (method == "Runtime.exceptionThrown") {
    const d = p.exceptionDetails || {};
    const where = d.url ? ` at ${d.url}:${(d.lineNumber ?? 0) + 1}` : "";
    errors.push(`exception: ${(d.exception && d.exception.description) || d.text}${where}`);
  } else if (method == "Runtime.consoleAPICalled" && p.type == "error") {
    errors.push(`console.error: ${(p.args || []).map(a => a.value ?? a.description ?? a.type).join(" ")}`);
  } else if (method == "Log.entryAdded" && p.entry && p.entry.level == "error") {
    const e = p.entry;
    if (/\/favicon\.ico([?#]|$)/.test(e.url || "")) return;
    errors.push(`log (${e.source}): ${e.text}${e.url ? ` ${e.url}` : ""}`);
  }
}

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

(async () => {
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
  // Enable the event domains before navigating, so errors during load are caught too.
  await send("Runtime.enable", {}, sessionId);
  await send("Log.enable", {}, sessionId);
  await send("Emulation.setDeviceMetricsOverride", { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false }, sessionId);
  const nav = await send("Page.navigate", { url }, sessionId);
  if (nav.errorText) errors.push(`navigation failed: ${nav.errorText}`);
  await sleep(waitMs);
  const res = await send("Runtime.evaluate",
    { expression: "JSON.stringify(window.dashboard ?? null)", returnByValue: true }, sessionId);
  let dashboard = null;
  if (res.exceptionDetails) errors.push(`evaluate: ${res.exceptionDetails.text}`);
  else try { dashboard = JSON.parse(res.result.value ?? "null"); } catch (e) { errors.push(`evaluate: ${e.message}`); }
  await finish(0, JSON.stringify({ errors, dashboard }));
})().catch(err => finish(1, null, err.message));

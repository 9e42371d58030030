// screenshot.js — a PNG of a live page after it has run for a while in real time.
//
// Chromium's own --screenshot flag either shoots at once or (with
// --virtual-time-budget) fast-forwards the page's clock, so a page that
// computes rates between polls shows zeros. This drives headless Chromium over
// the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
// replies on fd 4, each a JSON text ended by NUL), lets the page run for
// WAIT_MS of wall-clock time, then captures it. No npm packages needed.
//
// Usage: node scripts/screenshot.js URL OUT.png [WAIT_MS] [WIDTHxHEIGHT]
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const [url, out, waitMs = "3500", size = "1280x420"] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node scripts/screenshot.js URL OUT.png [WAIT_MS] [WIDTHxHEIGHT]");
  process.exit(2);
}
const [width, height] = size.split("x").map(Number);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "screenshot-"));
const chrome = spawn(
  "chromium",
  ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-debugging-pipe",
    `--user-data-dir=${profile}`, `--window-size=${width},${height}`, "about:blank"],
  { stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"] },
);
const finish = (code, message) => {
  if (message) console.error(`screenshot: ${message}`);
  chrome.kill("SIGKILL");
  // Chromium may still be writing its profile as it dies: remove it once it
  // has exited (or after 3 s), with retries, and never fail for it.
  const remove = () => {
    try { fs.rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }); } catch { /* best effort */ }
    process.exit(code);
  };
  if (chrome.exitCode !== null || chrome.signalCode !== null) return remove();
  chrome.once("exit", remove);
  setTimeout(remove, 3000);
};
// The whole run is bounded: a stuck browser does not hang the script.
const deadline = setTimeout(() => finish(1, "timed out"), Number(waitMs) + 30000);
chrome.on("error", err => finish(1, `cannot start chromium: ${err.message}`));

let nextId = 1;
const pending = new Map();
let buffered = "";
chrome.stdio[4].on("data", chunk => {
  buffered += chunk.toString();
  let end;
  while ((end = buffered.indexOf("\0")) >= 0) {
    const message = JSON.parse(buffered.slice(0, end));
    buffered = buffered.slice(end + 1);
    const waiter = message.id && pending.get(message.id);
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
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

(async () => {
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
  await send("Emulation.setDeviceMetricsOverride", { width, height, deviceScaleFactor: 1, mobile: false }, sessionId);
  await send("Page.navigate", { url }, sessionId);
  await sleep(Number(waitMs));
  const { data } = await send("Page.captureScreenshot", { format: "png" }, sessionId);
  fs.writeFileSync(out, Buffer.from(data, "base64"));
  clearTimeout(deadline);
  finish(0);
})().catch(err => finish(1, err.message));

// page-check.js — load a live page in headless Chromium, let it run WAIT_MS of real time,
// and report what went wrong in it plus what it says about itself (window.dashboard).
//
// Drives headless Chromium (scripts/chromium.js). Collects uncaught exceptions, console.error calls and
// error log entries (network failures among them; a favicon.ico 404 is ignored).
// No npm packages needed.
//
// Usage: node scripts/page-check.js URL WAIT_MS
// Prints one JSON line: {"errors": [...], "dashboard": {...} or null}.
// Exit 0 if the page was driven (errors or not: the caller judges), 1 if Chromium
// could not be driven, 2 on bad usage. Chromium and its temp profile are always removed.
"use strict";
const { launch, sleep } = require("./chromium");

const [url, waitArg] = process.argv.slice(2);
const waitMs = Number(waitArg);
if (!url || !(waitMs >= 0)) {
  console.error("usage: node scripts/page-check.js URL WAIT_MS");
  process.exit(2);
}

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

const browser = launch({ name: "page-check", width: 1280, height: 900, timeoutMs: waitMs + 20000, onEvent });
const send = browser.send;

(async () => {
  const sessionId = await browser.page();
  // Enable the event domains before navigating, so errors during load are caught too.
  await send("Runtime.enable", {}, sessionId);
  await send("Log.enable", {}, sessionId);
  const nav = await send("Page.navigate", { url }, sessionId);
  if (nav.errorText) errors.push(`navigation failed: ${nav.errorText}`);
  await sleep(waitMs);
  const res = await send("Runtime.evaluate",
    { expression: "JSON.stringify(window.dashboard ?? null)", returnByValue: true }, sessionId);
  let dashboard = null;
  if (res.exceptionDetails) errors.push(`evaluate: ${res.exceptionDetails.text}`);
  else try { dashboard = JSON.parse(res.result.value ?? "null"); } catch (e) { errors.push(`evaluate: ${e.message}`); }
  await browser.finish(0, JSON.stringify({ errors, dashboard }));
})().catch(err => browser.finish(1, null, err.message));

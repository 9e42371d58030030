// screenshot.js — a PNG of a live page after it has run for a while in real time.
//
// Chromium's own --screenshot flag either shoots at once or (with
// --virtual-time-budget) fast-forwards the page's clock, so a page that
// computes rates between polls shows zeros. This drives headless Chromium
// (scripts/chromium.js), lets the page run for WAIT_MS of wall-clock time,
// then captures it. No npm packages needed.
//
// Usage: node scripts/screenshot.js URL OUT.png [WAIT_MS] [WIDTHxHEIGHT]
"use strict";
const fs = require("fs");
const { launch, sleep } = require("./chromium");

const [url, out, waitMs = "3500", size = "1280x420"] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node scripts/screenshot.js URL OUT.png [WAIT_MS] [WIDTHxHEIGHT]");
  process.exit(2);
}
const [width, height] = size.split("x").map(Number);
const browser = launch({
  name: "screenshot", width, height, timeoutMs: Number(waitMs) + 30000, extraArgs: ["--hide-scrollbars"],
});

(async () => {
  const sessionId = await browser.page();
  await browser.send("Page.navigate", { url }, sessionId);
  await sleep(Number(waitMs));
  const { data } = await browser.send("Page.captureScreenshot", { format: "png" }, sessionId);
  fs.writeFileSync(out, Buffer.from(data, "base64"));
  await browser.finish(0);
})().catch(err => browser.finish(1, null, err.message));

// Debian's Chromium, headless, through playwright-core: what every browser
// test opens. The flags are the ones verified for WebTransport too (no
// --disable-quic: WebTransport would still work, but nothing needs it).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const executablePath = () => process.env.CHROMIUM ?? "/usr/bin/chromium";

// A browser whose contexts are separate users (cookies, storage):
// `browser.newContext()` for each.
export async function launchBrowser() {
  return chromium.launch({ executablePath: executablePath(), headless: true, args: ARGS });
}

// A fresh profile each time; `close()` closes the browser and removes it.
export async function launchChromium() {
  const profile = mkdtempSync(join(tmpdir(), "herald-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: executablePath(),
    headless: true,
    args: ARGS,
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

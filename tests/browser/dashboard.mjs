// Herald's admin dashboard in a real browser (tests/browser.rs runs this).
//
// Usage: node dashboard.mjs <herald-url> <admin-key> <publisher-key> <subject> <screenshot.png>
//
// Opens /dashboard in headless Chromium; tries a wrong key (the page must
// say it was refused and show no numbers), then the right one; publishes
// over the HTTP API for a few seconds while the page is open, reading the
// numbers it shows before and during that workload; takes a screenshot.
//
// Prints one JSON line; the Rust test judges it.

import { launchChromium } from "./chromium.mjs";

const [heraldUrl, adminKey, publisherKey, subject, screenshot] = process.argv.slice(2);

const read = (page) =>
  page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    return {
      status: text("status"),
      connections: text("total-connections"),
      rateIn: text("rate-in"),
      rateOut: text("rate-out"),
      published: text("published"),
      delivered: text("delivered"),
      topSubjects: [...document.querySelectorAll("#top-subjects tr")].map((row) =>
        [...row.children].map((cell) => cell.textContent),
      ),
      panelsHidden: document.getElementById("connections-panel").hidden,
      error: text("error"),
    };
  });

const publish = async (n) => {
  const response = await fetch(`${heraldUrl}/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${publisherKey}`, "content-type": "application/json" },
    body: JSON.stringify({ subject, data: { n } }),
  });
  if (!response.ok) throw new Error(`publish: ${response.status}`);
};

const { context, close } = await launchChromium();
try {
  const page = await context.newPage();
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(`${heraldUrl}/dashboard`);

  await page.fill("#key", "not-the-admin-key-0123456789");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.getElementById("status").textContent === "refused", null, { timeout: 10000 });
  const refused = await read(page);

  await page.fill("#key", adminKey);
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 10000 });
  // Two stats messages: the page has a rate to show.
  await page.waitForFunction(() => !document.getElementById("connections-panel").hidden, null, { timeout: 10000 });
  await page.waitForTimeout(1500);
  const before = await read(page);

  // About 40 messages a second for three seconds.
  let n = 0;
  const until = Date.now() + 3000;
  const samples = [];
  while (Date.now() < until) {
    await Promise.all(Array.from({ length: 4 }, () => publish(n++)));
    await new Promise((resolve) => setTimeout(resolve, 100));
    samples.push((await read(page)).rateIn);
  }
  const during = await read(page);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(
    JSON.stringify({
      browser: context.browser()?.version() ?? "chromium",
      published: n,
      refused,
      before,
      during,
      rates: [...new Set(samples)],
    }),
  );
} finally {
  await close();
}

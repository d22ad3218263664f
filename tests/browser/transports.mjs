// Herald's one-way transports in a real browser (tests/browser.rs runs this).
//
// Usage: node transports.mjs <herald-url> <publisher-key> <messages>
//
// Serves two pages from an origin of its own (so every request to Herald is
// cross-origin, as in production), opens them in headless Chromium, and
// publishes <messages> messages over Herald's HTTP API while they listen:
//
// - the SSE page uses a plain `EventSource`; Herald ends its stream every
//   second or so (the test's `sse.max_stream_duration`) and the browser
//   reconnects by itself with `Last-Event-ID`;
// - the long-poll page runs a `fetch` loop with the cursor, and aborts
//   every third poll mid-wait, retrying with the same cursor.
//
// A third page opens a WebSocket and an EventSource with a bad token and
// records what the browser lets it see of the refusals.
//
// Prints one JSON line: what each page received, and how often it
// reconnected. The Rust test judges it.

import http from "node:http";
import { launchChromium } from "./chromium.mjs";

const [heraldUrl, publisherKey, messagesArg] = process.argv.slice(2);
const MESSAGES = Number(messagesArg);
const SUBJECT = "browser.transports";

const sharedScript = `
  window.received = [];
  window.log = [];
  window.ready = false;
`;

const ssePage = `<!doctype html><meta charset="utf-8"><title>SSE</title><script>
  ${sharedScript}
  window.opens = 0;
  window.streamEnds = 0;
  const source = new EventSource(${JSON.stringify(heraldUrl)} + "/sse?subject=${SUBJECT}");
  source.onopen = () => { window.opens++; };
  source.addEventListener("ack", () => { window.ready = true; });
  source.addEventListener("msg", (event) => { window.received.push(JSON.parse(event.data).data.n); });
  source.addEventListener("err", (event) => { window.log.push(JSON.parse(event.data).code); });
  source.onerror = () => { window.streamEnds++; };
</script>`;

const pollPage = `<!doctype html><meta charset="utf-8"><title>Long poll</title><script>
  ${sharedScript}
  window.polls = 0;
  window.aborted = 0;
  (async () => {
    const base = ${JSON.stringify(heraldUrl)} + "/poll?subject=${SUBJECT}";
    // wait=0 first: the cursor of "now", before anything is published.
    let cursor = (await (await fetch(base + "&wait=0")).json()).cursor;
    window.ready = true;
    for (;;) {
      window.polls++;
      const abort = new AbortController();
      if (window.polls % 3 === 0) setTimeout(() => abort.abort(), 50);
      try {
        const response = await fetch(base + "&wait=5&cursor=" + cursor, { signal: abort.signal });
        const body = await response.json();
        for (const event of body.events) {
          if (event.op === "msg") window.received.push(event.data.n);
          else window.log.push(event.op);
        }
        cursor = body.cursor;
      } catch (error) {
        if (error.name !== "AbortError") throw error;
        window.aborted++; // the same cursor again: nothing lost, nothing twice
      }
    }
  })();
</script>`;

// A refused WebSocket and a refused EventSource: a browser reads neither a
// refused upgrade's status nor a refused request's body, so Herald accepts,
// says why in an `err` event, and closes with an application code.
const refusalsPage = `<!doctype html><meta charset="utf-8"><title>Refusals</title><script>
  window.results = {};
  window.ready = false;
  const done = () => { window.ready = "wsClose" in window.results && "sseErr" in window.results; };
  const ws = new WebSocket(${JSON.stringify(heraldUrl.replace(/^http/, "ws"))} + "/ws?token=not-a-key");
  ws.onmessage = (event) => { window.results.wsErr = JSON.parse(event.data).code; };
  ws.onclose = (event) => { window.results.wsClose = [event.code, event.reason]; done(); };
  const source = new EventSource(${JSON.stringify(heraldUrl)} + "/sse?subject=x&token=not-a-key");
  source.addEventListener("err", (event) => {
    const body = JSON.parse(event.data);
    window.results.sseErr = [body.code, body.close];
    source.close();
    done();
  });
</script>`;

const pages = { "/sse": ssePage, "/poll": pollPage, "/refusals": refusalsPage };
const site = http.createServer((request, response) => {
  const page = pages[request.url];
  response.writeHead(page ? 200 : 404, { "content-type": "text/html" });
  response.end(page ?? "");
});
await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${site.address().port}`;

const { context, close: closeBrowser } = await launchChromium();
const result = {};
try {
  const sse = await context.newPage();
  const poll = await context.newPage();
  await sse.goto(origin + "/sse");
  await poll.goto(origin + "/poll");
  for (const page of [sse, poll]) {
    await page.waitForFunction(() => window.ready, null, { timeout: 10_000 });
  }

  // Publish over HTTP while both pages listen, a message every 50 ms.
  for (let n = 0; n < MESSAGES; n++) {
    const response = await fetch(heraldUrl + "/v1/publish", {
      method: "POST",
      headers: { authorization: `Bearer ${publisherKey}`, "content-type": "application/json" },
      body: JSON.stringify({ subject: SUBJECT, data: { n } }),
    });
    if (response.status !== 200) throw new Error(`publish ${n}: ${response.status} ${await response.text()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  // Let both pages catch up, then read what they hold.
  for (const page of [sse, poll]) {
    await page
      .waitForFunction((count) => window.received.length >= count, MESSAGES, { timeout: 15_000 })
      .catch(() => {}); // judged below, from what arrived
  }
  result.sse = await sse.evaluate(() => ({
    received: window.received,
    opens: window.opens,
    streamEnds: window.streamEnds,
    log: window.log,
  }));
  result.poll = await poll.evaluate(() => ({
    received: window.received,
    polls: window.polls,
    aborted: window.aborted,
    log: window.log,
  }));
  const refusals = await context.newPage();
  await refusals.goto(origin + "/refusals");
  await refusals.waitForFunction(() => window.ready, null, { timeout: 10_000 }).catch(() => {});
  result.refusals = await refusals.evaluate(() => window.results);
  result.browser = context.browser()?.version() ?? (await sse.evaluate(() => navigator.userAgent));
} finally {
  await closeBrowser();
  site.close();
}
console.log(JSON.stringify(result));

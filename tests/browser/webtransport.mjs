// Herald's WebTransport gateway in a real browser (tests/browser.rs runs this).
//
// Usage: node webtransport.mjs <herald-binary> <messages>
//
// Starts the real `herald` binary (history on disk, fixed ports), serves a
// page from an origin of its own on 127.0.0.1 (a secure context), and
// opens it in headless Chromium. The page asks Herald's `GET /v1/quic` for
// the session URL and the certificate hash, opens `new WebTransport(url,
// { serverCertificateHashes })`, subscribes on its control stream, and
// reads messages from the server's streams and datagrams. Halfway through
// the messages, the server is stopped (the session closes with its
// reason) and started again with a new certificate; the page fetches the
// new hash, reconnects and resumes with `since`. Publishing goes on over
// HTTP, retried while the server is down.
//
// Prints one JSON line: what the page received and saw. The Rust test
// judges it.

import { spawn } from "node:child_process";
import dgram from "node:dgram";
import http from "node:http";
import net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launchChromium } from "./chromium.mjs";

const [heraldBinary, messagesArg] = process.argv.slice(2);
const MESSAGES = Number(messagesArg);
const SUBJECT = "browser.webtransport";

const freeTcpPort = () =>
  new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
const freeUdpPort = () =>
  new Promise((resolve) => {
    const socket = dgram.createSocket("udp4");
    socket.bind(0, "127.0.0.1", () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const httpPort = await freeTcpPort();
const quicPort = await freeUdpPort();
const heraldUrl = `http://127.0.0.1:${httpPort}`;
const storage = mkdtempSync(join(tmpdir(), "herald-wt-history-"));
const serverLog = [];

// The real binary, history on disk so a restart keeps what it had.
function startHerald() {
  const child = spawn(heraldBinary, ["serve", "--dev", "--listen", `127.0.0.1:${httpPort}`], {
    env: {
      ...process.env,
      RUST_LOG: "warn,herald=info",
      RUST_BACKTRACE: "0",
      HERALD_NATS__LISTEN: "127.0.0.1:0",
      HERALD_QUIC__LISTEN: `127.0.0.1:${quicPort}`,
      HERALD_STORAGE__HISTORY: "disk",
      HERALD_STORAGE__PATH: join(storage, "history.db"),
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.stderr.on("data", (chunk) => serverLog.push(chunk.toString()));
  return child;
}

async function waitHealthy() {
  for (let attempt = 0; attempt < 100 && herald.exitCode === null; attempt++) {
    try {
      if ((await fetch(heraldUrl + "/healthz")).ok) return;
    } catch {}
    await sleep(100);
  }
  throw new Error("herald did not become healthy: " + serverLog.join(""));
}

async function stopHerald(child) {
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  await exited;
}

// Publishes one message; retried while the server is away, so every
// message is acknowledged once.
async function publish(n) {
  for (;;) {
    try {
      const response = await fetch(heraldUrl + "/v1/publish", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ subject: SUBJECT, data: { n } }),
      });
      if (response.status === 200) return;
    } catch {}
    await sleep(100);
  }
}

// The page: everything a client of the gateway needs, in plain JS.
const page = `<!doctype html><meta charset="utf-8"><title>WebTransport</title><script>
  window.received = [];
  window.datagrams = 0;
  window.sessions = [];
  window.errors = [];
  window.ready = false;
  const herald = ${JSON.stringify(heraldUrl)};
  const encoder = new TextEncoder(), decoder = new TextDecoder();
  let lastPosition = null;

  function frame(command) {
    const body = encoder.encode(JSON.stringify(command));
    const out = new Uint8Array(4 + body.length);
    new DataView(out.buffer).setUint32(0, body.length);
    out.set(body, 4);
    return out;
  }

  // Length-prefixed frames from a stream, one event each.
  async function readFrames(readable, onEvent) {
    const reader = readable.getReader();
    let buffer = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer); joined.set(value, buffer.length);
      buffer = joined;
      while (buffer.length >= 4) {
        const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(0);
        if (buffer.length < 4 + length) break;
        onEvent(JSON.parse(decoder.decode(buffer.subarray(4, 4 + length))));
        buffer = buffer.slice(4 + length);
      }
    }
  }

  function onEvent(event, session) {
    if (event.op === "msg" && event.subject === ${JSON.stringify(SUBJECT)}) {
      window.received.push(event.data.n);
      lastPosition = event.pos;
    } else if (event.op === "ack") {
      window.ready = true;
    } else {
      session.events.push(event.op === "err" ? "err:" + event.code : event.op);
    }
  }

  async function connect() {
    const quic = await (await fetch(herald + "/v1/quic")).json();
    const session = { hash: quic.certificate_hashes[0].value, events: [] };
    window.sessions.push(session);
    const serverCertificateHashes = quic.certificate_hashes.map((hash) => ({
      algorithm: hash.algorithm,
      value: Uint8Array.from(atob(hash.value), (c) => c.charCodeAt(0)),
    }));
    const transport = new WebTransport(quic.url, { serverCertificateHashes });
    await transport.ready;
    const control = await transport.createBidirectionalStream();
    const writer = control.writable.getWriter();
    const sub = { op: "sub", id: 1, subject: ${JSON.stringify(SUBJECT)} };
    if (lastPosition) sub.since = lastPosition;
    await writer.write(frame(sub));
    await writer.write(frame({ op: "sub", id: 2, subject: "browser.cursor", latest: true }));
    readFrames(control.readable, (event) => onEvent(event, session)).catch(() => {});
    (async () => {
      const streams = transport.incomingUnidirectionalStreams.getReader();
      for (;;) {
        const { value, done } = await streams.read();
        if (done) return;
        readFrames(value, (event) => onEvent(event, session)).catch(() => {});
      }
    })().catch(() => {});
    (async () => {
      const datagrams = transport.datagrams.readable.getReader();
      for (;;) {
        const { value, done } = await datagrams.read();
        if (done) return;
        const event = JSON.parse(decoder.decode(value));
        if (event.op === "msg" && event.subject === "browser.cursor") window.datagrams++;
      }
    })().catch(() => {});
    try {
      const info = await transport.closed;
      session.closed = { closeCode: info.closeCode, reason: info.reason };
    } catch (error) {
      session.closed = { error: String(error), source: error.source, streamErrorCode: error.streamErrorCode };
    }
  }

  // Reconnect for ever, with a short pause: the server may be away.
  (async () => {
    for (;;) {
      try { await connect(); } catch (error) { window.errors.push(String(error)); }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
</script>`;

const site = http.createServer((request, response) => {
  response.writeHead(request.url === "/" ? 200 : 404, { "content-type": "text/html" });
  response.end(request.url === "/" ? page : "");
});
await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${site.address().port}`;

let herald = startHerald();
const { context, close: closeBrowser } = await launchChromium();
const result = { console: [] };
try {
  await waitHealthy();
  const tab = await context.newPage();
  tab.on("console", (message) => result.console.push(message.text()));
  await tab.goto(origin + "/");
  await tab.waitForFunction(() => window.ready, null, { timeout: 10_000 });

  const half = Math.floor(MESSAGES / 2);
  for (let n = 0; n < half; n++) {
    await publish(n);
    await sleep(20);
  }
  // Latest-value datagrams: a burst of cursor positions.
  for (let n = 0; n < 20; n++) {
    await fetch(heraldUrl + "/v1/publish", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ subject: "browser.cursor", data: { x: n } }),
    });
  }
  await tab.waitForFunction((count) => window.received.length >= count, half, { timeout: 10_000 }).catch(() => {});

  // The server goes away and comes back with a new certificate.
  await stopHerald(herald);
  herald = startHerald();
  await waitHealthy();
  for (let n = half; n < MESSAGES; n++) {
    await publish(n);
    await sleep(20);
  }
  await tab
    .waitForFunction((count) => window.received.length >= count, MESSAGES, { timeout: 20_000 })
    .catch(() => {});
  Object.assign(
    result,
    await tab.evaluate(() => ({
      received: window.received,
      datagrams: window.datagrams,
      sessions: window.sessions,
    })),
  );
  result.browser = context.browser()?.version() ?? (await tab.evaluate(() => navigator.userAgent));
} finally {
  await closeBrowser();
  site.close();
  await stopHerald(herald).catch(() => {});
  rmSync(storage, { recursive: true, force: true });
}
result.serverLog = serverLog.join("").split("\n").filter((line) => /WARN|ERROR/.test(line));
console.log(JSON.stringify(result));

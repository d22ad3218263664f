// The clients in a real browser against the real server: the Next.js chat
// example (built and started here) with the SDK and the React hooks, in
// Debian's Chromium driven by playwright-core, and the `herald` binary
// started, SIGKILLed and restarted by this script. `make test-clients` runs
// it after the package tests:
//
//   node clients/tests/e2e.mjs [path/to/herald]
//
// Screenshots go to $SCREENSHOTS (default target/client-e2e/).

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createHmac } from "node:crypto";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const app = join(root, "clients/examples/nextjs-chat");
const herald = resolve(process.argv[2] ?? join(root, "target/debug/herald"));
const screenshots = resolve(process.env.SCREENSHOTS ?? join(root, "target/client-e2e"));
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

if (!existsSync(chromiumPath) || !existsSync(join(root, "tests/browser/node_modules/playwright-core"))) {
  const why = `Chromium (${chromiumPath}) or playwright-core (tests/browser) is missing: run make browser-deps`;
  if (process.env.CI) {
    console.error(`FAIL: ${why}`);
    process.exit(1);
  }
  console.log(`SKIP: ${why}`);
  process.exit(0);
}
const { launchBrowser } = await import(join(root, "tests/browser/chromium.mjs"));

const work = mkdtempSync(join(tmpdir(), "herald-e2e-"));
const children = new Set();
let heraldPort;
let appPort;
let server; // the herald child process
let browser;

function freePort() {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
}

function start(command, args, options) {
  // Its own process group, so that killing it takes what it started too (npx starts next-server).
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], detached: true, ...options });
  children.add(child);
  child.log = "";
  const keep = (chunk) => {
    child.log = (child.log + chunk).slice(-20_000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.on("exit", () => children.delete(child));
  return child;
}

async function waitFor(what, check, timeout = 30_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Herald with the example's configuration, on this run's ports and data directory. */
function startHerald() {
  const config = readFileSync(join(app, "herald.toml"), "utf8")
    .replace(/^listen = .*$/m, `listen = "127.0.0.1:${heraldPort}"`)
    .replace(/^allowed_origins = .*$/m, `allowed_origins = ["http://127.0.0.1:${appPort}"]`)
    .replace(/^path = .*$/m, `path = "${join(work, "chat.redb")}"`);
  writeFileSync(join(work, "herald.toml"), config);
  server = start(herald, ["serve", "--config", join(work, "herald.toml")], {
    env: { ...process.env, HERALD_QUIC__LISTEN: "127.0.0.1:0", HERALD_NATS__LISTEN: "127.0.0.1:0", RUST_LOG: "warn" },
  });
  return waitFor("herald", async () => (await fetch(`http://127.0.0.1:${heraldPort}/healthz`)).ok);
}

function killHerald() {
  const exited = new Promise((r) => server.once("exit", r));
  process.kill(-server.pid, "SIGKILL");
  return exited;
}

before(async () => {
  heraldPort = await freePort();
  appPort = await freePort();
  await startHerald();
  // A production build: what a user deploys (and far lighter than `next dev` on two cores).
  const build = spawnSync("npx", ["next", "build"], {
    cwd: app,
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: "1" },
    encoding: "utf8",
  });
  assert.equal(build.status, 0, `next build failed:\n${build.stdout}\n${build.stderr}`);
  start("npx", ["next", "start", "-p", String(appPort), "-H", "127.0.0.1"], {
    cwd: app,
    env: {
      ...process.env,
      NEXT_TELEMETRY_DISABLED: "1",
      HERALD_URL: `http://127.0.0.1:${heraldPort}`,
      // Short-lived tokens, so the client's refresh through getToken happens during the run.
      HERALD_TOKEN_SECONDS: "20",
    },
  });
  await waitFor("the app", async () => (await fetch(`http://127.0.0.1:${appPort}/`)).ok, 60_000);
  browser = await launchBrowser();
  mkdirSync(screenshots, { recursive: true });
});

const pages = [];

after(async () => {
  // What each page showed at the end: the first thing to look at when a test failed.
  for (const [index, page] of pages.entries()) {
    await page.screenshot({ path: join(screenshots, `last-${index}.png`) }).catch(() => {});
  }
  await browser?.close();
  for (const child of children) process.kill(-child.pid, "SIGKILL");
  rmSync(work, { recursive: true, force: true });
});

const appUrl = (path) => `http://127.0.0.1:${appPort}${path}`;

/** A signed-in user's page (its own browser context: its own cookies). */
async function signIn(name, { path = "/chat", prepare } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const page = await context.newPage();
  pages.push(page);
  page.console = [];
  page.on("console", (message) => page.console.push(message.text()));
  page.tokens = 0;
  page.on("request", (request) => {
    if (request.url().endsWith("/api/herald-token")) page.tokens++;
  });
  await prepare?.(page);
  await page.goto(appUrl("/"));
  await page.getByRole("button", { name: new RegExp(`^${name}`) }).click();
  await page.waitForURL("**/chat");
  if (path !== "/chat") await page.goto(appUrl(path));
  await connected(page);
  return page;
}

async function connected(page, transport) {
  const badge = page.getByTestId("connection");
  await badge.and(page.locator('[data-status="connected"]')).waitFor({ timeout: 30_000 });
  if (transport) assert.equal(await badge.getAttribute("data-transport"), transport);
}

/** The page knows the server is gone (its banner is up). */
async function down(page) {
  await page.getByTestId("banner").waitFor({ timeout: 40_000 });
}

/** Sends a message from the composer; resolves once the server acknowledged it. */
async function say(page, text) {
  await page.getByTestId("draft").fill(text);
  await page.getByTestId("draft").press("Enter");
}

async function texts(page) {
  return page.getByTestId("message").evaluateAll((items) => items.map((li) => li.dataset.line));
}

async function sees(page, text, timeout = 30_000) {
  await page.getByTestId("message").filter({ hasText: text }).first().waitFor({ timeout });
}

let alice;
let bob;

test("two users chat: messages, presence, typing, a notification, and a room one of them may not join", async () => {
  alice = await signIn("Alice");
  bob = await signIn("Bob");
  await connected(alice, "websocket");
  for (const page of [alice, bob]) {
    await waitFor("both in the presence list", async () => (await page.getByTestId("member").allTextContents()).join() === "Alice,Bob");
  }
  await bob.getByTestId("draft").pressSequentially("hel", { delay: 20 });
  await alice.getByTestId("typing").filter({ hasText: "Bob is typing" }).waitFor();
  assert.equal((await bob.getByTestId("typing").textContent()).trim(), "", "own typing is not shown");
  await bob.getByTestId("draft").fill("");

  await say(alice, "hello @bob");
  await sees(bob, "Alice hello @bob");
  await bob.getByTestId("notification").filter({ hasText: "Alice mentioned you in #general: hello @bob" }).waitFor();
  await say(bob, "hi Alice");
  await sees(alice, "Bob hi Alice");
  await alice.screenshot({ path: join(screenshots, "chat.png") });

  await bob.getByTestId("room-staff").click();
  const refusal = bob.getByTestId("room-error");
  await refusal.waitFor();
  const reason = await refusal.textContent();
  assert.match(reason, /You can’t join #staff: .*chat\.staff.* \(forbidden\)/);
  await bob.screenshot({ path: join(screenshots, "refused.png") });
  await bob.getByTestId("room-general").click();
  await sees(bob, "Bob hi Alice");
  // Alice (who may) joins #staff with no refusal.
  await alice.getByTestId("room-staff").click();
  await alice.getByTestId("draft").waitFor();
  assert.equal(await alice.getByTestId("room-error").count(), 0);
  await alice.getByTestId("room-general").click();
});

/** Waits until every message Alice's page shows as acknowledged is on the other page, once, in order. */
async function nothingLost(from, to, marker) {
  await waitFor(
    `everything acknowledged from ${marker} on the other page`,
    async () => {
      const pending = await from.getByTestId("outgoing").evaluateAll((items) => items.map((li) => li.dataset.status));
      return !pending.includes("sending");
    },
    60_000,
  );
  const sent = (await texts(from)).filter((t) => t.includes(marker));
  const failed = await from.getByTestId("outgoing").filter({ hasText: marker }).allTextContents();
  assert.deepEqual(failed, [], "nothing failed to send");
  await waitFor("the other page caught up", async () => (await texts(to)).filter((t) => t.includes(marker)).length >= sent.length, 30_000);
  const received = (await texts(to)).filter((t) => t.includes(marker));
  assert.deepEqual(received, sent, "same messages, same order, none twice");
  return sent.length;
}

test("Herald is killed and restarted mid-chat: nothing acknowledged is lost, what was sent meanwhile goes out once", async () => {
  for (let i = 1; i <= 3; i++) await say(alice, `before ${i}`);
  await sees(bob, "Alice before 3");
  // Past the disk history's flush interval (100 ms): SIGKILL loses at most that much (docs/configuration.md).
  await new Promise((r) => setTimeout(r, 300));
  await killHerald();
  await down(alice);
  await down(bob);
  for (let i = 1; i <= 3; i++) await say(alice, `while down ${i}`);
  await alice.getByTestId("outgoing").filter({ hasText: "while down 3" }).and(alice.locator('[data-status="sending"]')).waitFor();
  await alice.screenshot({ path: join(screenshots, "reconnecting.png") });
  await startHerald();
  await connected(alice);
  await connected(bob);
  for (let i = 1; i <= 3; i++) await say(alice, `after ${i}`);
  await sees(bob, "Alice after 3");
  const counts = [
    await nothingLost(alice, bob, "before "),
    await nothingLost(alice, bob, "while down "),
    await nothingLost(alice, bob, "after "),
  ];
  assert.deepEqual(counts, [3, 3, 3], "queued while down and sent once");
});

test("every transport resumes after a restart with nothing lost and nothing twice", async () => {
  for (const transport of ["webtransport", "sse", "longpoll"]) {
    await bob.goto(appUrl(`/chat?transport=${transport}`));
    await connected(bob, transport);
    await say(alice, `${transport} one`);
    await sees(bob, `Alice ${transport} one`);
    await new Promise((r) => setTimeout(r, 300));
    await killHerald();
    await down(alice);
    await say(alice, `${transport} two`);
    // WebTransport has no close from a killed server: the client's heartbeat finds the dead link.
    await down(bob);
    await startHerald();
    await connected(bob, transport);
    await say(alice, `${transport} three`);
    await sees(bob, `Alice ${transport} three`);
    assert.equal(await nothingLost(alice, bob, `${transport} `), 3);
    // Bob on a one-way transport publishes over HTTP.
    await say(bob, `${transport} from bob`);
    await sees(alice, `Bob ${transport} from bob`);
  }
  assert.ok(alice.tokens >= 2, `tokens were refreshed through getToken (${alice.tokens} fetched)`);
});

test("WebSocket blocked: the client falls back to SSE within the connect timeout, then to long polling, and keeps receiving", async () => {
  const started = Date.now();
  const carol = await signIn("Carol", {
    prepare: async (page) => {
      // A proxy that swallows WebSockets: the upgrade "works", nothing answers.
      await page.routeWebSocket(/\/ws$/, () => {});
      // A network where QUIC does not get through.
      await page.addInitScript(() => {
        delete window.WebTransport;
      });
    },
  });
  await connected(carol, "sse");
  const took = Date.now() - started;
  assert.ok(took < 15_000, `on SSE ${took} ms after sign-in (connect timeout 5 s)`);
  console.log(`fallback: connected over SSE ${took} ms after sign-in began (WebSocket swallowed, WebTransport absent)`);
  await say(alice, "to carol over sse");
  await sees(carol, "Alice to carol over sse");

  // Now SSE is refused too (the proxy buffers event streams): after a restart, long polling.
  await carol.route(/\/sse\?/, (route) => route.abort());
  await killHerald();
  await down(alice);
  await say(alice, "to carol while down");
  await startHerald();
  await connected(carol, "longpoll");
  await say(alice, "to carol over longpoll");
  await sees(carol, "Alice to carol over longpoll");
  await sees(carol, "Alice to carol while down");
  assert.equal(await nothingLost(alice, carol, "to carol "), 3);
  await say(carol, "carol over http");
  await sees(alice, "Carol carol over http");
  await carol.screenshot({ path: join(screenshots, "fallback.png") });
});

test("in Node, without a browser: the same client over WebSocket, SSE and long polling", async () => {
  // A token as the example's route mints it, for a user who may use #general only.
  const secret = /^jwt_hs256_secret = "(.*)"$/m.exec(readFileSync(join(app, "herald.toml"), "utf8"))[1];
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const rooms = ["chat.general", "chat.general.typing"];
  const claims = { sub: "node", exp: Math.floor(Date.now() / 1000) + 300, herald: { sub: { allow: rooms }, pub: { allow: rooms } } };
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  const token = `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
  for (const transport of ["websocket", "sse", "longpoll"]) {
    const run = spawnSync(
      process.execPath,
      ["--experimental-websocket", "--no-warnings", join(root, "clients/tests/node-client.mjs"), `http://127.0.0.1:${heraldPort}`, token, transport],
      { encoding: "utf8", timeout: 30_000 },
    );
    assert.equal(run.status, 0, `${transport}: ${run.stderr}`);
    const seen = JSON.parse(run.stdout.trim());
    assert.equal(seen.transport, transport);
    assert.match(seen.position, /^[A-Za-z0-9_-]{16}$/);
    assert.ok(seen.received >= 1 && seen.history >= 1, JSON.stringify(seen));
    assert.equal(seen.refused, "forbidden");
  }
  await sees(alice, "Node from node over longpoll");
});

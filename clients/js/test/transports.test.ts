// The real SSE and long-poll transports against a fake fetch: what they
// send, how they read, and how they notice a dead link.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { CloseInfo, ConnectionContext, ConnectionEvents, ServerEvent } from "../src/index.js";
import { longPollTransport } from "../src/transports/longpoll.js";
import { sseTransport } from "../src/transports/sse.js";
import type { WebSocketLike } from "../src/transports/types.js";
import { webSocketTransport } from "../src/transports/websocket.js";
import { eventually, pos } from "./fakes.js";

interface Seen {
  opened: number;
  events: ServerEvent[];
  cursors: string[];
  caughtUp: string[];
  retries: number[];
  closed?: CloseInfo;
}

function recorder(): { seen: Seen; events: ConnectionEvents } {
  const seen: Seen = { opened: 0, events: [], cursors: [], caughtUp: [], retries: [] };
  return {
    seen,
    events: {
      open: () => seen.opened++,
      event: (event) => seen.events.push(event),
      cursor: (position) => seen.cursors.push(position),
      caughtUp: (position) => seen.caughtUp.push(position),
      retry: (ms) => seen.retries.push(ms),
      close: (info) => {
        assert.equal(seen.closed, undefined, "close is reported once");
        seen.closed = info;
      },
    },
  };
}

function context(fetch: typeof globalThis.fetch, overrides: Partial<ConnectionContext> = {}): ConnectionContext {
  return {
    baseUrl: "http://herald.test",
    token: () => "tok",
    subscriptions: [{ pattern: "chat.*", presence: true }],
    since: pos(4),
    env: { fetch },
    timing: { sseIdleTimeout: 150, pollWait: 25_000, requestTimeout: 100 },
    ...overrides,
  };
}

/** A response body the test writes into, chunk by chunk; it never ends on its own. */
function openBody() {
  let push!: (text: string) => void;
  let finish!: () => void;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      push = (text) => controller.enqueue(new TextEncoder().encode(text));
      finish = () => controller.close();
    },
  });
  return { body, push: (text: string) => push(text), finish: () => finish() };
}

test("SSE: the request carries the patterns, presence, the header credential and Last-Event-ID; events, ids and advice are reported", async () => {
  const stream = openBody();
  let request: { url: string; headers: Record<string, string> } | undefined;
  const fetch = (async (url: string, init: RequestInit) => {
    request = { url, headers: init.headers as Record<string, string> };
    return new Response(stream.body, { headers: { "content-type": "text/event-stream" } });
  }) as unknown as typeof globalThis.fetch;
  const { seen, events } = recorder();
  const connection = sseTransport.open(context(fetch), events);
  stream.push(`retry: 2000\n\nid: ${pos(4)}\nevent: ack\ndata: {"op":"ack","pos":"${pos(4)}"}\n\n`);
  await eventually(() => seen.opened === 1, "opened on the ack");
  assert.equal(request!.url, "http://herald.test/sse?subject=chat.*&presence=1");
  assert.deepEqual(request!.headers, { accept: "text/event-stream", authorization: "Bearer tok", "last-event-id": pos(4) });
  stream.push(`:\n\nid: ${pos(5)}\nevent: msg\ndata: {"op":"msg","subject":"chat.a","pos":"${pos(5)}","ts":1,"data":1}\n\n`);
  await eventually(() => seen.cursors.length === 2, "the msg id");
  assert.deepEqual(seen.retries, [2000]);
  assert.deepEqual(seen.cursors, [pos(4), pos(5)]);
  // The server's final err names the reason when the stream ends.
  stream.push(`event: err\ndata: {"op":"err","code":"shutdown","message":"the server is shutting down"}\n\n`);
  stream.finish();
  await eventually(() => seen.closed !== undefined, "closed");
  assert.deepEqual(seen.closed, { code: "shutdown", message: "the server is shutting down" });
  connection.close();
});

test("SSE: a stream that goes silent past sseIdleTimeout is a dead link", async () => {
  const stream = openBody();
  const fetch = (async () => new Response(stream.body)) as unknown as typeof globalThis.fetch;
  const { seen, events } = recorder();
  sseTransport.open(context(fetch), events);
  stream.push(`event: ack\ndata: {"op":"ack","pos":"${pos(4)}"}\n\n`);
  const started = Date.now();
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 60));
    stream.push(":\n\n"); // heartbeats keep it alive
  }
  assert.equal(seen.closed, undefined);
  await eventually(() => seen.closed !== undefined, "closed after silence", 1_000);
  assert.equal(seen.closed!.code, "heartbeat_timeout");
  assert.ok(Date.now() - started >= 240 + 150 - 20);
});

test("SSE: a refusal read from the stream carries its close code (what decides whether to retry)", async () => {
  const fetch = (async () =>
    new Response(`retry: 86400000\n\nevent: err\ndata: {"op":"err","code":"forbidden","message":"no","close":4403}\n\n`)) as unknown as typeof globalThis.fetch;
  const { seen, events } = recorder();
  sseTransport.open(context(fetch), events);
  await eventually(() => seen.closed !== undefined, "closed");
  assert.deepEqual(seen.closed, { code: "forbidden", message: "no", closeCode: 4403 });
  assert.deepEqual(seen.retries, [86_400_000]);
  assert.equal(seen.opened, 0);
});

test("long polling: the first poll answers at once, then each continues from the cursor; a poll that never answers is a dead link", async () => {
  const asked: URL[] = [];
  let hang = false;
  const fetch = (async (url: string, init: RequestInit) => {
    asked.push(new URL(url));
    if (hang) {
      return new Promise((_, reject) => init.signal!.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))));
    }
    const n = asked.length;
    return Response.json({ cursor: pos(10 + n), events: [{ op: "msg", subject: "chat.a", pos: pos(10 + n), ts: 1, data: n }] });
  }) as unknown as typeof globalThis.fetch;
  const { seen, events } = recorder();
  const connection = longPollTransport.open(context(fetch, { timing: { sseIdleTimeout: 1, pollWait: 50, requestTimeout: 100 } }), events);
  await eventually(() => asked.length >= 3, "three polls");
  hang = true;
  assert.equal(seen.opened, 1);
  assert.deepEqual(
    asked.slice(0, 3).map((u) => [u.searchParams.get("cursor"), u.searchParams.get("wait")]),
    [
      [pos(4), "0"],
      [pos(11), "0.05"],
      [pos(12), "0.05"],
    ],
  );
  await eventually(() => seen.closed !== undefined, "closed", 1_000);
  assert.equal(seen.closed!.code, "heartbeat_timeout");
  connection.close();
});

test("long polling: empty answers that come back at once are not repeated in a tight loop", async () => {
  const asked: number[] = [];
  const fetch = (async () => {
    asked.push(Date.now());
    return Response.json({ cursor: pos(1), events: [] });
  }) as unknown as typeof globalThis.fetch;
  const { events } = recorder();
  const connection = longPollTransport.open(context(fetch, { timing: { sseIdleTimeout: 1, pollWait: 400, requestTimeout: 100 } }), events);
  await new Promise((r) => setTimeout(r, 500));
  connection.close();
  // The first poll (wait=0) and then one every 400 ms at most.
  assert.ok(asked.length >= 2 && asked.length <= 3, `${asked.length} polls in 500 ms`);
});

test("one-way transports: a new subscription set restarts the stream from the given position without reporting a close", async () => {
  const asked: string[] = [];
  const fetch = (async (url: string, init: RequestInit) => {
    asked.push(`${url} ${(init.headers as Record<string, string>)["last-event-id"] ?? ""}`);
    return new Response(openBody().body);
  }) as unknown as typeof globalThis.fetch;
  const { seen, events } = recorder();
  const connection = sseTransport.open(context(fetch, { timing: { sseIdleTimeout: 10_000, pollWait: 1, requestTimeout: 100 } }), events);
  await eventually(() => asked.length === 1, "first stream");
  connection.resubscribe([{ pattern: "chat.b", presence: false }], pos(9));
  await eventually(() => asked.length === 2, "second stream");
  assert.equal(asked[1], `http://herald.test/sse?subject=chat.b ${pos(9)}`);
  assert.equal(seen.closed, undefined);
  connection.close();
});

/** A WebSocket the test drives: it records what was offered and sent. */
class FakeSocket implements WebSocketLike {
  static opened: FakeSocket[] = [];
  readyState = 0;
  protocol = "";
  sent: string[] = [];
  onopen: WebSocketLike["onopen"] = null;
  onmessage: WebSocketLike["onmessage"] = null;
  onclose: WebSocketLike["onclose"] = null;
  onerror: WebSocketLike["onerror"] = null;
  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeSocket.opened.push(this);
  }
  send(data: string): void {
    this.sent.push(data);
  }
  close(): void {}
  /** The server accepts, choosing `protocol`. */
  accept(protocol: string): void {
    this.readyState = 1;
    this.protocol = protocol;
    this.onopen?.({});
  }
}

test("WebSocket: asks for several events per frame and reads one event per line; a server that chose herald.json sends one per frame", async () => {
  for (const [chosen, frames] of [
    ["herald.json.batch", [`{"op":"ack","id":1,"pos":"${pos(4)}"}\n{"op":"msg","subject":"chat.a","pos":"${pos(5)}","ts":1,"data":{"n":1}}\n{"op":"pong"}`]],
    ["herald.json", [`{"op":"ack","id":1,"pos":"${pos(4)}"}`, `{"op":"msg","subject":"chat.a","pos":"${pos(5)}","ts":1,"data":{"n":1}}`, `{"op":"pong"}`]],
  ] as const) {
    FakeSocket.opened = [];
    const { seen, events } = recorder();
    const connection = webSocketTransport.open(
      context(undefined as unknown as typeof fetch, { env: { WebSocket: FakeSocket } }),
      events,
    );
    const socket = FakeSocket.opened[0]!;
    assert.equal(socket.url, "ws://herald.test/ws");
    assert.deepEqual(socket.protocols, ["herald.json.batch", "herald.json"]);
    socket.accept(chosen);
    assert.equal(seen.opened, 1);
    for (const frame of frames) socket.onmessage!({ data: frame });
    assert.deepEqual(
      seen.events.map((event) => event.op),
      ["ack", "msg", "pong"],
      `with ${chosen}`,
    );
    assert.deepEqual((seen.events[1] as { data: unknown }).data, { n: 1 });
    connection.close();
  }
});

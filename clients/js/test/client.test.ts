// The client's bookkeeping against fake transports: resume, de-duplication,
// fallback, backoff, queued publishes, server advice, heartbeats, tokens.

import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { Herald, type ConnectionState, type HeraldOptions, type Message } from "../src/index.js";
import { ackEverything, eventually, FakeTransport, fakeFetch, pos, type FakeConnection } from "./fakes.js";

// Every client a test made is closed after it, passed or failed, so a
// failure is reported instead of leaving timers that keep the run alive.
const made: Herald[] = [];
afterEach(() => {
  for (const herald of made.splice(0)) herald.close();
});

function client(transports: FakeTransport[], options: HeraldOptions = {}): { herald: Herald; states: ConnectionState[] } {
  const herald = new Herald("http://herald.test", {
    transports: transports.map((t) => t.name),
    transportImplementations: Object.fromEntries(transports.map((t) => [t.name, t])),
    reconnect: { initialDelay: 20, maxDelay: 40 },
    connectTimeout: 300,
    ...options,
    autoConnect: false,
  });
  made.push(herald);
  const states: ConnectionState[] = [];
  herald.on("state", (state) => states.push(state));
  herald.connect();
  return { herald, states };
}

function sequence(start = 1): () => string {
  let next = start;
  return () => pos(next++);
}

test("every subscription resumes from its own position after a drop, with no message twice", async () => {
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence(10));
  const { herald } = client([ws]);
  const a: string[] = [];
  const all: string[] = [];
  herald.subscribe("chat.a", (m) => a.push(m.pos));
  herald.subscribe("chat.*", (m) => all.push(m.pos));
  await eventually(() => ws.connections.length === 1 && ws.last.commands("sub").length === 2, "two subs");
  const first = ws.last;
  // Acked at 10 and 11; chat.a gets 12, chat.b gets 13: both go to chat.*.
  first.push({ op: "msg", subject: "chat.a", pos: pos(12), ts: 1, data: 1 });
  first.push({ op: "msg", subject: "chat.b", pos: pos(13), ts: 1, data: 2 });
  first.end({ code: "closed", message: "network", closeCode: 1006 });

  await eventually(() => ws.connections.length === 2 && ws.last.commands("sub").length === 2, "resubscribed");
  const subs = Object.fromEntries(ws.last.commands("sub").map((c) => [(c as { subject: string }).subject, c]));
  assert.equal((subs["chat.a"] as { since?: string }).since, pos(12));
  assert.equal((subs["chat.*"] as { since?: string }).since, pos(13));
  // The server replays from each since; what a subscription has is dropped.
  ws.last.push({ op: "msg", subject: "chat.a", pos: pos(12), ts: 1, data: 1 });
  ws.last.push({ op: "msg", subject: "chat.b", pos: pos(13), ts: 1, data: 2 });
  ws.last.push({ op: "msg", subject: "chat.a", pos: pos(14), ts: 1, data: 3 });
  assert.deepEqual(a, [pos(12), pos(14)]);
  assert.deepEqual(all, [pos(12), pos(13), pos(14)]);
  herald.close();
});

test("a subscription with since starts there; its ack does not move it back; a stale gap is not reported", async () => {
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence(50));
  const { herald } = client([ws]);
  const gaps: string[] = [];
  const sub = herald.subscribe("chat.a", () => {}, { since: pos(5), onGap: (gap) => gaps.push(gap.to) });
  await sub.ready;
  assert.equal((ws.last.commands("sub")[0] as { since?: string }).since, pos(5));
  ws.last.push({ op: "gap", subject: "chat.a", from: pos(1), to: pos(4) });
  ws.last.push({ op: "gap", subject: "chat.a", from: pos(6), to: pos(9), missed: 3 });
  assert.deepEqual(gaps, [pos(9)]);
  assert.equal(sub.position, pos(5), "a gap never replaces the resume token");
  herald.close();
});

test("a refused subscription rejects with the server's reason and is not resent", async () => {
  const ws = new FakeTransport("websocket", true);
  ws.onCommand = (connection, command) => {
    if (command.op === "sub") connection.push({ op: "err", id: command.id, code: "forbidden", message: "not allowed: chat.staff" });
  };
  const { herald } = client([ws]);
  const errors: string[] = [];
  const sub = herald.subscribe("chat.staff", () => {}, { onError: (e) => errors.push(e.code) });
  await assert.rejects(sub.ready, { code: "forbidden", message: "not allowed: chat.staff" });
  assert.deepEqual(errors, ["forbidden"]);
  ws.last.end({ code: "closed", message: "network" });
  await eventually(() => ws.connections.length === 2 && herald.state.status === "connected", "reconnected");
  assert.equal(ws.last.commands("sub").length, 0);
  herald.close();
});

test("fallback: a transport that fails before it is established is skipped at once; a hung one after connectTimeout", async () => {
  const ws = new FakeTransport("websocket", true, (c) => c.end({ code: "unreachable", message: "blocked by a proxy" }));
  const wt = new FakeTransport("webtransport", true, () => {}); // never answers
  const sse = new FakeTransport("sse", false);
  const fetch = fakeFetch(() => ({ body: { cursor: pos(3) } }));
  const started = Date.now();
  const { herald, states } = client([ws, wt, sse], { environment: { fetch }, connectTimeout: 200 });
  herald.subscribe("chat.a", () => {});
  await eventually(() => herald.state.status === "connected", "connected");
  const took = Date.now() - started;
  assert.equal(herald.state.transport, "sse");
  assert.ok(took >= 190 && took < 1_000, `fell back within connectTimeout plus a little (${took} ms)`);
  assert.deepEqual(
    states.filter((s) => s.status === "connecting").map((s) => s.transport),
    ["websocket", "webtransport", "sse"],
  );
  assert.ok(!states.some((s) => s.status === "disconnected"), "no backoff between transports of one round");
  assert.ok(wt.last.closedByClient, "the hung attempt was closed");
  // The one-way stream carries the subscription from "now" (the probe's cursor).
  assert.deepEqual(sse.last.streams[0], { subscriptions: [{ pattern: "chat.a", presence: false }], since: pos(3) });
  herald.close();
});

test("after a drop the transport that worked is tried first; a full failed round backs off and starts from the top", async () => {
  let wsBlocked = true;
  const ws = new FakeTransport("websocket", true, (c) =>
    wsBlocked ? c.end({ code: "unreachable", message: "blocked" }) : c.open(),
  );
  const sse = new FakeTransport("sse", false);
  const { herald, states } = client([ws, sse], { environment: { fetch: fakeFetch(() => ({ body: { cursor: pos(1) } })) } });
  await eventually(() => herald.state.status === "connected", "on sse");
  assert.equal(herald.state.transport, "sse");
  const wsAttempts = ws.connections.length;
  sse.last.end({ code: "closed", message: "stream ended" });
  await eventually(() => sse.connections.length === 2 && herald.state.status === "connected", "sse again");
  assert.equal(ws.connections.length, wsAttempts, "the blocked WebSocket is not retried while SSE works");
  // Now the whole round fails: disconnected with a delay, then WebSocket first.
  sse.behaviour = (c) => c.end({ code: "unreachable", message: "down" });
  states.length = 0;
  sse.last.end({ code: "closed", message: "stream ended" });
  await eventually(() => states.some((s) => s.status === "disconnected" && s.reason?.code === "unreachable"), "a failed round");
  const failed = states.findIndex((s) => s.status === "disconnected" && s.reason?.code === "unreachable");
  assert.deepEqual(
    states.slice(0, failed).filter((s) => s.status === "connecting").map((s) => s.transport),
    ["sse", "websocket"],
    "the round starts with the transport that worked",
  );
  assert.ok(states[failed]!.retryIn! < 40, "backoff capped by maxDelay");
  wsBlocked = false;
  await eventually(() => herald.state.status === "connected", "connected again");
  assert.equal(herald.state.transport, "websocket");
  assert.equal(states.slice(failed).find((s) => s.status === "connecting")?.transport, "websocket", "the next round starts at the top");
  herald.close();
});

test("publishes made while disconnected are queued (bounded) and sent once; one in flight at a drop fails, never resent", async () => {
  let up = false;
  const ws = new FakeTransport("websocket", true, (c) => (up ? c.open() : c.end({ code: "unreachable", message: "down" })));
  const positions = sequence(100);
  ws.onCommand = (connection, command) => {
    if (command.op === "pub" && (command.data as { hold?: boolean }).hold) return; // never answered
    if (command.op === "pub") connection.push({ op: "ack", id: command.id, pos: positions() });
  };
  const { herald } = client([ws], { maxQueued: 3 });
  const queued = [herald.publish("chat.a", 1), herald.publish("chat.a", 2), herald.publish("chat.a", 3)];
  await assert.rejects(herald.publish("chat.a", 4), { code: "queue_full" });
  up = true;
  assert.deepEqual(await Promise.all(queued), [pos(100), pos(101), pos(102)]);
  assert.deepEqual(ws.last.commands("pub").map((c) => (c as { data: unknown }).data), [1, 2, 3]);
  // Dropped and waiting for the next attempt: a publish now waits too.
  ws.behaviour = (c) => c.end({ code: "unreachable", message: "down" });
  let waiting: Promise<string | null> | undefined;
  const off = herald.on("state", (state) => {
    if (state.status === "disconnected") waiting ??= herald.publish("chat.a", 5);
  });
  ws.last.end({ code: "closed", message: "network" });
  await eventually(() => waiting !== undefined, "waiting to reconnect");
  off();
  ws.behaviour = (c) => c.open();
  assert.equal(await waiting, pos(103));
  const held = herald.publish("chat.a", { hold: true });
  await eventually(() => ws.last.commands("pub").length === 2, "in flight");
  ws.last.end({ code: "closed", message: "network" });
  await assert.rejects(held, { code: "connection_lost" });
  await eventually(() => herald.state.status === "connected" && ws.connections.length >= 2, "reconnected");
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(ws.last.commands("pub").length, 0, "not resent: it may have been published");
  herald.close();
});

test("a publish the closing link could not take waits for the next connection", async () => {
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence(7));
  const { herald } = client([ws]);
  await eventually(() => herald.state.status === "connected", "connected");
  const first = ws.last;
  first.ended = true; // closing: send() refuses, the close event is still to come
  const published = herald.publish("chat.a", "x");
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(first.commands("pub").length, 0);
  first.ended = false;
  first.end({ code: "closed", message: "network" });
  assert.equal(await published, pos(7));
  assert.equal(ws.last.commands("pub").length, 1);
  herald.close();
});

test("reads in flight at a drop are asked again on the next connection", async () => {
  const ws = new FakeTransport("websocket", true);
  let answer = false;
  ws.onCommand = (connection, command) => {
    if (command.op === "history" && answer) {
      connection.push({ op: "history", id: command.id, subject: command.subject, messages: [{ op: "msg", subject: "chat.a", pos: pos(1), ts: 1, data: "x" }] });
    }
  };
  const { herald } = client([ws]);
  const page = herald.history("chat.a", { limit: 5 });
  await eventually(() => ws.connections.at(-1)?.commands("history").length === 1, "asked");
  answer = true;
  ws.last.end({ code: "closed", message: "network" });
  const result = await page;
  assert.deepEqual(result.messages.map((m: Message) => m.data), ["x"]);
  assert.equal(ws.connections.length, 2);
  herald.close();
});

test("close reasons: 4403, removed and protocol_violation are final; shutdown and server_draining reconnect", async () => {
  for (const [info, final] of [
    [{ code: "origin_not_allowed", message: "pages from x may not connect", closeCode: 4403 }, true],
    [{ code: "removed", message: "disconnected by an operator", closeCode: 4403 }, true],
    [{ code: "protocol_violation", message: "flooding", closeCode: 1008 }, true],
    [{ code: "shutdown", message: "shutdown", closeCode: 1001 }, false],
    [{ code: "server_draining", message: "the server is restarting", closeCode: 1012 }, false],
  ] as const) {
    const ws = new FakeTransport("websocket", true);
    const { herald } = client([ws]);
    await eventually(() => herald.state.status === "connected", "connected");
    ws.last.end(info);
    if (final) {
      await eventually(() => herald.state.status === "closed", `closed after ${info.code}`);
      assert.deepEqual(herald.state.reason, { code: info.code, message: info.message });
      await assert.rejects(herald.publish("x", 1), { code: "closed" });
      await new Promise((r) => setTimeout(r, 60));
      assert.equal(ws.connections.length, 1, `no reconnect after ${info.code}`);
    } else {
      await eventually(() => ws.connections.length === 2 && herald.state.status === "connected", "reconnected");
    }
    herald.close();
  }
});

test("the server's final err names the reason even when the close does not", async () => {
  const ws = new FakeTransport("websocket", true);
  const { herald } = client([ws]);
  await eventually(() => herald.state.status === "connected", "connected");
  ws.last.push({ op: "err", code: "protocol_violation", message: "more than 1000 frames in a second" });
  ws.last.end({ code: "closed", message: "closed", closeCode: 1006 });
  await eventually(() => herald.state.status === "closed", "closed");
  assert.equal(herald.state.reason?.code, "protocol_violation");
  herald.close();
});

test("SSE advice: retry: of a day after a refusal means no reconnect; a normal retry: is the floor of the delay", async () => {
  const fetch = fakeFetch(() => ({ body: { cursor: pos(1) } }));
  const refused = new FakeTransport("sse", false, (c) => {
    c.events.retry(86_400_000);
    c.push({ op: "err", code: "token_rejected", message: "bad signature", close: 4401 });
    c.end({ code: "token_rejected", message: "bad signature", closeCode: 4401 });
  });
  const one = client([refused], { environment: { fetch }, getToken: () => "a.b.c" });
  one.herald.subscribe("chat.a", () => {});
  await eventually(() => one.herald.state.status === "closed", "closed");
  assert.equal(refused.connections.length, 1);

  const advised = new FakeTransport("sse", false, (c) => {
    c.open();
    c.events.retry(150);
  });
  const two = client([advised], { environment: { fetch } });
  two.herald.subscribe("chat.a", () => {});
  await eventually(() => two.herald.state.status === "connected", "connected");
  advised.last.end({ code: "stream_expired", message: "stream_expired" });
  await eventually(() => two.herald.state.status === "disconnected", "waiting");
  const retryIn = two.herald.state.retryIn!;
  assert.ok(retryIn >= 150 && retryIn < 300, `retry: 150 is the floor (${retryIn})`);
  two.herald.close();
});

test("a refused token is fetched again through getToken; a fixed token that expired ends the client", async () => {
  let tokens = 0;
  const ws = new FakeTransport("websocket", true, (c) => c.open());
  ws.onCommand = () => {};
  const { herald } = client([ws], { getToken: () => `t${++tokens}` });
  await eventually(() => herald.state.status === "connected", "connected");
  assert.equal((ws.last.sent[0] as { token?: string }).token, "t1");
  ws.last.push({ op: "err", code: "token_expired", message: "the token expired" });
  ws.last.end({ code: "token_expired", message: "token_expired", closeCode: 4401 });
  await eventually(() => ws.connections.length === 2 && herald.state.status === "connected", "reconnected");
  assert.equal((ws.last.sent[0] as { op: string; token?: string }).op, "auth");
  assert.ok(Number((ws.last.sent[0] as { token: string }).token.slice(1)) >= 2, "a new token");
  herald.close();

  const fixed = new FakeTransport("websocket", true);
  const two = client([fixed], { token: "a.b.c" });
  await eventually(() => two.herald.state.status === "connected", "connected");
  fixed.last.end({ code: "token_expired", message: "token_expired", closeCode: 4401 });
  await eventually(() => two.herald.state.status === "closed", "closed");
});

test("tokens are refreshed through getToken before they expire, on the open connection", async () => {
  const jwt = (exp: number) => `e30.${Buffer.from(JSON.stringify({ sub: "u", exp })).toString("base64url")}.sig`;
  let calls = 0;
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence());
  // Valid for 6 s: refreshed 5 s early, after ~1 s.
  const { herald } = client([ws], { getToken: () => (calls++, jwt(Math.floor(Date.now() / 1000) + 6)) });
  await eventually(() => herald.state.status === "connected", "connected");
  assert.equal(calls, 1);
  await eventually(() => ws.last.commands("refresh").length === 1, "refresh sent", 4_000);
  assert.equal(calls, 2);
  assert.equal(ws.connections.length, 1, "the same connection");
  herald.close();
});

test("the server's token_expired warning is answered with refresh on the same connection", async () => {
  let tokens = 0;
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence());
  const { herald } = client([ws], { getToken: () => `t${++tokens}` });
  await eventually(() => herald.state.status === "connected", "connected");
  ws.last.push({ op: "err", code: "token_expired", message: "the token expired; refresh within 30 s" });
  await eventually(() => ws.last.commands("refresh").length === 1, "refresh sent");
  assert.equal((ws.last.commands("refresh")[0] as { token: string }).token, "t2");
  assert.equal(ws.connections.length, 1);
  // A later drop is not taken for a refused token.
  ws.last.end({ code: "shutdown", message: "shutdown", closeCode: 1001 });
  await eventually(() => ws.connections.length === 2 && herald.state.status === "connected", "reconnected");
  assert.equal(tokens, 2, "no new token needed for a shutdown");
});

test("heartbeats: a link that stops answering is dropped and reconnected", async () => {
  const ws = new FakeTransport("websocket", true);
  let answer = true;
  ws.onCommand = (connection, command) => {
    if (command.op === "ping" && answer) connection.push({ op: "pong", id: command.id });
  };
  const { herald } = client([ws], { pingInterval: 60, pongTimeout: 60 });
  await eventually(() => herald.state.status === "connected", "connected");
  await new Promise((r) => setTimeout(r, 250));
  assert.ok(ws.last.commands("ping").length >= 2, "pings while idle");
  assert.equal(ws.connections.length, 1, "answered pings keep it");
  answer = false;
  const states: ConnectionState[] = [];
  herald.on("state", (s) => states.push(s));
  await eventually(() => ws.connections.length === 2, "dropped after silence");
  assert.equal(states.find((s) => s.status === "disconnected")?.reason?.code, "heartbeat_timeout");
  herald.close();
});

test("unsubscribe then subscribe again at once (React strict mode) costs the server nothing", async () => {
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence());
  const { herald } = client([ws]);
  const first = herald.subscribe("chat.a", () => {});
  await first.ready;
  first.unsubscribe();
  const second = herald.subscribe("chat.a", () => {});
  await second.ready;
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(ws.last.commands("sub").length, 1);
  assert.equal(ws.last.commands("unsub").length, 0);
  second.unsubscribe();
  await eventually(() => ws.last.commands("unsub").length === 1, "unsubscribed for real");
  herald.close();
});

test("one-way transports: a new subscription starts at now, the stream resumes at its cursor, publishes go over HTTP", async () => {
  const requests: string[] = [];
  let cursor = 20;
  const fetch = fakeFetch((url, init) => {
    requests.push(`${init?.method ?? "GET"} ${url.pathname}${url.search}`);
    if (url.pathname === "/v1/publish") return { body: { pos: pos(99) } };
    return { body: { cursor: pos(cursor) } };
  });
  const sse = new FakeTransport("sse", false);
  const { herald } = client([sse], { environment: { fetch }, token: "key-123" });
  const got: string[] = [];
  herald.subscribe("chat.a", (m) => got.push(m.pos));
  await eventually(() => herald.state.status === "connected", "connected");
  assert.deepEqual(sse.last.streams[0]?.since, pos(20));
  sse.last.events.cursor(pos(25));
  cursor = 30;
  const b = herald.subscribe("chat.b", (m) => got.push(m.pos));
  await b.ready;
  assert.equal(b.position, pos(30), "chat.b starts at now");
  assert.deepEqual(sse.last.streams.at(-1), {
    subscriptions: [
      { pattern: "chat.a", presence: false },
      { pattern: "chat.b", presence: false },
    ],
    since: pos(25),
  });
  // The reopened stream replays from 25: chat.b's older message is dropped.
  sse.last.push({ op: "msg", subject: "chat.b", pos: pos(27), ts: 1, data: null });
  sse.last.push({ op: "msg", subject: "chat.a", pos: pos(28), ts: 1, data: null });
  sse.last.push({ op: "msg", subject: "chat.b", pos: pos(31), ts: 1, data: null });
  assert.deepEqual(got, [pos(28), pos(31)]);
  assert.equal(await herald.publish("chat.a", { text: "hi" }), pos(99));
  assert.ok(requests.includes("POST /v1/publish"));
  herald.close();
});

test("one-way transports: a forbidden pattern is refused alone, the others stream", async () => {
  const fetch = fakeFetch((url) =>
    url.searchParams.getAll("subject").includes("chat.staff")
      ? { status: 403, body: { code: "forbidden", message: "may not subscribe to chat.staff" } }
      : { body: { cursor: pos(1) } },
  );
  const sse = new FakeTransport("sse", false);
  const { herald } = client([sse], { environment: { fetch } });
  const staff = herald.subscribe("chat.staff", () => {});
  herald.subscribe("chat.general", () => {});
  await assert.rejects(staff.ready, { code: "forbidden", message: "may not subscribe to chat.staff" });
  await eventually(() => herald.state.status === "connected", "connected");
  assert.deepEqual(sse.last.streams[0]?.subscriptions, [{ pattern: "chat.general", presence: false }]);
  herald.close();
});

test("presence events reach the subscriptions that asked for them, not the messages handler", async () => {
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence());
  const { herald } = client([ws]);
  const changes: unknown[] = [];
  const messages: unknown[] = [];
  await herald.subscribe("chat.room1", (m) => messages.push(m.data), { presence: true, onPresence: (c) => changes.push(c) }).ready;
  assert.equal((ws.last.commands("sub")[0] as { presence?: boolean }).presence, true);
  ws.last.push({ op: "msg", subject: "$presence.chat.room1", pos: pos(5), ts: 1, data: { action: "join", user: "bob", count: 2 } });
  ws.last.push({ op: "msg", subject: "chat.room1", pos: pos(6), ts: 1, data: "hi" });
  assert.deepEqual(changes, [{ action: "join", user: "bob", count: 2, subject: "chat.room1" }]);
  assert.deepEqual(messages, ["hi"]);
  // A presence event overtaking a replayed message (another WebTransport stream) does not hide it.
  ws.last.push({ op: "msg", subject: "$presence.chat.room1", pos: pos(9), ts: 1, data: { action: "leave", user: "bob", count: 1 } });
  ws.last.push({ op: "msg", subject: "chat.room1", pos: pos(7), ts: 1, data: "replayed" });
  assert.deepEqual(messages, ["hi", "replayed"]);
  herald.close();
});

test("disconnect keeps subscriptions; connect resumes them", async () => {
  const ws = new FakeTransport("websocket", true);
  ackEverything(ws, sequence(40));
  const { herald } = client([ws]);
  await herald.subscribe("chat.a", () => {}).ready;
  herald.disconnect();
  await eventually(() => herald.state.status === "disconnected", "disconnected");
  herald.connect();
  await eventually(() => ws.connections.length === 2 && ws.last.commands("sub").length === 1, "resubscribed");
  assert.equal((ws.last.commands("sub")[0] as { since?: string }).since, pos(40));
  herald.close();
});

test("WebTransport (ordered per subject only): a wildcard subscription loses nothing to streams overtaking each other, and resumes from where every stream had come", async () => {
  const wt = new FakeTransport("webtransport", true);
  wt.ordered = false;
  ackEverything(wt, sequence(10));
  const { herald } = client([wt]);
  const got: unknown[] = [];
  await herald.subscribe("chat.*", (m) => got.push(m.data)).ready;
  // chat.b's stream overtakes chat.a's.
  wt.last.push({ op: "msg", subject: "chat.b", pos: pos(12), ts: 1, data: "b12" });
  wt.last.push({ op: "msg", subject: "chat.a", pos: pos(11), ts: 1, data: "a11" });
  wt.last.push({ op: "msg", subject: "chat.a", pos: pos(11), ts: 1, data: "a11 again" });
  assert.deepEqual(got, ["b12", "a11"]);
  // Every stream has come to 11; chat.c at 13 may still be on its way.
  wt.last.caughtUp(pos(11));
  const sub = herald.subscribe("chat.*", () => {});
  assert.equal(sub.position, pos(11));
  wt.last.end({ code: "closed", message: "network" });
  await eventually(() => wt.connections.length === 2 && wt.last.commands("sub").length === 1, "resubscribed");
  assert.equal((wt.last.commands("sub")[0] as { since?: string }).since, pos(11), "not from 12: 13 could be lost");
  // The replay after 11: what arrived before is dropped, the rest delivered.
  wt.last.push({ op: "msg", subject: "chat.b", pos: pos(12), ts: 1, data: "b12 replayed" });
  wt.last.push({ op: "msg", subject: "chat.c", pos: pos(13), ts: 1, data: "c13" });
  assert.deepEqual(got, ["b12", "a11", "c13"]);
  herald.close();
});

void (null as unknown as FakeConnection);

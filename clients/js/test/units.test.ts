import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, decodePosition, isAfter, matches } from "../src/index.js";
import { earliest } from "../src/positions.js";
import { refreshAt, tokenExpiry } from "../src/token.js";
import { EventStreamParser } from "../src/transports/sse.js";
import { LaneMarks } from "../src/transports/webtransport.js";
import { pos } from "./fakes.js";

test("backoff: full jitter under a cap that doubles up to maxDelay, reset by a good connection", () => {
  const high = new Backoff({ initialDelay: 100, maxDelay: 1_000 }, () => 0.999);
  assert.deepEqual([1, 2, 3, 4, 5, 6].map(() => high.next()), [99, 199, 399, 799, 999, 999]);
  high.reset();
  assert.equal(high.next(), 99);
  const low = new Backoff({ initialDelay: 100, maxDelay: 1_000 }, () => 0);
  assert.deepEqual([1, 2, 3].map(() => low.next()), [0, 0, 0], "full jitter reaches zero");
  const spread = new Backoff({ initialDelay: 1_000, maxDelay: 1_000 });
  const delays = Array.from({ length: 200 }, () => spread.next());
  assert.ok(delays.every((d) => d >= 0 && d < 1_000));
  assert.ok(new Set(delays).size > 100, "delays are spread, not in step");
});

test("backoff: server advice (SSE retry:) is a floor, still jittered above it", () => {
  const backoff = new Backoff({ initialDelay: 100, maxDelay: 1_000 }, () => 0.5);
  assert.equal(backoff.next(2_000), 2_000 + 50);
  assert.equal(backoff.next(2_000), 2_000 + 100);
});

test("positions: decoded as the server encodes them, ordered within an epoch", () => {
  assert.deepEqual(decodePosition("AAAABwAAAAAAAAAB"), { epoch: 7, sequence: "0000000000000001" });
  assert.equal(pos(1), "AAAABwAAAAAAAAAB");
  assert.deepEqual(decodePosition(pos(2 ** 40 + 5, 0xdeadbeef)), { epoch: 0xdeadbeef, sequence: "0000010000000005" });
  assert.equal(decodePosition("short"), undefined);
  assert.equal(decodePosition("AAAABwAAAAAAAA!B"), undefined);
  // Base64's alphabet is not in ASCII order: 62 ('-') sorts before 'A' as text.
  assert.ok(isAfter(pos(62), pos(61)));
  assert.ok(isAfter(pos(256), pos(255)));
  assert.ok(!isAfter(pos(5), pos(5)));
  assert.ok(!isAfter(pos(4), pos(5)));
  assert.ok(isAfter(pos(1), undefined));
  assert.ok(isAfter(pos(1, 8), pos(9, 7)), "another epoch: the server judges");
  assert.equal(earliest([pos(9), pos(3), pos(70)]), pos(3));
  assert.equal(earliest([]), undefined);
});

test("subjects: NATS wildcards matched back to patterns", () => {
  assert.ok(matches("chat.*", "chat.a"));
  assert.ok(!matches("chat.*", "chat.a.b"));
  assert.ok(matches("chat.>", "chat.a.b"));
  assert.ok(!matches("chat.>", "chat"));
  assert.ok(matches("chat.a", "chat.a"));
  assert.ok(!matches("chat.a", "chat.ab"));
  assert.ok(matches("*.*.typing", "chat.room1.typing"));
  assert.ok(!matches("chat.*.typing", "chat.room1.messages"));
});

test("SSE parser: fields across chunks, CRLF, multi-line data, comments, retry", () => {
  const parser = new EventStreamParser();
  assert.deepEqual(parser.push("retry: 2000\n\nid: AAAA\r\nevent: ack\ndata: {\"op\":"), [{ retry: 2000 }]);
  assert.deepEqual(parser.push("\"ack\"}\n\n:\n\n"), [{ id: "AAAA", data: '{"op":"ack"}' }]);
  assert.deepEqual(parser.push("data: a\ndata: b\n\n"), [{ data: "a\nb" }]);
  assert.deepEqual(parser.push("retry: soon\n\n"), [], "a malformed retry is ignored");
});

test("tokens: expiry read from exp, refreshed a fifth of its life early (5 s to 60 s)", () => {
  const body = Buffer.from(JSON.stringify({ sub: "alice", exp: 1_800_000_000 })).toString("base64url");
  assert.equal(tokenExpiry(`e30.${body}.sig`), 1_800_000_000_000);
  assert.equal(tokenExpiry("an-api-key"), undefined);
  assert.equal(tokenExpiry("a.!!!.c"), undefined);
  assert.equal(refreshAt(0, 100_000), 80_000);
  assert.equal(refreshAt(0, 10_000), 5_000);
  assert.equal(refreshAt(0, 3_600_000), 3_540_000);
  assert.equal(refreshAt(10_000, 5_000), 10_000, "already expired: now");
});

test("WebTransport lanes: caught up to the least of every stream's last, once each has been heard from, moving only forward", () => {
  const marks = new LaneMarks();
  assert.equal(marks.reach(0, pos(5)), undefined, "how many streams is not known before a mark");
  assert.equal(marks.reach(1, pos(7), 3), undefined, "stream 2 not heard from");
  assert.equal(marks.reach(2, pos(9), 3), pos(5));
  assert.equal(marks.reach(1, pos(6)), undefined, "a stream does not go back");
  assert.equal(marks.reach(0, pos(8)), pos(7));
  assert.equal(marks.reach(0, pos(20)), undefined, "stream 1 is still at 7");
  assert.equal(marks.reach(1, pos(20)), pos(9));
});

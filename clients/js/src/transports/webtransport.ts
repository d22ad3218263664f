// WebTransport (HTTP/3 over QUIC, docs/quic.md): the client opens one
// bidirectional control stream for commands and answers; the server sends
// messages on its own unidirectional streams and, for latest-value
// subscriptions, datagrams. Every frame on a stream is a 4-byte big-endian
// length and one JSON event. The session URL and, for the development
// certificate, its hash come from `GET /v1/quic`.

import { requestJson, endpoint } from "../http.js";
import { earliest, isAfter } from "../positions.js";
import { parseEvent } from "../protocol.js";
import { Ending, type Connection, type ConnectionContext, type ConnectionEvents, type Transport } from "./types.js";

interface Advertised {
  url: string;
  certificate_hashes: { algorithm: string; value: string }[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const webTransportTransport: Transport = {
  name: "webtransport",
  duplex: true,
  ordered: false,
  available: (env) => typeof env.WebTransport === "function" && typeof env.fetch === "function",
  open(context: ConnectionContext, events: ConnectionEvents): Connection {
    const ending = new Ending(events);
    let session: InstanceType<NonNullable<typeof context.env.WebTransport>> | undefined;
    let writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
    const waiting: Uint8Array[] = [];
    const end = (code: string, message: string, closeCode?: number) => {
      if (!ending.report(code, message, closeCode)) return;
      try {
        session?.close();
      } catch {
        // already closed
      }
    };
    const marks = new LaneMarks();
    // `lane`: the message stream it came on (none for the control stream
    // and datagrams, which say nothing of how far the streams have come).
    const deliver = (bytes: Uint8Array, lane?: number) => {
      if (ending.ended) return;
      const event = parseEvent(decoder.decode(bytes));
      if (!event) return;
      const reached = lane !== undefined && (event.op === "msg" || event.op === "mark") ? marks.reach(lane, event.pos, event.op === "mark" ? event.lanes : undefined) : undefined;
      if (event.op !== "mark") events.event(event);
      if (reached !== undefined) events.caughtUp(reached);
    };
    const readFrames = async (readable: ReadableStream<Uint8Array>, lane?: number) => {
      const reader = readable.getReader();
      let buffer: Uint8Array = new Uint8Array(0);
      for (;;) {
        const { value, done } = await reader.read();
        if (done || ending.ended) return;
        buffer = concat(buffer, value);
        while (buffer.length >= 4) {
          const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(0);
          if (buffer.length < 4 + length) break;
          deliver(buffer.subarray(4, 4 + length), lane);
          buffer = buffer.slice(4 + length);
        }
      }
    };
    (async () => {
      const advertised = await requestJson<Advertised>(context.env.fetch!, "GET", endpoint(context.baseUrl, "v1/quic"), {
        timeout: context.timing.requestTimeout,
      });
      const serverCertificateHashes = advertised.certificate_hashes.map((hash) => ({
        algorithm: hash.algorithm,
        value: Uint8Array.from(atob(hash.value), (c) => c.charCodeAt(0)),
      }));
      if (ending.ended) return;
      session = new context.env.WebTransport!(
        advertised.url,
        serverCertificateHashes.length > 0 ? { serverCertificateHashes } : {},
      );
      session.closed.then(
        (info) => end(...closeOf(info)),
        (error) => end("closed", `the WebTransport session ended: ${String(error)}`),
      );
      await session.ready;
      const control = await session.createBidirectionalStream();
      writer = control.writable.getWriter();
      for (const frame of waiting.splice(0)) void writer.write(frame).catch(() => {});
      if (ending.ended) return;
      events.open();
      void readFrames(control.readable).catch(() => {});
      void (async () => {
        const streams = session.incomingUnidirectionalStreams.getReader();
        for (let lane = 0; ; lane++) {
          const { value, done } = await streams.read();
          if (done || ending.ended) return;
          void readFrames(value, lane).catch(() => {});
        }
      })().catch(() => {});
      void (async () => {
        const datagrams = session.datagrams.readable.getReader();
        for (;;) {
          const { value, done } = await datagrams.read();
          if (done || ending.ended) return;
          deliver(value);
        }
      })().catch(() => {});
    })().catch((error: unknown) => end("unreachable", `WebTransport failed: ${String(error)}`));
    return {
      send(command) {
        if (ending.ended) return false;
        const body = encoder.encode(JSON.stringify(command));
        const frame = new Uint8Array(4 + body.length);
        new DataView(frame.buffer).setUint32(0, body.length);
        frame.set(body, 4);
        if (writer) void writer.write(frame).catch(() => {});
        else waiting.push(frame);
        return true;
      },
      resubscribe() {},
      close() {
        ending.ended = true;
        try {
          session?.close({ closeCode: 1000, reason: "" });
        } catch {
          // already closed
        }
      },
    };
  },
};

/**
 * How far a session's message streams have come. Each stream is ordered
 * and now and then carries a `mark`: the last message the server had
 * written to the session before it. Once every stream has been heard from,
 * everything up to the least of them has arrived.
 */
export class LaneMarks {
  private readonly reached = new Map<number, string>();
  /** Unknown until the first mark says. */
  private lanes = Number.POSITIVE_INFINITY;
  private caughtUp: string | undefined;

  /** Stream `lane` has come to `pos`; returns how far all have come, when that moved. */
  reach(lane: number, pos: string, lanes?: number): string | undefined {
    if (lanes !== undefined) this.lanes = lanes;
    const known = this.reached.get(lane);
    if (known === undefined || isAfter(pos, known)) this.reached.set(lane, pos);
    if (this.reached.size < this.lanes) return undefined;
    const least = earliest(this.reached.values());
    if (least === undefined || (this.caughtUp !== undefined && !isAfter(least, this.caughtUp))) return undefined;
    this.caughtUp = least;
    return least;
  }
}

function closeOf(info: unknown): [string, string, number?] {
  const { closeCode, reason } = (info ?? {}) as { closeCode?: number; reason?: string };
  return [reason || "closed", reason || `the WebTransport session closed (${closeCode ?? 0})`, closeCode];
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

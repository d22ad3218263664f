// Server-Sent Events (`GET /sse`), read with `fetch` rather than
// `EventSource`: the credential goes in a header instead of the URL, the
// client chooses the resume point (`Last-Event-ID`), and it sees the
// server's heartbeat comments, so a dead link is noticed after
// `sseIdleTimeout` instead of never.

import { authorization, endpoint, errorOf } from "../http.js";
import { parseEvent } from "../protocol.js";
import { oneWayConnection } from "./oneway.js";
import type { Connection, ConnectionContext, ConnectionEvents, Transport } from "./types.js";

export const sseTransport: Transport = {
  name: "sse",
  duplex: false,
  ordered: true,
  available: (env) => typeof env.fetch === "function" && typeof ReadableStream === "function",
  open(context: ConnectionContext, events: ConnectionEvents): Connection {
    return oneWayConnection(
      context,
      events,
      async (subscriptions, since, round) => {
        const query: [string, string][] = subscriptions.map((s) => ["subject", s.pattern]);
        if (subscriptions.some((s) => s.presence)) query.push(["presence", "1"]);
        const headers: Record<string, string> = { accept: "text/event-stream", ...authorization(context.token()) };
        if (since) headers["last-event-id"] = since;
        let idle: ReturnType<typeof setTimeout> | undefined;
        const watch = () => {
          clearTimeout(idle);
          idle = setTimeout(() => {
            round.end("heartbeat_timeout", `nothing from the SSE stream for ${context.timing.sseIdleTimeout} ms`);
          }, context.timing.sseIdleTimeout);
        };
        watch();
        try {
          const response = await context.env.fetch!(endpoint(context.baseUrl, "sse", query), {
            headers,
            cache: "no-store",
            signal: round.signal,
          });
          if (!response.ok || !response.body) {
            const error = errorOf(response.status, await response.json().catch(() => undefined));
            round.end(error.code, error.message, 4000 + response.status);
            return;
          }
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          const parser = new EventStreamParser();
          let final: { code: string; message: string; close?: number } | undefined;
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            watch();
            for (const field of parser.push(value)) {
              if (round.over) return;
              if (field.retry !== undefined) events.retry(field.retry);
              if (field.data === undefined) continue;
              const event = parseEvent(field.data);
              if (!event) continue;
              if (event.op === "err" && event.id === undefined) {
                final = { code: event.code, message: event.message, ...(event.close ? { close: event.close } : {}) };
              }
              if (event.op === "ack") round.opened();
              events.event(event);
              if (field.id) events.cursor(field.id);
            }
          }
          if (!round.over) round.end(final?.code ?? "closed", final?.message ?? "the SSE stream ended", final?.close);
        } finally {
          clearTimeout(idle);
        }
      },
      (error) => ["unreachable", `SSE failed: ${String((error as Error)?.message ?? error)}`],
    );
  },
};

interface Field {
  id?: string;
  data?: string;
  retry?: number;
}

/** The `text/event-stream` format: fields per line, an empty line ends an event. */
export class EventStreamParser {
  private buffer = "";
  private current: Field = {};
  private data: string[] = [];

  push(text: string): Field[] {
    this.buffer += text;
    const done: Field[] = [];
    let newline: number;
    while ((newline = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, newline);
      const width = this.buffer.startsWith("\r\n", newline) ? 2 : 1;
      this.buffer = this.buffer.slice(newline + width);
      if (line === "") {
        if (this.data.length > 0) this.current.data = this.data.join("\n");
        if (this.current.data !== undefined || this.current.retry !== undefined) done.push(this.current);
        this.current = {};
        this.data = [];
        continue;
      }
      if (line.startsWith(":")) continue; // a heartbeat comment
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "data") this.data.push(value);
      else if (name === "id") this.current.id = value;
      else if (name === "retry" && /^\d+$/.test(value)) this.current.retry = Number(value);
    }
    return done;
  }
}

// WebSocket (`GET /ws`): JSON text frames both ways. The credential goes in
// the first command (`auth`), never in the URL, so it stays out of logs.
// The client asks for `herald.json.batch`: a busy subscription's events
// arrive several to a frame, one per line, which costs the page far less
// than a frame each. A server that predates it answers `herald.json`.

import { parseEvent } from "../protocol.js";
import { Ending, type Connection, type ConnectionContext, type ConnectionEvents, type Transport, type WebSocketLike } from "./types.js";

export function webSocketUrl(baseUrl: string): string {
  const url = new URL("ws", baseUrl.endsWith("/") ? baseUrl : baseUrl + "/");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

/** Subprotocols offered, the server choosing the first it knows. */
export const WEBSOCKET_PROTOCOLS = ["herald.json.batch", "herald.json"];

export const webSocketTransport: Transport = {
  name: "websocket",
  duplex: true,
  ordered: true,
  available: (env) => typeof env.WebSocket === "function",
  open(context: ConnectionContext, events: ConnectionEvents): Connection {
    const ending = new Ending(events);
    let socket: WebSocketLike;
    try {
      socket = new context.env.WebSocket!(webSocketUrl(context.baseUrl), WEBSOCKET_PROTOCOLS);
    } catch (error) {
      queueMicrotask(() => ending.report("unreachable", `WebSocket refused: ${String(error)}`));
      return { send: () => false, resubscribe() {}, close: () => void (ending.ended = true) };
    }
    socket.onopen = () => {
      if (!ending.ended) events.open();
    };
    socket.onmessage = (message) => {
      if (ending.ended || typeof message.data !== "string") return;
      // Every JSON event is one line, so a frame of one event is one line too.
      const lines = socket.protocol === "herald.json.batch" ? message.data.split("\n") : [message.data];
      for (const line of lines) {
        if (ending.ended) return;
        const event = parseEvent(line);
        if (event) events.event(event);
      }
    };
    socket.onclose = (close) => {
      // The reason text is the server's close reason (`shutdown`,
      // `token_expired`, ...); the client prefers the final `err` it read.
      const code = close.reason || (close.code === 1000 ? "closed" : "connection_lost");
      ending.report(code, close.reason || `the WebSocket closed (${close.code})`, close.code);
    };
    socket.onerror = () => {
      // A `close` event always follows.
    };
    return {
      send(command) {
        if (ending.ended || socket.readyState !== 1) return false;
        socket.send(JSON.stringify(command));
        return true;
      },
      resubscribe() {},
      close() {
        ending.ended = true;
        try {
          socket.close(1000);
        } catch {
          // already closed
        }
      },
    };
  },
};

// What a transport is to the client: something that opens a connection to
// Herald and reports the server's events and how it ended. The client owns
// everything else (credentials, subscriptions, resume, retries), so a
// transport stays a thin adapter and tests can stand in a fake one.

import type { Command, ServerEvent } from "../protocol.js";

export type TransportName = "websocket" | "webtransport" | "sse" | "longpoll";

/** The default order: WebSocket, then WebTransport, then SSE, then long polling. */
export const TRANSPORT_ORDER: readonly TransportName[] = ["websocket", "webtransport", "sse", "longpoll"];

export interface SubscriptionSpec {
  pattern: string;
  presence: boolean;
}

/** What this runtime offers; every field can be replaced through the client's options. */
export interface Environment {
  fetch?: typeof fetch;
  WebSocket?: WebSocketConstructor;
  WebTransport?: WebTransportConstructor;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WebSocketLike {
  readyState: number;
  /** The subprotocol the server chose ("" for none). */
  protocol?: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

// The parts of the browser's WebTransport this client uses.
export type WebTransportConstructor = new (
  url: string,
  options?: { serverCertificateHashes?: { algorithm: string; value: BufferSource }[] },
) => WebTransportLike;

export interface WebTransportLike {
  ready: Promise<unknown>;
  closed: Promise<unknown>;
  createBidirectionalStream(): Promise<{ readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> }>;
  incomingUnidirectionalStreams: ReadableStream<ReadableStream<Uint8Array>>;
  datagrams: { readable: ReadableStream<Uint8Array> };
  close(info?: { closeCode?: number; reason?: string }): void;
}

export interface ConnectionContext {
  /** The server's HTTP base URL: `http://127.0.0.1:7400`. */
  baseUrl: string;
  /** The current credential, read at every request (it may be refreshed). */
  token(): string | undefined;
  /** One-way transports: what to subscribe to, and where the stream resumes. */
  subscriptions: SubscriptionSpec[];
  since: string | undefined;
  env: Environment;
  timing: Timing;
}

export interface Timing {
  /** SSE: no byte (not even the server's heartbeat comment) for this long ends the stream. */
  sseIdleTimeout: number;
  /** Long polling: how long one poll waits on the server, in milliseconds. */
  pollWait: number;
  /** Added to a request's own wait before it counts as lost. */
  requestTimeout: number;
}

/** How a connection ended. */
export interface CloseInfo {
  /** The reason's code: the server's final `err` (`shutdown`, `token_expired`, ...) or this client's (`heartbeat_timeout`, `unreachable`). */
  code: string;
  message: string;
  /** WebSocket/WebTransport close code, or 4000 + the HTTP status of a refusal. */
  closeCode?: number;
}

export interface ConnectionEvents {
  /**
   * The server answered: a duplex transport can take commands; a one-way
   * stream sent its opening `ack` or first poll answer.
   */
  open(): void;
  event(event: ServerEvent): void;
  /**
   * Unordered transports: every message at or before `position` has been
   * reported (what arrives later at or before it is a repeat).
   */
  caughtUp(position: string): void;
  /** One-way transports: the position the stream has reached. */
  cursor(position: string): void;
  /** SSE `retry:` advice, in milliseconds. */
  retry(milliseconds: number): void;
  /** Reported once; nothing is reported after it. */
  close(info: CloseInfo): void;
}

export interface Connection {
  /** Duplex transports only. False when the command was certainly not sent (the link is closing). */
  send(command: Command): boolean;
  /** One-way transports only: a new subscription set, resuming at `since`. */
  resubscribe(subscriptions: SubscriptionSpec[], since: string | undefined): void;
  /** Ends the connection without reporting `close`. */
  close(): void;
}

export interface Transport {
  readonly name: TransportName;
  /** Commands travel on the connection (WebSocket, WebTransport); otherwise over HTTP. */
  readonly duplex: boolean;
  /**
   * Messages arrive in position order. WebTransport keeps order per
   * subject only (each subject rides one of several streams): it reports
   * how far all of them have come with `caughtUp`.
   */
  readonly ordered: boolean;
  available(env: Environment): boolean;
  open(context: ConnectionContext, events: ConnectionEvents): Connection;
}

/** A connection's end, reported to the client at most once. */
export class Ending {
  /** Reported, or closed by the client (which wants no report). */
  ended = false;
  constructor(private readonly events: ConnectionEvents) {}
  /** Reports the close; false when the connection had already ended. */
  report(code: string, message: string, closeCode?: number): boolean {
    if (this.ended) return false;
    this.ended = true;
    this.events.close({ code, message, ...(closeCode !== undefined ? { closeCode } : {}) });
    return true;
  }
}

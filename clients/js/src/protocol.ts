// Herald client protocol, version 1 (docs/protocol.md): the commands this
// client sends and the events it reads, in their JSON form.

/** The protocol version this package speaks; its major version matches. */
export const PROTOCOL_VERSION = 1;

export type Command =
  | { op: "auth"; id: number; token: string }
  | { op: "refresh"; id: number; token: string }
  | { op: "sub"; id: number; subject: string; since?: string; presence?: boolean }
  | { op: "unsub"; id: number; subject: string }
  | {
      op: "pub";
      id: number;
      subject: string;
      data: unknown;
      echo?: boolean;
      headers?: Record<string, string | string[]>;
    }
  | { op: "ping"; id: number }
  | { op: "history"; id: number; subject: string; since?: string; limit?: number }
  | { op: "presence"; id: number; subject: string };

export interface MsgEvent {
  op: "msg";
  subject: string;
  pos: string;
  ts: number;
  data?: unknown;
  data_base64?: string;
  reply?: string;
  headers?: Record<string, string[]>;
}

export interface GapEvent {
  op: "gap";
  subject: string;
  from: string;
  to: string;
  missed?: number;
}

export interface AckEvent {
  op: "ack";
  id?: number;
  pos?: string | null;
}

export interface ErrEvent {
  op: "err";
  id?: number;
  code: string;
  message: string;
  /** SSE refusals: the close code (4000 + HTTP status). */
  close?: number;
}

export interface PongEvent {
  op: "pong";
  id?: number;
}

export interface HistoryEvent {
  op: "history";
  id?: number;
  subject: string;
  gap?: { from: string; to: string; missed?: number };
  messages: MsgEvent[];
}

export interface PresenceMember {
  user: string;
  info?: unknown;
}

export interface PresenceEvent {
  op: "presence";
  id?: number;
  subject: string;
  count: number;
  members: PresenceMember[];
  truncated: boolean;
}

/**
 * WebTransport message streams only: the last message the server had
 * written to the session when it wrote this; the stream carried every one
 * of its own messages up to `pos` before it. `lanes`: how many streams.
 */
export interface MarkEvent {
  op: "mark";
  pos: string;
  lanes: number;
}

export type ServerEvent =
  | MsgEvent
  | GapEvent
  | AckEvent
  | ErrEvent
  | PongEvent
  | HistoryEvent
  | PresenceEvent
  | MarkEvent;

/** Reads one JSON event; anything else is reported, not thrown past the caller. */
export function parseEvent(text: string): ServerEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const op = (value as { op?: unknown }).op;
  return typeof op === "string" ? (value as ServerEvent) : undefined;
}

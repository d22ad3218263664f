// Errors carry the server's code (docs/protocol.md, "Error codes") or one of
// this client's own, so applications branch on `code`, not on text.

/** Codes this client adds to the server's. */
export type ClientErrorCode =
  /** The connection ended before the server answered: the publish may or may not have happened. */
  | "connection_lost"
  /** Too many publishes or reads wait for a connection (`maxQueued`). */
  | "queue_full"
  /** The client was closed. */
  | "closed"
  /** The server answered something this client cannot read. */
  | "bad_response"
  /** No answer within `requestTimeout`. */
  | "timeout"
  /** No transport of the list can run here (no WebSocket, fetch, ...). */
  | "no_transport";

export class HeraldError extends Error {
  override readonly name = "HeraldError";
  constructor(
    /** The server's error code (`forbidden`, `rate_limited`, ...) or a ClientErrorCode. */
    readonly code: string,
    message: string,
    /** The HTTP status or close code that came with it, if any. */
    readonly status?: number,
  ) {
    super(message);
  }
}

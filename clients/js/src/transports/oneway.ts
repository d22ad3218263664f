// What SSE and long polling share: a connection that is one stream (or one
// chain of polls) per subscription set, restarted from a position when the
// set changes, and that idles with nothing to carry (the server's health
// answer is then all that proves the link).

import { endpoint, requestJson } from "../http.js";
import { Ending, type Connection, type ConnectionContext, type ConnectionEvents, type SubscriptionSpec } from "./types.js";

export interface Round {
  readonly signal: AbortSignal;
  /** The server answered: the first time, the connection is established. */
  opened(): void;
  /** The connection ends with this reason (reported once). */
  end(code: string, message: string, closeCode?: number): void;
  /** Ended, or replaced by a newer round. */
  readonly over: boolean;
}

/** Runs the transport's `stream` for each subscription set; failures it throws end the connection as `failure` says. */
export function oneWayConnection(
  context: ConnectionContext,
  events: ConnectionEvents,
  stream: (subscriptions: SubscriptionSpec[], since: string | undefined, round: Round) => Promise<void>,
  failure: (error: unknown) => [code: string, message: string, closeCode?: number],
): Connection {
  const ending = new Ending(events);
  let opened = false;
  let current: AbortController | undefined;
  const end = (code: string, message: string, closeCode?: number) => {
    if (ending.report(code, message, closeCode)) current?.abort();
  };
  const start = (subscriptions: SubscriptionSpec[], since: string | undefined) => {
    current?.abort();
    const abort = new AbortController();
    current = abort;
    const round: Round = {
      signal: abort.signal,
      opened: () => {
        if (opened || ending.ended || abort.signal.aborted) return;
        opened = true;
        events.open();
      },
      end,
      get over() {
        return ending.ended || abort.signal.aborted;
      },
    };
    const run = async () => {
      if (subscriptions.length > 0) return stream(subscriptions, since, round);
      await requestJson(context.env.fetch!, "GET", endpoint(context.baseUrl, "healthz"), {
        timeout: context.timing.requestTimeout,
        signal: abort.signal,
      });
      round.opened();
    };
    run().catch((error: unknown) => {
      if (!abort.signal.aborted) end(...failure(error));
    });
  };
  start(context.subscriptions, context.since);
  return {
    send: () => false,
    resubscribe(subscriptions, since) {
      if (!ending.ended) start(subscriptions, since);
    },
    close() {
      ending.ended = true;
      current?.abort();
    },
  };
}

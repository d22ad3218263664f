// Long polling (`GET /poll`): the cursor is all the state, so a poll cut
// short (a changed subscription set, a lost request) is simply asked again
// with the same cursor. A poll that does not answer within its own wait plus
// `requestTimeout` counts as a dead link.

import { endpoint, requestJson } from "../http.js";
import type { GapEvent, MsgEvent } from "../protocol.js";
import type { Connection, ConnectionContext, ConnectionEvents, SubscriptionSpec, Transport } from "./types.js";

interface PollAnswer {
  cursor: string;
  events: (GapEvent | MsgEvent)[];
}

export const longPollTransport: Transport = {
  name: "longpoll",
  duplex: false,
  available: (env) => typeof env.fetch === "function",
  open(context: ConnectionContext, events: ConnectionEvents): Connection {
    let ended = false;
    let opened = false;
    let round: AbortController | undefined;
    const end = (code: string, message: string, closeCode?: number) => {
      if (ended) return;
      ended = true;
      round?.abort();
      events.close({ code, message, ...(closeCode !== undefined ? { closeCode } : {}) });
    };
    const opening = () => {
      if (!opened) {
        opened = true;
        events.open();
      }
    };

    const run = async (subscriptions: SubscriptionSpec[], since: string | undefined, abort: AbortController) => {
      if (subscriptions.length === 0) {
        await requestJson(context.env.fetch!, "GET", endpoint(context.baseUrl, "healthz"), {
          timeout: context.timing.requestTimeout,
          signal: abort.signal,
        });
        opening();
        return;
      }
      let cursor = since;
      let first = true;
      while (!ended && !abort.signal.aborted) {
        // The first poll answers at once, so the connection is known to work.
        const wait = first ? 0 : context.timing.pollWait;
        const query: [string, string][] = subscriptions.map((s) => ["subject", s.pattern]);
        if (cursor) query.push(["cursor", cursor]);
        query.push(["wait", String(wait / 1000)]);
        const answer = await requestJson<PollAnswer>(context.env.fetch!, "GET", endpoint(context.baseUrl, "poll", query), {
          token: context.token(),
          timeout: wait + context.timing.requestTimeout,
          signal: abort.signal,
        });
        if (ended || abort.signal.aborted) return;
        first = false;
        opening();
        for (const event of answer.events) events.event(event);
        cursor = answer.cursor;
        events.cursor(answer.cursor);
      }
    };

    const start = (subscriptions: SubscriptionSpec[], since: string | undefined) => {
      round?.abort();
      const abort = new AbortController();
      round = abort;
      run(subscriptions, since, abort).catch((error: unknown) => {
        if (abort.signal.aborted) return;
        const { code, message, status } = error as { code?: string; message?: string; status?: number };
        end(
          code === "connection_lost" || code === "timeout" ? (code === "timeout" ? "heartbeat_timeout" : "unreachable") : (code ?? "unreachable"),
          message ?? String(error),
          status !== undefined ? 4000 + status : undefined,
        );
      });
    };
    start(context.subscriptions, context.since);
    return {
      send: () => false,
      resubscribe(subscriptions, since) {
        if (!ended) start(subscriptions, since);
      },
      close() {
        ended = true;
        round?.abort();
      },
    };
  },
};

// Long polling (`GET /poll`): the cursor is all the state, so a poll cut
// short (a changed subscription set, a lost request) is simply asked again
// with the same cursor. A poll that does not answer within its own wait plus
// `requestTimeout` counts as a dead link.

import type { HeraldError } from "../errors.js";
import { endpoint, requestJson } from "../http.js";
import type { GapEvent, MsgEvent } from "../protocol.js";
import { oneWayConnection } from "./oneway.js";
import type { Connection, ConnectionContext, ConnectionEvents, Transport } from "./types.js";

interface PollAnswer {
  cursor: string;
  events: (GapEvent | MsgEvent)[];
}

export const longPollTransport: Transport = {
  name: "longpoll",
  duplex: false,
  ordered: true,
  available: (env) => typeof env.fetch === "function",
  open(context: ConnectionContext, events: ConnectionEvents): Connection {
    return oneWayConnection(
      context,
      events,
      async (subscriptions, since, round) => {
        let cursor = since;
        let first = true;
        while (!round.over) {
          // The first poll answers at once, so the connection is known to work.
          const wait = first ? 0 : context.timing.pollWait;
          const query: [string, string][] = subscriptions.map((s) => ["subject", s.pattern]);
          if (cursor) query.push(["cursor", cursor]);
          query.push(["wait", String(wait / 1000)]);
          const asked = Date.now();
          const answer = await requestJson<PollAnswer>(context.env.fetch!, "GET", endpoint(context.baseUrl, "poll", query), {
            token: context.token(),
            timeout: wait + context.timing.requestTimeout,
            signal: round.signal,
          });
          if (round.over) return;
          first = false;
          round.opened();
          for (const event of answer.events) events.event(event);
          cursor = answer.cursor;
          events.cursor(answer.cursor);
          // An empty answer long before its wait (a server shutting down, a proxy
          // that does not hold requests) must not turn into a tight loop of polls.
          const early = answer.events.length === 0 && Date.now() - asked < wait / 2;
          await new Promise((resolve) => setTimeout(resolve, early ? Math.min(1_000, wait) : 0));
        }
      },
      (error) => {
        const { code, message, status } = error as Partial<HeraldError>;
        // A poll that got no answer in time is a dead link; one that got none at all, an unreachable server.
        const reason = code === "timeout" ? "heartbeat_timeout" : code === "connection_lost" || !code ? "unreachable" : code;
        return [reason, message ?? String(error), status !== undefined ? 4000 + status : undefined];
      },
    );
  },
};

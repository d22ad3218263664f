/**
 * Herald's client: one logical connection over WebSocket, WebTransport,
 * Server-Sent Events or long polling, with lossless resume.
 *
 * ```ts
 * import { Herald } from "@herald-broker/client";
 * const herald = new Herald("https://herald.example", { getToken: () => fetch("/token").then((r) => r.text()) });
 * herald.subscribe("chat.room1.messages", (message) => console.log(message.data));
 * await herald.publish("chat.room1.messages", { text: "hi" });
 * ```
 */

export { Herald } from "./client.js";
export type {
  ConnectionState,
  ConnectionStatus,
  Gap,
  HeraldEvents,
  HeraldOptions,
  HistoryOptions,
  HistoryPage,
  Message,
  PresenceChange,
  PresenceSnapshot,
  PublishOptions,
  SubscribeOptions,
  Subscription,
} from "./client.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export { HeraldError, type ClientErrorCode } from "./errors.js";
export { decodePosition, isAfter } from "./positions.js";
export { PROTOCOL_VERSION, type Command, type ServerEvent, type PresenceMember } from "./protocol.js";
export { matches } from "./subjects.js";
export {
  TRANSPORT_ORDER,
  type CloseInfo,
  type Connection,
  type ConnectionContext,
  type ConnectionEvents,
  type Environment,
  type SubscriptionSpec,
  type Transport,
  type TransportName,
} from "./transports/types.js";

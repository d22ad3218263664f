// The client: one logical connection to Herald that outlives every physical
// one. It keeps the subscriptions and where each one is (its last position),
// picks a transport, and after any drop reconnects with backoff and resumes
// every subscription from its own position, dropping what it already has.
//
// Lifecycle of one attempt: open the transport; a duplex transport is
// established by the answer to its first command (`auth`, or a `ping` when
// there is no credential), a one-way one by its first answer. Established:
// subscriptions are (re)sent with `since`, queued publishes go out, pings
// start. A transport that ends before it was established is skipped for the
// next in the list at once; a whole round of failures waits a backoff.

import { Backoff, type BackoffOptions } from "./backoff.js";
import { HeraldError } from "./errors.js";
import { endpoint, requestJson } from "./http.js";
import { earliest, isAfter } from "./positions.js";
import type {
  Command,
  ErrEvent,
  HistoryEvent,
  MsgEvent,
  PresenceEvent,
  PresenceMember,
  ServerEvent,
} from "./protocol.js";
import { matches, PRESENCE_PREFIX } from "./subjects.js";
import { refreshAt, tokenExpiry } from "./token.js";
import { longPollTransport } from "./transports/longpoll.js";
import { sseTransport } from "./transports/sse.js";
import {
  TRANSPORT_ORDER,
  type CloseInfo,
  type Connection,
  type Environment,
  type SubscriptionSpec,
  type Timing,
  type Transport,
  type TransportName,
} from "./transports/types.js";
import { webSocketTransport } from "./transports/websocket.js";
import { webTransportTransport } from "./transports/webtransport.js";

export interface HeraldOptions {
  /** A fixed credential: a user token (JWT) or an API key. */
  token?: string;
  /**
   * Fetches a user token: called before connecting, again before the token
   * expires (read from its `exp`), and when the server refuses it.
   */
  getToken?: () => string | Promise<string>;
  /** Transports to try, in order (default: websocket, webtransport, sse, longpoll). One entry pins it. */
  transports?: TransportName[];
  /** Longest an attempt may take to be established before the next transport is tried (ms, default 5 000). */
  connectTimeout?: number;
  /** WebSocket and WebTransport: a ping after this long without a frame from the server (ms, default 15 000). */
  pingInterval?: number;
  /** ... and the link is dead when nothing answers within this (ms, default 10 000). */
  pongTimeout?: number;
  /** SSE: the link is dead after this long without a byte (ms, default 45 000; the server's heartbeat comes every 15 s). */
  sseIdleTimeout?: number;
  /** Long polling: how long one poll waits on the server (ms, default 25 000). */
  pollWait?: number;
  /** Longest wait for an answer to a command or request (ms, default 15 000). */
  requestTimeout?: number;
  /** Publishes and reads that may wait for a connection (default 100); beyond, `queue_full`. */
  maxQueued?: number;
  /** Reconnect delays: exponential backoff with full jitter. */
  reconnect?: BackoffOptions;
  /** Connect when created (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Replaces runtime classes (fetch, WebSocket, WebTransport): for tests and unusual runtimes. */
  environment?: Environment;
  /** Replaces transport implementations by name: for tests. */
  transportImplementations?: Partial<Record<TransportName, Transport>>;
  /** The random source of the backoff's jitter: for tests. */
  random?: () => number;
}

export type ConnectionStatus = "connecting" | "connected" | "disconnected" | "closed";

export interface ConnectionState {
  status: ConnectionStatus;
  /** The transport in use or being tried. */
  transport?: TransportName;
  /** Why the last connection ended (or why the client closed); kept while connecting again. */
  reason?: { code: string; message: string };
  /** When disconnected: milliseconds until the next attempt. */
  retryIn?: number;
}

export interface Message {
  subject: string;
  /** The message's position: its resume token. */
  pos: string;
  /** When it was published, in milliseconds since the Unix epoch (the server's clock). */
  ts: number;
  data: unknown;
  /** Set instead of `data` when the payload is not JSON (standard base64). */
  dataBase64?: string;
  headers?: Record<string, string[]>;
  reply?: string;
}

export interface Gap {
  /** The subscription pattern. */
  subject: string;
  from: string;
  to: string;
  missed?: number;
}

export type PresenceChange =
  | { action: "join" | "leave"; subject: string; user: string; info?: unknown; count: number }
  | { action: "count"; subject: string; count: number };

export interface SubscribeOptions {
  /** Start after this position (a message's `pos`): replay what came since. */
  since?: string;
  /** Also receive who joins and leaves (subjects whose rule tracks presence). */
  presence?: boolean;
  onGap?: (gap: Gap) => void;
  onPresence?: (change: PresenceChange) => void;
  /** The server refused the subscription (`forbidden`, `invalid_subject`, ...); it is then dropped. */
  onError?: (error: HeraldError) => void;
}

export interface Subscription {
  readonly pattern: string;
  /** Resolves once the server acknowledged the subscription; rejects with the refusal. */
  readonly ready: Promise<void>;
  /**
   * Where this subscription resumes: the position of the last message it
   * received (on WebTransport, which orders each subject apart, the
   * position every message stream has reached).
   */
  readonly position: string | undefined;
  unsubscribe(): void;
}

export interface PublishOptions {
  /** false: not delivered back to this connection's own subscriptions (duplex transports; typing indicators). */
  echo?: boolean;
  headers?: Record<string, string | string[]>;
}

export interface HistoryOptions {
  since?: string;
  limit?: number;
}

export interface HistoryPage {
  messages: Message[];
  gap?: { from: string; to: string; missed?: number };
}

export interface PresenceSnapshot {
  subject: string;
  count: number;
  members: PresenceMember[];
  truncated: boolean;
}

export interface HeraldEvents {
  state: ConnectionState;
  /** Any message received, after the subscription handlers. */
  message: Message;
  gap: Gap;
  /** Errors not tied to a call: a refused subscription, a failed token refresh. */
  error: HeraldError;
}

type Listener<T> = (value: T) => void;

interface Handle {
  handler: (message: Message) => void;
  options: SubscribeOptions;
  settle: { resolve: () => void; reject: (error: HeraldError) => void };
}

/** One pattern held on the server, shared by every handle that asked for it. */
interface Held {
  pattern: string;
  presence: boolean;
  handles: Set<Handle>;
  /**
   * Where it resumes: its `ack`'s position, then the last it received (on
   * an unordered transport, the last every stream has reached).
   */
  position: string | undefined;
  /**
   * After `position`, the last position received per subject: on an
   * unordered transport `position` waits for every stream to catch up, and
   * a resume from it replays what this holds.
   */
  seen: Map<string, string>;
  /** Acknowledged on the current connection. */
  acknowledged: boolean;
  /** Known to be allowed on one-way transports (checked by a poll). */
  checked: boolean;
  /** A deferred unsubscribe (so React's strict-mode remount costs nothing). */
  dropping?: ReturnType<typeof setTimeout>;
}

type Queued =
  | { kind: "pub"; subject: string; data: unknown; options: PublishOptions; resolve: (pos: string | null) => void; reject: (error: HeraldError) => void }
  | { kind: "history"; pattern: string; options: HistoryOptions; resolve: (page: HistoryPage) => void; reject: (error: HeraldError) => void }
  | { kind: "presence"; subject: string; resolve: (snapshot: PresenceSnapshot) => void; reject: (error: HeraldError) => void };

interface Pending {
  resolve: (event: ServerEvent) => void;
  reject: (error: HeraldError) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Publishes cannot be repeated safely: they fail with `connection_lost`. Reads are asked again. */
  retry?: Queued;
}

/** How an attempt ended. */
type Outcome =
  | { kind: "unreachable"; info: CloseInfo } // try the next transport
  | { kind: "refused"; info: CloseInfo } // the server answered no: same transport after a backoff
  | { kind: "fatal"; info: CloseInfo } // do not reconnect
  | { kind: "dropped"; info: CloseInfo }; // was established: reconnect

const IMPLEMENTATIONS: Record<TransportName, Transport> = {
  websocket: webSocketTransport,
  webtransport: webTransportTransport,
  sse: sseTransport,
  longpoll: longPollTransport,
};

/** Codes after which reconnecting cannot help (docs/protocol.md, close reasons). */
const FATAL = new Set(["protocol_violation", "origin_not_allowed", "forbidden", "invalid_credential", "unauthorized"]);
const CREDENTIAL = new Set(["token_expired", "token_rejected", "token_not_yet_valid", "invalid_credential", "unauthorized"]);
/** SSE advice this long or longer means: do not retry (the server's "a day"). */
const RETRY_NEVER = 3_600_000;

export class Herald {
  readonly url: string;
  private readonly options: HeraldOptions;
  private readonly env: Environment;
  private readonly timing: Timing;
  private readonly transports: Transport[];
  private readonly backoff: Backoff;
  private readonly listeners = new Map<keyof HeraldEvents, Set<Listener<never>>>();
  private readonly held = new Map<string, Held>();
  private readonly queue: Queued[] = [];
  private readonly pending = new Map<number, Pending>();

  private current: ConnectionState = { status: "disconnected" };
  private wanted = false;
  private closed = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private connection: Connection | undefined;
  private transport: Transport | undefined;
  private established = false;
  private lastGood = 0;
  private nextId = 1;
  private token: string | undefined;
  private tokenRefresh: ReturnType<typeof setTimeout> | undefined;
  private streamCursor: string | undefined;
  private retryAdvice = 0;
  private lastFrame = 0;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private oneWayChain: Promise<unknown> = Promise.resolve();
  private endAttempt: ((outcome: Outcome) => void) | undefined;

  constructor(url: string, options: HeraldOptions = {}) {
    this.url = url.replace(/\/+$/, "");
    this.options = options;
    const global = globalThis as unknown as Environment;
    this.env = {
      fetch: options.environment?.fetch ?? (typeof global.fetch === "function" ? global.fetch.bind(globalThis) : undefined),
      WebSocket: options.environment?.WebSocket ?? global.WebSocket,
      WebTransport: options.environment?.WebTransport ?? global.WebTransport,
    } as Environment;
    this.timing = {
      sseIdleTimeout: options.sseIdleTimeout ?? 45_000,
      pollWait: options.pollWait ?? 25_000,
      requestTimeout: options.requestTimeout ?? 15_000,
    };
    const names = options.transports ?? [...TRANSPORT_ORDER];
    if (names.length === 0) throw new HeraldError("no_transport", "the transports list is empty");
    this.transports = names.map((name) => {
      const transport = options.transportImplementations?.[name] ?? IMPLEMENTATIONS[name];
      if (!transport) throw new HeraldError("no_transport", `unknown transport ${JSON.stringify(name)}`);
      return transport;
    });
    this.backoff = new Backoff(options.reconnect, options.random);
    this.token = options.token;
    if (options.autoConnect ?? true) this.connect();
  }

  // ---- public API -------------------------------------------------------

  get state(): ConnectionState {
    return this.current;
  }

  on<K extends keyof HeraldEvents>(event: K, listener: Listener<HeraldEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => set!.delete(listener as Listener<never>);
  }

  /** Starts (or restarts after `disconnect()`) connecting. */
  connect(): void {
    if (this.closed) throw new HeraldError("closed", "this client was closed");
    this.wanted = true;
    this.wake?.();
    if (!this.loop) {
      this.loop = this.run().finally(() => {
        this.loop = undefined;
      });
    }
  }

  /** Drops the connection but keeps subscriptions and queued work; `connect()` resumes. */
  disconnect(): void {
    this.wanted = false;
    this.wake?.();
    this.endAttempt?.({ kind: "dropped", info: { code: "client_disconnect", message: "disconnected by the application" } });
  }

  /** Ends the client: the connection, subscriptions, and everything queued fails with `closed`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.tokenRefresh);
    this.disconnect();
    const error = new HeraldError("closed", "the client was closed");
    for (const item of this.queue.splice(0)) item.reject(error);
    this.setState({ status: "closed", reason: { code: "closed", message: "closed by the application" } });
  }

  subscribe(pattern: string, handler: (message: Message) => void, options: SubscribeOptions = {}): Subscription {
    let settle!: Handle["settle"];
    const ready = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    ready.catch(() => {}); // a refusal is also reported to onError and the `error` event
    const handle: Handle = { handler, options, settle };
    let held = this.held.get(pattern);
    if (held) {
      clearTimeout(held.dropping);
      held.dropping = undefined;
      held.handles.add(handle);
      if (options.presence && !held.presence) {
        held.presence = true;
        this.resend(held);
      } else if (held.acknowledged) {
        settle.resolve();
      }
    } else {
      held = {
        pattern,
        presence: options.presence ?? false,
        handles: new Set([handle]),
        position: options.since,
        seen: new Map(),
        acknowledged: false,
        checked: false,
      };
      this.held.set(pattern, held);
      this.resend(held);
    }
    const owner = held;
    let active = true;
    return {
      pattern,
      ready,
      get position() {
        return owner.position;
      },
      unsubscribe: () => {
        if (!active) return;
        active = false;
        owner.handles.delete(handle);
        if (owner.handles.size === 0) this.scheduleDrop(owner);
      },
    };
  }

  /** Publishes; resolves with the message's position (null where the server gives none). */
  publish(subject: string, data: unknown, options: PublishOptions = {}): Promise<string | null> {
    return new Promise((resolve, reject) => {
      this.enqueue({ kind: "pub", subject, data, options, resolve, reject });
    });
  }

  /** Reads retained messages: the newest `limit`, or the first `limit` after `since`. */
  history(pattern: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    return new Promise((resolve, reject) => {
      this.enqueue({ kind: "history", pattern, options, resolve, reject });
    });
  }

  /** Who is subscribed to a subject whose rule tracks presence. */
  presence(subject: string): Promise<PresenceSnapshot> {
    return new Promise((resolve, reject) => {
      this.enqueue({ kind: "presence", subject, resolve, reject });
    });
  }

  // ---- the connection loop ---------------------------------------------

  private async run(): Promise<void> {
    let start = this.lastGood;
    while (this.wanted && !this.closed) {
      let advice: Outcome | undefined;
      let reachedServer = false;
      for (let step = 0; step < this.transports.length && this.wanted; step++) {
        const index = (start + step) % this.transports.length;
        const transport = this.transports[index]!;
        if (!transport.available(this.env)) continue;
        const outcome = await this.attempt(transport);
        advice = outcome;
        if (outcome.kind === "fatal") {
          this.fail(outcome.info);
          return;
        }
        if (outcome.kind === "dropped" || outcome.kind === "refused") {
          // It worked, or the server answered "no" through it (another
          // transport would hear the same): the next round starts with it.
          start = index;
          reachedServer = true;
          break;
        }
      }
      if (!this.wanted || this.closed) break;
      if (!advice) {
        this.fail({ code: "no_transport", message: "none of the transports can run here" });
        return;
      }
      if (!reachedServer) start = 0; // a full round failed: the next starts from the preferred one
      const floor = this.transport?.name === "sse" ? this.retryAdvice : 0;
      const delay = this.backoff.next(floor);
      this.setState({
        status: "disconnected",
        transport: this.transport?.name,
        reason: { code: advice.info.code, message: advice.info.message },
        retryIn: delay,
      });
      await this.sleep(delay);
    }
    if (!this.closed) {
      this.setState({ status: "disconnected", reason: { code: "client_disconnect", message: "disconnected by the application" } });
    }
  }

  private attempt(transport: Transport): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      this.transport = transport;
      this.established = false;
      this.retryAdvice = 0;
      // While reconnecting, the state keeps saying why the last connection ended.
      const reason = this.current.status === "connected" ? undefined : this.current.reason;
      this.setState({ status: "connecting", transport: transport.name, reason });
      let settled = false;
      let connection: Connection | undefined;
      const timer = setTimeout(() => {
        finish({ kind: "unreachable", info: { code: "connect_timeout", message: `${transport.name} was not established within ${this.connectTimeout} ms` } });
      }, this.connectTimeout);
      let fatalErr: ErrEvent | undefined;
      const finish = (outcome: Outcome) => {
        if (settled) return;
        settled = true;
        // From here until the next connection, publishes wait in the queue.
        this.established = false;
        clearTimeout(timer);
        this.stopHeartbeat();
        connection?.close();
        if (this.connection === connection) this.connection = undefined;
        this.endAttempt = undefined;
        for (const held of this.held.values()) held.acknowledged = false;
        this.failPending();
        resolve(outcome);
      };
      this.endAttempt = finish;
      const established = () => {
        clearTimeout(timer);
        this.onEstablished(transport);
      };
      const judge = (info: CloseInfo): Outcome => {
        const merged: CloseInfo = fatalErr ? { ...info, code: fatalErr.code, message: fatalErr.message } : info;
        if (fatalErr?.close && !info.closeCode) merged.closeCode = fatalErr.close;
        return this.classify(merged);
      };

      void (async () => {
        try {
          await this.ensureToken(false);
        } catch (error) {
          finish({ kind: "refused", info: { code: "token_unavailable", message: `getToken failed: ${String((error as Error)?.message ?? error)}` } });
          return;
        }
        if (settled) return;
        let subscriptions: SubscriptionSpec[] = [];
        let since: string | undefined;
        if (!transport.duplex) {
          try {
            ({ subscriptions, since } = await this.prepareOneWay());
          } catch (error) {
            const herald = error as HeraldError;
            finish(
              herald.status !== undefined
                ? this.classify({ code: herald.code, message: herald.message, closeCode: 4000 + herald.status })
                : { kind: "unreachable", info: { code: "unreachable", message: herald.message } },
            );
            return;
          }
          if (settled) return;
        }
        connection = transport.open(
          {
            baseUrl: this.url,
            token: () => this.token,
            subscriptions,
            since,
            env: this.env,
            timing: this.timing,
          },
          {
            open: () => {
              if (settled) return;
              this.lastFrame = Date.now();
              if (transport.duplex) this.greet();
              else established();
            },
            event: (event) => {
              if (settled) return;
              this.lastFrame = Date.now();
              if (event.op === "err" && event.id === undefined) {
                // Expiry on a duplex link is a warning with a grace period: refresh.
                if (event.code === "token_expired" && transport.duplex) void this.refreshToken();
                else fatalErr = event;
              }
              if (!this.established && transport.duplex) {
                // The answer to the greeting establishes the connection.
                if ((event.op === "ack" || event.op === "pong") && event.id === 0) {
                  established();
                  return;
                }
                if (event.op === "err" && event.id === 0) {
                  fatalErr = event;
                  return; // the server closes the connection next
                }
              }
              this.onEvent(event);
            },
            caughtUp: (position) => {
              if (!settled) this.onCaughtUp(position);
            },
            cursor: (position) => {
              if (!settled) this.streamCursor = position;
            },
            retry: (milliseconds) => {
              this.retryAdvice = milliseconds;
            },
            close: (info) => {
              if (settled) return;
              const outcome = judge(info);
              if (this.established && outcome.kind === "unreachable") finish({ kind: "dropped", info: outcome.info });
              else if (!this.established && outcome.kind === "dropped") finish({ kind: "unreachable", info: outcome.info });
              else finish(outcome);
            },
          },
        );
        this.connection = connection;
        if (settled) connection.close();
      })();
    });
  }

  private get connectTimeout(): number {
    return this.options.connectTimeout ?? 5_000;
  }

  /** What a close means for reconnecting. */
  private classify(info: CloseInfo): Outcome {
    const code = info.code;
    if (this.retryAdvice >= RETRY_NEVER) return { kind: "fatal", info };
    if (CREDENTIAL.has(code) || info.closeCode === 4401) {
      this.token = undefined;
      // Only a fresh token can help; without getToken there is none.
      return this.options.getToken ? { kind: "refused", info } : { kind: "fatal", info };
    }
    if (FATAL.has(code) || info.closeCode === 4400 || info.closeCode === 4403) return { kind: "fatal", info };
    if (info.closeCode !== undefined && info.closeCode >= 4000) return { kind: "refused", info };
    if (code === "unreachable" || code === "connect_timeout") return { kind: "unreachable", info };
    return { kind: "dropped", info };
  }

  /** A duplex connection's first command: `auth` with the credential, or a `ping`. Id 0 is reserved for it. */
  private greet(): void {
    if (this.token) this.connection?.send({ op: "auth", id: 0, token: this.token });
    else this.connection?.send({ op: "ping", id: 0 });
  }

  private onEstablished(transport: Transport): void {
    if (this.established) return;
    this.established = true;
    this.backoff.reset();
    this.lastGood = Math.max(0, this.transports.indexOf(transport));
    this.setState({ status: "connected", transport: transport.name });
    if (transport.duplex) {
      this.streamCursor = undefined;
      for (const held of this.held.values()) this.sendSub(held);
      this.startHeartbeat();
    } else {
      // The stream's opening ack stands for every subscription it carries.
      for (const held of this.held.values()) this.acknowledge(held, undefined);
    }
    this.flush();
  }

  private startHeartbeat(): void {
    const interval = this.options.pingInterval ?? 15_000;
    const timeout = this.options.pongTimeout ?? 10_000;
    this.stopHeartbeat();
    this.heartbeat = setInterval(() => {
      const silent = Date.now() - this.lastFrame;
      if (silent >= interval + timeout) {
        this.endAttempt?.({
          kind: "dropped",
          info: { code: "heartbeat_timeout", message: `no answer from the server for ${silent} ms` },
        });
      } else if (silent >= interval) {
        this.connection?.send({ op: "ping", id: this.nextCommandId() });
      }
    }, Math.max(50, Math.min(interval, timeout) / 2));
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  private sleep(milliseconds: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, milliseconds);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      // connect() during the wait: go now; disconnect(): stop waiting, the loop ends.
      this.wake = done;
    }).finally(() => {
      this.wake = undefined;
    });
  }

  private fail(info: CloseInfo): void {
    this.wanted = false;
    this.closed = true;
    clearTimeout(this.tokenRefresh);
    const error = new HeraldError(info.code, info.message, info.closeCode);
    for (const item of this.queue.splice(0)) item.reject(error);
    this.setState({ status: "closed", reason: { code: info.code, message: info.message } });
  }

  private setState(state: ConnectionState): void {
    const clean = Object.fromEntries(Object.entries(state).filter(([, v]) => v !== undefined)) as unknown as ConnectionState;
    this.current = clean;
    this.emit("state", clean);
  }

  private emit<K extends keyof HeraldEvents>(event: K, value: HeraldEvents[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as Listener<HeraldEvents[K]>)(value);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  // ---- tokens -----------------------------------------------------------

  private async ensureToken(force: boolean): Promise<void> {
    if (!this.options.getToken) return;
    const expiry = this.token ? tokenExpiry(this.token) : undefined;
    const stale = !this.token || (expiry !== undefined && refreshAt(Date.now() - 1, expiry) <= Date.now());
    if (!force && !stale) return;
    this.token = await this.options.getToken();
    this.scheduleRefresh();
  }

  private scheduleRefresh(): void {
    clearTimeout(this.tokenRefresh);
    const expiry = this.token ? tokenExpiry(this.token) : undefined;
    if (expiry === undefined || !this.options.getToken) return;
    const delay = Math.max(1_000, refreshAt(Date.now(), expiry) - Date.now());
    this.tokenRefresh = setTimeout(() => void this.refreshToken(), delay);
  }

  /** Fetches a new token and hands it to the live connection. */
  private async refreshToken(): Promise<void> {
    if (!this.options.getToken || this.closed) return;
    try {
      await this.ensureToken(true);
    } catch (error) {
      this.emit("error", new HeraldError("token_unavailable", `getToken failed: ${String((error as Error)?.message ?? error)}`));
      this.tokenRefresh = setTimeout(() => void this.refreshToken(), 5_000);
      return;
    }
    if (!this.established || !this.connection || !this.transport) return;
    if (this.transport.duplex) {
      this.command({ op: "refresh", id: this.nextCommandId(), token: this.token! }).catch((error: HeraldError) => {
        // A lost connection resumes with the new token anyway.
        if (error.code !== "connection_lost") this.emit("error", error);
      });
    } else if (this.transport.name === "sse") {
      // The stream carries the token it was opened with: reopen where it is.
      this.connection.resubscribe(this.specs(), this.streamCursor);
    }
  }

  // ---- subscriptions ------------------------------------------------------

  private specs(): SubscriptionSpec[] {
    return [...this.held.values()].map((held) => ({ pattern: held.pattern, presence: held.presence }));
  }

  private scheduleDrop(held: Held): void {
    clearTimeout(held.dropping);
    held.dropping = setTimeout(() => {
      if (held.handles.size > 0 || this.held.get(held.pattern) !== held) return;
      this.held.delete(held.pattern);
      if (!this.established || !this.transport) return;
      if (this.transport.duplex) {
        if (held.acknowledged) this.command({ op: "unsub", id: this.nextCommandId(), subject: held.pattern }).catch(() => {});
      } else {
        this.connection?.resubscribe(this.specs(), this.streamCursor);
      }
    }, 0);
  }

  /** A new or changed subscription reaches the server on the current connection. */
  private resend(held: Held): void {
    if (!this.established || !this.transport) return;
    if (this.transport.duplex) {
      // The server adds to a pattern it holds (presence events) without doubling it.
      this.sendSub(held);
      return;
    }
    this.oneWayChain = this.oneWayChain.then(async () => {
      if (!this.held.has(held.pattern)) return;
      try {
        await this.checkOneWay([held]);
      } catch {
        return; // refused: already reported; unreachable: the stream will fail and reconnect
      }
      if (!this.established || this.transport?.duplex || this.held.get(held.pattern) !== held) return;
      this.connection?.resubscribe(this.specs(), this.streamCursor ?? earliest(this.positions()));
      this.acknowledge(held, undefined);
    });
  }

  private sendSub(held: Held): void {
    const command: Command = { op: "sub", id: this.nextCommandId(), subject: held.pattern };
    if (held.position) command.since = held.position;
    if (held.presence) command.presence = true;
    this.command(command).then(
      (event) => this.acknowledge(held, (event as { pos?: string }).pos ?? undefined),
      (error: HeraldError) => {
        if (error.code === "connection_lost" || error.code === "closed") return; // resent on the next connection
        this.refuse(held, error);
      },
    );
  }

  private acknowledge(held: Held, position: string | undefined): void {
    if (this.held.get(held.pattern) !== held) return;
    if (position !== undefined && held.position === undefined) held.position = position;
    held.acknowledged = true;
    for (const handle of held.handles) handle.settle.resolve();
  }

  private refuse(held: Held, error: HeraldError): void {
    if (this.held.get(held.pattern) === held) this.held.delete(held.pattern);
    for (const handle of held.handles) {
      handle.settle.reject(error);
      handle.options.onError?.(error);
    }
    this.emit("error", error);
  }

  private positions(): string[] {
    return [...this.held.values()].flatMap((held) => (held.position ? [held.position] : []));
  }

  /**
   * Before a one-way stream opens: every subscription it carries must be
   * allowed (one refused pattern would refuse the whole stream), and one
   * without a position gets "now", so the shared stream's replay does not
   * hand it older messages.
   */
  private async prepareOneWay(): Promise<{ subscriptions: SubscriptionSpec[]; since: string | undefined }> {
    const unchecked = [...this.held.values()].filter((held) => !held.checked || held.position === undefined);
    if (unchecked.length > 0) await this.checkOneWay(unchecked);
    const since = this.streamCursor ?? earliest(this.positions());
    return { subscriptions: this.specs(), since };
  }

  /** Asks the long-poll endpoint for "now" (wait=0): proves permission and gives a starting position. */
  private async checkOneWay(helds: Held[]): Promise<void> {
    const now = async (patterns: string[]) =>
      (
        await requestJson<{ cursor: string }>(
          this.env.fetch!,
          "GET",
          endpoint(this.url, "poll", [...patterns.map((p): [string, string] => ["subject", p]), ["wait", "0"]]),
          { token: this.token, timeout: this.timing.requestTimeout },
        )
      ).cursor;
    const apply = (held: Held, cursor: string) => {
      held.checked = true;
      if (held.position === undefined) held.position = cursor;
    };
    try {
      const cursor = await now(helds.map((held) => held.pattern));
      for (const held of helds) apply(held, cursor);
      return;
    } catch (error) {
      const herald = error as HeraldError;
      if (herald.status === 404) {
        for (const held of helds) held.checked = true; // long polling is off on this server: the stream decides
        return;
      }
      if (herald.status !== 403 && herald.status !== 400) throw error;
    }
    // One of them is refused: find which, keep the others.
    for (const held of helds) {
      try {
        apply(held, await now([held.pattern]));
      } catch (error) {
        const herald = error as HeraldError;
        if (herald.status === 403 || herald.status === 400) this.refuse(held, herald);
        else throw error;
      }
    }
  }

  // ---- events -------------------------------------------------------------

  private onEvent(event: ServerEvent): void {
    switch (event.op) {
      case "msg":
        this.onMessage(event);
        return;
      case "gap": {
        const held = this.held.get(event.subject);
        // A gap that ends where this subscription already is says nothing new.
        if (!held || !isAfter(event.to, held.position)) return;
        const gap: Gap = { subject: event.subject, from: event.from, to: event.to, ...(event.missed !== undefined ? { missed: event.missed } : {}) };
        for (const handle of held.handles) handle.options.onGap?.(gap);
        this.emit("gap", gap);
        return;
      }
      case "ack":
        if (event.id === undefined) {
          // A one-way stream's opening ack.
          for (const held of this.held.values()) this.acknowledge(held, event.pos ?? undefined);
          return;
        }
        this.answer(event.id, event);
        return;
      case "err":
        if (event.id !== undefined) this.answer(event.id, event);
        return;
      case "pong":
      case "history":
      case "presence":
        if (event.id !== undefined) this.answer(event.id, event);
        return;
      case "mark":
        return; // the transport's own (see `caughtUp`)
    }
  }

  private onMessage(event: MsgEvent): void {
    const message = toMessage(event);
    const presence = event.subject.startsWith(PRESENCE_PREFIX) ? event.subject.slice(PRESENCE_PREFIX.length) : undefined;
    let delivered = false;
    for (const held of this.held.values()) {
      if (presence !== undefined) {
        if (!held.presence || !matches(held.pattern, presence)) continue;
      } else if (!matches(held.pattern, event.subject)) {
        continue;
      }
      if (presence === undefined) {
        // Already had it (a resume overlapping what arrived, a shared stream replaying for another subscription).
        if (!this.accept(held, event.subject, event.pos)) continue;
      }
      // Presence events are never replayed, so they do not move the resume
      // token: on WebTransport they ride another stream than the subject's
      // messages and may overtake a replay, which must not then be dropped.
      delivered = true;
      for (const handle of [...held.handles]) {
        if (presence !== undefined) {
          handle.options.onPresence?.({ ...(event.data as object), subject: presence } as PresenceChange);
        } else {
          handle.handler(message);
        }
      }
    }
    if (delivered && presence === undefined) this.emit("message", message);
  }

  /** Whether a message is new to `held`; records it. */
  private accept(held: Held, subject: string, pos: string): boolean {
    if (!isAfter(pos, held.position)) return false;
    const last = held.seen.get(subject);
    if (last !== undefined && !isAfter(pos, last)) return false;
    if (this.transport?.ordered === false) {
      held.seen.set(subject, pos);
    } else {
      held.position = pos;
      if (held.seen.size > 0) forgetReached(held);
    }
    return true;
  }

  /** An unordered transport has reported every message up to `position`. */
  private onCaughtUp(position: string): void {
    for (const held of this.held.values()) {
      // Not before the subscription's own start: the server's marks speak
      // for the whole session, and a subscription made since starts later.
      if (held.position === undefined || !isAfter(position, held.position)) continue;
      held.position = position;
      forgetReached(held);
    }
  }

  // ---- commands, publishes and reads ----------------------------------------

  private nextCommandId(): number {
    return this.nextId++;
  }

  private command(command: Command, retry?: Queued): Promise<ServerEvent> {
    return new Promise((resolve, reject) => {
      if (!this.connection || !this.established) {
        reject(new HeraldError("connection_lost", "not connected"));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(command.id);
        reject(new HeraldError("timeout", `no answer to ${command.op} within ${this.timing.requestTimeout} ms`));
      }, this.timing.requestTimeout);
      this.pending.set(command.id, { resolve, reject, timer, ...(retry ? { retry } : {}) });
      if (!this.connection.send(command)) {
        this.pending.delete(command.id);
        clearTimeout(timer);
        reject(new HeraldError("not_sent", "the connection is closing"));
      }
    });
  }

  private answer(id: number, event: ServerEvent): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (event.op === "err") pending.reject(new HeraldError(event.code, event.message));
    else pending.resolve(event);
  }

  /** The connection ended: reads are asked again later, publishes fail (they may have happened). */
  private failPending(): void {
    const lost = new HeraldError("connection_lost", "the connection closed before the server answered");
    const again: Queued[] = [];
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      if (pending.retry) again.push(pending.retry);
      else pending.reject(lost);
    }
    this.pending.clear();
    this.queue.unshift(...again);
  }

  private enqueue(item: Queued): void {
    if (this.closed) {
      item.reject(new HeraldError("closed", "the client was closed"));
      return;
    }
    if (this.queue.length >= (this.options.maxQueued ?? 100)) {
      item.reject(new HeraldError("queue_full", `${this.queue.length} publishes and reads already wait for a connection`));
      return;
    }
    this.queue.push(item);
    if (this.established) this.flush();
  }

  private flush(): void {
    if (!this.established || !this.transport) return;
    const items = this.queue.splice(0);
    if (this.transport.duplex) {
      for (const item of items) this.sendDuplex(item);
    } else {
      // One at a time, in order: a publish over HTTP after the one before.
      for (const item of items) {
        this.oneWayChain = this.oneWayChain.then(() => this.sendHttp(item));
      }
    }
  }

  private sendDuplex(item: Queued): void {
    const id = this.nextCommandId();
    switch (item.kind) {
      case "pub": {
        const command: Command = { op: "pub", id, subject: item.subject, data: item.data };
        if (item.options.echo === false) command.echo = false;
        if (item.options.headers) command.headers = item.options.headers;
        this.command(command).then(
          (event) => item.resolve((event as { pos?: string | null }).pos ?? null),
          (error: HeraldError) => this.retryOrReject(item, error),
        );
        return;
      }
      case "history": {
        const command: Command = { op: "history", id, subject: item.pattern };
        if (item.options.since) command.since = item.options.since;
        if (item.options.limit !== undefined) command.limit = item.options.limit;
        this.command(command, item).then(
          (event) => item.resolve(historyPage(event as HistoryEvent)),
          (error: HeraldError) => this.retryOrReject(item, error),
        );
        return;
      }
      case "presence":
        this.command({ op: "presence", id, subject: item.subject }, item).then(
          (event) => item.resolve(presenceSnapshot(event as PresenceEvent)),
          (error: HeraldError) => this.retryOrReject(item, error),
        );
        return;
    }
  }

  /** Certainly not sent (the link was closing): it waits for the next connection, in order. */
  private retryOrReject(item: Queued, error: HeraldError): void {
    if (error.code === "not_sent" && !this.closed) {
      this.queue.push(item);
    } else {
      item.reject(error);
    }
  }

  private async sendHttp(item: Queued, retried = false): Promise<void> {
    const fetchImpl = this.env.fetch!;
    const options = { token: this.token, timeout: this.timing.requestTimeout };
    try {
      switch (item.kind) {
        case "pub": {
          const body: Record<string, unknown> = { subject: item.subject, data: item.data };
          if (item.options.headers) body.headers = item.options.headers;
          const answer = await requestJson<{ pos: string | null }>(fetchImpl, "POST", endpoint(this.url, "v1/publish"), { ...options, body });
          item.resolve(answer.pos ?? null);
          return;
        }
        case "history": {
          const query: [string, string][] = [["subject", item.pattern]];
          if (item.options.since) query.push(["since", item.options.since]);
          if (item.options.limit !== undefined) query.push(["limit", String(item.options.limit)]);
          item.resolve(historyPage(await requestJson<HistoryEvent>(fetchImpl, "GET", endpoint(this.url, "v1/history", query), options)));
          return;
        }
        case "presence":
          item.resolve(
            presenceSnapshot(
              await requestJson<PresenceEvent>(fetchImpl, "GET", endpoint(this.url, "v1/presence", [["subject", item.subject]]), options),
            ),
          );
          return;
      }
    } catch (error) {
      const herald = error as HeraldError;
      // Refused for the credential: not published, so a fresh token may try once more.
      if (!retried && herald.status === 401 && this.options.getToken) {
        try {
          await this.ensureToken(true);
          return await this.sendHttp(item, true);
        } catch {
          // fall through to the original error
        }
      }
      if (item.kind !== "pub" && herald.code === "connection_lost" && !this.closed) {
        this.queue.unshift(item); // a read: ask again on the next connection
        return;
      }
      item.reject(herald);
    }
  }
}

function toMessage(event: MsgEvent): Message {
  return {
    subject: event.subject,
    pos: event.pos,
    ts: event.ts,
    data: event.data,
    ...(event.data_base64 !== undefined ? { dataBase64: event.data_base64 } : {}),
    ...(event.headers ? { headers: event.headers } : {}),
    ...(event.reply ? { reply: event.reply } : {}),
  };
}

function historyPage(event: HistoryEvent): HistoryPage {
  return { messages: event.messages.map(toMessage), ...(event.gap ? { gap: event.gap } : {}) };
}

function presenceSnapshot(event: PresenceEvent): PresenceSnapshot {
  return { subject: event.subject, count: event.count, members: event.members, truncated: event.truncated };
}

/** Forgets the subjects' positions `held.position` has passed. */
function forgetReached(held: Held): void {
  for (const [subject, pos] of held.seen) if (!isAfter(pos, held.position)) held.seen.delete(subject);
}

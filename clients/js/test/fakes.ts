// Fake transports: a test plays the server, sees every command the client
// sends and every stream it opens, and pushes events or ends connections.

import type {
  CloseInfo,
  Command,
  Connection,
  ConnectionContext,
  ConnectionEvents,
  ServerEvent,
  SubscriptionSpec,
  Transport,
  TransportName,
} from "../src/index.js";

export class FakeConnection {
  readonly sent: Command[] = [];
  readonly streams: { subscriptions: SubscriptionSpec[]; since: string | undefined }[] = [];
  closedByClient = false;
  ended = false;
  constructor(
    readonly context: ConnectionContext,
    readonly events: ConnectionEvents,
  ) {
    this.streams.push({ subscriptions: context.subscriptions, since: context.since });
  }
  open(): void {
    this.events.open();
  }
  push(event: ServerEvent): void {
    if (!this.ended) this.events.event(event);
  }
  /** As an unordered transport reports: every message up to `position` arrived. */
  caughtUp(position: string): void {
    if (!this.ended) this.events.caughtUp(position);
  }
  end(info: CloseInfo): void {
    if (this.ended) return;
    this.ended = true;
    this.events.close(info);
  }
  commands(op: string): Command[] {
    return this.sent.filter((command) => command.op === op);
  }
}

export type Behaviour = (connection: FakeConnection) => void;

/**
 * A transport whose connections the test drives. `behaviour` runs when the
 * client opens one (answer at once, refuse, never answer...); a duplex one
 * answers the greeting by default.
 */
export class FakeTransport implements Transport {
  readonly connections: FakeConnection[] = [];
  /** False to stand in for WebTransport (ordered per subject only). */
  ordered = true;
  onCommand: (connection: FakeConnection, command: Command) => void = () => {};
  constructor(
    readonly name: TransportName,
    readonly duplex: boolean,
    public behaviour: Behaviour = (connection) => connection.open(),
  ) {}
  available(): boolean {
    return true;
  }
  open(context: ConnectionContext, events: ConnectionEvents): Connection {
    const fake = new FakeConnection(context, events);
    this.connections.push(fake);
    queueMicrotask(() => this.behaviour(fake));
    return {
      send: (command) => {
        if (fake.ended) return false;
        fake.sent.push(command);
        if (command.op === "auth" || (command.op === "ping" && command.id === 0)) {
          fake.push(command.op === "auth" ? { op: "ack", id: command.id } : { op: "pong", id: command.id });
          return true;
        }
        this.onCommand(fake, command);
        return true;
      },
      resubscribe: (subscriptions, since) => {
        fake.streams.push({ subscriptions, since });
      },
      close: () => {
        fake.closedByClient = true;
        fake.ended = true;
      },
    };
  }
  get last(): FakeConnection {
    const last = this.connections.at(-1);
    if (!last) throw new Error(`${this.name}: no connection opened`);
    return last;
  }
}

/** Answers `sub` with an ack at `pos` (or the since it was given) and `pub` with consecutive positions. */
export function ackEverything(transport: FakeTransport, positions: () => string): void {
  transport.onCommand = (connection, command) => {
    if (command.op === "sub") connection.push({ op: "ack", id: command.id, pos: command.since ?? positions() });
    else if (command.op === "pub") connection.push({ op: "ack", id: command.id, pos: positions() });
    else if (command.op === "unsub" || command.op === "refresh") connection.push({ op: "ack", id: command.id });
    else if (command.op === "ping") connection.push({ op: "pong", id: command.id });
  };
}

/** A position token of epoch 7 and this sequence (as the server writes them). */
export function pos(sequence: number, epoch = 7): string {
  const bytes = new Uint8Array(12);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, epoch);
  view.setBigUint64(4, BigInt(sequence));
  return Buffer.from(bytes).toString("base64url");
}

export async function eventually(check: () => boolean, what: string, timeout = 2_000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A fetch that answers the one-way transports' probes (`/poll?wait=0`) and publishes. */
export function fakeFetch(answer: (url: URL, init: RequestInit | undefined) => { status?: number; body: unknown }): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(typeof input === "string" ? input : input instanceof URL ? input.href : input.url);
    const { status = 200, body } = answer(url, init);
    return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
  }) as typeof fetch;
}

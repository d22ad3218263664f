// The hooks under server rendering and React's strict mode, with a client on
// a fake transport that counts what reaches the "server".

import assert from "node:assert/strict";
import { test } from "node:test";
import { act, StrictMode, useEffect } from "react";
import { renderToString } from "react-dom/server";
import TestRenderer from "react-test-renderer";

import { Herald, type Command, type Connection, type Transport } from "@herald-broker/client";
import { HeraldProvider, useConnectionState, usePresence, usePublish, useSubject } from "../src/index.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

const POS = (n: number) => Buffer.from(new Uint8Array([0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, n])).toString("base64url");

/** A duplex transport that acknowledges everything and records every command and connection. */
function recordingTransport() {
  const commands: Command[] = [];
  let connections = 0;
  const pushers: ((event: unknown) => void)[] = [];
  const transport: Transport = {
    name: "websocket",
    duplex: true,
    ordered: true,
    available: () => true,
    open(_context, events): Connection {
      connections++;
      let ended = false;
      queueMicrotask(() => events.open());
      const push = (event: unknown) => !ended && events.event(event as never);
      pushers.push(push);
      return {
        send(command) {
          commands.push(command);
          if (command.op === "auth" || command.op === "sub" || command.op === "unsub") push({ op: "ack", id: command.id, pos: POS(1) });
          else if (command.op === "ping") push({ op: "pong", id: command.id });
          else if (command.op === "presence")
            push({ op: "presence", id: command.id, subject: command.subject, count: 1, members: [{ user: "alice" }], truncated: false });
          else if (command.op === "pub") push({ op: "ack", id: command.id, pos: POS(2) });
          return !ended;
        },
        resubscribe() {},
        close() {
          ended = true;
        },
      };
    },
  };
  return {
    transport,
    commands,
    connections: () => connections,
    push: (event: unknown) => pushers.at(-1)?.(event),
  };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 20));

function Chat({ onRender }: { onRender: (text: string) => void }) {
  const { messages, ready } = useSubject("chat.room1");
  const presence = usePresence("chat.room1");
  const state = useConnectionState();
  const publish = usePublish();
  useEffect(() => {
    if (ready) void publish("chat.room1", { text: "hi" });
  }, [ready, publish]);
  const text = `${state.status}|${messages.map((m) => JSON.stringify(m.data)).join(",")}|${presence.members.map((m) => m.user).join(",")}`;
  onRender(text);
  return <p>{text}</p>;
}

test("server rendering: no client, no connection, the connecting state", () => {
  const html = renderToString(
    <HeraldProvider url="http://herald.test" options={{ transports: ["websocket"] }}>
      <Chat onRender={() => {}} />
    </HeraldProvider>,
  );
  assert.match(html, /connecting\|\|/);
});

test("strict mode: one client, one connection, one subscription per pattern", async () => {
  const fake = recordingTransport();
  const texts: string[] = [];
  let renderer!: TestRenderer.ReactTestRenderer;
  const tree = (show: boolean) => (
    <StrictMode>
      <HeraldProvider
        url="http://herald.test"
        options={{ transports: ["websocket"], transportImplementations: { websocket: fake.transport } }}
      >
        {show ? <Chat onRender={(text) => texts.push(text)} /> : null}
      </HeraldProvider>
    </StrictMode>
  );
  // Connected first, so the strict remount happens on a live connection.
  await act(async () => {
    renderer = TestRenderer.create(tree(false));
    await tick();
  });
  await act(async () => {
    renderer.update(tree(true));
    await tick();
  });
  await act(async () => {
    fake.push({ op: "msg", subject: "chat.room1", pos: POS(3), ts: 1, data: { text: "hello" } });
    await tick();
  });
  try {
    assert.equal(fake.connections(), 1, "one connection");
    const subs = fake.commands.filter((c) => c.op === "sub");
    const unsubs = fake.commands.filter((c) => c.op === "unsub");
    // useSubject and usePresence share the pattern: at most a plain sub then
    // the same pattern with presence (the server adds the presence events to
    // the pattern it holds); strict mode's remount adds nothing.
    assert.ok(subs.length >= 1 && subs.length <= 2, `subs: ${JSON.stringify(subs)}`);
    assert.equal(unsubs.length, 0, "nothing unsubscribed");
    assert.equal((subs.at(-1) as { presence?: boolean }).presence, true);
    assert.equal(fake.commands.filter((c) => c.op === "pub").length, 1, "the effect's publish, once");
    assert.match(texts.at(-1)!, /^connected\|\{"text":"hello"\}\|alice$/);
  } finally {
    await act(async () => {
      renderer.unmount();
      await tick();
    });
  }
  assert.equal(fake.connections(), 1);
});

test("a client passed in is used as is and not closed by the provider", async () => {
  const fake = recordingTransport();
  const herald = new Herald("http://herald.test", { transports: ["websocket"], transportImplementations: { websocket: fake.transport } });
  let renderer!: TestRenderer.ReactTestRenderer;
  await act(async () => {
    renderer = TestRenderer.create(
      <HeraldProvider url="ignored" client={herald}>
        <Chat onRender={() => {}} />
      </HeraldProvider>,
    );
    await tick();
  });
  await act(async () => {
    renderer.unmount();
    await tick();
  });
  assert.notEqual(herald.state.status, "closed");
  herald.close();
});

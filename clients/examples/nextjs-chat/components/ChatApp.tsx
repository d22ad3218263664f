"use client";

import { useCallback, useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import {
  HeraldProvider,
  useConnectionState,
  usePresence,
  usePublish,
  useSubject,
  type Message,
} from "@herald-broker/react";
import type { TransportName } from "@herald-broker/client";

interface Props {
  heraldUrl: string;
  user: { id: string; name: string; rooms: string[] };
  rooms: string[];
  people: { id: string; name: string }[];
  transports?: TransportName[] | undefined;
}

interface ChatMessage {
  id: string;
  user: string;
  name: string;
  text: string;
}

async function getToken(): Promise<string> {
  const response = await fetch("/api/herald-token", { cache: "no-store" });
  if (!response.ok) throw new Error(`token: ${response.status} ${await response.text()}`);
  return response.text();
}

export function ChatApp({ heraldUrl, user, rooms, people, transports }: Props) {
  const options = useMemo(() => ({ getToken, ...(transports ? { transports } : {}) }), [transports]);
  return (
    <HeraldProvider url={heraldUrl} options={options}>
      <Chat user={user} rooms={rooms} people={people} />
    </HeraldProvider>
  );
}

function Chat({ user, rooms, people }: Omit<Props, "heraldUrl" | "transports">) {
  const [room, setRoom] = useState(user.rooms[0] ?? rooms[0]!);
  return (
    <div className="chat">
      <header>
        <h1>Herald chat</h1>
        <ConnectionBadge />
        <span className="me">
          Signed in as <strong data-testid="me">{user.name}</strong>
        </span>
        <form action="/api/signout" method="post">
          <button type="submit">Sign out</button>
        </form>
      </header>
      <ReconnectBanner />
      <nav>
        <h2>Rooms</h2>
        {rooms.map((name) => (
          <button
            key={name}
            className={name === room ? "room active" : "room"}
            data-testid={`room-${name}`}
            onClick={() => setRoom(name)}
          >
            #{name}
            {user.rooms.includes(name) ? null : <span className="locked" title="not one of your rooms">no access</span>}
          </button>
        ))}
      </nav>
      <Room key={room} room={room} user={user} people={people} />
      <Notifications user={user} />
    </div>
  );
}

function ConnectionBadge() {
  const state = useConnectionState();
  return (
    <span className={`badge ${state.status}`} data-testid="connection" data-status={state.status} data-transport={state.transport ?? ""}>
      {state.status}
      {state.transport ? ` · ${state.transport}` : ""}
    </span>
  );
}

function ReconnectBanner() {
  const state = useConnectionState();
  const [wasConnected, setWasConnected] = useState(false);
  const [now, setNow] = useState(() => Date.now());
  const [since, setSince] = useState(() => Date.now());
  useEffect(() => {
    if (state.status === "connected") setWasConnected(true);
    setSince(Date.now());
    setNow(Date.now());
    if (state.status !== "disconnected") return;
    const timer = setInterval(() => setNow(Date.now()), 500);
    return () => clearInterval(timer);
  }, [state]);
  // The first connection is not a reconnection: no banner for it.
  if (state.status === "connected" || (!wasConnected && state.status === "connecting")) return null;
  const retry = state.status === "disconnected" && state.retryIn !== undefined ? Math.max(0, Math.ceil((state.retryIn - (now - since)) / 1000)) : null;
  return (
    <div className={`banner ${state.status}`} role="status" data-testid="banner">
      {state.status === "closed"
        ? `Disconnected: ${state.reason?.message ?? "closed"}. Reload the page to try again.`
        : `Reconnecting${state.status === "connecting" ? ` (trying ${state.transport})` : retry !== null ? ` in ${retry} s` : ""}…${state.reason ? ` Last error: ${state.reason.code}.` : ""} Messages you send now are sent when the connection is back.`}
    </div>
  );
}

type Outgoing = { key: string; text: string; status: "sending" | "sent" | "failed"; error?: string };

function Room({ room, user, people }: { room: string; user: Props["user"]; people: Props["people"] }) {
  const subject = `chat.${room}`;
  const allowed = user.rooms.includes(room);
  const { messages, error } = useSubject(subject, { history: 50, keep: 500 });
  const presence = usePresence(allowed ? subject : null);
  const typing = useTyping(room, user);
  const publish = usePublish();
  const [draft, setDraft] = useState("");
  const [outgoing, setOutgoing] = useState<Outgoing[]>([]);
  const list = useRef<HTMLOListElement>(null);

  useEffect(() => {
    list.current?.lastElementChild?.scrollIntoView({ block: "end" });
  }, [messages.length]);

  const send = async (event: FormEvent) => {
    event.preventDefault();
    const text = draft.trim();
    if (!text) return;
    setDraft("");
    const key = crypto.randomUUID();
    setOutgoing((o) => [...o, { key, text, status: "sending" }]);
    const update = (patch: Partial<Outgoing>) => setOutgoing((o) => o.map((m) => (m.key === key ? { ...m, ...patch } : m)));
    try {
      await publish(subject, { id: key, user: user.id, name: user.name, text } satisfies ChatMessage);
      update({ status: "sent" });
      for (const mention of text.matchAll(/@(\w+)/g)) {
        const to = people.find((p) => p.id === mention[1]?.toLowerCase());
        if (to && to.id !== user.id) {
          void fetch("/api/notify", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ to: to.id, room, text }),
          });
        }
      }
    } catch (failure) {
      const { code, message } = failure as { code?: string; message?: string };
      update({ status: "failed", error: `${code ?? "error"}: ${message ?? String(failure)}` });
    }
  };

  if (error) {
    return (
      <main className="room-view">
        <h2>#{room}</h2>
        <p className="refused" data-testid="room-error">
          You can’t join #{room}: {error.message} ({error.code})
        </p>
      </main>
    );
  }
  const received = new Set(messages.map((m) => (m.data as ChatMessage | null)?.id));
  return (
    <>
      <main className="room-view">
        <h2>#{room}</h2>
        <ol className="messages" ref={list}>
          {messages.map((message) => (
            <MessageLine key={message.pos} message={message} mine={(message.data as ChatMessage | null)?.user === user.id} />
          ))}
          {outgoing
            .filter((m) => m.status !== "sent" || !received.has(m.key))
            .map((m) => (
              <li key={m.key} className={`mine ${m.status}`} data-testid="outgoing" data-status={m.status}>
                <strong>{user.name}</strong> {m.text}
                <em>{m.status === "failed" ? ` not sent: ${m.error}` : m.status === "sending" ? " sending…" : ""}</em>
              </li>
            ))}
        </ol>
        <p className="typing" data-testid="typing">
          {typing.others.length > 0 ? `${typing.others.join(", ")} ${typing.others.length > 1 ? "are" : "is"} typing…` : " "}
        </p>
        <form onSubmit={send} className="composer">
          <input
            data-testid="draft"
            value={draft}
            placeholder={`Message #${room} (mention with @bob)`}
            onChange={(e) => {
              setDraft(e.target.value);
              typing.announce();
            }}
          />
          <button type="submit">Send</button>
        </form>
      </main>
      <aside className="presence">
        <h2>Here now ({presence.count})</h2>
        <ul>
          {presence.members.map((member) => (
            <li key={member.user} data-testid="member">
              {(member.info as { name?: string } | undefined)?.name ?? member.user}
            </li>
          ))}
        </ul>
      </aside>
    </>
  );
}

function MessageLine({ message, mine }: { message: Message; mine: boolean }) {
  const data = message.data as ChatMessage | null;
  return (
    <li
      className={mine ? "mine" : ""}
      data-testid="message"
      data-id={data?.id}
      data-pos={message.pos}
      data-line={`${data?.name ?? "?"} ${data?.text ?? ""}`}
    >
      <strong>{data?.name ?? "?"}</strong> {data?.text ?? JSON.stringify(message.data)}
      <time>{new Date(message.ts).toLocaleTimeString()}</time>
    </li>
  );
}

/** Typing indicators: ephemeral messages (history_size = 0), at most one every 2 s while typing, shown for 4 s. */
function useTyping(room: string, user: Props["user"]) {
  const subject = `chat.${room}.typing`;
  const publish = usePublish();
  const [seen, setSeen] = useState<Record<string, { name: string; at: number }>>({});
  const [, setTick] = useState(0);
  const last = useRef(0);
  useSubject(user.rooms.includes(room) ? subject : null, {
    keep: 1,
    onMessage: (message) => {
      const data = message.data as { user?: string; name?: string } | null;
      // echo: false keeps our own off WebSocket; SSE and polling publish over HTTP and get them back.
      if (!data?.user || data.user === user.id) return;
      setSeen((s) => ({ ...s, [data.user!]: { name: data.name ?? data.user!, at: Date.now() } }));
    },
  });
  useEffect(() => {
    const timer = setInterval(() => setTick((t) => t + 1), 1_000);
    return () => clearInterval(timer);
  }, []);
  const announce = useCallback(() => {
    if (!user.rooms.includes(room) || Date.now() - last.current < 2_000) return;
    last.current = Date.now();
    publish(subject, { user: user.id, name: user.name }, { echo: false }).catch(() => {});
  }, [publish, room, subject, user]);
  const others = Object.values(seen)
    .filter((entry) => Date.now() - entry.at < 4_000)
    .map((entry) => entry.name);
  return { others, announce };
}

function Notifications({ user }: { user: Props["user"] }) {
  const { messages } = useSubject(`user.${user.id}.>`, { keep: 20 });
  return (
    <aside className="notifications">
      <h2>Notifications</h2>
      <ul>
        {messages.map((message) => {
          const data = message.data as { from?: string; room?: string; text?: string };
          return (
            <li key={message.pos} data-testid="notification">
              <strong>{data.from}</strong> mentioned you in #{data.room}: {data.text}
            </li>
          );
        })}
      </ul>
    </aside>
  );
}

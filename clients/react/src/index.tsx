"use client";
/**
 * React hooks for Herald: one client per `HeraldProvider`, created in the
 * browser only (server rendering gets none and renders the "connecting"
 * state), and subscriptions that React's strict mode cannot double: the
 * client defers an unsubscribe by a tick, so the mount, unmount, mount of
 * strict mode reuses one server subscription.
 */

import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import {
  Herald,
  HeraldError,
  type ConnectionState,
  type Gap,
  type HeraldOptions,
  type Message,
  type PresenceMember,
  type PublishOptions,
} from "@herald-broker/client";

const HeraldContext = createContext<Herald | null>(null);

export interface HeraldProviderProps {
  /** The server's HTTP base URL, e.g. `https://herald.example`. */
  url: string;
  /** Client options; read once, when the client is created. */
  options?: Omit<HeraldOptions, "autoConnect">;
  /** Or a client made elsewhere (the provider then neither connects nor closes it). */
  client?: Herald;
  children?: ReactNode;
}

export function HeraldProvider({ url, options, client, children }: HeraldProviderProps) {
  const [own, setOwn] = useState<Herald | null>(null);
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const held = useRef<{ herald: Herald; url: string; closing?: ReturnType<typeof setTimeout> } | null>(null);
  useEffect(() => {
    if (client) return;
    let mine = held.current;
    if (mine && mine.url === url && mine.closing !== undefined) {
      // Strict mode's immediate remount: keep the client (and its connection).
      clearTimeout(mine.closing);
      mine.closing = undefined;
    } else {
      mine = { herald: new Herald(url, { ...optionsRef.current, autoConnect: true }), url };
      held.current = mine;
    }
    const current = mine;
    setOwn(current.herald);
    return () => {
      current.closing = setTimeout(() => {
        current.herald.close();
        if (held.current === current) held.current = null;
      }, 0);
    };
  }, [url, client]);
  return <HeraldContext.Provider value={client ?? own}>{children}</HeraldContext.Provider>;
}

/** The provider's client; null during server rendering and before the first effect. */
export function useHerald(): Herald | null {
  return useContext(HeraldContext);
}

const CONNECTING: ConnectionState = { status: "connecting" };

/** The connection's state, for a "reconnecting…" banner. */
export function useConnectionState(): ConnectionState {
  const herald = useHerald();
  const subscribe = useCallback((notify: () => void) => (herald ? herald.on("state", notify) : () => {}), [herald]);
  return useSyncExternalStore(
    subscribe,
    () => herald?.state ?? CONNECTING,
    () => CONNECTING,
  );
}

export interface UseSubjectOptions {
  /** How many of the newest messages to keep (default 100). */
  keep?: number;
  /** Called for every message, before the state updates. */
  onMessage?: (message: Message) => void;
  /** Start after this position (replay what came since). */
  since?: string;
  /** Fill the list with up to this many retained messages first (default 0). */
  history?: number;
}

export interface SubjectState {
  messages: Message[];
  /** The subscription was refused (`forbidden`, ...). */
  error: HeraldError | null;
  /** Set when the server announced messages that did not arrive. */
  gap: Gap | null;
  ready: boolean;
}

/** Subscribes while mounted: the newest `keep` messages, and why it failed. */
export function useSubject(pattern: string | null, options: UseSubjectOptions = {}): SubjectState {
  const herald = useHerald();
  const [state, setState] = useState<SubjectState>({ messages: [], error: null, gap: null, ready: false });
  const onMessage = useRef(options.onMessage);
  onMessage.current = options.onMessage;
  const keep = options.keep ?? 100;
  const { since, history = 0 } = options;
  useEffect(() => {
    setState({ messages: [], error: null, gap: null, ready: false });
    if (!herald || !pattern) return;
    let live = true;
    const seen = new Set<string>();
    const add = (incoming: Message[]) => {
      const fresh = incoming.filter((m) => !seen.has(m.pos));
      if (fresh.length === 0) return;
      for (const m of fresh) seen.add(m.pos);
      setState((s) => ({ ...s, messages: [...s.messages, ...fresh].slice(-keep) }));
    };
    const subscription = herald.subscribe(
      pattern,
      (message) => {
        onMessage.current?.(message);
        if (live) add([message]);
      },
      {
        ...(since ? { since } : {}),
        onGap: (gap) => live && setState((s) => ({ ...s, gap })),
        onError: (error) => live && setState((s) => ({ ...s, error })),
      },
    );
    subscription.ready.then(
      () => live && setState((s) => ({ ...s, ready: true })),
      () => {},
    );
    if (history > 0 && !since) {
      herald.history(pattern, { limit: history }).then(
        (page) => {
          if (!live) return;
          // Retained messages go before what arrived live meanwhile.
          const older = page.messages.filter((m) => !seen.has(m.pos));
          for (const m of older) seen.add(m.pos);
          setState((s) => ({ ...s, messages: [...older, ...s.messages].slice(-keep) }));
        },
        () => {},
      );
    }
    return () => {
      live = false;
      subscription.unsubscribe();
    };
  }, [herald, pattern, keep, since, history]);
  return state;
}

export interface PresenceState {
  members: PresenceMember[];
  count: number;
  error: HeraldError | null;
}

/**
 * Who is in a presence-tracked subject: read once it is subscribed, kept up
 * to date from join and leave events, and read again after every reconnect
 * (and every 10 s on long polling, which carries no presence events).
 */
export function usePresence(subject: string | null): PresenceState {
  const herald = useHerald();
  const [state, setState] = useState<PresenceState>({ members: [], count: 0, error: null });
  useEffect(() => {
    setState({ members: [], count: 0, error: null });
    if (!herald || !subject) return;
    let live = true;
    const read = () =>
      herald.presence(subject).then(
        (snapshot) => live && setState({ members: snapshot.members, count: snapshot.count, error: null }),
        (error: HeraldError) => live && setState((s) => ({ ...s, error })),
      );
    const subscription = herald.subscribe(subject, () => {}, {
      presence: true,
      onPresence: (change) => {
        if (!live) return;
        setState((s) => {
          if (change.action === "count") return { ...s, count: change.count };
          const others = s.members.filter((m) => m.user !== change.user);
          const members =
            change.action === "join"
              ? [...others, { user: change.user, ...(change.info !== undefined ? { info: change.info } : {}) }].sort((a, b) =>
                  a.user.localeCompare(b.user),
                )
              : others;
          return { ...s, members, count: change.count };
        });
      },
      onError: (error) => live && setState((s) => ({ ...s, error })),
    });
    subscription.ready.then(() => live && read(), () => {});
    let poll: ReturnType<typeof setInterval> | undefined;
    const off = herald.on("state", (connection) => {
      clearInterval(poll);
      if (connection.status !== "connected") return;
      void read();
      if (connection.transport === "longpoll") poll = setInterval(() => void read(), 10_000);
    });
    return () => {
      live = false;
      off();
      clearInterval(poll);
      subscription.unsubscribe();
    };
  }, [herald, subject]);
  return state;
}

/** A stable publish function; it waits for the provider's client and for a connection. */
export function usePublish(): (subject: string, data: unknown, options?: PublishOptions) => Promise<string | null> {
  const herald = useHerald();
  const ref = useRef(herald);
  ref.current = herald;
  return useCallback((subject, data, options) => {
    const client = ref.current;
    if (!client) return Promise.reject(new HeraldError("closed", "no Herald client yet (server rendering, or before the provider mounted)"));
    return client.publish(subject, data, options);
  }, []);
}

export type { ConnectionState, Message, Gap, PresenceMember } from "@herald-broker/client";

// The chat, rendered on the server with the signed-in user; everything live
// happens in the client component.

import { redirect } from "next/navigation";
import { ChatApp } from "../../components/ChatApp";
import { config } from "../../lib/config";
import { currentUser } from "../../lib/session";
import { ROOMS, USERS } from "../../lib/users";

export const dynamic = "force-dynamic";

const TRANSPORTS = ["websocket", "webtransport", "sse", "longpoll"] as const;
type TransportName = (typeof TRANSPORTS)[number];

export default async function ChatPage({ searchParams }: { searchParams: Promise<{ transport?: string }> }) {
  const user = await currentUser();
  if (!user) redirect("/");
  // `?transport=sse` (or a comma-separated list) pins the transports, to try each one.
  const asked = (await searchParams).transport?.split(",") ?? [];
  const transports = asked.filter((name): name is TransportName => (TRANSPORTS as readonly string[]).includes(name));
  return (
    <ChatApp
      heraldUrl={config.heraldUrl}
      user={{ id: user.id, name: user.name, rooms: user.rooms }}
      rooms={[...ROOMS]}
      people={USERS.map(({ id, name }) => ({ id, name }))}
      transports={transports.length > 0 ? transports : undefined}
    />
  );
}

// Notifications are written by the server only (`client_publish = false`
// for user.*.notifications): a signed-in user who mentions someone asks this
// route, which publishes with the app's API key.

import { config } from "../../../lib/config";
import { currentUser } from "../../../lib/session";
import { findUser } from "../../../lib/users";

export async function POST(request: Request) {
  const sender = await currentUser();
  if (!sender) return Response.json({ error: "sign in first" }, { status: 401 });
  const { to, room, text } = (await request.json()) as { to?: string; room?: string; text?: string };
  const recipient = findUser(to);
  if (!recipient || typeof room !== "string" || typeof text !== "string") {
    return Response.json({ error: "to, room and text are required" }, { status: 400 });
  }
  if (!sender.rooms.includes(room)) return Response.json({ error: "not your room" }, { status: 403 });
  const published = await fetch(new URL("/v1/publish", config.heraldInternalUrl), {
    method: "POST",
    headers: { authorization: `Bearer ${config.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({
      subject: `user.${recipient.id}.notifications`,
      data: { from: sender.name, room, text: text.slice(0, 200) },
    }),
  });
  return Response.json(await published.json(), { status: published.status });
}

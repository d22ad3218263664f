// Mints the signed-in user's Herald token; the client calls it before
// connecting and again before the token expires.

import { currentUser } from "../../../lib/session";
import { heraldToken } from "../../../lib/token";

export const dynamic = "force-dynamic";

export async function GET() {
  const user = await currentUser();
  if (!user) return new Response("sign in first", { status: 401 });
  return new Response(heraldToken(user), {
    headers: { "content-type": "text/plain", "cache-control": "no-store" },
  });
}

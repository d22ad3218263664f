// A Herald user token (HS256 JWT) with exactly this user's permissions:
// their own notifications, and the rooms they may join (messages and
// typing). Herald checks every subscribe and publish against it.

import { createHmac } from "node:crypto";
import { config } from "./config";
import type { User } from "./users";

export function heraldToken(user: User, now = Math.floor(Date.now() / 1000)): string {
  const rooms = user.rooms.flatMap((room) => [`chat.${room}`, `chat.${room}.typing`]);
  const claims = {
    sub: user.id,
    iat: now,
    exp: now + config.tokenSeconds,
    herald: {
      sub: { allow: ["user.{sub}.>", ...rooms] },
      pub: { allow: rooms },
      info: { name: user.name },
    },
  };
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  const signature = createHmac("sha256", config.jwtSecret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

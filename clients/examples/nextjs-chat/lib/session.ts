// The sign-in stub: the user's id in a cookie. A real application has its
// own sessions; only `currentUser()` matters to the rest of the example.

import { cookies } from "next/headers";
import { findUser, type User } from "./users";

export const SESSION_COOKIE = "chat_user";

export async function currentUser(): Promise<User | undefined> {
  return findUser((await cookies()).get(SESSION_COOKIE)?.value);
}

// The sign-in stub: pick a user. The app's real sign-in goes here.

import { redirect } from "next/navigation";
import { currentUser } from "../lib/session";
import { USERS } from "../lib/users";

export default async function SignIn() {
  if (await currentUser()) redirect("/chat");
  return (
    <main className="signin">
      <h1>Herald chat</h1>
      <p>Sign in as one of the example users. Each may join only their rooms.</p>
      <form action="/api/signin" method="post">
        {USERS.map((user) => (
          <button key={user.id} name="user" value={user.id} type="submit">
            {user.name} <small>({user.rooms.map((room) => `#${room}`).join(" ")})</small>
          </button>
        ))}
      </form>
    </main>
  );
}

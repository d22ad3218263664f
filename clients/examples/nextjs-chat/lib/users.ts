// The example's users and rooms: a stand-in for the application's own
// accounts. Each user may join only their rooms; the token says so.

export interface User {
  id: string;
  name: string;
  rooms: string[];
}

export const ROOMS = ["general", "random", "staff"] as const;

export const USERS: User[] = [
  { id: "alice", name: "Alice", rooms: ["general", "random", "staff"] },
  { id: "bob", name: "Bob", rooms: ["general", "random"] },
  { id: "carol", name: "Carol", rooms: ["general"] },
];

export function findUser(id: string | undefined): User | undefined {
  return USERS.find((user) => user.id === id);
}

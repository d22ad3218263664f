import { NextResponse } from "next/server";
import { SESSION_COOKIE } from "../../../lib/session";
import { findUser } from "../../../lib/users";

export async function POST(request: Request) {
  const form = await request.formData();
  const user = findUser(String(form.get("user") ?? ""));
  if (!user) return NextResponse.json({ error: "unknown user" }, { status: 400 });
  // A relative location: the browser stays on the host it asked (the server may know itself by another name).
  const response = new NextResponse(null, { status: 303, headers: { location: "/chat" } });
  response.cookies.set(SESSION_COOKIE, user.id, { httpOnly: true, sameSite: "lax", path: "/" });
  return response;
}

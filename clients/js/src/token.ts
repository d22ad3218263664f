// When a user token expires: read from its `exp` claim (no signature check;
// the server does that), so the client can fetch a new one before it does.

export function tokenExpiry(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined; // an API key, or not a JWT
  try {
    const json = decodeBase64Url(parts[1]!);
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

function decodeBase64Url(text: string): string {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * When to refresh a token valid until `expiresAt`, obtained at `now`: a fifth
 * of its life before the end, at least 5 s and at most 60 s before it.
 */
export function refreshAt(now: number, expiresAt: number): number {
  const life = Math.max(0, expiresAt - now);
  const margin = Math.min(60_000, Math.max(5_000, life / 5));
  return Math.max(now, expiresAt - margin);
}

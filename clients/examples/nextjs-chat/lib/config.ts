// Where Herald is and the secrets shared with it; the defaults match
// herald.toml, so `npm run dev` beside `herald serve --config herald.toml`
// needs nothing else.

export const config = {
  /** Herald's URL as the browser reaches it. */
  heraldUrl: process.env.HERALD_URL ?? "http://127.0.0.1:7400",
  /** Herald's URL as this server reaches it (publishing notifications). */
  heraldInternalUrl: process.env.HERALD_INTERNAL_URL ?? process.env.HERALD_URL ?? "http://127.0.0.1:7400",
  jwtSecret: process.env.HERALD_JWT_SECRET ?? "example-only-chat-secret-replace-me-0123456789",
  apiKey: process.env.HERALD_API_KEY ?? "example-only-chat-api-key",
  /** How long a user token lives; the client fetches a new one before it ends. */
  tokenSeconds: Number(process.env.HERALD_TOKEN_SECONDS ?? 600),
};

// Which subscription a message belongs to: the server delivers a message
// once per connection however many of its patterns match, so the client
// matches the subject back to every pattern it holds (NATS rules: `*` is one
// token, `>` one or more trailing tokens).

export function matches(pattern: string, subject: string): boolean {
  const want = pattern.split(".");
  const have = subject.split(".");
  for (let i = 0; i < want.length; i++) {
    const token = want[i];
    if (token === ">") return have.length > i;
    if (i >= have.length) return false;
    if (token !== "*" && token !== have[i]) return false;
  }
  return want.length === have.length;
}

/** Presence events arrive on `$presence.<subject>`. */
export const PRESENCE_PREFIX = "$presence.";

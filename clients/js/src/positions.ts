// Positions are opaque to applications, but this client is Herald's own:
// it compares them to drop what a subscription already has. A token is 12
// bytes in URL-safe base64: the history store's epoch (4 bytes) and the
// sequence (8 bytes), both big-endian. Positions of different epochs are not
// ordered (a server restarted without disk history numbers anew); the server
// announces what is missing between them with a gap.

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const VALUE = new Map<string, number>([...ALPHABET].map((c, i) => [c, i]));

export interface DecodedPosition {
  epoch: number;
  /** The sequence as a fixed-width hexadecimal string, so it compares as text. */
  sequence: string;
}

export function decodePosition(token: string): DecodedPosition | undefined {
  if (token.length !== 16) return undefined;
  const bytes: number[] = [];
  for (let i = 0; i < 16; i += 4) {
    let chunk = 0;
    for (let j = 0; j < 4; j++) {
      const value = VALUE.get(token[i + j]!);
      if (value === undefined) return undefined;
      chunk = chunk * 64 + value;
    }
    bytes.push((chunk >> 16) & 0xff, (chunk >> 8) & 0xff, chunk & 0xff);
  }
  const epoch = ((bytes[0]! << 24) >>> 0) + (bytes[1]! << 16) + (bytes[2]! << 8) + bytes[3]!;
  const sequence = bytes
    .slice(4)
    .map((b) => b.toString(16).padStart(2, "0"))
    .join("");
  return { epoch, sequence };
}

/**
 * Is `candidate` after `known`? True when they are of different epochs (or
 * either is not a position): the server is then the judge, and it sends a
 * gap for anything it cannot replay.
 */
export function isAfter(candidate: string, known: string | undefined): boolean {
  if (known === undefined) return true;
  const a = decodePosition(candidate);
  const b = decodePosition(known);
  if (a === undefined || b === undefined || a.epoch !== b.epoch) return true;
  return a.sequence > b.sequence;
}

/**
 * The earliest of some positions: where one stream must resume so that each
 * subscription gets what it misses (each then drops what it already has).
 * Positions of another epoch than the first are not comparable; the server
 * answers a resume from an old epoch with a gap, so any of them will do.
 */
export function earliest(positions: Iterable<string>): string | undefined {
  let first: string | undefined;
  for (const position of positions) {
    if (first === undefined || !isAfter(position, first)) first = position;
  }
  return first;
}

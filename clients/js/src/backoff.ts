// Reconnect delays: exponential backoff with full jitter (a random delay
// between zero and the exponential cap), so that a thousand pages dropped by
// one server restart do not come back in step.

export interface BackoffOptions {
  /** The cap of the first delay, in milliseconds (default 500). */
  initialDelay?: number;
  /** The largest cap, in milliseconds (default 15 000). */
  maxDelay?: number;
}

export class Backoff {
  private attempt = 0;
  private readonly initial: number;
  private readonly max: number;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.initial = Math.max(1, options.initialDelay ?? 500);
    this.max = Math.max(this.initial, options.maxDelay ?? 15_000);
  }

  /** The cap of the next delay: initial × 2^attempt, at most maxDelay. */
  cap(): number {
    return Math.min(this.max, this.initial * 2 ** Math.min(this.attempt, 30));
  }

  /**
   * The next delay: uniform in [0, cap), or at least `floor` when the server
   * advised one (SSE `retry:`), still jittered above it.
   */
  next(floor = 0): number {
    const cap = this.cap();
    this.attempt++;
    const delay = Math.floor(this.random() * cap);
    return floor > 0 ? floor + Math.floor(this.random() * Math.min(floor, cap)) : delay;
  }

  /** A connection that was established starts the sequence again. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}

/**
 * Crash budget and "one message" policy. Pure, so it runs under `node --test`.
 */

/** Allow at most `maxRestarts` automatic restarts within `windowMs`; after that, stay down. */
export class CrashBudget {
  private crashes: number[] = [];

  constructor(
    public readonly maxRestarts: number,
    public readonly windowMs: number = 3 * 60 * 1000,
  ) {}

  /** Record a crash at `now`; true if the server should be restarted. */
  crashed(now: number): boolean {
    this.crashes = this.crashes.filter((t) => now - t < this.windowMs);
    this.crashes.push(now);
    return this.crashes.length <= this.maxRestarts;
  }

  get recent(): number {
    return this.crashes.length;
  }

  reset(): void {
    this.crashes = [];
  }
}

/**
 * Shows the user at most one error notification per failure episode; an episode ends when the server
 * reports `ready` again (or the user restarts it by hand).
 */
export class OneMessage {
  private shown = false;

  /** true exactly once per episode: the caller shows the message only then. */
  shouldShow(): boolean {
    if (this.shown) {
      return false;
    }
    this.shown = true;
    return true;
  }

  reset(): void {
    this.shown = false;
  }

  get active(): boolean {
    return this.shown;
  }
}

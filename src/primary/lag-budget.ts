/**
 * The lag budget (`maxStandbyLag`): back-pressure from the slowest live standby onto
 * `checkpoint()`, so that the catch-up a takeover has to do stays bounded.
 *
 * Where the primary learns a standby's lag: from the standbys' presence records
 * (src/transport/presence.ts), which every node rewrites once a second with the checkpoint it
 * committed. No new channel: the primary reads them (one KV listing and one get per node) at
 * most every `POLL_MS`, and only while a checkpoint is over budget or the last reading is older
 * than that. The primary knows when each of its checkpoints was acknowledged and how many bytes
 * it carried, so a standby at checkpoint k is behind by:
 *
 * - `checkpoints`: acknowledged − k;
 * - `ms`: when the standby wrote its record − when checkpoint k + 1 was acknowledged (0 when it
 *   had everything then); wall clocks (`Date.now()`), as presence records carry them;
 * - `bytes`: image and write bytes of the checkpoints after k.
 *
 * A presence record is up to a second old: `checkpoints` and `bytes` may be over-estimated by up
 * to a second of the primary's output, `ms` is as of the record. The budget bounds catch-up; it
 * is not an exact figure.
 *
 * When the slowest live standby (state `standby`, record younger than `PRESENCE_STALE_MS`) is
 * over any budget, the acknowledged checkpoint's promise waits (the checkpoint itself is already
 * durable: only its resolution is held back), re-reading presence, until the standby is within
 * budget or `waitMs` ran out. Then it resolves all the same and reports `onOverrun`.
 */

/** The budget; every field optional, `false` turns it off. */
export interface StandbyLagBudget {
  /** Most milliseconds of the primary's acknowledged history a standby may miss. */
  readonly ms?: number;
  /** Most checkpoints a standby may be behind. */
  readonly checkpoints?: number;
  /** Most bytes (images and writes, as shipped) a standby may be behind. */
  readonly bytes?: number;
  /** Longest one `checkpoint()` waits for a standby to come within budget. */
  readonly waitMs?: number;
}

/** A standby as its presence record shows it. */
export interface StandbyPosition {
  readonly nodeId: string;
  readonly checkpoint: number;
  /** When the standby wrote its record (wall clock, ms). */
  readonly updatedAt: number;
}

/** How far behind a standby is. */
export interface Lag {
  readonly nodeId: string;
  readonly checkpoints: number;
  readonly ms: number;
  readonly bytes: number;
}

/** Re-read presence at most this often. */
export const POLL_MS = 250;
/** Acknowledged checkpoints remembered for the lag figures. */
const HISTORY = 100_000;

/** The default budget for a lease TTL: catch-up under about one TTL. */
export function defaultLagBudget(leaseTtlMs: number): Required<StandbyLagBudget> {
  return {
    ms: leaseTtlMs,
    checkpoints: Number.MAX_SAFE_INTEGER,
    bytes: Number.MAX_SAFE_INTEGER,
    waitMs: 2 * leaseTtlMs,
  };
}

/** Lag bookkeeping and the wait. Pure but for `read` (presence) and the clock. */
export class LagBudget {
  readonly #budget: Required<StandbyLagBudget>;
  readonly #read: () => Promise<StandbyPosition[]>;
  readonly #onOverrun: (lag: Lag, waitedMs: number) => void;
  readonly #now: () => number;
  /** Acknowledged checkpoints in order: number, when, bytes up to and including it. */
  readonly #acked: { checkpoint: number; at: number; total: number }[] = [];
  #total = 0;
  #standbys: StandbyPosition[] = [];
  #readAt = -Infinity;
  #reading: Promise<void> | undefined;

  constructor(o: {
    budget: Required<StandbyLagBudget>;
    read: () => Promise<StandbyPosition[]>;
    onOverrun: (lag: Lag, waitedMs: number) => void;
    now?: () => number;
  }) {
    this.#budget = o.budget;
    this.#read = o.read;
    this.#onOverrun = o.onOverrun;
    this.#now = o.now ?? Date.now;
  }

  /** Notes an acknowledged checkpoint and what it shipped. */
  acknowledged(checkpoint: number, bytes: number): void {
    const last = this.#acked[this.#acked.length - 1];
    if (last !== undefined && checkpoint <= last.checkpoint) return;
    this.#total += bytes;
    this.#acked.push({ checkpoint, at: this.#now(), total: this.#total });
    if (this.#acked.length > HISTORY) this.#acked.splice(0, this.#acked.length - HISTORY);
  }

  /** The slowest standby's lag by the last reading, or undefined with no live standby. */
  slowest(): Lag | undefined {
    const last = this.#acked[this.#acked.length - 1];
    if (last === undefined) return undefined;
    let worst: Lag | undefined;
    for (const s of this.#standbys) {
      const lag = this.#lagOf(s, last);
      if (worst === undefined || lag.checkpoints > worst.checkpoints) worst = lag;
    }
    return worst;
  }

  #lagOf(s: StandbyPosition, last: { checkpoint: number; total: number }): Lag {
    const checkpoints = Math.max(0, last.checkpoint - s.checkpoint);
    if (checkpoints === 0) return { nodeId: s.nodeId, checkpoints: 0, ms: 0, bytes: 0 };
    // The first checkpoint the standby lacks, and the last one it has.
    const i = this.#indexAfter(s.checkpoint);
    const missing = this.#acked[i];
    const had = i > 0 ? this.#acked[i - 1]!.total : 0;
    return {
      nodeId: s.nodeId,
      checkpoints,
      ms: missing === undefined ? 0 : Math.max(0, s.updatedAt - missing.at),
      bytes: last.total - (missing === undefined ? last.total : had),
    };
  }

  /** Index of the first remembered checkpoint after `k` (binary search). */
  #indexAfter(k: number): number {
    let lo = 0;
    let hi = this.#acked.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#acked[mid]!.checkpoint <= k) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Whether `lag` is over any part of the budget. */
  over(lag: Lag): boolean {
    const b = this.#budget;
    return lag.ms > b.ms || lag.checkpoints > b.checkpoints || lag.bytes > b.bytes;
  }

  /** Re-reads presence if the last reading is old; never waits longer than `limitMs`. */
  async #refresh(limitMs: number): Promise<void> {
    if (this.#now() - this.#readAt < POLL_MS) return;
    this.#reading ??= this.#read()
      .then((s) => {
        this.#standbys = s;
        this.#readAt = this.#now();
      })
      .catch(() => {
        // Unreadable presence: no back-pressure rather than a stalled primary.
        this.#standbys = [];
        this.#readAt = this.#now();
      })
      .finally(() => {
        this.#reading = undefined;
      });
    // A KV read that hangs (a server gone quiet) must not hold a checkpoint past `waitMs`.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.#reading,
      new Promise<void>((r) => {
        timer = setTimeout(r, Math.max(0, limitMs));
      }),
    ]);
    clearTimeout(timer);
  }

  /**
   * Resolves once the slowest live standby is within budget, or after `waitMs` (then reports
   * the overrun). `stopped` ends the wait early (the node was fenced or closed).
   */
  async wait(stopped: () => boolean): Promise<void> {
    const start = this.#now();
    const left = (): number => this.#budget.waitMs - (this.#now() - start);
    await this.#refresh(Math.min(POLL_MS, left()));
    for (;;) {
      const lag = this.slowest();
      if (lag === undefined || !this.over(lag) || stopped()) return;
      const waited = this.#now() - start;
      if (waited >= this.#budget.waitMs) {
        this.#onOverrun(lag, waited);
        return;
      }
      await new Promise((r) => setTimeout(r, Math.min(POLL_MS, this.#budget.waitMs - waited)));
      await this.#refresh(left());
    }
  }
}

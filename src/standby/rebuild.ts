/**
 * Rebuild in place (issue 12): a node whose own store cannot be trusted rebuilds it from the
 * relays and stands by again, without a restart.
 *
 * ```text
 * standby ─► takeover ─► verify: mismatch ─► StoreLostError (lease released)
 *    ▲           ▲                               │
 *    │           └── standby: StoreLostError ────┤ (a commit finds the token gone)
 *    │                                           ▼
 *    └─ fresh standby run ◄─ clear() ◄─ reclaim() (a lost adapter opens its store anew)
 * ```
 *
 * Only a `StoreLostError` is cured this way: the store lost data, or is not the one the adapter
 * opened, and the relays hold the whole history. A foreign store (another node's token) stays
 * refused by `reclaim()`; an adapter without `reclaim()` that is lost cannot be rebuilt in place
 * (restart the node with a new adapter instance). A store that keeps getting lost is not rebuilt
 * forever: after `maxRebuilds` within `windowMs` the error is the node's, as before.
 */
import { StoreLostError } from '../errors.js';
import type { StorageAdapter } from '../storage/adapter.js';

/** What the rebuilder needs. */
export interface RebuildOptions {
  readonly storage: StorageAdapter;
  readonly log: (e: {
    level: 'debug' | 'info' | 'warn' | 'error';
    msg: string;
    [k: string]: unknown;
  }) => void;
  /** Reports the node going back to start its standby run again (a state transition with the reason). */
  readonly transition: (reason: string) => void;
  /** Rebuilds allowed within `windowMs` (default 3). */
  readonly maxRebuilds?: number;
  /** Default 10 minutes. */
  readonly windowMs?: number;
}

/** Decides, and prepares, each rebuild of one node's store. */
export class StoreRebuilder {
  readonly #o: RebuildOptions;
  readonly #at: number[] = [];
  /** Rebuilds done so far. */
  rebuilds = 0;

  constructor(o: RebuildOptions) {
    this.#o = o;
  }

  /**
   * After a standby run or a takeover failed with `err`: `true` when the store was made ready
   * to be rebuilt (the caller starts a fresh standby run, which clears it and replays the
   * relays); `false` when `err` is not cured by a rebuild (the caller rethrows it).
   */
  async recover(err: unknown): Promise<boolean> {
    if (!(err instanceof StoreLostError)) return false;
    const { storage, log } = this.#o;
    const now = performance.now();
    const windowMs = this.#o.windowMs ?? 600_000;
    while (this.#at.length > 0 && now - this.#at[0]! > windowMs) this.#at.shift();
    const max = this.#o.maxRebuilds ?? 3;
    if (this.#at.length >= max) {
      log({
        level: 'error',
        msg: 'store lost again: not rebuilding it any more',
        rebuilds: this.#at.length,
        windowMs,
        error: err.message,
      });
      return false;
    }
    try {
      await storage.reclaim?.();
    } catch (e) {
      log({
        level: 'error',
        msg: 'store lost and cannot be reclaimed for a rebuild',
        error: (e as Error)?.message,
      });
      return false;
    }
    this.#at.push(now);
    this.rebuilds++;
    log({
      level: 'warn',
      msg: 'store rebuild',
      kind: storage.kind,
      rebuild: this.rebuilds,
      error: err.message,
    });
    this.#o.transition(`rebuilding its ${storage.kind} store from the relays: ${err.message}`);
    return true;
  }
}

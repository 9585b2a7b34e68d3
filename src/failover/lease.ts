/**
 * Leadership: one primary at a time, enforced by a lease with a fencing epoch (DESIGN.md,
 * guarantee 3; litestream's leaser is the model).
 *
 * Timing argument. The primary renews by compare-and-set every `ttl / 4`. It counts its lease
 * valid until `sent + ttl * SAFETY` where `sent` is when it *sent* its last successful renewal.
 * A standby claims only after it has *observed* no change of the lease's revision for a full
 * `ttl`; it observed each renewal after it was sent. So, with clocks that run at the same rate,
 * the primary's validity always ends before any standby may claim, and a checkpoint acked while
 * the lease was valid sits in the stream before the new primary's fence. The compare-and-set
 * makes two claims on the same revision impossible: exactly one wins.
 */
import { ConfigError, FencedError } from '../errors.js';
import { LeaseConflict, type LeaseRead, type LeaseStore } from '../transport/lease-store.js';

/** Share of the TTL a primary counts on: the rest absorbs timer lateness and clock-rate drift. */
export const LEASE_SAFETY = 0.75;

/** The largest epoch a frame header carries (u32). */
export const MAX_EPOCH = 0xffff_ffff;

/** Monotonic milliseconds. */
export function now(): number {
  return performance.now();
}

/**
 * The primary's side: renews the lease and knows until when it may acknowledge checkpoints.
 * Calls `onLost` once, with a `FencedError`, when the lease was taken or not renewed in time.
 */
export class LeaseKeeper {
  readonly #store: LeaseStore;
  readonly #holder: string;
  readonly #epoch: number;
  readonly #ttlMs: number;
  readonly #onLost: (err: FencedError) => void;
  #revision: number;
  #validUntil: number;
  #timer: NodeJS.Timeout | undefined;
  #lost = false;
  #lostError: FencedError | undefined;
  #stopped = false;
  #renewing = false;

  constructor(
    store: LeaseStore,
    claim: { holder: string; epoch: number; revision: number; sentAt: number },
    ttlMs: number,
    onLost: (err: FencedError) => void,
  ) {
    this.#store = store;
    this.#holder = claim.holder;
    this.#epoch = claim.epoch;
    this.#revision = claim.revision;
    this.#ttlMs = ttlMs;
    this.#validUntil = claim.sentAt + ttlMs * LEASE_SAFETY;
    this.#onLost = onLost;
    this.#schedule();
  }

  /** Whether checkpoints may still be acknowledged. */
  isValid(): boolean {
    if (!this.#lost && now() >= this.#validUntil) this.#lose('could not renew the lease in time');
    return !this.#lost && !this.#stopped;
  }

  /** Why the lease was lost, once it was. */
  get lostError(): FencedError | undefined {
    return this.#lostError;
  }

  /** Milliseconds the lease is still counted valid (negative once expired). */
  remainingMs(): number {
    return this.#validUntil - now();
  }

  /** Stops renewing. With `release`, deletes the lease so a standby can claim it at once. */
  async stop(release: boolean): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    if (release && !this.#lost) {
      await this.#store.release(this.#epoch, this.#revision).catch(() => undefined);
    }
  }

  #schedule(): void {
    if (this.#stopped || this.#lost) return;
    const renewIn = this.#ttlMs / 4;
    // Also wake at expiry, so a primary whose renewals hang learns it is deposed on time.
    const expiresIn = Math.max(0, this.#validUntil - now());
    this.#timer = setTimeout(() => this.#tick(), Math.min(renewIn, expiresIn));
    this.#timer.unref?.();
  }

  #tick(): void {
    if (this.#stopped || this.#lost) return;
    if (now() >= this.#validUntil) {
      this.#lose('could not renew the lease in time');
      return;
    }
    if (!this.#renewing) void this.#renew();
    this.#schedule();
  }

  async #renew(): Promise<void> {
    this.#renewing = true;
    const sentAt = now();
    try {
      // A renewal whose reply was lost landed all the same: adopt it rather than demote.
      this.#revision = await this.#store.writeOrAdopt(
        { holder: this.#holder, epoch: this.#epoch },
        this.#revision,
      );
      if (!this.#lost && !this.#stopped) this.#validUntil = sentAt + this.#ttlMs * LEASE_SAFETY;
    } catch (err) {
      if (err instanceof LeaseConflict) this.#lose('another node took the lease');
      // Other errors (a disconnect): keep trying until the lease runs out.
    } finally {
      this.#renewing = false;
    }
  }

  #lose(why: string): void {
    if (this.#lost || this.#stopped) return;
    this.#lost = true;
    clearTimeout(this.#timer);
    this.#lostError = new FencedError(
      `node '${this.#holder}' is no longer primary (epoch ${this.#epoch}): ${why}`,
    );
    this.#onLost(this.#lostError);
  }
}

/** What a successful claim gives the new primary. */
export interface Claim {
  readonly holder: string;
  readonly epoch: number;
  readonly revision: number;
  readonly sentAt: number;
  /** The previous holder, if any. */
  readonly previous: string | undefined;
  /** When the standby first saw the lease go quiet (ms, monotonic), for RTO figures. */
  readonly vacantSince: number;
}

/**
 * The standby's side: watches the lease and claims it once it is vacant: absent, released, or
 * unchanged for a full TTL. Resolves with the claim; rejects only when stopped.
 */
export async function claimWhenVacant(opts: {
  store: LeaseStore;
  holder: string;
  ttlMs: number;
  /** Highest epoch this node has seen anywhere (fences in the stream), so epochs never repeat. */
  knownEpoch: () => number;
  /**
   * Runs once the lease looks vacant, before the claim: the standby catches up with the stream
   * so that `knownEpoch` covers every fence in it (a new epoch must be above all of them).
   */
  beforeClaim?: () => Promise<void>;
  signal: AbortSignal;
  onError?: (err: unknown) => void;
  /** Another node claimed first (after `beforeClaim` ran): this node goes on watching. */
  onLostRace?: () => void;
}): Promise<Claim> {
  const pollMs = Math.max(20, Math.min(250, opts.ttlMs / 10));
  let last: LeaseRead | undefined;
  let lastChange = now();
  for (;;) {
    if (opts.signal.aborted) throw opts.signal.reason ?? new Error('stopped');
    let read: LeaseRead | undefined;
    try {
      read = await opts.store.read();
    } catch (err) {
      opts.onError?.(err);
    }
    if (read) {
      if (!last || read.revision !== last.revision) {
        lastChange = now();
      }
      last = read;
      const vacant =
        read.value === undefined || read.value.holder === null || now() - lastChange >= opts.ttlMs;
      if (vacant) {
        await opts.beforeClaim?.();
        const epoch = Math.max(read.value?.epoch ?? 0, opts.knownEpoch()) + 1;
        if (epoch > MAX_EPOCH) {
          // Only a forged fence or lease gets here (an epoch grows by one per takeover).
          throw new ConfigError(
            'app',
            `the next epoch would be ${epoch}, above the largest the protocol carries (${MAX_EPOCH}): the lease or a fence in the relays' stream holds an epoch no takeover made (a frame injected into an unsigned stream?). Set clusterKey so forged frames are refused, then delete the app's stream and lease bucket to start its history over`,
          );
        }
        const sentAt = now();
        try {
          // A claim whose reply was lost may have won: writeOrAdopt reads the key back.
          const revision = await opts.store.writeOrAdopt({ holder: opts.holder, epoch }, read.revision);
          return {
            holder: opts.holder,
            epoch,
            revision,
            sentAt,
            previous: read.value?.holder ?? undefined,
            vacantSince: lastChange,
          };
        } catch (err) {
          if (!(err instanceof LeaseConflict)) opts.onError?.(err);
          // Someone else moved first: watch the new holder.
          last = undefined;
          opts.onLostRace?.();
        }
      }
    }
    await new Promise<void>((resolve) => {
      const onAbort = (): void => {
        clearTimeout(t);
        resolve();
      };
      const t = setTimeout(() => {
        opts.signal.removeEventListener('abort', onAbort);
        resolve();
      }, pollMs);
      opts.signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/**
 * The drill's own view of the lease: it watches the app's lease record in its KV bucket and
 * keeps every revision with the time the NATS server stored it. From that record (not from
 * what the nodes say about themselves) `leaseTtlViolation` tells whether a takeover claimed the
 * lease sooner than the lease allows: less than a TTL after the last renewal that the deposed
 * primary made.
 */
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { parseLeaseValue } from '../transport/lease-store.js';
import { connectServers } from '../transport/inspect.js';
import { appNames } from '../protocol/subjects.js';

/** One revision of the lease record, as the server stored it. */
export interface LeaseSample {
  /** The server's timestamp of the revision (ms since the epoch). */
  t: number;
  revision: number;
  /** `null`: released; `undefined`: deleted or unreadable. */
  holder: string | null | undefined;
  epoch: number;
}

/**
 * Millisecond rounding of the server's timestamps: a claim exactly one TTL after a renewal can
 * show as up to 1 ms less.
 */
export const LEASE_CLOCK_SLACK_MS = 1;

/**
 * A claim sooner than the lease allows, as one violation line, or undefined. The last renewal
 * of `killedEpoch` (the newest revision holding that epoch with a holder) is compared with the
 * first revision of a higher epoch after it (the claim). Undefined as well when the record
 * does not show both (nothing to judge).
 */
export function leaseTtlViolation(
  samples: readonly LeaseSample[],
  o: { kill: number; killedEpoch: number; ttlMs: number },
): string | undefined {
  const renewals = samples.filter((s) => s.epoch === o.killedEpoch && typeof s.holder === 'string');
  if (renewals.length === 0) return undefined;
  const last = renewals.reduce((a, b) => (b.revision > a.revision ? b : a));
  const claims = samples.filter((s) => s.epoch > o.killedEpoch && s.revision > last.revision);
  if (claims.length === 0) return undefined;
  const claim = claims.reduce((a, b) => (b.revision < a.revision ? b : a));
  const gap = claim.t - last.t;
  if (gap + LEASE_CLOCK_SLACK_MS >= o.ttlMs) return undefined;
  return `kill ${o.kill}: epoch ${claim.epoch} claimed the lease ${gap} ms after the last renewal of epoch ${o.killedEpoch} (revision ${last.revision} by ${String(last.holder)}), sooner than the lease TTL of ${o.ttlMs} ms allows`;
}

/** Watches one app's lease record for the whole drill. */
export class LeaseWatch {
  readonly samples: LeaseSample[] = [];
  readonly #nc: NatsConnection;
  readonly #stop: () => void;
  #waiters: { epoch: number; resolve: () => void }[] = [];

  private constructor(nc: NatsConnection, stop: () => void) {
    this.#nc = nc;
    this.#stop = stop;
  }

  /**
   * Starts watching `app`'s lease on `servers` (the bucket must exist: start it after the first
   * primary). It reconnects on its own when a server of a cluster goes away.
   */
  static async start(servers: readonly string[], app: string): Promise<LeaseWatch> {
    const nc = await connectServers(servers, { maxReconnectAttempts: -1 });
    let kv: KV;
    try {
      kv = await new Kvm(nc).open(appNames(app).leaseBucket);
    } catch (err) {
      await nc.close();
      throw new Error(`cannot watch the lease of ${app}: ${(err as Error).message}`, { cause: err });
    }
    const iter = await kv.watch({ key: appNames(app).leaseKey });
    const w = new LeaseWatch(nc, () => iter.stop());
    void (async () => {
      for await (const e of iter) {
        const v = e.operation === 'PUT' ? parseLeaseValue(e.value) : undefined;
        w.samples.push({
          t: e.created.getTime(),
          revision: e.revision,
          holder: v ? v.holder : undefined,
          epoch: v?.epoch ?? 0,
        });
        w.#waiters = w.#waiters.filter((x) => {
          if ((v?.epoch ?? 0) < x.epoch) return true;
          x.resolve();
          return false;
        });
      }
    })().catch(() => undefined);
    return w;
  }

  /** Resolves once a revision of epoch `epoch` or higher was seen; false after `timeoutMs`. */
  seenEpoch(epoch: number, timeoutMs: number): Promise<boolean> {
    if (this.samples.some((s) => s.epoch >= epoch)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#waiters.push({
        epoch,
        resolve: () => {
          clearTimeout(timer);
          resolve(true);
        },
      });
    });
  }

  async close(): Promise<void> {
    this.#stop();
    await this.#nc.close().catch(() => undefined);
  }
}

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

/** What the lease record says about one takeover. */
export interface LeaseJudgement {
  /** `early`: claimed sooner than a TTL after the last renewal; `unknown`: the record lacks one of them. */
  verdict: 'ok' | 'early' | 'unknown';
  /** ms from the deposed primary's last renewal to the claim (when both were seen). */
  gapMs?: number;
  /** The violation line for `early`. */
  violation?: string;
}

/**
 * Whether a takeover claimed the lease sooner than the lease allows. The last renewal of
 * `killedEpoch` (the newest revision holding that epoch with a holder) is compared with the
 * first revision of a higher epoch after it (the claim): less than `ttlMs` apart (minus
 * {@link LEASE_CLOCK_SLACK_MS}) is `early`. `unknown` when the record does not show both.
 */
export function judgeTakeover(
  samples: readonly LeaseSample[],
  o: { kill: number; killedEpoch: number; ttlMs: number },
  holes: readonly (readonly [number, number])[] = [],
): LeaseJudgement {
  const renewals = samples.filter((s) => s.epoch === o.killedEpoch && typeof s.holder === 'string');
  if (renewals.length === 0) return { verdict: 'unknown' };
  const last = renewals.reduce((a, b) => (b.revision > a.revision ? b : a));
  const claims = samples.filter((s) => s.epoch > o.killedEpoch && s.revision > last.revision);
  if (claims.length === 0) return { verdict: 'unknown' };
  const claim = claims.reduce((a, b) => (b.revision < a.revision ? b : a));
  // A revision missed in between (the watch stalled): the real last renewal or claim may be it.
  if (holes.some(([after, next]) => after < claim.revision && next > last.revision))
    return { verdict: 'unknown' };
  const gapMs = claim.t - last.t;
  if (gapMs + LEASE_CLOCK_SLACK_MS >= o.ttlMs) return { verdict: 'ok', gapMs };
  return {
    verdict: 'early',
    gapMs,
    violation: `kill ${o.kill}: epoch ${claim.epoch} claimed the lease ${gapMs} ms after the last renewal of epoch ${o.killedEpoch} (revision ${last.revision} by ${String(last.holder)}), sooner than the lease TTL of ${o.ttlMs} ms allows`,
  };
}

/** The violation line of {@link judgeTakeover}, or undefined. */
export function leaseTtlViolation(
  samples: readonly LeaseSample[],
  o: { kill: number; killedEpoch: number; ttlMs: number },
): string | undefined {
  return judgeTakeover(samples, o).violation;
}

/** Counts of the lease check over a run (`leaseChecks` in `--json`). */
export interface LeaseChecks {
  /** Takeovers whose claim and the deposed primary's last renewal were both in the record. */
  judged: number;
  /** Of those, claims sooner than the TTL (each one also a violation). */
  early: number;
  /** Takeovers the record could not judge (the watch missed a revision: history 1). */
  unjudged: number;
  /** The smallest renewal-to-claim gap seen, ms (null: none judged). */
  minGapMs: number | null;
  /** Per takeover, in order: the renewal-to-claim gap, ms (null: not judged). */
  gapsMs: (number | null)[];
}

/** Judges one takeover, adds it to `checks`, and returns the violation line (if any). */
export function checkTakeoverLease(
  checks: LeaseChecks,
  samples: readonly LeaseSample[],
  o: { kill: number; killedEpoch: number; ttlMs: number },
  holes: readonly (readonly [number, number])[] = [],
): string | undefined {
  const j = judgeTakeover(samples, o, holes);
  if (j.verdict === 'unknown') checks.unjudged++;
  else checks.judged++;
  if (j.verdict === 'early') checks.early++;
  if (j.gapMs !== undefined) checks.minGapMs = Math.min(checks.minGapMs ?? j.gapMs, j.gapMs);
  checks.gapsMs.push(j.verdict === 'unknown' ? null : (j.gapMs ?? null));
  return j.violation;
}

/** Watches one app's lease record for the whole drill. */
export class LeaseWatch {
  /** Revisions of the lease key. */
  readonly samples: LeaseSample[] = [];
  /**
   * Revisions of the bucket this watch did not see: `[seen, next seen]` whenever the bucket's
   * revisions (one sequence for every key) jump. The first snapshot is not a hole.
   */
  readonly holes: [number, number][] = [];
  #lastRevision: number | undefined;
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
    // Every key (presence records too): the bucket's revisions are one sequence, so a revision
    // this watch missed shows as a jump.
    const leaseKey = appNames(app).leaseKey;
    const iter = await kv.watch({ key: '>' });
    const w = new LeaseWatch(nc, () => iter.stop());
    void (async () => {
      for await (const e of iter) {
        const prev = w.#lastRevision;
        if (prev !== undefined && e.revision > prev + 1 && e.isUpdate) w.holes.push([prev, e.revision]);
        if (prev === undefined || e.revision > prev) w.#lastRevision = e.revision;
        if (e.key !== leaseKey) continue;
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

/**
 * The drills' ledger of what each primary of the sample app was told, kept from the events the
 * app prints (app-process.ts), and the takeover record every drill builds from it.
 *
 * - `cp-begin`: the checkpoint a primary declares, keyed `epoch:checkpoint` (a deposed primary
 *   that goes on declares numbers the new primary declares too): the digest of its image, of its
 *   store's writes (`mirrorDigest`), and how many writes the primary had made (`wt`);
 * - `acked`: every acknowledgement (node, epoch, checkpoint, time), the highest one, when each
 *   checkpoint was first acknowledged, and per process the last one it acknowledged;
 * - `primary` / `standby`: per process, its epoch as primary, the number its next checkpoint
 *   gets and its writes so far (`wt` of its latest event).
 *
 * Roles are kept per `AppProcess` object: a drill that restarts a node in the same object keeps
 * one entry for it, and one that starts a new process under an old id (the upgrade drill) gets a
 * new entry.
 */
import { num, type AppEvent, type AppProcess } from './app-process.js';
import type { KillPoint, TakeoverReport } from './types.js';

/** What a primary declared for one checkpoint (`cp-begin`). */
export interface DeclaredCheckpoint {
  readonly digest: string;
  readonly mirrorDigest: string;
  /** Writes the primary had made when it declared the checkpoint. */
  readonly wt: number;
}

/** One acknowledged checkpoint (`acked`). */
export interface AckRecord {
  readonly node: string;
  readonly epoch: number;
  readonly checkpoint: number;
  readonly t: number;
}

/** A process while it is primary. */
export interface PrimaryRole {
  readonly epoch: number;
  /** The number its next `cp-begin` declares. */
  nextCp: number;
  /** Its writes so far (this process). */
  wt: number;
}

/** The ledger of one drill run (see the file comment). */
export class DrillLedger {
  readonly #declared = new Map<string, DeclaredCheckpoint>();
  readonly #roles = new Map<AppProcess, PrimaryRole>();
  readonly #ackedBy = new Map<AppProcess, number>();
  /** Checkpoint → the image digest its latest acknowledgement named. */
  readonly #ackedDigest = new Map<number, string>();
  #lastAcked = 0;
  /** Every acknowledgement, in the order the events came. */
  readonly acks: AckRecord[] = [];
  /** When each checkpoint was first acknowledged (ms), for a standby's lag. */
  readonly ackAt = new Map<number, number>();

  /** Keeps the ledger from `p`'s events, from now on (across its restarts). */
  track(p: AppProcess): void {
    p.on((e) => this.record(p, e));
  }

  /** Takes one event of `p` into the ledger. */
  record(p: AppProcess, e: AppEvent): void {
    const r = this.#roles.get(p);
    if (e.ev === 'primary') this.#roles.set(p, { epoch: num(e.epoch), nextCp: num(e.resumed) + 1, wt: 0 });
    else if (e.ev === 'standby') this.#roles.delete(p);
    if (r && typeof e.wt === 'number') r.wt = e.wt;
    if (e.ev === 'cp-begin' && r) {
      this.#declared.set(`${r.epoch}:${r.nextCp++}`, {
        digest: String(e.digest),
        mirrorDigest: String(e.mirrorDigest),
        wt: num(e.wt),
      });
    }
    if (e.ev === 'acked') {
      const checkpoint = num(e.checkpoint);
      this.#lastAcked = Math.max(this.#lastAcked, checkpoint);
      this.acks.push({ node: p.id, epoch: num(e.epoch), checkpoint, t: e.t });
      if (!this.ackAt.has(checkpoint)) this.ackAt.set(checkpoint, e.t);
      this.#ackedBy.set(p, Math.max(this.#ackedBy.get(p) ?? 0, checkpoint));
      this.#ackedDigest.set(checkpoint, String(e.digest));
    }
  }

  /** The highest checkpoint any primary acknowledged so far. */
  get lastAcked(): number {
    return this.#lastAcked;
  }

  /** The highest checkpoint `p` acknowledged (0: none). */
  ackedBy(p: AppProcess): number {
    return this.#ackedBy.get(p) ?? 0;
  }

  /** `p`'s role while it is primary (after its `primary` event, until `standby` or `forget`). */
  role(p: AppProcess): PrimaryRole | undefined {
    return this.#roles.get(p);
  }

  /** Drops `p`'s role (it was killed, or is restarted as a standby). */
  forget(p: AppProcess): void {
    this.#roles.delete(p);
  }

  /** What epoch `epoch` declared for `checkpoint`. */
  declared(epoch: number, checkpoint: number): DeclaredCheckpoint | undefined {
    return this.#declared.get(`${epoch}:${checkpoint}`);
  }

  /**
   * What a new primary's resumed checkpoint must match: the declaration of the epoch it resumed
   * (`resumedEpoch`, `resumed` of its `primary` event); `undefined` when it resumed nothing.
   */
  expectedFor(took: AppEvent): DeclaredCheckpoint | undefined {
    const resumed = num(took.resumed);
    return resumed === 0 ? undefined : this.declared(num(took.resumedEpoch), resumed);
  }

  /**
   * The declaration of `checkpoint` by whichever epoch its latest acknowledgement names (by
   * image digest), else by any epoch: for a primary event that does not say which epoch it
   * resumed.
   */
  declaredAnyEpoch(checkpoint: number): DeclaredCheckpoint | undefined {
    const suffix = `:${checkpoint}`;
    const acked = this.#ackedDigest.get(checkpoint);
    for (const [k, v] of this.#declared) if (k.endsWith(suffix) && acked === v.digest) return v;
    for (const [k, v] of this.#declared) if (k.endsWith(suffix)) return v;
    return undefined;
  }

  /** Checkpoints acknowledged by epochs up to `killedEpoch` past `resumed`: lost by the takeover. */
  lostAfter(killedEpoch: number, resumed: number): Set<number> {
    return new Set(
      this.acks.filter((a) => a.epoch <= killedEpoch && a.checkpoint > resumed).map((a) => a.checkpoint),
    );
  }
}

/**
 * The takeover record of the report (`takeovers[]` in `--json`), from the new primary's
 * `primary` event (`took`) and its first `acked` event after it (`served`).
 */
export function takeoverRecord(o: {
  kill: number;
  point: KillPoint;
  killed: string;
  newPrimary: string;
  took: AppEvent;
  served: AppEvent;
  /** When the fault was injected (ms). */
  faultAt: number;
  /** The last checkpoint acknowledged when the fault was injected. */
  lastAcked: number;
  expected: DeclaredCheckpoint | undefined;
  checkpointsLost: number;
  writesDiscarded: number;
  /** The resumed app's own verification time, left out of the serving times. Default 0. */
  verifyMs?: number;
}): TakeoverReport {
  const { took, served, faultAt, expected } = o;
  const stats = (took.takeover ?? {}) as Record<string, unknown>;
  const verifyMs = o.verifyMs ?? 0;
  return {
    kill: o.kill,
    point: o.point,
    killed: o.killed,
    newPrimary: o.newPrimary,
    takeoverMs: took.t - faultAt,
    lastAcked: o.lastAcked,
    resumed: num(took.resumed),
    epoch: num(took.epoch),
    imageMatches: expected !== undefined && expected.digest === took.digest,
    storeMatches: expected !== undefined && expected.mirrorDigest === took.storeDigest,
    detectMs: Math.round(num(stats.detectMs)),
    catchUpMs: Math.round(num(stats.catchUpMs)),
    fenceMs: Math.round(num(stats.fenceMs)),
    rollbackMs: Math.round(num(stats.rollbackMs)),
    restoreMs: Math.round(num(stats.restoreMs)),
    resumeMs: Math.max(0, served.t - took.t - verifyMs),
    killToServingMs: Math.max(0, served.t - faultAt - verifyMs),
    checkpointsLost: o.checkpointsLost,
    writesDiscarded: o.writesDiscarded,
  };
}

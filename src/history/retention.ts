/**
 * Retention: which stream messages of each relay a base makes unnecessary. Pure bookkeeping, no
 * I/O: the standby that builds bases feeds it every message it opened (relay, stream seq, frame
 * id, bytes) and every checkpoint it committed (with the frame seq of its seal), and asks it for
 * each relay's cut: the first stream seq to keep.
 *
 * Why frame ids tell checkpoints apart: within an epoch the primary numbers frames in order, and
 * a checkpoint's seal is its last frame, so a frame `(e, s)` belongs to a checkpoint ≤ X exactly
 * when `s` ≤ the seal seq of the last checkpoint ≤ X that epoch `e` sealed. Re-sent frames keep
 * their ids. A whole epoch is history once a later fence cuts at or below X: its frames are
 * either part of checkpoints ≤ X or void. Stream seqs differ per relay (each relay numbers what
 * it stored), so the cut is found per relay by walking its messages in stream order up to the
 * first one still needed.
 */
import type { EpochCut } from '../protocol/records.js';

/** What a base keeps below itself (the window), on every relay. All three bound disk. */
export interface RetainOptions {
  /** Checkpoints before the base whose frames stay (a restarting node resumes from them). */
  readonly checkpoints: number;
  /** At most this many stream bytes below the base per relay (frames of whole checkpoints). */
  readonly bytes: number;
  /** Frames of checkpoints committed longer ago than this go. */
  readonly ms: number;
}

/** Defaults: a window of 1 000 checkpoints, at most 64 MiB and one hour below each base. */
export const DEFAULT_RETAIN: RetainOptions = { checkpoints: 1_000, bytes: 64 * 1024 * 1024, ms: 3_600_000 };

interface RelayLog {
  seq: number[];
  epoch: number[];
  fseq: number[];
  bytes: number[];
}

/** Per relay: the messages seen; per epoch: the seals committed. */
export class RetentionTracker {
  readonly #relays: RelayLog[];
  /** Per epoch, committed checkpoints and their seal's frame seq, ascending. */
  readonly #seals = new Map<number, { cp: number[]; seq: number[] }>();
  /** Committed checkpoints and when (wall-clock ms), ascending. */
  #commits: { cp: number[]; at: number[] } = { cp: [], at: [] };

  constructor(relays: number) {
    this.#relays = Array.from({ length: relays }, () => ({ seq: [], epoch: [], fseq: [], bytes: [] }));
  }

  /** A message of frame `(epoch, fseq)` was read from `relay` at `streamSeq`. */
  record(relay: number, streamSeq: number, epoch: number, fseq: number, bytes: number): void {
    const r = this.#relays[relay];
    if (!r) return;
    const last = r.seq.at(-1);
    if (last !== undefined && streamSeq <= last) return; // a reader restarted over ground it covered
    r.seq.push(streamSeq);
    r.epoch.push(epoch);
    r.fseq.push(fseq);
    r.bytes.push(bytes);
  }

  /** Checkpoint `checkpoint` of `epoch` was committed; its seal is frame `sealSeq`. */
  committed(epoch: number, checkpoint: number, sealSeq: number, atMs: number): void {
    let s = this.#seals.get(epoch);
    if (!s) this.#seals.set(epoch, (s = { cp: [], seq: [] }));
    s.cp.push(checkpoint);
    s.seq.push(sealSeq);
    this.#commits.cp.push(checkpoint);
    this.#commits.at.push(atMs);
  }

  /** Messages recorded for `relay` (for tests and status). */
  recorded(relay: number): number {
    return this.#relays[relay]?.seq.length ?? 0;
  }

  /**
   * The first stream seq of `relay` to keep so that every frame of a checkpoint > `x` stays:
   * the first recorded message still needed, or one past the last recorded message.
   */
  cut(relay: number, x: number, history: readonly EpochCut[]): number {
    const r = this.#relays[relay];
    if (!r || r.seq.length === 0) return 0;
    const limit = this.#sealLimits(x, history);
    for (let i = 0; i < r.seq.length; i++) {
      const lim = limit(r.epoch[i]!);
      if (r.fseq[i]! > lim) return r.seq[i]!;
    }
    return r.seq.at(-1)! + 1;
  }

  /** Bytes of `relay`'s recorded messages with stream seq in [from, to). */
  bytesBetween(relay: number, from: number, to: number): number {
    const r = this.#relays[relay];
    if (!r) return 0;
    let sum = 0;
    for (let i = 0; i < r.seq.length; i++) if (r.seq[i]! >= from && r.seq[i]! < to) sum += r.bytes[i]!;
    return sum;
  }

  /**
   * The last checkpoint whose frames may go below a base at `c`, under `retain`: the window keeps
   * `checkpoints` checkpoints before `c`, fewer when they are older than `ms` or take more than
   * `bytes` on some relay (then whole checkpoints go until they fit).
   */
  purgeThrough(c: number, retain: RetainOptions, history: readonly EpochCut[], nowMs: number): number {
    let x = Math.max(0, c - retain.checkpoints);
    // Age: checkpoints committed before now − ms go.
    const { cp, at } = this.#commits;
    for (let i = 0; i < cp.length && at[i]! < nowMs - retain.ms; i++)
      if (cp[i]! <= c) x = Math.max(x, cp[i]!);
    // Bytes: the smallest x whose window fits on every relay (the window shrinks as x grows).
    const fits = (y: number): boolean =>
      this.#relays.every((_, relay) => {
        const top = this.cut(relay, c, history);
        return this.bytesBetween(relay, this.cut(relay, y, history), top) <= retain.bytes;
      });
    if (!fits(x)) {
      let lo = x;
      let hi = c;
      while (lo < hi) {
        const mid = Math.floor((lo + hi) / 2);
        if (fits(mid)) hi = mid;
        else lo = mid + 1;
      }
      x = lo;
    }
    return Math.min(x, c);
  }

  /**
   * Forgets what retention no longer needs once `relay` was purged below `cut`, and seals of
   * checkpoints up to `x` but the last of each epoch.
   */
  forget(relay: number, cut: number, x: number): void {
    const r = this.#relays[relay];
    if (r) {
      let n = 0;
      while (n < r.seq.length && r.seq[n]! < cut) n++;
      if (n > 0) for (const a of [r.seq, r.epoch, r.fseq, r.bytes]) a.splice(0, n);
    }
    for (const s of this.#seals.values()) {
      let n = 0;
      while (n + 1 < s.cp.length && s.cp[n + 1]! <= x) n++;
      if (n > 0) {
        s.cp.splice(0, n);
        s.seq.splice(0, n);
      }
    }
    let n = 0;
    while (n < this.#commits.cp.length && this.#commits.cp[n]! <= x) n++;
    if (n > 0) this.#commits = { cp: this.#commits.cp.slice(n), at: this.#commits.at.slice(n) };
  }

  /** Per epoch, the highest frame seq that belongs to a checkpoint ≤ x (-1: none). */
  #sealLimits(x: number, history: readonly EpochCut[]): (epoch: number) => number {
    const cache = new Map<number, number>();
    return (epoch) => {
      let lim = cache.get(epoch);
      if (lim !== undefined) return lim;
      // A later fence cut at or below x: the whole epoch is history (committed or void).
      if (history.some((h) => h.epoch > epoch && h.cutoff <= x)) lim = Number.MAX_SAFE_INTEGER;
      else {
        lim = -1;
        const s = this.#seals.get(epoch);
        if (s) for (let i = 0; i < s.cp.length && s.cp[i]! <= x; i++) lim = s.seq[i]!;
      }
      cache.set(epoch, lim);
      return lim;
    };
  }
}

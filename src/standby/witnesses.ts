/**
 * Witnesses: per message of the stream, who holds it — the relays a part was read from, or (FEC)
 * the distinct shards of a part. A checkpoint counts as durable under the ack policy once its
 * frames have as many witnesses as the policy needs acks. Keys are typed `PartKey`s; the map
 * only holds frames not committed yet (`forgetThrough` prunes at each commit).
 */
import type { PartKey } from '../protocol/codec.js';

/** Most messages remembered; past it the oldest are forgotten (they were committed or are void). */
const MAX_WITNESSED = 200_000;

/** Committed messages whose witnesses are still remembered (as a bit mask), to tell late copies. */
const MAX_RETIRED = 100_000;

/** Part index in the inner key: frames have at most 0xffff parts. */
const PARTS = 0x10000;

export class Witnesses {
  /** epoch → (seq · 2^16 + part) → who. Insertion order is arrival order. */
  readonly #byEpoch = new Map<number, Map<number, Set<number>>>();
  /** epoch → seq → how many parts the frame has (learned from any decoded part). */
  readonly #parts = new Map<number, Map<number, number>>();
  #size = 0;
  /**
   * `epoch:seq·2^16+part` → witnesses (bit i = relay or shard i, up to 31) of messages forgotten
   * at a commit: another relay's copy arriving later is a late copy, the same relay's a repeat.
   */
  readonly #retired = new Map<string, number>();

  /** Notes that frame `(epoch, seq)` has `parts` parts. */
  setParts(epoch: number, seq: number, parts: number): void {
    if (parts <= 1) return;
    let e = this.#parts.get(epoch);
    if (!e) {
      e = new Map();
      this.#parts.set(epoch, e);
    }
    e.set(seq, parts);
  }

  /** Witnesses of the whole frame `(epoch, seq)`: the fewest any of its parts has. */
  frameCount(epoch: number, seq: number): number {
    const parts = this.#parts.get(epoch)?.get(seq) ?? 1;
    let least = Infinity;
    for (let part = 0; part < parts; part++) least = Math.min(least, this.count({ epoch, seq, part }));
    return least;
  }

  /** Notes that `who` (a relay, or a shard index) holds `key`; true when it is its first witness. */
  add(key: PartKey, who: number): boolean {
    let e = this.#byEpoch.get(key.epoch);
    if (!e) {
      e = new Map();
      this.#byEpoch.set(key.epoch, e);
    }
    const k = key.seq * PARTS + key.part;
    let w = e.get(k);
    if (!w) {
      w = new Set();
      e.set(k, w);
      if (++this.#size > MAX_WITNESSED) this.#dropOldest();
    }
    const first = w.size === 0;
    w.add(who);
    return first;
  }

  /** Whether `who` already witnessed `key`. */
  has(key: PartKey, who: number): boolean {
    return (
      this.#byEpoch
        .get(key.epoch)
        ?.get(key.seq * PARTS + key.part)
        ?.has(who) ?? false
    );
  }

  /** Witnesses of `key`. */
  count(key: PartKey): number {
    return this.#byEpoch.get(key.epoch)?.get(key.seq * PARTS + key.part)?.size ?? 0;
  }

  /** Forgets every message of epochs before `epoch`, and of `epoch` up to frame `seq`. */
  forgetThrough(epoch: number, seq: number): void {
    for (const [ep, m] of this.#parts) {
      if (ep < epoch) this.#parts.delete(ep);
      else if (ep === epoch) for (const s of m.keys()) if (s <= seq) m.delete(s);
    }
    for (const [ep, m] of this.#byEpoch) {
      if (ep < epoch) {
        for (const [k, w] of m) this.#retire(ep, k, w);
        this.#size -= m.size;
        this.#byEpoch.delete(ep);
      } else if (ep === epoch) {
        for (const [k, w] of m) {
          if (Math.floor(k / PARTS) <= seq) {
            this.#retire(ep, k, w);
            m.delete(k);
            this.#size--;
          }
        }
      }
    }
  }

  /**
   * Forgets the witnesses of every part of frame `(epoch, seq)`: the frame was dropped on the way
   * (gap, limit), so the next copy any relay delivers counts as a first copy and is taken.
   */
  resetFrame(epoch: number, seq: number): void {
    const m = this.#byEpoch.get(epoch);
    if (!m) return;
    const parts = this.#parts.get(epoch)?.get(seq) ?? 1;
    for (let part = 0; part < parts; part++) if (m.delete(seq * PARTS + part)) this.#size--;
  }

  #retire(epoch: number, k: number, who: Set<number>): void {
    let mask = 0;
    for (const w of who) if (w < 31) mask |= 1 << w;
    const id = `${epoch}:${k}`;
    this.#retired.delete(id);
    this.#retired.set(id, mask);
    if (this.#retired.size > MAX_RETIRED) this.#retired.delete(this.#retired.keys().next().value!);
  }

  /**
   * For a message whose witnesses were forgotten at a commit: `'late'` when `who` had not
   * witnessed it (another relay's late copy; `who` is noted now), `'repeat'` when it had (the
   * same relay's copy again), `undefined` when it was never witnessed here (or was pruned).
   */
  afterCommit(key: PartKey, who: number): 'late' | 'repeat' | undefined {
    const id = `${key.epoch}:${key.seq * PARTS + key.part}`;
    const mask = this.#retired.get(id);
    if (mask === undefined) return undefined;
    const bit = who < 31 ? 1 << who : 0;
    if (bit === 0 || (mask & bit) !== 0) return 'repeat';
    this.#retired.set(id, mask | bit);
    return 'late';
  }

  /** Messages remembered. */
  get size(): number {
    return this.#size;
  }

  #dropOldest(): void {
    for (const [ep, m] of this.#byEpoch) {
      const first = m.keys().next();
      if (!first.done) {
        m.delete(first.value);
        this.#size--;
      }
      if (m.size === 0) this.#byEpoch.delete(ep);
      return;
    }
  }
}

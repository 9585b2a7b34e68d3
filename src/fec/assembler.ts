/**
 * The receiving side of FEC: collects shards and hands back each part as soon as it can be
 * rebuilt, without waiting for the rest.
 *
 * ```text
 * message bytes ──decodeShard──▶ Shard ──add()──▶ pending (epoch, seq, part)
 *                                                   │ k valid shards in (one copy)
 *                                                   ▼
 *                                joinShards ──▶ part bytes ──▶ decodePart (src/protocol/frame.ts)
 * ```
 */
import { FrameError, FrameRejectReason, InvalidArgumentError } from '../errors.js';
import { fecBackend, isalRebuild, warnFallbackOnce } from './isal.js';
import type { BufferPool } from './pool.js';
import { ReedSolomon } from './reed-solomon.js';
import { decodeShard, joinShards, sameCoding, ShardScheme, type Shard } from './shard.js';

/** Options of a `ShardAssembler`. */
export interface ShardAssemblerOptions {
  /** The app whose shards are accepted when `add()` is given message bytes. */
  readonly app: string;
  /** Most incomplete parts held at once; the oldest is evicted past it. Default 1 024. */
  readonly maxPendingParts?: number;
  /** Most payload bytes held by incomplete parts; the oldest are evicted past it. Default 256 MiB. */
  readonly maxPendingBytes?: number;
  /** How many rebuilt parts are remembered, to drop their late shards. Default 4 096. */
  readonly rememberRebuilt?: number;
  /**
   * Rebuild parts into buffers from this pool. The caller then gives each part back with
   * `releasePart(bytes)` once nothing reads it or any view of it (decoded records, image
   * payloads): a part never released is simply left to the garbage collector.
   */
  readonly pool?: BufferPool;
}

/** What an assembler did and refused. */
export interface ShardAssemblerCounters {
  /**
   * Shards not used, by reason: the `FrameError` reasons of `decodeShard`, `malformed` (a shard
   * that disagrees with its siblings), `stale` (older epoch than `discardBefore`, also counting
   * pending shards it drops), `duplicate` (a shard index already held), `late` (its part was
   * already rebuilt: the normal fate of the m extra shards) and `evicted` (held by a pending part
   * dropped to stay within the memory caps).
   */
  readonly rejected: Partial<Record<FrameRejectReason, number>>;
  /** Parts rebuilt. */
  rebuilt: number;
  /** Parts rebuilt with parity, i.e. before all k data shards were in. */
  rebuiltWithParity: number;
}

interface Pending {
  readonly first: Shard;
  readonly shards: (Shard | undefined)[];
  have: number;
  /** Payload bytes of the shards this entry holds. */
  bytes: number;
  /**
   * Reed-Solomon with k > 1, once k shards are in: the part being assembled (each data shard's
   * slices copied to their place), and the parity shards in codec layout.
   */
  out?: Buffer;
  parity?: Buffer;
  /** Bit i: shard i is copied in. */
  present: number;
}

/**
 * Rebuilds parts from shards, one instance per stream consumer.
 *
 * - **Early**: `add()` resolves the part's bytes with the shard that makes k valid shards of one
 *   (epoch, seq, part) (the first valid copy for copies); every later shard of that part is
 *   dropped as `late`.
 * - **Bounded**: rebuilt part ids are remembered in a set of bounded size; pending parts are
 *   capped in number and bytes, the oldest evicted first.
 * - **Fenced**: after `discardBefore(epoch)`, shards of older epochs are refused as `stale`.
 *
 * Not thread-safe in any sense that matters to JS: call `add()` from one consumer; concurrent
 * calls are fine, since every decision is taken synchronously before the rebuild is awaited.
 */
export class ShardAssembler {
  readonly counters: ShardAssemblerCounters = { rejected: {}, rebuilt: 0, rebuiltWithParity: 0 };
  readonly #app: string;
  readonly #maxParts: number;
  readonly #maxBytes: number;
  readonly #remember: number;
  readonly #pool: BufferPool | undefined;
  /** The memory of parts built in pooled buffers and handed out by `add()`. */
  readonly #lent = new WeakSet<ArrayBufferLike>();
  /** Incomplete parts, oldest first (Map keeps insertion order). */
  readonly #pending = new Map<string, Pending>();
  /** Ids of parts rebuilt (or being rebuilt), oldest first. */
  readonly #rebuilt = new Set<string>();
  #pendingBytes = 0;
  #floor = 0;

  constructor(opts: ShardAssemblerOptions) {
    this.#app = opts.app;
    this.#maxParts = positive('maxPendingParts', opts.maxPendingParts ?? 1024);
    this.#maxBytes = positive('maxPendingBytes', opts.maxPendingBytes ?? 256 * 1024 * 1024);
    this.#remember = positive('rememberRebuilt', opts.rememberRebuilt ?? 4096);
    this.#pool = opts.pool;
  }

  /**
   * Gives the buffer behind a part that `add()` returned back to the `pool` option's pool. Call
   * it only once nothing reads the part, or any view into it, any more. Parts that are views of
   * a shard (copies, k = 1) and parts of an assembler without a pool are ignored, as is a second
   * call.
   */
  releasePart(part: Uint8Array): void {
    if (!this.#pool || !this.#lent.has(part.buffer)) return;
    this.#lent.delete(part.buffer);
    this.#pool.release(part);
  }

  /**
   * Adds one shard, decoded or as message bytes (then decoded with the assembler's app).
   *
   * Resolves the rebuilt part bytes when this shard completes a set of k; `undefined` when the
   * shard is held for later, or dropped as `duplicate` or `late` (expected with redundancy:
   * counted, not thrown). Rejects with `FrameError` (counted by reason) when the bytes do not
   * decode, the shard disagrees with the shards of its part already held (`malformed`), or its
   * epoch is older than `discardBefore` (`stale`). Any other error is a bug.
   */
  async add(input: Shard | Uint8Array): Promise<Uint8Array | undefined> {
    let shard: Shard;
    if (input instanceof Uint8Array) {
      try {
        shard = decodeShard(input, this.#app);
      } catch (err) {
        if (err instanceof FrameError) this.#count(err.reason);
        throw err;
      }
    } else {
      shard = input;
    }
    if (shard.epoch < this.#floor) {
      this.#count(FrameRejectReason.Stale);
      throw new FrameError(
        FrameRejectReason.Stale,
        `shard of ${shard.epoch}/${shard.seq} part ${shard.part}: epoch ${shard.epoch} is older than the fence of epoch ${this.#floor}`,
      );
    }
    const id = `${shard.epoch}:${shard.seq}:${shard.part}`;
    if (this.#rebuilt.has(id)) {
      this.#count(FrameRejectReason.Late);
      return undefined;
    }
    let entry = this.#pending.get(id);
    if (!entry) {
      entry = {
        first: shard,
        shards: new Array<Shard | undefined>(shard.data + shard.parity),
        have: 0,
        bytes: 0,
        present: 0,
      };
      this.#pending.set(id, entry);
    } else if (!sameCoding(entry.first, shard)) {
      this.#count(FrameRejectReason.Malformed);
      throw new FrameError(
        FrameRejectReason.Malformed,
        `shard ${shard.index} of ${id} disagrees with its siblings (scheme, k, m, length or stripe)`,
      );
    }
    if (entry.shards[shard.index]) {
      this.#count(FrameRejectReason.Duplicate);
      return undefined;
    }
    entry.shards[shard.index] = shard;
    entry.have++;
    const inPlace = shard.scheme === ShardScheme.ReedSolomon && shard.data > 1;
    const need = shard.scheme === ShardScheme.Copies ? 1 : shard.data;
    if (entry.have < need) {
      entry.bytes += shard.payload.byteLength;
      this.#pendingBytes += shard.payload.byteLength;
      this.#evict(id);
      return undefined;
    }
    const native = inPlace && shard.parity > 0 && fecBackend() === 'isal';
    if (inPlace && !native) {
      // The k-th shard: the data shards held, and as many parity shards as data shards are
      // missing (which is every parity shard held), are copied to their places. Not earlier, so
      // a pending part holds nothing but its shards (a backfill keeps many parts pending).
      let parityNeeded = 0;
      for (let i = 0; i < shard.data; i++) if (!entry.shards[i]) parityNeeded++;
      for (const [i, s] of entry.shards.entries()) {
        if (!s) continue;
        if (i >= shard.data && parityNeeded-- <= 0) continue;
        this.#place(entry, s);
      }
    }
    // From here on the part is done as far as every later shard is concerned, even while the
    // rebuild below is still running on the threadpool.
    this.#pending.delete(id);
    this.#pendingBytes -= entry.bytes;
    this.#rebuilt.add(id);
    if (this.#rebuilt.size > this.#remember) this.#rebuilt.delete(this.#rebuilt.values().next().value!);
    let withParity = false;
    if (shard.scheme === ShardScheme.ReedSolomon) {
      for (let i = 0; i < shard.data; i++) if (!entry.shards[i]) withParity = true;
    }
    const part = native
      ? await this.#finishNative(entry)
      : inPlace
        ? await this.#finish(entry)
        : await joinShards(entry.shards, this.#pool);
    // joinShards built it in a pooled buffer unless it is a view of a shard's payload.
    if (this.#pool && !entry.shards.some((s) => s?.payload.buffer === part.buffer)) {
      this.#lent.add(part.buffer);
    }
    this.counters.rebuilt++;
    if (withParity) this.counters.rebuiltWithParity++;
    return part;
  }

  /**
   * Drops the pending shards of epochs older than `epoch` (counted as `stale`) and refuses every
   * later shard of those epochs. Call it after a fence of `epoch` is applied.
   */
  discardBefore(epoch: number): void {
    if (epoch <= this.#floor) return;
    this.#floor = epoch;
    for (const [id, e] of this.#pending) {
      if (e.first.epoch < epoch) this.#drop(id, e, FrameRejectReason.Stale);
    }
  }

  /** Parts waiting for more shards. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Payload bytes held by parts waiting for more shards. */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /**
   * Copies `shard`'s slices to their place in the part being assembled (data) or in the parity
   * scratch (parity).
   */
  #place(e: Pending, shard: Shard): void {
    const { data: k, parity: m, stripe } = shard;
    const size = shard.payload.byteLength;
    const stripes = size / stripe;
    const alloc = (n: number): Buffer => (this.#pool ? this.#pool.acquire(n) : Buffer.allocUnsafe(n));
    const src = Buffer.from(shard.payload.buffer, shard.payload.byteOffset, size);
    e.out ??= alloc(k * size);
    if (shard.index < k) {
      for (let j = 0; j < stripes; j++) {
        src.copy(e.out, (j * k + shard.index) * stripe, j * stripe, (j + 1) * stripe);
      }
    } else {
      e.parity ??= alloc(m * size);
      const r = shard.index - k;
      for (let j = 0; j < stripes; j++) {
        src.copy(e.parity, (j * m + r) * stripe, j * stripe, (j + 1) * stripe);
      }
    }
    e.present |= 1 << shard.index;
  }

  /**
   * The ISA-L backend: one fused native pass reads the held shards' payloads where they
   * are (no copies on this thread), writes the data slices to their places and computes the
   * missing ones.
   */
  async #finishNative(e: Pending): Promise<Uint8Array> {
    const { data: k, parity: m, stripe, length } = e.first;
    const size = e.first.payload.byteLength;
    const out = this.#pool ? this.#pool.acquire(k * size) : Buffer.allocUnsafe(k * size);
    await isalRebuild(
      k,
      m,
      stripe,
      size,
      e.shards.map((s) => s?.payload),
      out,
    );
    if (this.#pool) this.#lent.add(out.buffer);
    return out.subarray(0, length);
  }

  /** Computes an in-place part's missing data shards (the stripes in parallel), returns the part. */
  async #finish(e: Pending): Promise<Uint8Array> {
    if (e.first.parity > 0) warnFallbackOnce();
    const { data: k, parity: m, stripe, length } = e.first;
    const out = e.out!;
    const size = out.length / k;
    const stripes = size / stripe;
    const missing = ~e.present & ((1 << k) - 1);
    let coded: PromiseSettledResult<void>[] = [];
    if (missing !== 0) {
      const codec = new ReedSolomon(k, m);
      coded = await Promise.allSettled(
        Array.from({ length: stripes }, (_, j) =>
          codec.reconstruct(e.present, missing, {
            data: out,
            dataOffset: j * k * stripe,
            parity: e.parity!,
            parityOffset: j * m * stripe,
            shardSize: stripe,
          }),
        ),
      );
    }
    if (e.parity && this.#pool) this.#pool.release(e.parity);
    const error = coded.find((c) => c.status === 'rejected');
    if (error) throw (error as PromiseRejectedResult).reason;
    if (this.#pool) this.#lent.add(out.buffer);
    return out.subarray(0, length);
  }

  #evict(keep: string): void {
    for (const [id, e] of this.#pending) {
      if (this.#pending.size <= this.#maxParts && this.#pendingBytes <= this.#maxBytes) return;
      if (id !== keep) this.#drop(id, e, FrameRejectReason.Evicted);
    }
  }

  #drop(id: string, e: Pending, reason: FrameRejectReason): void {
    this.#pending.delete(id);
    this.#pendingBytes -= e.bytes;
    this.#count(reason, e.have);
  }

  #count(reason: FrameRejectReason, n = 1): void {
    this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + n;
  }
}

function positive(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 1)
    throw new InvalidArgumentError(`'${name}' must be a positive integer, got ${v}`);
  return v;
}

/**
 * A small typed wrapper over `@ronomon/reed-solomon`, the native Reed-Solomon erasure codec.
 *
 * The library is a N-API addon whose `main` is `binding.node`, so it is loaded with
 * `createRequire`. It has no types; the few calls used here are typed below. Its contract, and
 * what this wrapper guards, is:
 *
 * - A codec has k data shards (1..24) and m parity shards (1..6 in the library; 0 here, where
 *   there is nothing to compute).
 * - The k data shards lie back to back in one buffer, the m parity shards back to back in
 *   another, every shard `shardSize` bytes, a non-zero multiple of 8.
 * - One call computes the `targets` shards (a bit mask, bit i = shard i, parity after data)
 *   from at least k `sources` shards. It runs on libuv's threadpool and calls back once done;
 *   until then, the buffers must not change.
 * - **A zero-length (or detached) buffer aborts the process** inside the addon (an `assert` on a
 *   NULL data pointer), and so would any other C `assert` the checks in JS let through. Every
 *   argument is therefore checked here before the native call; a bad one is a `RangeError`.
 *
 * XOR parity for m = 1 is not a separate path: the library's m = 1 matrix is a row of ones, so
 * Reed-Solomon with one parity shard already is XOR parity, computed off the main thread.
 */
import { createRequire } from 'node:module';
import { ConfigError } from '../errors.js';

/** The library's API, as far as this wrapper uses it. */
interface NativeReedSolomon {
  readonly MAX_K: number;
  readonly MAX_M: number;
  create(k: number, m: number): Buffer;
  encode(
    context: Buffer,
    sources: number,
    targets: number,
    buffer: Buffer,
    bufferOffset: number,
    bufferSize: number,
    parity: Buffer,
    parityOffset: number,
    paritySize: number,
    end: (error?: Error) => void,
  ): void;
}

const native = createRequire(import.meta.url)('@ronomon/reed-solomon') as NativeReedSolomon;

/** Most data shards a codec can have (24). */
export const MAX_DATA_SHARDS: number = native.MAX_K;
/** Most parity shards a codec can have (6). */
export const MAX_PARITY_SHARDS: number = native.MAX_M;
/** Every shard size is a multiple of this. */
export const SHARD_ALIGN = 8;
/** Largest region one native call takes (its sizes are 32-bit). */
const MAX_REGION_BYTES = 0xffff_ffff;

/** Where the shards of one call lie. */
export interface ShardRegions {
  /** Holds the k data shards back to back, from `dataOffset`. */
  readonly data: Buffer;
  readonly dataOffset?: number;
  /** Holds the m parity shards back to back, from `parityOffset`. */
  readonly parity: Buffer;
  readonly parityOffset?: number;
  /** Bytes per shard: a multiple of 8, at least 8. */
  readonly shardSize: number;
}

/** Contexts by `k:m`: they are immutable and may be shared by concurrent calls. */
const contexts = new Map<string, Buffer>();

/**
 * The library's context for k data and m ≥ 1 parity shards: the bytes w, k, m, then the code's
 * m·w × k·w bit matrix (one byte per bit). The ISA-L backend (src/fec/isal.ts) computes with this
 * very matrix, so its parity is the library's. Cached; do not modify it.
 */
export function codecContext(data: number, parity: number): Buffer {
  validateShape(data, parity);
  if (parity === 0) throw new RangeError('a code without parity shards has no context');
  const key = `${data}:${parity}`;
  let ctx = contexts.get(key);
  if (!ctx) {
    ctx = native.create(data, parity);
    contexts.set(key, ctx);
  }
  return ctx;
}

/**
 * A Reed-Solomon codec of `data` data shards and `parity` parity shards. Instances are cheap
 * (the native context is cached per shape) and safe to use from concurrent calls on disjoint
 * buffers.
 */
export class ReedSolomon {
  /** k, the number of data shards. */
  readonly data: number;
  /** m, the number of parity shards. */
  readonly parity: number;
  readonly #context: Buffer | undefined;

  /**
   * Throws `ConfigError` naming `fec.data` or `fec.parity` unless 1 ≤ data ≤ 24 and
   * 0 ≤ parity ≤ 6 (integers).
   */
  constructor(data: number, parity: number) {
    validateShape(data, parity);
    this.data = data;
    this.parity = parity;
    if (parity === 0) return;
    this.#context = codecContext(data, parity);
  }

  /**
   * Computes all m parity shards from the k data shards. Resolves once the parity region is
   * written; the data region is only read. With m = 0, resolves at once.
   * Throws `RangeError` (before any native call) when the regions are out of bounds.
   */
  async encode(regions: ShardRegions): Promise<void> {
    if (this.parity === 0) return;
    const all = (1 << (this.data + this.parity)) - 1;
    const sources = (1 << this.data) - 1;
    await this.#run(sources, all & ~sources, regions);
  }

  /**
   * Computes only the parity shards in the bit mask `rows` (bit r = parity shard k + r) from the
   * k data shards, and writes only those. The other parity slots of the parity region are
   * declared present, so the library neither computes nor writes them (nor reads them: with
   * every data shard present it reads data only). That lets each parity row be written straight
   * into its own message buffer, `parityOffset` placed so that slot r lands on it: the other
   * slots may then overlap unrelated bytes, which stay untouched (a test checks both facts
   * against this library version). Throws `RangeError` like `encode`.
   */
  async encodeRows(rows: number, regions: ShardRegions): Promise<void> {
    if (this.parity === 0) return;
    const m = this.parity;
    if (!Number.isInteger(rows) || rows <= 0 || rows >= 1 << m) {
      throw new RangeError(`parity rows mask ${rows} must name rows of 0..${m - 1}`);
    }
    const targets = rows * (1 << this.data);
    const all = (1 << (this.data + m)) - 1;
    await this.#run(all & ~targets, targets, regions);
  }

  /**
   * Rebuilds the shards in the bit mask `missing` from the shards in `present` (bit i is shard
   * i; data shards are 0..k−1, parity shards k..k+m−1). `present` must name at least k shards,
   * `missing` between 1 and m, and the two must not overlap. Shards in neither mask may be
   * overwritten as scratch. Throws `RangeError` (before any native call) otherwise.
   */
  async reconstruct(present: number, missing: number, regions: ShardRegions): Promise<void> {
    const n = this.data + this.parity; // ≤ 30, so every mask fits a positive int32
    const all = (1 << n) - 1;
    if (!Number.isInteger(present) || !Number.isInteger(missing) || present & ~all || missing & ~all) {
      throw new RangeError(`shard masks must name shards 0..${n - 1}`);
    }
    if (present & missing) throw new RangeError('a shard cannot be both present and missing');
    if (popcount(present) < this.data) {
      throw new RangeError(`need ${this.data} present shards to rebuild, got ${popcount(present)}`);
    }
    const lost = popcount(missing);
    if (lost === 0) return;
    if (lost > this.parity) {
      throw new RangeError(`cannot rebuild ${lost} shards with ${this.parity} parity shards`);
    }
    await this.#run(present, missing, regions);
  }

  #run(sources: number, targets: number, r: ShardRegions): Promise<void> {
    const { data, parity, shardSize } = r;
    const dataOffset = r.dataOffset ?? 0;
    const parityOffset = r.parityOffset ?? 0;
    // The checks below are the reason this wrapper exists: each one stands between a bad value
    // and a C assert that would abort the whole process.
    if (!Buffer.isBuffer(data) || !Buffer.isBuffer(parity)) {
      throw new RangeError('data and parity regions must be Buffers');
    }
    if (!Number.isSafeInteger(shardSize) || shardSize < SHARD_ALIGN || shardSize % SHARD_ALIGN !== 0) {
      throw new RangeError(`shard size ${shardSize} is not a positive multiple of ${SHARD_ALIGN}`);
    }
    const dataSize = shardSize * this.data;
    const paritySize = shardSize * this.parity;
    if (dataSize > MAX_REGION_BYTES || paritySize > MAX_REGION_BYTES) {
      throw new RangeError(`shard size ${shardSize} makes a region over 4 GiB`);
    }
    checkRegion('data', data, dataOffset, dataSize);
    checkRegion('parity', parity, parityOffset, paritySize);
    const context = this.#context!;
    return new Promise<void>((resolve, reject) => {
      // The addon calls back with no arguments; the error parameter is kept for safety.
      native.encode(
        context,
        sources,
        targets,
        data,
        dataOffset,
        dataSize,
        parity,
        parityOffset,
        paritySize,
        (error?: Error) => (error ? reject(error) : resolve()),
      );
    });
  }
}

const replication = new ReedSolomon(1, 1);

/**
 * Copies `size` bytes (a positive multiple of 8) from `from` at `fromOffset` to `to` at
 * `toOffset` on libuv's threadpool, and resolves when done. It is the library's own replication
 * path: with k = 1 a "parity" shard is a copy of the data shard. Neither region may change, nor
 * be read (`to`), until it resolves. Throws `RangeError` (before any native call) on bad bounds.
 */
export function copyOffThread(
  from: Buffer,
  fromOffset: number,
  to: Buffer,
  toOffset: number,
  size: number,
): Promise<void> {
  return replication.encode({
    data: from,
    dataOffset: fromOffset,
    parity: to,
    parityOffset: toOffset,
    shardSize: size,
  });
}

/**
 * Checks a Reed-Solomon shape. Throws `ConfigError` naming `fec.data` or `fec.parity` unless
 * `data` is an integer 1..24 and `parity` an integer 0..6.
 */
export function validateShape(data: number, parity: number): void {
  if (!Number.isInteger(data) || data < 1 || data > MAX_DATA_SHARDS) {
    throw new ConfigError('fec.data', `must be an integer from 1 to ${MAX_DATA_SHARDS}, got ${String(data)}`);
  }
  if (!Number.isInteger(parity) || parity < 0 || parity > MAX_PARITY_SHARDS) {
    throw new ConfigError(
      'fec.parity',
      `must be an integer from 0 to ${MAX_PARITY_SHARDS}, got ${String(parity)}`,
    );
  }
}

function checkRegion(name: string, buf: Buffer, offset: number, size: number): void {
  // size > 0 holds (shard size ≥ 8, k ≥ 1, m ≥ 1 here), so a zero-length buffer always fails this.
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + size > buf.length || buf.length === 0) {
    throw new RangeError(
      `${name} region [${offset}, ${offset + size}) does not fit a buffer of ${buf.length} bytes`,
    );
  }
}

function popcount(x: number): number {
  let n = 0;
  for (let v = x >>> 0; v; v &= v - 1) n++;
  return n;
}

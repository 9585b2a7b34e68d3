/**
 * Reused buffers for shard messages and FEC scratch space.
 *
 * Why: a wire-ready encode of a large part writes 1.5× the part's bytes (4+2). Into fresh
 * `Buffer.allocUnsafe` memory that costs page faults and, through V8's external-memory
 * accounting, extra garbage collections: a fresh 16 MiB buffer filled by a copy ran at about
 * 0.37 GB/s here, a reused one at about 1.4 GB/s. A pool keeps released buffers and hands them
 * out again, so the steady state allocates nothing.
 *
 * **The lifetime rule.** A buffer goes back to the pool (`release`) only once nothing can still
 * read it. For a shard message handed to the NATS client (`@nats-io/transport-node` 3.4 /
 * `nats-core` 3.4) that is when its JetStream publish **resolved with an ack** from every relay
 * it was sent to, and it is in no re-send backlog:
 *
 * - `nc.publish` does **not** copy the payload: it pushes a reference onto the connection's
 *   outbound list (`DataBuffer.fill`). The bytes are copied (`DataBuffer.pack`, one new buffer
 *   per flush) only when the outbound list is flushed: inline when a publish finds 32 KiB or
 *   more already pending, otherwise on a microtask after the first command queued, and — while
 *   the connection is down — not until it reconnects, however long that takes. A buffer reused
 *   before then sends the *new* bytes under the *old* message id. (So large shards usually are
 *   copied synchronously, small ones never are: test/integration/fec-pool.test.ts shows a
 *   release before the ack corrupting small shards on a real server.)
 * - `js.publish` with `retries` publishes the same `Uint8Array` again after a timeout or a
 *   no-responders error.
 * - An ack proves the server received the bytes, so by then the client has packed and written
 *   them. A publish that **rejected** (timeout, disconnect) may still sit in the outbound list
 *   and be sent on reconnect: such a buffer is **never** released — it is left to the garbage
 *   collector, and the pool simply allocates a new one next time.
 * - A message sealed into an envelope (signed mode) is a new buffer: the shard buffer can be
 *   released as soon as `seal()` returned.
 *
 * `poison: true` (tests) fills every released buffer with 0xDB, so a message sent from a
 * buffer after its release fails its CRC at the receiver instead of passing unnoticed.
 */

/** Options of a `BufferPool`. */
export interface BufferPoolOptions {
  /** Most bytes kept idle in the pool; past it, released buffers are dropped. Default 128 MiB. */
  readonly maxIdleBytes?: number;
  /** Buffers under this size are not pooled (plain `Buffer.allocUnsafe`). Default 16 KiB. */
  readonly minPooledBytes?: number;
  /** Fill released buffers with 0xDB (for tests that catch use after release). */
  readonly poison?: boolean;
}

/** What a pool did. */
export interface BufferPoolStats {
  /** Buffers handed out from the idle list. */
  hits: number;
  /** Buffers allocated because none idle fitted. */
  misses: number;
  /** Buffers released back. */
  released: number;
  /** Bytes held idle now. */
  idleBytes: number;
}

/** Poison byte written over released buffers when `poison` is on. */
export const POISON_BYTE = 0xdb;

/**
 * A pool of `Buffer`s by power-of-two size class. `acquire(n)` returns a buffer of exactly `n`
 * bytes (a view of a pooled one of the class size); `release(buf)` takes back a buffer that
 * `acquire` returned (or any view of its memory). Not thread-safe (nothing in JS is); the pool never zeroes memory, so
 * callers write every byte they send.
 */
export class BufferPool {
  readonly stats: BufferPoolStats = { hits: 0, misses: 0, released: 0, idleBytes: 0 };
  readonly #idle = new Map<number, Buffer[]>();
  readonly #maxIdle: number;
  readonly #min: number;
  readonly #poison: boolean;
  /** The backing buffer of every buffer handed out, by its memory, so a release can find it. */
  readonly #out = new WeakMap<ArrayBufferLike, Buffer>();

  constructor(opts: BufferPoolOptions = {}) {
    this.#maxIdle = opts.maxIdleBytes ?? 128 * 1024 * 1024;
    this.#min = opts.minPooledBytes ?? 16 * 1024;
    this.#poison = opts.poison ?? false;
  }

  /** A buffer of `bytes` bytes (contents undefined). */
  acquire(bytes: number): Buffer {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`bad buffer size ${bytes}`);
    if (bytes < this.#min) return Buffer.allocUnsafe(bytes);
    const cls = sizeClass(bytes);
    const list = this.#idle.get(cls);
    let backing = list?.pop();
    if (backing) {
      this.stats.hits++;
      this.stats.idleBytes -= cls;
    } else {
      this.stats.misses++;
      // allocUnsafeSlow: a buffer of its own, never a slice of Node's shared small-buffer pool.
      backing = Buffer.allocUnsafeSlow(cls);
    }
    this.#out.set(backing.buffer, backing);
    return backing.subarray(0, bytes);
  }

  /**
   * Takes back a buffer from `acquire`, given as it or as any view of its memory. Call it only once nothing can read the buffer any more
   * (see the lifetime rule above). Releasing a buffer twice, or one this pool did not hand out,
   * is ignored.
   */
  release(buf: Uint8Array): void {
    const backing = this.#out.get(buf.buffer);
    if (!backing) return;
    this.#out.delete(buf.buffer);
    this.stats.released++;
    if (this.#poison) backing.fill(POISON_BYTE);
    if (this.stats.idleBytes + backing.length > this.#maxIdle) return;
    let list = this.#idle.get(backing.length);
    if (!list) {
      list = [];
      this.#idle.set(backing.length, list);
    }
    list.push(backing);
    this.stats.idleBytes += backing.length;
  }

  /** Drops every idle buffer. */
  clear(): void {
    this.#idle.clear();
    this.stats.idleBytes = 0;
  }
}

function sizeClass(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, n)));
}

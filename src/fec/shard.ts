/**
 * The shard wire format: forward error correction of frame parts. docs/fec.md describes the
 * same bytes in prose; when the two disagree, this file is right and the doc is a bug.
 *
 * With FEC on, each encoded frame part (the bytes `encodeFrame` makes, see
 * `src/protocol/frame.ts`) is cut into k data shards and m parity shards (Reed-Solomon), or sent
 * as n plain copies, and every shard travels as its own NATS message:
 *
 * ```text
 * off    size  field
 *   0       2  magic 0x52 0x53 ("RS"; a part starts with "RP")
 *   2       1  version (1)
 *   3       1  scheme: 1 Reed-Solomon, 2 copies
 *   4       1  k: data shards (Reed-Solomon 1..24; copies: 1)
 *   5       1  m: parity shards (Reed-Solomon 0..6; copies: n − 1, 0..29)
 *   6       1  shard index i, 0 ≤ i < k + m (Reed-Solomon: data shards 0..k−1, parity k..k+m−1)
 *   7       1  L = length of the app name (1..64)
 *   8       4  epoch (≥ 1) of the part
 *  12       8  seq (≥ 1, ≤ 2^53 − 1) of the part's frame
 *  20       2  part index within the frame
 *  22       2  reserved (0)
 *  24       4  N = the part's length in bytes (before padding)
 *  28       4  s = stripe bytes (Reed-Solomon: a multiple of 8, ≥ 8; copies: 0)
 *  32       4  P = payload bytes (Reed-Solomon: a multiple of s with k·P ≥ N; copies: N)
 *  36       L  app name, ASCII [A-Za-z0-9_-]
 *  36+L     P  payload
 *  36+L+P   4  CRC-32 (zlib) of bytes [0, 36+L+P)
 * ```
 *
 * All integers are big-endian and unsigned. As in the part format, every future version keeps
 * the magic, the version byte, L and P at these offsets and the CRC-32 trailer, so the checksum
 * is verified before the version is believed.
 *
 * **Reed-Solomon payloads.** The part, zero-padded to k·P bytes, is read as T = P / s stripes of
 * k·s bytes each. In stripe j, data shard i's slice is bytes [j·k·s + i·s, j·k·s + (i+1)·s), and
 * parity shard k+r's slice is parity row r of that stripe, computed by `@ronomon/reed-solomon`
 * from the stripe's k slices. A shard's payload is its T slices in stripe order. With T = 1 this
 * is the plain layout (data shard i = bytes [i·s, (i+1)·s) of the padded part); more stripes let
 * large parts be coded in parallel on the threadpool and straight from the part's memory. The
 * sender picks T = ⌈N / 1 MiB⌉ (at least 1) and s = ⌈N / (k·T)⌉ rounded up to a multiple of 8
 * (at least 8); a receiver only relies on the header's s and P.
 *
 * **Copies.** Each of the n shards carries the whole part as its payload.
 *
 * Any k valid shards of a Reed-Solomon part (any one copy) rebuild it: see `joinShards` and
 * `ShardAssembler`. The rebuilt bytes are a part again, verified once more by `decodePart`.
 */
import { crc32, crc32Combine, crc32OfXor } from './crc.js';
import { fecBackend, isalEncode, isalRebuild, warnFallbackOnce } from './isal.js';
import { BufferPool } from './pool.js';
import { ConfigError, FrameError, FrameRejectReason, InvalidArgumentError } from '../errors.js';
import {
  MAX_DATA_SHARDS,
  MAX_PARITY_SHARDS,
  ReedSolomon,
  SHARD_ALIGN,
  validateShape,
} from './reed-solomon.js';

/** How a part is made redundant: Reed-Solomon k data + m parity shards, or n plain copies. */
export type FecScheme = { readonly data: number; readonly parity: number } | { readonly copies: number };

/** Scheme byte values. */
export const ShardScheme = { ReedSolomon: 1, Copies: 2 } as const;
export type ShardScheme = (typeof ShardScheme)[keyof typeof ShardScheme];

/** Current shard wire version. */
export const SHARD_VERSION = 1;
/** Size of the fixed shard header, before the app name. */
export const SHARD_HEADER_BYTES = 36;
/** Most copies `{ copies: n }` may ask for. */
export const MAX_COPIES = 30;
/** Part bytes per Reed-Solomon stripe the sender aims for. */
export const STRIPE_TARGET_BYTES = 1 << 20;

const MAGIC0 = 0x52;
const MAGIC1 = 0x53;
const TRAILER_BYTES = 4;
const MAX_APP_BYTES = 64;
const MAX_U32 = 0xffff_ffff;
const APP_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** Scratch for parity shards during a rebuild: read by the codec only, returned right after. */
const scratchPool = new BufferPool({ maxIdleBytes: 64 * 1024 * 1024 });

/** Which part a shard belongs to: the frame's (epoch, seq) and the part index. */
export interface PartId {
  readonly epoch: number;
  readonly seq: number;
  readonly part: number;
}

/** One shard as decoded from one message. */
export interface Shard extends PartId {
  readonly scheme: ShardScheme;
  /** k (copies: 1). */
  readonly data: number;
  /** m (copies: n − 1). */
  readonly parity: number;
  /** This shard's index, 0 ≤ index < data + parity. */
  readonly index: number;
  /** The part's length before padding. */
  readonly length: number;
  /** Stripe bytes s (copies: 0). */
  readonly stripe: number;
  /** The shard's payload (a view into the message bytes). */
  readonly payload: Uint8Array;
}

/**
 * Checks a scheme and returns its shape. Throws `ConfigError` naming the option at fault
 * (`fec.data` 1..24, `fec.parity` 0..6, `fec.copies` 1..30).
 */
export function validateFecScheme(scheme: FecScheme): {
  scheme: ShardScheme;
  data: number;
  parity: number;
} {
  if ('copies' in scheme) {
    const n = scheme.copies;
    if (!Number.isInteger(n) || n < 1 || n > MAX_COPIES) {
      throw new ConfigError('fec.copies', `must be an integer from 1 to ${MAX_COPIES}, got ${String(n)}`);
    }
    return { scheme: ShardScheme.Copies, data: 1, parity: n - 1 };
  }
  validateShape(scheme.data, scheme.parity);
  return { scheme: ShardScheme.ReedSolomon, data: scheme.data, parity: scheme.parity };
}

/** Bytes of a shard's framing around its payload, for an app name of `appLength` characters. */
export function shardOverhead(appLength: number): number {
  return SHARD_HEADER_BYTES + appLength + TRAILER_BYTES;
}

/** The stripe layout the sender uses for a part of `length` bytes over k data shards. */
export function stripeLayout(length: number, data: number): { stripes: number; stripe: number } {
  const stripes = Math.max(1, Math.ceil(length / STRIPE_TARGET_BYTES));
  const stripe = Math.max(SHARD_ALIGN, alignUp(Math.ceil(length / (data * stripes))));
  return { stripes, stripe };
}

/** Payload bytes of each shard of a part of `partLength` bytes under `scheme`. */
export function shardPayloadBytes(partLength: number, scheme: FecScheme): number {
  const s = validateFecScheme(scheme);
  if (s.scheme === ShardScheme.Copies) return partLength;
  const { stripes, stripe } = stripeLayout(partLength, s.data);
  return stripes * stripe;
}

/**
 * The largest part length whose shards, under `scheme` and for an app name of `appLength`
 * characters, each fit in a message of `maxMessageBytes` (the server's max payload); every
 * shorter part fits too. Throws `RangeError` when not even a 1-byte part fits.
 */
export function maxPartBytes(maxMessageBytes: number, scheme: FecScheme, appLength: number): number {
  const s = validateFecScheme(scheme);
  const budget = maxMessageBytes - shardOverhead(appLength);
  const fits = (n: number): boolean => {
    if (s.scheme === ShardScheme.Copies) return n <= budget;
    // An upper bound of the payload that never decreases with n: T·s ≤ n/k + 8·T.
    const stripes = Math.max(1, Math.ceil(n / STRIPE_TARGET_BYTES));
    return Math.max(SHARD_ALIGN, Math.ceil(n / s.data) + SHARD_ALIGN * stripes) <= budget;
  };
  if (!fits(1)) throw new RangeError(`a message of ${maxMessageBytes} bytes leaves no room for a shard`);
  let lo = 1;
  let hi = Math.min(MAX_U32, Math.max(1, budget) * s.data);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** The JetStream dedupe id of one shard: unique per (app, epoch, seq, part, shard index). */
export function shardMessageId(app: string, epoch: number, seq: number, part: number, index: number): string {
  // Five dot-separated fields, where a part's id (src/protocol/subjects.ts) has four: the two
  // never collide, since app names have no dots.
  return `${app}.${epoch}.${seq}.${part}.s${index}`;
}

/**
 * Cuts one encoded part into shards, each a complete message (header, payload, CRC-32), in
 * index order: for Reed-Solomon the k data shards then the m parity shards; for copies, n
 * copies. Any k of them rebuild the part (any one copy).
 *
 * The parity is computed on libuv's threadpool, reading `partBytes` in place: do not change
 * those bytes until the promise settles. Padding is always zeros; no uninitialized memory is
 * ever sent. Throws `ConfigError` for a bad scheme and `InvalidArgumentError` for a bad app
 * name, id or a part over 4 GiB − 1 bytes.
 *
 * The messages are views into one new buffer, owned by the caller. On a hot path use
 * `encodeShardsPooled`, which takes that buffer from a `BufferPool` and gives it back.
 */
export async function encodeShards(
  app: string,
  id: PartId,
  partBytes: Uint8Array,
  scheme: FecScheme,
): Promise<Buffer[]> {
  return (await encodeInto(app, id, partBytes, scheme, undefined)).shards;
}

/** The shard messages of one part, in one buffer taken from a `BufferPool`. */
export interface ShardSet {
  /** The k + m messages in index order (copies: n), each a view into the pooled buffer. */
  readonly shards: readonly Buffer[];
  /**
   * Gives the buffer back to the pool. Call it only once nothing can read any of the messages
   * any more: every publish of every shard **resolved with an ack** and none waits in a
   * re-send backlog (or each was sealed into an envelope, which copies). After a publish that
   * rejected, never call it (the NATS client may still send the bytes on reconnect): drop the
   * set and let the garbage collector have it. Calling it twice is harmless.
   */
  release(): void;
}

/**
 * `encodeShards` into a pooled buffer: the same messages, byte for byte, but no allocation in
 * the steady state. Every shard costs one copy of its payload (data shards; parity is written
 * in place by the codec) and one CRC-32 pass, done slice by slice right before the copy so the
 * bytes are read from memory once. Read `ShardSet.release` for when the buffer may go back.
 */
export async function encodeShardsPooled(
  app: string,
  id: PartId,
  partBytes: Uint8Array,
  scheme: FecScheme,
  pool: BufferPool,
): Promise<ShardSet> {
  const { shards, slab } = await encodeInto(app, id, partBytes, scheme, pool);
  let released = false;
  return {
    shards,
    release: () => {
      if (released) return;
      released = true;
      pool.release(slab);
    },
  };
}

async function encodeInto(
  app: string,
  id: PartId,
  partBytes: Uint8Array,
  scheme: FecScheme,
  pool: BufferPool | undefined,
): Promise<{ shards: Buffer[]; slab: Buffer }> {
  const shape = validateFecScheme(scheme);
  if (!APP_PATTERN.test(app)) {
    throw new InvalidArgumentError(`app name '${app}' must be 1-64 characters of [A-Za-z0-9_-]`);
  }
  if (
    !Number.isInteger(id.epoch) ||
    id.epoch < 1 ||
    id.epoch > MAX_U32 ||
    !Number.isSafeInteger(id.seq) ||
    id.seq < 1 ||
    !Number.isInteger(id.part) ||
    id.part < 0 ||
    id.part > 0xffff
  ) {
    throw new InvalidArgumentError(
      `bad part id (epoch ${id.epoch}, seq ${id.seq}, part ${id.part}): epoch 1..2^32-1, seq 1..2^53-1, part 0..65535`,
    );
  }
  const part = Buffer.from(partBytes.buffer, partBytes.byteOffset, partBytes.byteLength);
  if (part.length > MAX_U32) throw new InvalidArgumentError(`a part of ${part.length} bytes is over 4 GiB`);
  const appBytes = Buffer.from(app, 'ascii');
  const head = { ...shape, appBytes, id, length: part.length };
  const alloc = (n: number): Buffer => (pool ? pool.acquire(n) : Buffer.allocUnsafe(n));
  const bodyAt = SHARD_HEADER_BYTES + appBytes.length;

  if (shape.scheme === ShardScheme.Copies) {
    const count = shape.parity + 1;
    const msgLen = bodyAt + part.length + TRAILER_BYTES;
    const slab = alloc(count * msgLen);
    const out: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      const msg = slab.subarray(i * msgLen, (i + 1) * msgLen);
      writeHeader(msg, head, i, 0, part.length);
      out.push(fill(msg, [part]));
    }
    return { shards: out, slab };
  }

  const { data: k, parity: m } = shape;
  const { stripes, stripe } = stripeLayout(part.length, k);
  const payload = stripes * stripe;
  const stripeBytes = k * stripe;
  const msgLen = bodyAt + payload + TRAILER_BYTES;
  const slab = alloc((k + m) * msgLen);
  const out: Buffer[] = [];
  for (let i = 0; i < k + m; i++) {
    const msg = slab.subarray(i * msgLen, (i + 1) * msgLen);
    writeHeader(msg, head, i, stripe, payload);
    out.push(msg);
  }
  if (m > 0 && fecBackend() === 'isal') {
    // One native pass per stripe (src/fec/isal.ts): copies, parity and every slice's CRC-32.
    const crcs = await isalEncode(part, slab, { data: k, parity: m, msgLen, bodyAt, stripe, stripes });
    for (let i = 0; i < k + m; i++) {
      const msg = out[i]!;
      msg.writeUInt32BE(crc32Combine(crc32(msg.subarray(0, bodyAt)), crcs[i]!, payload), bodyAt + payload);
    }
    return { shards: out, slab };
  }
  if (m > 0) warnFallbackOnce();
  // Each stripe's k data slices must lie back to back for the codec. Whole stripes are the part
  // itself; only a stripe the part does not fill is copied into zero-padded scratch.
  const regions: Buffer[] = [];
  let scratch: Buffer | undefined;
  for (let j = 0; j < stripes; j++) {
    const start = j * stripeBytes;
    if (start + stripeBytes <= part.length) {
      regions.push(part.subarray(start, start + stripeBytes));
    } else {
      scratch = alloc(stripeBytes);
      const n = start < part.length ? part.copy(scratch, 0, start) : 0;
      scratch.fill(0, n);
      regions.push(scratch);
    }
  }
  // Parity row r of stripe j is written by the codec straight into message k + r, at its place
  // in that message's payload: the parity region is positioned so that its slot r lands there
  // (`encodeRows` writes that slot only; the region stays inside the slab, see the bound below).
  // The threadpool runs only the parity math; this thread meanwhile checksums and copies the
  // data shards, then checksums each stripe's parity rows as soon as that stripe is coded.
  const codec = new ReedSolomon(k, m);
  const coded: Promise<unknown>[] = [];
  for (let j = 0; j < stripes && m > 0; j++) {
    const rows: Promise<void>[] = [];
    for (let r = 0; r < m; r++) {
      rows.push(
        codec.encodeRows(1 << r, {
          data: regions[j]!,
          parity: slab,
          // ≥ 0 since message k + r starts past r whole messages; ends by the slab's end since
          // (m − 1)(T − 1) ≥ 0.
          parityOffset: (k + r) * msgLen + bodyAt + j * stripe - r * stripe,
          shardSize: stripe,
        }),
      );
    }
    const stripeCoded = Promise.all(rows);
    // Awaited stripe by stripe below: a later stripe's failure must not go unhandled meanwhile.
    stripeCoded.catch(() => undefined);
    coded.push(stripeCoded);
  }
  try {
    // Data shards: each slice is checksummed, then copied while it is still in cache. The
    // payload's CRC is kept apart from the header's, for parity shard k below.
    const payloadCrcs: number[] = [];
    for (let i = 0; i < k; i++) {
      const msg = out[i]!;
      let crc = 0;
      for (let j = 0; j < stripes; j++) {
        const slice = regions[j]!.subarray(i * stripe, (i + 1) * stripe);
        crc = crc32(slice, crc);
        slice.copy(msg, bodyAt + j * stripe);
      }
      payloadCrcs.push(crc);
      msg.writeUInt32BE(crc32Combine(crc32(msg.subarray(0, bodyAt)), crc, payload), bodyAt + payload);
    }
    // Parity shard k (row 0) is the XOR of the k data payloads: the library's matrix has a row
    // of ones first (it refuses any other), and a test checks it. Its CRC follows from theirs
    // without reading it. Rows 1.. are checksummed stripe by stripe, as the codec finishes them.
    const crcs: number[] = [];
    for (let r = 1; r < m; r++) crcs[r] = crc32(out[k + r]!.subarray(0, bodyAt));
    for (let j = 0; j < coded.length && m > 1; j++) {
      await coded[j];
      for (let r = 1; r < m; r++) {
        const at = bodyAt + j * stripe;
        crcs[r] = crc32(out[k + r]!.subarray(at, at + stripe), crcs[r]);
      }
    }
    if (m > 0) {
      const head = crc32(out[k]!.subarray(0, bodyAt));
      crcs[0] = crc32Combine(head, crc32OfXor(payloadCrcs, payload), payload);
    }
    for (let r = 0; r < m; r++) out[k + r]!.writeUInt32BE(crcs[r]!, bodyAt + payload);
  } finally {
    // Always wait for every codec call: they write into the slab and read the scratch.
    const settled = await Promise.allSettled(coded);
    if (scratch && pool) pool.release(scratch);
    for (const s of settled) if (s.status === 'rejected') throw s.reason;
  }
  return { shards: out, slab };
}

interface Head {
  readonly scheme: ShardScheme;
  readonly data: number;
  readonly parity: number;
  readonly appBytes: Buffer;
  readonly id: PartId;
  readonly length: number;
}

/** Writes a shard header (and app name) at the start of `buf`. */
function writeHeader(buf: Buffer, h: Head, index: number, stripe: number, payload: number): void {
  buf[0] = MAGIC0;
  buf[1] = MAGIC1;
  buf[2] = SHARD_VERSION;
  buf[3] = h.scheme;
  buf[4] = h.data;
  buf[5] = h.parity;
  buf[6] = index;
  buf[7] = h.appBytes.length;
  buf.writeUInt32BE(h.id.epoch, 8);
  buf.writeUInt32BE(Math.floor(h.id.seq / 0x1_0000_0000), 12);
  buf.writeUInt32BE(h.id.seq >>> 0, 16);
  buf.writeUInt16BE(h.id.part, 20);
  buf.writeUInt16BE(0, 22);
  buf.writeUInt32BE(h.length, 24);
  buf.writeUInt32BE(stripe, 28);
  buf.writeUInt32BE(payload, 32);
  h.appBytes.copy(buf, SHARD_HEADER_BYTES);
}

/**
 * Copies `slices` into the payload of a shard whose header is written, in order, and writes the
 * CRC-32 trailer. Each slice is checksummed just before it is copied, while it is in cache: one
 * pass over memory instead of two.
 */
function fill(msg: Buffer, slices: readonly Buffer[]): Buffer {
  let at = SHARD_HEADER_BYTES + msg[7]!;
  let crc = crc32(msg.subarray(0, at));
  for (const slice of slices) {
    if (slice.length === 0) continue;
    crc = crc32(slice, crc);
    slice.copy(msg, at);
    at += slice.length;
  }
  msg.writeUInt32BE(crc, at);
  return msg;
}

/**
 * Decodes and verifies one shard message. Throws `FrameError` with the reason the receiver
 * counts: `truncated` (shorter than its header says), `magic` (not "RS"), `version`, `checksum`
 * (CRC-32 mismatch), `foreign` (another app's shard) or `malformed` (the bytes check out but a
 * field is out of range). The checks run in that order, the checksum before any field but the
 * lengths is believed. Never throws anything else, whatever the bytes.
 */
export function decodeShard(bytes: Uint8Array, expectedApp: string): Shard {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < SHARD_HEADER_BYTES + 1 + TRAILER_BYTES) {
    throw new FrameError(FrameRejectReason.Truncated, `${buf.length} bytes is shorter than any shard`);
  }
  if (buf[0] !== MAGIC0 || buf[1] !== MAGIC1) {
    throw new FrameError(FrameRejectReason.Magic, 'not a restartpoint shard (bad magic)');
  }
  const appLen = buf[7]!;
  const payloadLen = buf.readUInt32BE(32);
  const end = SHARD_HEADER_BYTES + appLen + payloadLen;
  if (end + TRAILER_BYTES !== buf.length) {
    if (buf[2] !== SHARD_VERSION) throw versionError(buf[2]!);
    throw new FrameError(
      end + TRAILER_BYTES > buf.length ? FrameRejectReason.Truncated : FrameRejectReason.Malformed,
      `header says ${end + TRAILER_BYTES} bytes, message has ${buf.length}`,
    );
  }
  if (crc32(buf.subarray(0, end)) !== buf.readUInt32BE(end)) {
    throw new FrameError(FrameRejectReason.Checksum, 'CRC-32 mismatch: the shard was corrupted');
  }
  if (buf[2] !== SHARD_VERSION) throw versionError(buf[2]!);
  if (appLen < 1 || appLen > MAX_APP_BYTES || buf.readUInt16BE(22) !== 0) {
    throw new FrameError(
      FrameRejectReason.Malformed,
      `bad app name length ${appLen} or non-zero reserved bytes`,
    );
  }
  const app = buf.toString('latin1', SHARD_HEADER_BYTES, SHARD_HEADER_BYTES + appLen);
  if (app !== expectedApp) {
    throw new FrameError(
      FrameRejectReason.Foreign,
      `shard of app '${app}' on the stream of app '${expectedApp}'`,
    );
  }
  const scheme = buf[3]!;
  const data = buf[4]!;
  const parity = buf[5]!;
  const index = buf[6]!;
  const epoch = buf.readUInt32BE(8);
  const seq = Number(buf.readBigUInt64BE(12));
  const part = buf.readUInt16BE(20);
  const length = buf.readUInt32BE(24);
  const stripe = buf.readUInt32BE(28);
  if (epoch < 1 || seq < 1 || !Number.isSafeInteger(seq)) {
    throw new FrameError(FrameRejectReason.Malformed, `bad part id (epoch ${epoch}, seq ${seq})`);
  }
  const problem = shapeProblem(scheme, data, parity, index, length, stripe, payloadLen);
  if (problem) throw new FrameError(FrameRejectReason.Malformed, problem);
  return {
    scheme: scheme as ShardScheme,
    data,
    parity,
    index,
    epoch,
    seq,
    part,
    length,
    stripe,
    payload: buf.subarray(SHARD_HEADER_BYTES + appLen, end),
  };
}

/** Why a shard's coding fields are inconsistent, or undefined when they are fine. */
function shapeProblem(
  scheme: number,
  k: number,
  m: number,
  index: number,
  length: number,
  stripe: number,
  payload: number,
): string | undefined {
  if (scheme === ShardScheme.Copies) {
    if (k !== 1 || m > MAX_COPIES - 1 || index > m) return `bad copies shard ${index} of ${m + 1} (k ${k})`;
    if (stripe !== 0 || payload !== length) return `copy of ${payload} bytes for a ${length}-byte part`;
    return undefined;
  }
  if (scheme !== ShardScheme.ReedSolomon) return `unknown FEC scheme ${scheme}`;
  if (k < 1 || k > MAX_DATA_SHARDS || m > MAX_PARITY_SHARDS || index >= k + m) {
    return `bad Reed-Solomon shard ${index} of ${k}+${m}`;
  }
  if (stripe < SHARD_ALIGN || stripe % SHARD_ALIGN !== 0 || payload < stripe || payload % stripe !== 0) {
    return `bad stripe ${stripe} for a ${payload}-byte payload`;
  }
  if (k * payload < length) return `${k} shards of ${payload} bytes cannot hold a ${length}-byte part`;
  return undefined;
}

function versionError(v: number): FrameError {
  return new FrameError(
    FrameRejectReason.Version,
    `shard wire version ${v} is not supported (this build speaks ${SHARD_VERSION}); upgrade every node to the same release`,
  );
}

/** Whether two shards claim the same coding of the same part (scheme, k, m, length, stripe, size). */
export function sameCoding(a: Shard, b: Shard): boolean {
  return (
    a.scheme === b.scheme &&
    a.data === b.data &&
    a.parity === b.parity &&
    a.length === b.length &&
    a.stripe === b.stripe &&
    a.payload.byteLength === b.payload.byteLength
  );
}

/**
 * Rebuilds a part from its shards, given by index (`shards[i]` is shard i or undefined). Needs
 * at least k present shards (one copy), all of the same part and coding; throws `FrameError`
 * (`malformed`) when they disagree or sit at the wrong index, `RangeError` when too few are
 * given. Uses data shards where present and parity only for the missing ones. The result may be
 * a view into a shard's payload (one copy, or k = 1).
 *
 * With `pool`, a rebuilt part that needed a buffer of its own is built in one from the pool
 * (`pool.acquire`); the result is then a view of it (`subarray(0, length)`), and whoever is done
 * with it may hand that buffer back — see `ShardAssembler.releasePart`.
 */
export async function joinShards(
  shards: readonly (Shard | undefined)[],
  pool?: BufferPool,
): Promise<Uint8Array> {
  let first: Shard | undefined;
  let count = 0;
  for (let i = 0; i < shards.length; i++) {
    const s = shards[i];
    if (!s) continue;
    first ??= s;
    if (
      s.index !== i ||
      !sameCoding(first, s) ||
      s.epoch !== first.epoch ||
      s.seq !== first.seq ||
      s.part !== first.part
    ) {
      throw new FrameError(
        FrameRejectReason.Malformed,
        `shard ${s.index} at ${i} disagrees with its siblings`,
      );
    }
    count++;
  }
  if (!first) throw new RangeError('no shards to join');
  if (first.scheme === ShardScheme.Copies) return first.payload;
  const { data: k, parity: m, stripe, length } = first;
  if (count < k) throw new RangeError(`need ${k} shards to rebuild a part, got ${count}`);
  const payload = first.payload.byteLength;
  const stripes = payload / stripe;
  // k = 1: the single data shard is the padded part itself.
  if (k === 1 && shards[0]) return shards[0].payload.subarray(0, length);

  const out = pool ? pool.acquire(k * payload) : Buffer.allocUnsafe(k * payload);
  if (m > 0 && fecBackend() === 'isal') {
    await isalRebuild(
      k,
      m,
      stripe,
      payload,
      Array.from({ length: k + m }, (_, i) => shards[i]?.payload),
      out,
    );
    return out.subarray(0, length);
  }
  const stripeBytes = k * stripe;
  let present = 0;
  let missing = 0;
  for (let i = 0; i < k; i++) {
    const s = shards[i];
    if (!s) {
      missing |= 1 << i;
      continue;
    }
    present |= 1 << i;
    for (let j = 0; j < stripes; j++) {
      out.set(s.payload.subarray(j * stripe, (j + 1) * stripe), j * stripeBytes + i * stripe);
    }
  }
  if (missing === 0) return out.subarray(0, length);
  warnFallbackOnce();

  // Only as many parity shards as there are missing data shards are copied in and used, into
  // scratch from a pool: only the codec reads it, and it goes back once the codec is done.
  const parity = scratchPool.acquire(stripes * m * stripe);
  let need = k - popcount(present);
  for (let r = 0; r < m && need > 0; r++) {
    const s = shards[k + r];
    if (!s) continue;
    present |= 1 << (k + r);
    need--;
    for (let j = 0; j < stripes; j++) {
      parity.set(s.payload.subarray(j * stripe, (j + 1) * stripe), (j * m + r) * stripe);
    }
  }
  const codec = new ReedSolomon(k, m);
  const settled = await Promise.allSettled(
    Array.from({ length: stripes }, (_, j) =>
      codec.reconstruct(present, missing, {
        data: out,
        dataOffset: j * stripeBytes,
        parity,
        parityOffset: j * m * stripe,
        shardSize: stripe,
      }),
    ),
  );
  scratchPool.release(parity);
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
  return out.subarray(0, length);
}

function alignUp(n: number): number {
  return Math.ceil(n / SHARD_ALIGN) * SHARD_ALIGN;
}

function popcount(x: number): number {
  let n = 0;
  for (let v = x >>> 0; v; v &= v - 1) n++;
  return n;
}

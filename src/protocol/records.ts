/**
 * Record bodies (the bytes inside a frame, after its parts are joined). Integers big-endian.
 *
 * ```text
 * writes (kind 1):  u32 count, then count ops:
 *                     u8 op (1 put, 2 delete) | u32 keyLen | key UTF-8 | put only: u32 valueLen | value
 * image  (kind 2):  u8 format (1 = full node:v8 image, 2 = delta, UTF-8 JSON over the typed tree)
 *                   | u8 codec of the payload (0 = none, 1 = brotli)
 *                   | u32 base checkpoint (the image a delta applies to; 0 for a full image)
 *                   | u32 stateVersion (>= 1, the app's declared version of its state's shape)
 *                   | u32 raw length (payload bytes once decoded; equals the stored length for codec 0)
 *                   | payload
 * seal   (kind 3):  u32 write frames in the checkpoint | u32 write ops | u32 image frames (always 1)
 * fence  (kind 4):  u8 nodeIdLen | node id UTF-8 of the new primary | u32 cutoff epoch. Its
 *                   header's checkpoint is the cutoff: the checkpoint the new primary resumed
 *                   from; the cutoff epoch is the epoch that sealed it (0 on a fresh app), so
 *                   the cut is named by identity, not just by number. Frames of older epochs
 *                   for checkpoints after it are void (standby/applier.ts). A fence without
 *                   the cutoff epoch (written before it existed) still decodes.
 * base   (kind 5):  u8 type, then by type (a base snapshot, src/history/base.ts; header: epoch =
 *                   the epoch that sealed the base's checkpoint C, seq = build tag × 2^20 + index,
 *                   checkpoint = C):
 *                   1 entries:  the body of a writes record holding only puts (the store at C)
 *                   2 image:    the body of an image record, a full image (the image at C)
 *                   3 manifest: UTF-8 JSON, see `BaseManifest` (names C, its epoch, the chunk
 *                               count and their SHA-256, key count, store digest, epoch history)
 * ```
 */
import buffer from 'node:buffer';
import { FrameError, FrameRejectReason } from '../errors.js';
import { MAX_KEY_BYTES, MAX_VALUE_BYTES, type WriteOp } from '../storage/adapter.js';
import { allowInPlace } from './frame.js';

/** Image payload formats. */
export const ImageFormat = { Full: 1, Delta: 2, DeltaAcross: 3 } as const;
export type ImageFormat = (typeof ImageFormat)[keyof typeof ImageFormat];

/** How an image payload is compressed (decided per frame by the primary). */
export const ImageCodec = { None: 0, Brotli: 1 } as const;
export type ImageCodec = (typeof ImageCodec)[keyof typeof ImageCodec];

/** Bytes of an image body before its payload. */
export const IMAGE_HEADER_BYTES = 14;

/** Largest raw (decoded) payload an image record may announce: the largest Buffer Node makes. */
const MAX_RAW_LENGTH = Math.min(0xffffffff, buffer.constants.MAX_LENGTH);

/** Body of an image record. */
export interface ImageRecord {
  readonly format: ImageFormat;
  /** How `payload` is compressed. */
  readonly codec: ImageCodec;
  /** The checkpoint whose image a delta applies to; 0 for a full image. */
  readonly base: number;
  /**
   * Format 3 (`DeltaAcross`, the first image of an epoch made against the resumed image): the
   * epoch of the frame that carried the base image. A standby holding checkpoint `base` from
   * another epoch refuses the delta. Absent for formats 1 and 2 (a delta of format 2 applies to
   * an image of its own epoch).
   */
  readonly baseEpoch?: number;
  /** The app's `stateVersion` when it took the image (>= 1). */
  readonly stateVersion: number;
  /** Bytes of the payload once decoded (its own length when `codec` is none). */
  readonly rawLength: number;
  /** The payload as stored: compressed per `codec`. */
  readonly payload: Uint8Array;
}

/** Body of a seal record: what the standby must hold before it commits the checkpoint. */
export interface SealRecord {
  readonly writeFrames: number;
  readonly writeOps: number;
  readonly imageFrames: number;
}

/** Body of a fence record. */
export interface FenceRecord {
  readonly nodeId: string;
  /**
   * The epoch of the checkpoint the new primary resumed from (its header's checkpoint): the cut
   * as (epoch, checkpoint). `undefined` in fences written before the field existed.
   */
  readonly cutoffEpoch?: number;
}

const OP_PUT = 1;
const OP_DELETE = 2;

/** Bytes `op` takes in a writes body; lets the batcher size frames without encoding twice. */
export function encodedOpSize(op: WriteOp): number {
  const k = Buffer.byteLength(op.key, 'utf8');
  return op.op === 'put' ? 9 + k + op.value.byteLength : 5 + k;
}

/** Encodes a batch of store writes. `sizeHint` is the sum of `encodedOpSize` if known. */
export function encodeWrites(ops: readonly WriteOp[], sizeHint?: number): Buffer {
  let size = 4;
  if (sizeHint === undefined) for (const op of ops) size += encodedOpSize(op);
  else size += sizeHint;
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32BE(ops.length, 0);
  let o = 4;
  for (const op of ops) {
    buf[o++] = op.op === 'put' ? OP_PUT : OP_DELETE;
    const klen = buf.write(op.key, o + 4, 'utf8');
    buf.writeUInt32BE(klen, o);
    o += 4 + klen;
    if (op.op === 'put') {
      buf.writeUInt32BE(op.value.byteLength, o);
      buf.set(op.value, o + 4);
      o += 4 + op.value.byteLength;
    }
  }
  if (o !== size) throw new Error(`internal: writes body size ${o} != ${size}`);
  return buf;
}

/**
 * Bytes a `WritesBuilder` keeps free before a body: the largest part header (frame.ts: 32 bytes
 * and an app name of up to 64), so a one-part frame is framed where the body already is.
 */
export const BODY_HEADROOM = 96;
/** Bytes kept free after a body: the part's CRC-32 trailer (frame.ts). */
export const BODY_TAILROOM = 4;

/** Where an appended op sits in a `WritesBuilder`'s body, and its value as stored there. */
export interface AppendedOp {
  /** The op with its value a view of the body's bytes (a copy of the caller's value). */
  readonly op: WriteOp;
  /** Byte range of the op's record in the body. */
  readonly start: number;
  readonly end: number;
}

/**
 * A writes body built one op at a time: each op's record is written into the body as the op
 * is appended, so a put's value is copied once, from the caller's buffer into the frame, and a
 * caller that reuses its buffer afterwards changes nothing. The returned op's value is a view of
 * that copy (what the local store gets). An op the store then refuses is `exclude`d: `finish`
 * leaves it out. The body sits between `BODY_HEADROOM` and `BODY_TAILROOM` free bytes, so
 * `encodeFramePart` frames a one-part frame in place (frame.ts); the bytes are those of
 * `encodeWrites` over the ops not excluded.
 */
export class WritesBuilder {
  #buf: Buffer;
  /** Body bytes written (the count field included). */
  #len = 4;
  #count = 0;
  /** Byte ranges of excluded ops, ascending. */
  #excluded: [number, number][] | undefined;
  #finished = false;

  /** `capacity`: body bytes to allocate at first (it grows when an op does not fit). */
  constructor(capacity: number) {
    this.#buf = Buffer.allocUnsafeSlow(BODY_HEADROOM + Math.max(capacity, 4) + BODY_TAILROOM);
  }

  /** Body bytes so far (ops appended, excluded ones included, and the count). */
  get bytes(): number {
    return this.#len;
  }

  /** Ops appended and not excluded. */
  get count(): number {
    return this.#count;
  }

  /** Appends `op` (`keyBytes`: its key's UTF-8 length). */
  append(op: WriteOp, keyBytes: number): AppendedOp {
    if (this.#finished) throw new Error('internal: append to a finished writes body');
    const size = op.op === 'put' ? 9 + keyBytes + op.value.byteLength : 5 + keyBytes;
    this.#reserve(size);
    const buf = this.#buf;
    const start = this.#len;
    let o = BODY_HEADROOM + start;
    buf[o] = op.op === 'put' ? OP_PUT : OP_DELETE;
    putU32(buf, o + 1, keyBytes);
    o += 5;
    const key = op.key;
    if (keyBytes === key.length) {
      // As many UTF-8 bytes as UTF-16 units: every character is ASCII, one byte each.
      for (let i = 0; i < keyBytes; i++) buf[o + i] = key.charCodeAt(i);
    } else if (buf.write(key, o, keyBytes, 'utf8') !== keyBytes) {
      throw new Error('internal: key length differs from its UTF-8 bytes');
    }
    o += keyBytes;
    let out: WriteOp;
    if (op.op === 'put') {
      const v = op.value;
      putU32(buf, o, v.byteLength);
      o += 4;
      buf.set(v, o);
      out = { op: 'put', key: op.key, value: buf.subarray(o, o + v.byteLength) };
    } else {
      out = op;
    }
    this.#len = start + size;
    this.#count++;
    return { op: out, start, end: this.#len };
  }

  /** Leaves the op appended at `start..end` out of the body (the store refused it). */
  exclude(start: number, end: number): void {
    (this.#excluded ??= []).push([start, end]);
    this.#count--;
  }

  /**
   * The body: a view between its head- and tailroom. Excluded ops are cut out (the bytes after
   * them move down; call only once no store call still reads a value view).
   */
  finish(): Buffer {
    this.#finished = true;
    const buf = this.#buf;
    if (this.#excluded) {
      let to = 4;
      let from = 4;
      for (const [s, e] of this.#excluded.sort((a, b) => a[0] - b[0])) {
        buf.copy(buf, BODY_HEADROOM + to, BODY_HEADROOM + from, BODY_HEADROOM + s);
        to += s - from;
        from = e;
      }
      buf.copy(buf, BODY_HEADROOM + to, BODY_HEADROOM + from, BODY_HEADROOM + this.#len);
      this.#len = to + (this.#len - from);
      this.#excluded = undefined;
    }
    buf.writeUInt32BE(this.#count, BODY_HEADROOM);
    const body = buf.subarray(BODY_HEADROOM, BODY_HEADROOM + this.#len);
    allowInPlace(body);
    return body;
  }

  /** Makes room for `size` more body bytes: a larger buffer, the bytes so far copied over. */
  #reserve(size: number): void {
    const need = BODY_HEADROOM + this.#len + size + BODY_TAILROOM;
    if (need <= this.#buf.byteLength) return;
    const grown = Buffer.allocUnsafeSlow(Math.max(need, 2 * this.#buf.byteLength));
    this.#buf.copy(grown, BODY_HEADROOM, BODY_HEADROOM, BODY_HEADROOM + this.#len);
    this.#buf = grown;
  }
}

/** `buf.writeUInt32BE(v, o)` without its argument checks (the builder sized `buf` itself). */
function putU32(buf: Buffer, o: number, v: number): void {
  buf[o] = v >>> 24;
  buf[o + 1] = v >>> 16;
  buf[o + 2] = v >>> 8;
  buf[o + 3] = v;
}

function malformed(what: string): FrameError {
  return new FrameError(FrameRejectReason.Malformed, what);
}

/** Decodes a writes body; throws `FrameError` on any inconsistency. Values are copies. */
export function decodeWrites(body: Uint8Array): WriteOp[] {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (buf.length < 4) throw malformed('writes body shorter than its count');
  const count = buf.readUInt32BE(0);
  // Each op takes at least 5 bytes: a count larger than that is a lie, refuse before allocating.
  if (count > (buf.length - 4) / 5) throw malformed(`writes body claims ${count} ops in ${buf.length} bytes`);
  const ops: WriteOp[] = new Array(count);
  let o = 4;
  const need = (n: number): void => {
    if (o + n > buf.length) throw malformed('writes body truncated');
  };
  for (let i = 0; i < count; i++) {
    need(5);
    const kind = buf[o]!;
    const klen = buf.readUInt32BE(o + 1);
    o += 5;
    // A key or value no adapter accepts would make the store's commit throw and stop the
    // standby: refuse it here, as a malformed frame, before reading it.
    if (klen > MAX_KEY_BYTES)
      throw malformed(`key of ${klen} bytes in writes body; keys are at most ${MAX_KEY_BYTES}`);
    need(klen);
    const key = buf.toString('utf8', o, o + klen);
    o += klen;
    if (klen === 0) throw malformed('empty key in writes body');
    if (kind === OP_PUT) {
      need(4);
      const vlen = buf.readUInt32BE(o);
      o += 4;
      if (vlen > MAX_VALUE_BYTES) {
        throw malformed(`value of ${vlen} bytes in writes body; values are at most ${MAX_VALUE_BYTES}`);
      }
      need(vlen);
      ops[i] = { op: 'put', key, value: new Uint8Array(buf.subarray(o, o + vlen)) };
      o += vlen;
    } else if (kind === OP_DELETE) {
      ops[i] = { op: 'delete', key };
    } else {
      throw malformed(`unknown write op ${kind}`);
    }
  }
  if (o !== buf.length) throw malformed(`${buf.length - o} trailing bytes after writes`);
  return ops;
}

/** Encodes an image record. */
export function encodeImage(rec: ImageRecord): Buffer {
  const across = rec.format === ImageFormat.DeltaAcross;
  const header = IMAGE_HEADER_BYTES + (across ? 4 : 0);
  const buf = Buffer.allocUnsafe(header + rec.payload.byteLength);
  buf[0] = rec.format;
  buf[1] = rec.codec;
  buf.writeUInt32BE(rec.base, 2);
  buf.writeUInt32BE(rec.stateVersion, 6);
  buf.writeUInt32BE(rec.rawLength, 10);
  if (across) buf.writeUInt32BE(rec.baseEpoch ?? 0, IMAGE_HEADER_BYTES);
  buf.set(rec.payload, header);
  return buf;
}

/**
 * Decodes an image record. Throws `FrameError` (`malformed`) for an unknown format or codec, a
 * full image with a base, a state version of 0, or a raw length that an uncompressed payload
 * does not have. The payload is not decompressed here (see image/compression.ts).
 */
export function decodeImage(body: Uint8Array): ImageRecord {
  if (body.byteLength < IMAGE_HEADER_BYTES) throw malformed('image body truncated');
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const format = buf[0]!;
  if (format !== ImageFormat.Full && format !== ImageFormat.Delta && format !== ImageFormat.DeltaAcross)
    throw malformed(`unknown image format ${format}`);
  const across = format === ImageFormat.DeltaAcross;
  if (across && body.byteLength < IMAGE_HEADER_BYTES + 4) throw malformed('image body truncated');
  const codec = buf[1]!;
  if (codec !== ImageCodec.None && codec !== ImageCodec.Brotli)
    throw malformed(`unknown image codec ${codec}`);
  const base = buf.readUInt32BE(2);
  if (format === ImageFormat.Full && base !== 0)
    throw malformed(`full image names base ${base}; it must be 0`);
  const stateVersion = buf.readUInt32BE(6);
  if (stateVersion < 1) throw malformed('image state version 0; versions start at 1');
  const rawLength = buf.readUInt32BE(10);
  const baseEpoch = across ? buf.readUInt32BE(IMAGE_HEADER_BYTES) : undefined;
  if (across && (baseEpoch! < 1 || base < 1))
    throw malformed(`delta across epochs names base ${base} of epoch ${baseEpoch}; both start at 1`);
  const payload = buf.subarray(IMAGE_HEADER_BYTES + (across ? 4 : 0));
  if (codec === ImageCodec.None && rawLength !== payload.byteLength) {
    throw malformed(`uncompressed image of ${payload.byteLength} bytes says it has ${rawLength}`);
  }
  if (rawLength > MAX_RAW_LENGTH)
    throw malformed(`image announces ${rawLength} bytes, more than this Node.js can hold`);
  return across
    ? { format, codec, base, baseEpoch, stateVersion, rawLength, payload }
    : { format, codec, base, stateVersion, rawLength, payload };
}

/** Encodes a seal record. */
export function encodeSeal(rec: SealRecord): Buffer {
  const buf = Buffer.allocUnsafe(12);
  buf.writeUInt32BE(rec.writeFrames, 0);
  buf.writeUInt32BE(rec.writeOps, 4);
  buf.writeUInt32BE(rec.imageFrames, 8);
  return buf;
}

/** Decodes a seal record. */
export function decodeSeal(body: Uint8Array): SealRecord {
  if (body.byteLength !== 12) throw malformed(`seal body is ${body.byteLength} bytes, expected 12`);
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const rec = {
    writeFrames: buf.readUInt32BE(0),
    writeOps: buf.readUInt32BE(4),
    imageFrames: buf.readUInt32BE(8),
  };
  // Every checkpoint carries its image: a seal without one would let store and image disagree.
  if (rec.imageFrames !== 1) throw malformed(`seal names ${rec.imageFrames} images; exactly 1 is required`);
  return rec;
}

/** Encodes a fence record. */
export function encodeFence(rec: FenceRecord): Buffer {
  const id = Buffer.from(rec.nodeId, 'utf8');
  if (id.length > 255) throw new RangeError('nodeId longer than 255 bytes');
  const withEpoch = rec.cutoffEpoch !== undefined;
  const buf = Buffer.allocUnsafe(1 + id.length + (withEpoch ? 4 : 0));
  buf[0] = id.length;
  id.copy(buf, 1);
  if (withEpoch) buf.writeUInt32BE(rec.cutoffEpoch!, 1 + id.length);
  return buf;
}

/** Decodes a fence record. */
export function decodeFence(body: Uint8Array): FenceRecord {
  if (body.byteLength < 2) throw malformed('fence body truncated');
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const idLen = buf[0]!;
  if (idLen < 1) throw malformed('fence body length does not match its node id');
  if (buf.length === 1 + idLen) return { nodeId: buf.toString('utf8', 1) };
  if (buf.length !== 1 + idLen + 4) throw malformed('fence body length does not match its node id');
  return { nodeId: buf.toString('utf8', 1, 1 + idLen), cutoffEpoch: buf.readUInt32BE(1 + idLen) };
}

/** Types of a base frame body (kind 5). */
export const BaseType = { Entries: 1, Image: 2, Manifest: 3 } as const;
export type BaseType = (typeof BaseType)[keyof typeof BaseType];

/** One fence of the epoch history: the primary of `epoch` resumed from `cutoff` of `cutoffEpoch`. */
export interface EpochCut {
  readonly epoch: number;
  readonly cutoff: number;
  /** `undefined` for a fence written before fences carried it. */
  readonly cutoffEpoch?: number;
}

/** The last frame of a base: what it holds and how to check it. */
export interface BaseManifest {
  /** Checkpoint C the base is a copy at. */
  readonly checkpoint: number;
  /** Epoch that sealed C. */
  readonly epoch: number;
  /** Build tag (random, per build): the seq of chunk i is tag × 2^20 + i + 1. */
  readonly tag: number;
  /** Node id of the builder. */
  readonly builder: string;
  /** Chunk frames before the manifest (entries chunks, then exactly one image chunk). */
  readonly chunks: number;
  /** SHA-256 (hex) of each chunk's body, in index order. */
  readonly chunkSha256: readonly string[];
  /** Store keys at C. */
  readonly keys: number;
  /** Digest of the store at C (src/storage/digest.ts, SHA-1 entry hashes), 32 hex digits. */
  readonly storeDigest: string;
  /** The fences applied up to C, in epoch order. */
  readonly history: readonly EpochCut[];
  /**
   * The lowest checkpoint whose frames every relay keeps once this base is in force: retention
   * purges only frames of checkpoints below it (and older bases).
   */
  readonly retainFrom: number;
  /** Wall-clock ms when the builder read the store. */
  readonly builtAt: number;
  /**
   * Frame seq of C's seal in `epoch`: the frames of that epoch after the base start right after
   * it (snapshot mode takes an epoch's frames strictly in seq order).
   */
  readonly sealSeq?: number;
}

/** Most chunks a base may have (the index is the low 20 bits of the seq). */
export const MAX_BASE_CHUNKS = 2 ** 20 - 2;

/** Encodes a base body of `type` around `inner` (an entries, image or manifest body). */
export function encodeBase(type: BaseType, inner: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(1 + inner.byteLength);
  buf[0] = type;
  buf.set(inner, 1);
  return buf;
}

/** Encodes a manifest body (type byte included). */
export function encodeManifest(m: BaseManifest): Buffer {
  return encodeBase(BaseType.Manifest, Buffer.from(JSON.stringify(m), 'utf8'));
}

const isCount = (v: unknown, min = 0): v is number => Number.isSafeInteger(v) && (v as number) >= min;

/** Decodes a base body; throws `FrameError` (malformed) for anything off. */
export function decodeBase(
  body: Uint8Array,
):
  | { type: typeof BaseType.Entries; ops: WriteOp[] }
  | { type: typeof BaseType.Image; image: ImageRecord }
  | { type: typeof BaseType.Manifest; manifest: BaseManifest } {
  if (body.byteLength < 1) throw malformed('base body empty');
  const inner = body.subarray(1);
  switch (body[0]) {
    case BaseType.Entries: {
      const ops = decodeWrites(inner);
      if (ops.some((op) => op.op !== 'put')) throw malformed('base entries chunk holds a delete');
      return { type: BaseType.Entries, ops };
    }
    case BaseType.Image: {
      const image = decodeImage(inner);
      if (image.format !== ImageFormat.Full) throw malformed('base image chunk holds a delta');
      return { type: BaseType.Image, image };
    }
    case BaseType.Manifest: {
      let m: Partial<BaseManifest>;
      try {
        m = JSON.parse(Buffer.from(inner).toString('utf8')) as Partial<BaseManifest>;
      } catch {
        throw malformed('base manifest is not JSON');
      }
      const history = m.history;
      const ok =
        isCount(m.checkpoint, 1) &&
        isCount(m.epoch, 1) &&
        isCount(m.tag, 0) &&
        typeof m.builder === 'string' &&
        isCount(m.chunks, 1) &&
        m.chunks <= MAX_BASE_CHUNKS &&
        Array.isArray(m.chunkSha256) &&
        m.chunkSha256.length === m.chunks &&
        m.chunkSha256.every((h) => typeof h === 'string' && /^[0-9a-f]{64}$/.test(h)) &&
        isCount(m.keys) &&
        typeof m.storeDigest === 'string' &&
        Array.isArray(history) &&
        history.every(
          (h: Partial<EpochCut>) =>
            isCount(h?.epoch, 1) &&
            isCount(h.cutoff) &&
            (h.cutoffEpoch === undefined || isCount(h.cutoffEpoch)),
        ) &&
        isCount(m.retainFrom, 1) &&
        m.retainFrom <= m.checkpoint + 1 &&
        typeof m.builtAt === 'number' &&
        (m.sealSeq === undefined || isCount(m.sealSeq, 1));
      if (!ok) throw malformed('base manifest lacks a field or has one out of range');
      return { type: BaseType.Manifest, manifest: m as BaseManifest };
    }
    default:
      throw malformed(`unknown base body type ${body[0]}`);
  }
}

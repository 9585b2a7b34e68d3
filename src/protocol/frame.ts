/**
 * The wire spec of restartpoint, in code. docs/protocol.md describes the same bytes in prose;
 * when the two disagree, this file is right and the doc is a bug.
 *
 * Every record travels as one or more **parts** (one NATS message each). A part is:
 *
 * ```text
 * off  size  field
 *   0     2  magic 0x52 0x50 ("RP")
 *   2     1  version (2; 1 was the image body without codec and state version)
 *   3     1  kind: 1 writes, 2 image, 3 seal, 4 fence, 5 base (a chunk or the manifest of a base
 *            snapshot, on the subject rp.<app>.base only; see records.ts and src/history/)
 *   4     2  flags (reserved, 0)
 *   6     1  L = length of the app name (1..64)
 *   7     1  reserved (0)
 *   8     4  epoch (>= 1), the fencing epoch of the primary that made the frame
 *  12     8  seq (>= 1), the frame's number within its epoch (the fence is 1)
 *  20     4  checkpoint: the checkpoint the frame belongs to (fence: the cutoff, the checkpoint
 *            the new primary resumed from)
 *  24     2  part index (0-based)
 *  26     2  part count (>= 1)
 *  28     4  B = body bytes in this part
 *  32     L  app name, ASCII [A-Za-z0-9_-]
 *  32+L   B  body bytes (the part's slice of the frame body)
 *  32+L+B 4  CRC-32 (zlib) of bytes [0, 32+L+B)
 * ```
 *
 * All integers are big-endian and unsigned. Every future version keeps the magic, the version
 * byte, the L and B fields at these offsets and the CRC-32 trailer, so the checksum is verified
 * before the version is believed: a corrupted version byte reads as corruption. A frame's body is the concatenation of its parts'
 * bodies in index order; bodies are described in `records.ts`.
 */
import { FrameError, FrameRejectReason } from '../errors.js';
import { crc32 } from '../fec/crc.js';

/** Record kinds. */
export const FrameKind = { Writes: 1, Image: 2, Seal: 3, Fence: 4 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/**
 * Kind 5: a piece of a base snapshot (src/history/base.ts). Kept out of `FrameKind`: base frames
 * travel on their own subject and never reach the applier; only the base loader reads them.
 */
export const BASE_KIND = 5;

/** Current wire version. 2: image bodies carry a codec, the state version and the raw length. */
export const PROTOCOL_VERSION = 2;
/**
 * The oldest wire version this build reads (docs/upgrades.md): a build of version N reads N and
 * N − 1, so nodes can be upgraded one at a time. Version 1 predates this rule (its fence had
 * another meaning), so version 2 reads only 2.
 */
export const MIN_READ_VERSION = 2;

/**
 * TEST ONLY: `RESTARTPOINT_TEST_WIRE_VERSION=3` (PROTOCOL_VERSION + 1) makes this build write,
 * and read up to, the next wire version with today's layout: it stands in for the next release
 * in the tests of a rolling upgrade of restartpoint itself (docs/upgrades.md). Any other value
 * is refused at load; unset, the build writes PROTOCOL_VERSION.
 */
export const TEST_WIRE_VERSION_ENV = 'RESTARTPOINT_TEST_WIRE_VERSION';

function wireVersionFromEnv(v: string | undefined): number {
  if (v === undefined || v === '') return PROTOCOL_VERSION;
  if (v !== String(PROTOCOL_VERSION) && v !== String(PROTOCOL_VERSION + 1)) {
    throw new RangeError(
      `${TEST_WIRE_VERSION_ENV}='${v}': this test-only hook takes ${PROTOCOL_VERSION + 1} (PROTOCOL_VERSION + 1) or ${PROTOCOL_VERSION}; unset it outside tests`,
    );
  }
  return Number(v);
}

/** The wire version this build writes (and the newest it reads): PROTOCOL_VERSION outside tests. */
export const WRITE_VERSION = wireVersionFromEnv(process.env[TEST_WIRE_VERSION_ENV]);

/**
 * A part of a wire version this build does not read. `newer`: a version above the newest it
 * reads (a node of a later release wrote it); `verified`: its CRC-32 checked out over the fields
 * every version keeps, so it is a genuine frame and not a corrupted one.
 */
export class WireVersionError extends FrameError {
  /** The version byte of the part. */
  readonly seen: number;
  /** The newest version this build reads. */
  readonly reads: number;
  readonly newer: boolean;
  readonly verified: boolean;
  constructor(seen: number, verified: boolean) {
    super(
      FrameRejectReason.Version,
      `wire version ${seen} is not supported (this build reads ${
        MIN_READ_VERSION === WRITE_VERSION ? `${WRITE_VERSION}` : `${MIN_READ_VERSION} to ${WRITE_VERSION}`
      }); ${seen > WRITE_VERSION ? 'a node of a newer release wrote it: upgrade this node (docs/upgrades.md)' : 'upgrade every node to a release that reads it'}`,
    );
    this.seen = seen;
    this.reads = WRITE_VERSION;
    this.newer = seen > WRITE_VERSION;
    this.verified = verified;
  }
}

/** Whether this build reads parts of wire version `v`. */
function readable(v: number): boolean {
  return v >= MIN_READ_VERSION && v <= WRITE_VERSION;
}
/** Size of the fixed part header, before the app name. */
export const HEADER_BYTES = 32;
const MAGIC0 = 0x52;
const MAGIC1 = 0x50;
const TRAILER_BYTES = 4;
const MAX_APP_BYTES = 64;
/** Largest part count a frame may have (u16). */
export const MAX_PARTS = 0xffff;

/** The identity and place of a frame. */
export interface FrameHeader {
  readonly kind: FrameKind;
  readonly epoch: number;
  readonly seq: number;
  readonly checkpoint: number;
}

/** A whole frame: header plus body bytes. */
export interface Frame extends FrameHeader {
  readonly body: Uint8Array;
}

/** One part as decoded from one message. */
export interface FramePart extends FrameHeader {
  readonly part: number;
  readonly parts: number;
  readonly body: Uint8Array;
}

/**
 * Splits a frame into encoded parts whose total size is at most `maxPartBytes` each (use the
 * server's max payload). Throws if the app name is invalid or the frame needs too many parts.
 */
export function encodeFrame(app: string, frame: Frame, maxPartBytes: number): Buffer[] {
  const layout = frameLayout(app, frame, maxPartBytes);
  const out: Buffer[] = [];
  for (let i = 0; i < layout.parts; i++) out.push(encodeFramePart(layout, frame, i));
  return out;
}

/** How `frame` is cut into parts of at most `maxPartBytes` (see `encodeFrame`). */
export interface FrameLayout {
  readonly appBytes: Buffer;
  readonly overhead: number;
  readonly room: number;
  readonly parts: number;
}

/** The layout of `frame`'s parts; throws as `encodeFrame` does. */
export function frameLayout(app: string, frame: Frame, maxPartBytes: number): FrameLayout {
  const appBytes = Buffer.from(app, 'ascii');
  const overhead = HEADER_BYTES + appBytes.length + TRAILER_BYTES;
  const room = maxPartBytes - overhead;
  if (room < 1) throw new RangeError(`maxPartBytes ${maxPartBytes} leaves no room for a body`);
  const parts = Math.max(1, Math.ceil(frame.body.byteLength / room));
  if (parts > MAX_PARTS) {
    throw new RangeError(
      `frame of ${frame.body.byteLength} bytes needs ${parts} parts; at most ${MAX_PARTS}`,
    );
  }
  return { appBytes, overhead, room, parts };
}

/** Bodies that may be framed in place (see `allowInPlace`). */
const framedInPlace = new WeakSet<Uint8Array>();

/**
 * Lets `encodeFramePart` frame `body` where it is, when the frame has one part: its header goes
 * into the bytes just before `body` and its CRC-32 into the 4 just after it (records.ts
 * `WritesBuilder` keeps that room free and owns those bytes). The part is then a view of that
 * memory, not a copy; framing it again writes the same bytes.
 */
export function allowInPlace(body: Uint8Array): void {
  framedInPlace.add(body);
}

/**
 * Part `i` of `frame`, encoded (a copy of its slice of the body, with header and CRC-32; or,
 * for a one-part frame whose body allows it, the body framed in place: see `allowInPlace`). One
 * part at a time lets a caller give the event loop a turn between parts of a large frame.
 */
export function encodeFramePart(layout: FrameLayout, frame: Frame, i: number): Buffer {
  const { appBytes, overhead, room, parts } = layout;
  const slice = frame.body.subarray(i * room, Math.min(frame.body.byteLength, (i + 1) * room));
  const head = HEADER_BYTES + appBytes.length;
  const inPlace =
    parts === 1 &&
    framedInPlace.has(frame.body) &&
    slice.byteOffset >= head &&
    slice.byteOffset + slice.byteLength + TRAILER_BYTES <= slice.buffer.byteLength;
  // A body made with room around it (`allowInPlace`) is framed where it is: no copy of it.
  const buf = inPlace
    ? Buffer.from(slice.buffer, slice.byteOffset - head, overhead + slice.byteLength)
    : Buffer.allocUnsafe(overhead + slice.byteLength);
  buf[0] = MAGIC0;
  buf[1] = MAGIC1;
  buf[2] = WRITE_VERSION;
  buf[3] = frame.kind;
  buf.writeUInt16BE(0, 4);
  buf[6] = appBytes.length;
  buf[7] = 0;
  buf.writeUInt32BE(frame.epoch, 8);
  buf.writeBigUInt64BE(BigInt(frame.seq), 12);
  buf.writeUInt32BE(frame.checkpoint, 20);
  buf.writeUInt16BE(i, 24);
  buf.writeUInt16BE(parts, 26);
  buf.writeUInt32BE(slice.byteLength, 28);
  appBytes.copy(buf, HEADER_BYTES);
  if (!inPlace) buf.set(slice, HEADER_BYTES + appBytes.length);
  const end = HEADER_BYTES + appBytes.length + slice.byteLength;
  buf.writeUInt32BE(crc32(buf.subarray(0, end)), end);
  return buf;
}

/**
 * Decodes and verifies one part. Throws `FrameError` (with a reason the standby counts) when the
 * bytes are truncated, carry the wrong magic, version or kind, fail the checksum, or belong to
 * another app.
 */
export function decodePart(bytes: Uint8Array, expectedApp: string): FramePart {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < HEADER_BYTES + 1 + TRAILER_BYTES) {
    throw new FrameError(FrameRejectReason.Truncated, `${buf.length} bytes is shorter than any frame`);
  }
  if (buf[0] !== MAGIC0 || buf[1] !== MAGIC1) {
    throw new FrameError(FrameRejectReason.Magic, 'not a restartpoint frame (bad magic)');
  }
  // The checksum is verified before any other field is believed, so a flipped version or kind
  // byte reads as corruption, not as a request to upgrade.
  const appLen = buf[6]!;
  const bodyLen = buf.readUInt32BE(28);
  const end = HEADER_BYTES + appLen + bodyLen;
  if (end + TRAILER_BYTES !== buf.length) {
    if (!readable(buf[2]!)) throw new WireVersionError(buf[2]!, false);
    throw new FrameError(
      end + TRAILER_BYTES > buf.length ? FrameRejectReason.Truncated : FrameRejectReason.Malformed,
      `header says ${end + TRAILER_BYTES} bytes, message has ${buf.length}`,
    );
  }
  if (crc32(buf.subarray(0, end)) !== buf.readUInt32BE(end)) {
    throw new FrameError(FrameRejectReason.Checksum, 'CRC-32 mismatch: the frame was corrupted');
  }
  if (!readable(buf[2]!)) throw new WireVersionError(buf[2]!, true);
  const kind = buf[3]!;
  if (kind < FrameKind.Writes || kind > BASE_KIND) {
    throw new FrameError(FrameRejectReason.Kind, `unknown record kind ${kind}`);
  }
  if (appLen < 1 || appLen > MAX_APP_BYTES || buf.readUInt16BE(4) !== 0 || buf[7] !== 0) {
    throw new FrameError(
      FrameRejectReason.Malformed,
      `bad app name length ${appLen} or non-zero reserved bytes`,
    );
  }
  const app = buf.toString('ascii', HEADER_BYTES, HEADER_BYTES + appLen);
  if (app !== expectedApp) {
    throw new FrameError(
      FrameRejectReason.Foreign,
      `frame of app '${app}' on the stream of app '${expectedApp}'`,
    );
  }
  const epoch = buf.readUInt32BE(8);
  const seq = Number(buf.readBigUInt64BE(12));
  const part = buf.readUInt16BE(24);
  const parts = buf.readUInt16BE(26);
  if (epoch < 1 || seq < 1 || !Number.isSafeInteger(seq) || parts < 1 || part >= parts) {
    throw new FrameError(
      FrameRejectReason.Malformed,
      `bad header fields (epoch ${epoch}, seq ${seq}, part ${part}/${parts})`,
    );
  }
  return {
    kind: kind as FrameKind,
    epoch,
    seq,
    checkpoint: buf.readUInt32BE(20),
    part,
    parts,
    body: buf.subarray(HEADER_BYTES + appLen, end),
  };
}

/** Bytes of a part's framing around its body, for an app name of `appLength` characters. */
export function partOverhead(appLength: number): number {
  return HEADER_BYTES + appLength + TRAILER_BYTES;
}

/** Options of a `PartAssembler`. */
export interface PartAssemblerOptions {
  /** Most incomplete multi-part frames held at once; the oldest is dropped past it. Default 1 024. */
  readonly maxPendingFrames?: number;
  /** Most body bytes held by incomplete frames; the oldest are dropped past it. Default 256 MiB. */
  readonly maxPendingBytes?: number;
}

/**
 * Reassembles multi-part frames. Single-part frames pass straight through. Parts of one frame
 * may arrive in any order and more than once; a part whose header disagrees with its siblings
 * is rejected. Incomplete frames are held until `discardBefore()` drops them, or until holding
 * them would pass `maxPendingFrames` / `maxPendingBytes` (the oldest go first, counted in
 * `evicted`): a part's header may announce up to 65 535 parts, so memory is spent only on the
 * parts that actually arrived, never on what a header claims.
 */
export class PartAssembler {
  readonly #pending = new Map<string, { first: FramePart; bodies: Map<number, Uint8Array>; bytes: number }>();
  /** Ids of recently completed multi-part frames, so a late duplicate part is not held forever. */
  readonly #done = new Set<string>();
  readonly #maxFrames: number;
  readonly #maxBytes: number;
  #bytes = 0;
  /** Incomplete frames dropped to stay within the caps. */
  evicted = 0;

  constructor(opts: PartAssemblerOptions = {}) {
    this.#maxFrames = opts.maxPendingFrames ?? 1024;
    this.#maxBytes = opts.maxPendingBytes ?? 256 * 1024 * 1024;
  }

  /** Adds a part; returns the whole frame once its last missing part is in. */
  add(p: FramePart): Frame | undefined {
    if (p.parts === 1)
      return { kind: p.kind, epoch: p.epoch, seq: p.seq, checkpoint: p.checkpoint, body: p.body };
    const id = `${p.epoch}:${p.seq}`;
    if (this.#done.has(id)) return undefined;
    let entry = this.#pending.get(id);
    if (!entry) {
      entry = { first: p, bodies: new Map(), bytes: 0 };
      this.#pending.set(id, entry);
    } else if (
      entry.first.parts !== p.parts ||
      entry.first.kind !== p.kind ||
      entry.first.checkpoint !== p.checkpoint
    ) {
      throw new FrameError(
        FrameRejectReason.Malformed,
        `part ${p.part} of frame ${id} disagrees with its siblings`,
      );
    }
    if (entry.bodies.has(p.part)) return undefined; // a duplicate part
    entry.bodies.set(p.part, p.body);
    entry.bytes += p.body.byteLength;
    this.#bytes += p.body.byteLength;
    if (entry.bodies.size < p.parts) {
      this.#evict(id);
      return undefined;
    }
    this.#pending.delete(id);
    this.#bytes -= entry.bytes;
    this.#done.add(id);
    if (this.#done.size > 1024) this.#done.delete(this.#done.values().next().value!);
    const bodies: Uint8Array[] = [];
    for (let i = 0; i < p.parts; i++) bodies.push(entry.bodies.get(i)!);
    const body = Buffer.concat(bodies);
    return { kind: p.kind, epoch: p.epoch, seq: p.seq, checkpoint: p.checkpoint, body };
  }

  /** Drops the oldest incomplete frames (but `keep`) while over a cap. */
  #evict(keep: string): void {
    for (const [id, e] of this.#pending) {
      if (this.#pending.size <= this.#maxFrames && this.#bytes <= this.#maxBytes) return;
      if (id === keep) continue;
      this.#pending.delete(id);
      this.#bytes -= e.bytes;
      this.evicted++;
    }
  }

  /** Drops incomplete frames of epochs older than `epoch` (after a fence). */
  discardBefore(epoch: number): void {
    for (const [id, e] of this.#pending) {
      if (e.first.epoch < epoch) {
        this.#pending.delete(id);
        this.#bytes -= e.bytes;
      }
    }
  }

  /** Number of frames waiting for parts. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Body bytes held by frames waiting for parts. */
  get pendingBytes(): number {
    return this.#bytes;
  }
}

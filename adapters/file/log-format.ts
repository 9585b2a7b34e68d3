/**
 * The byte layout of the file adapter's log, its writer and its scanner. docs/adapters-file.md
 * draws the same layout for people.
 *
 * ```text
 * log file   = "RPLOG\0\0\x01" (8 bytes: magic, framing 1) | record*
 * record     = u8 type | u64 bodyLength | body | u32 crc32(type, bodyLength and body)
 * type 1 snapshot  body = batch: the whole store, replacing everything before it
 * type 2 commit    body = batch: ops applied in order, then the meta replaced
 * type 3 put       body = u16 keyLength | key | value (the rest of the body)
 * type 4 delete    body = u16 keyLength | key
 * type 5 area      body = u64 area | batch (hasMeta = 0): writes into version area `area`,
 *                  invisible until a form record of that area
 * type 6 form      body = u64 area | u32 metaLength | meta: forms the snapshot of `area` (its
 *                  area records so far applied in log order, the meta replaced); areas at or
 *                  below `area` are done with
 * type 7 release   body = empty: every area written before it and not formed is dropped
 * batch      = u32 opCount | op* | u8 hasMeta | (u32 metaLength | meta when hasMeta = 1)
 * op         = u8 kind (1 put, 2 delete) | u16 keyLength | key | (put: u32 valueLength | value)
 * ```
 *
 * Integers are big-endian, keys UTF-8. Every log starts with one snapshot record and never holds
 * another. A record counts only when it is complete and its CRC matches: a record cut short by
 * a crash, or garbage after the last good record, ends the log there. So what a log says is
 * always the effect of a prefix of the records appended to it; a form record, the only record
 * that makes area writes visible, is in that prefix whole with every area record before it, or
 * not at all. Types 5-7 (snapshot mode) are new in store format 2 (`<dir>/FORMAT`); the framing,
 * and so the magic, did not change. A reader of format 1 would end the log at the first of them,
 * so it is refused such a store.
 */
import type { FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';

/** First 8 bytes of every log file. */
export const LOG_MAGIC = Buffer.from('RPLOG\0\0\x01', 'latin1');

/** Record types. */
export const RecordType = {
  Snapshot: 1,
  Commit: 2,
  Put: 3,
  Delete: 4,
  Area: 5,
  Form: 6,
  Release: 7,
} as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

const OP_PUT = 1;
const OP_DELETE = 2;
const HEAD_BYTES = 1 + 8;
const CRC_BYTES = 4;
/** Unit of buffered I/O; bounds the memory a record costs while written or scanned. */
export const CHUNK = 1024 * 1024;

/** A byte range in a log file. */
export interface Range {
  readonly offset: number;
  readonly length: number;
  /** CRC-32 of the bytes, checked when they are read back (absent: not checked). */
  readonly crc?: number;
}

/** One key's change: its value's new range, or `null` when deleted. */
export type Change = readonly [key: string, value: Range | null];

/** A record read back from a log. */
export interface ScannedRecord {
  readonly type: RecordType;
  /** Changes in log order (a later change of the same key wins). */
  readonly changes: readonly Change[];
  /** The meta after this record: a range, `null` for none, `undefined` when unchanged. */
  readonly meta: Range | null | undefined;
  /** The version area of an area or form record. */
  readonly area?: number;
}

/** Body size of a batch whose ops have these key and value sizes (value `null` = delete). */
export function batchBodyLength(
  ops: Iterable<readonly [keyBytes: number, valueBytes: number | null]>,
  metaBytes: number | undefined,
): number {
  let n = 4 + 1 + (metaBytes === undefined ? 0 : 4 + metaBytes);
  for (const [k, v] of ops) n += 1 + 2 + k + (v === null ? 0 : 4 + v);
  return n;
}

/** Start of a batch body: its op count. */
export function encodeBatchCount(count: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeUInt32BE(count, 0);
  return out;
}

/** Header of one op inside a batch: kind, key, and for a put the value length. */
export function encodeBatchOp(keyBytes: Buffer, valueBytes: number | null): Buffer {
  const out = Buffer.allocUnsafe(1 + 2 + keyBytes.length + (valueBytes === null ? 0 : 4));
  out[0] = valueBytes === null ? OP_DELETE : OP_PUT;
  out.writeUInt16BE(keyBytes.length, 1);
  keyBytes.copy(out, 3);
  if (valueBytes !== null) out.writeUInt32BE(valueBytes, 3 + keyBytes.length);
  return out;
}

/** Meta trailer of a batch: `hasMeta` and, when present, the meta length (the meta follows). */
export function encodeBatchMetaHead(metaBytes: number | undefined): Buffer {
  if (metaBytes === undefined) return Buffer.of(0);
  const out = Buffer.allocUnsafe(5);
  out[0] = 1;
  out.writeUInt32BE(metaBytes, 1);
  return out;
}

/** The `u64 area` that starts area and form record bodies. */
export function encodeArea(area: number): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeUInt32BE(Math.floor(area / 2 ** 32), 0);
  out.writeUInt32BE(area >>> 0, 4);
  return out;
}

/** Start of a form record body: the area, then the meta length (the meta follows). */
export function encodeFormHead(area: number, metaBytes: number): Buffer {
  const out = Buffer.allocUnsafe(12);
  encodeArea(area).copy(out, 0);
  out.writeUInt32BE(metaBytes, 8);
  return out;
}

/** Body size of a form record with a meta of `metaBytes`. */
export const formBodyLength = (metaBytes: number): number => 12 + metaBytes;

/** A whole release record. */
export function encodeReleaseRecord(): Buffer {
  const record = Buffer.allocUnsafe(HEAD_BYTES + CRC_BYTES);
  writeHead(record, RecordType.Release, 0);
  record.writeUInt32BE(crc32(record.subarray(0, HEAD_BYTES)), HEAD_BYTES);
  return record;
}

/** A whole put record, value copied in. */
export function encodePutRecord(
  keyBytes: Buffer,
  value: Uint8Array,
): { record: Buffer; valueOffset: number } {
  const body = 2 + keyBytes.length + value.length;
  const record = Buffer.allocUnsafe(HEAD_BYTES + body + CRC_BYTES);
  writeHead(record, RecordType.Put, body);
  record.writeUInt16BE(keyBytes.length, HEAD_BYTES);
  keyBytes.copy(record, HEAD_BYTES + 2);
  const valueOffset = HEAD_BYTES + 2 + keyBytes.length;
  record.set(value, valueOffset);
  record.writeUInt32BE(crc32(record.subarray(0, HEAD_BYTES + body)), HEAD_BYTES + body);
  return { record, valueOffset };
}

/** A whole delete record. */
export function encodeDeleteRecord(keyBytes: Buffer): Buffer {
  const body = 2 + keyBytes.length;
  const record = Buffer.allocUnsafe(HEAD_BYTES + body + CRC_BYTES);
  writeHead(record, RecordType.Delete, body);
  record.writeUInt16BE(keyBytes.length, HEAD_BYTES);
  keyBytes.copy(record, HEAD_BYTES + 2);
  record.writeUInt32BE(crc32(record.subarray(0, HEAD_BYTES + body)), HEAD_BYTES + body);
  return record;
}

function writeHead(out: Buffer, type: RecordType, bodyLength: number): void {
  out[0] = type;
  // Two u32 halves: a batch of large values can pass 4 GiB, and JS numbers are exact to 2^53.
  out.writeUInt32BE(Math.floor(bodyLength / 2 ** 32), 1);
  out.writeUInt32BE(bodyLength >>> 0, 5);
}

/**
 * Streams one large record (snapshot, commit, area or form) to `fh` at `start` without holding it in memory:
 * small pieces are gathered into CHUNK-sized writes, large values are written straight from the
 * caller's buffer. The body length is declared up front and checked at `finish()`.
 */
export class RecordWriter {
  readonly #fh: FileHandle;
  readonly #bodyEnd: number;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  /** Where the next flushed byte lands. */
  #written: number;
  #crc = 0;

  constructor(fh: FileHandle, start: number, type: RecordType, bodyLength: number) {
    this.#fh = fh;
    this.#written = start;
    this.#bodyEnd = start + HEAD_BYTES + bodyLength;
    const head = Buffer.allocUnsafe(HEAD_BYTES);
    writeHead(head, type, bodyLength);
    this.#queue(head);
  }

  /** File offset just past the record, once finished. */
  get end(): number {
    return this.#bodyEnd + CRC_BYTES;
  }

  /** Appends `bytes` to the body; resolves to the file offset they land at. */
  async add(bytes: Uint8Array): Promise<number> {
    const at = this.#written + this.#pendingBytes;
    if (bytes.length >= CHUNK) {
      await this.#flush();
      await this.#write(bytes);
    } else {
      this.#queue(bytes);
      if (this.#pendingBytes >= CHUNK) await this.#flush();
    }
    return at;
  }

  /** Writes the CRC. The record is then complete in the file (durable only after an fsync). */
  async finish(): Promise<void> {
    await this.#flush();
    if (this.#written !== this.#bodyEnd) {
      throw new Error(`log record body ends at ${this.#written}, declared to end at ${this.#bodyEnd}`);
    }
    const crc = Buffer.allocUnsafe(CRC_BYTES);
    crc.writeUInt32BE(this.#crc, 0);
    await writeFully(this.#fh, crc, this.#written);
  }

  #queue(bytes: Uint8Array): void {
    this.#pending.push(bytes);
    this.#pendingBytes += bytes.length;
  }

  async #flush(): Promise<void> {
    if (this.#pendingBytes === 0) return;
    const chunk = Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    await this.#write(chunk);
  }

  async #write(bytes: Uint8Array): Promise<void> {
    this.#crc = crc32(bytes, this.#crc);
    await writeFully(this.#fh, bytes, this.#written);
    this.#written += bytes.length;
  }
}

/**
 * Reads the records of a log in order, calling `accept` for each valid one; scanning stops at the
 * first record that is cut short, fails its CRC, or that `accept` refuses. Resolves to the
 * offset just past the last accepted record, or `undefined` when the file is not a log at all.
 */
export async function scanLog(
  fh: FileHandle,
  size: number,
  accept: (record: ScannedRecord) => boolean,
): Promise<number | undefined> {
  const r = new Reader(fh, size);
  const magic = await r.take(LOG_MAGIC.length);
  if (magic === undefined || !magic.equals(LOG_MAGIC)) return undefined;
  let end = r.pos;
  while (r.pos < size) {
    const record = await readRecord(r);
    if (record === undefined || !accept(record)) break;
    end = r.pos;
  }
  return end;
}

async function readRecord(r: Reader): Promise<ScannedRecord | undefined> {
  r.crc = 0;
  const head = await r.take(HEAD_BYTES);
  if (head === undefined) return undefined;
  const type = head[0] as RecordType;
  const bodyEnd = r.pos + head.readUInt32BE(1) * 2 ** 32 + head.readUInt32BE(5);
  if (bodyEnd + CRC_BYTES > r.size) return undefined;

  const changes: Change[] = [];
  let meta: Range | null | undefined;
  let area: number | undefined;
  const key = async (): Promise<string | undefined> => {
    const len = await r.take(2);
    if (len === undefined || r.pos + len.readUInt16BE(0) > bodyEnd) return undefined;
    return (await r.take(len.readUInt16BE(0)))?.toString('utf8');
  };
  const range = async (): Promise<Range | undefined> => {
    const len = await r.take(4);
    if (len === undefined || r.pos + len.readUInt32BE(0) > bodyEnd) return undefined;
    const at = { offset: r.pos, length: len.readUInt32BE(0) };
    const crc = await r.pass(at.length);
    return crc === undefined ? undefined : { ...at, crc };
  };

  const areaOf = async (): Promise<number | undefined> => {
    const b = await r.take(8);
    if (b === undefined) return undefined;
    const n = b.readUInt32BE(0) * 2 ** 32 + b.readUInt32BE(4);
    return Number.isSafeInteger(n) ? n : undefined;
  };
  switch (type) {
    case RecordType.Put: {
      const k = await key();
      if (k === undefined) return undefined;
      const at = { offset: r.pos, length: bodyEnd - r.pos };
      const crc = await r.pass(at.length);
      if (crc === undefined) return undefined;
      changes.push([k, { ...at, crc }]);
      break;
    }
    case RecordType.Delete: {
      const k = await key();
      if (k === undefined) return undefined;
      changes.push([k, null]);
      break;
    }
    case RecordType.Form: {
      area = await areaOf();
      const at = area === undefined ? undefined : await range();
      if (at === undefined) return undefined;
      meta = at;
      break;
    }
    case RecordType.Release:
      break;
    case RecordType.Snapshot:
    case RecordType.Commit:
    case RecordType.Area: {
      // An area record is an area number, then a batch without meta.
      if (type === RecordType.Area && (area = await areaOf()) === undefined) return undefined;
      const count = await r.take(4);
      if (count === undefined) return undefined;
      for (let i = count.readUInt32BE(0); i > 0; i--) {
        const kind = (await r.take(1))?.[0];
        const k = await key();
        if (k === undefined) return undefined;
        if (kind === OP_DELETE) {
          changes.push([k, null]);
        } else if (kind === OP_PUT) {
          const at = await range();
          if (at === undefined) return undefined;
          changes.push([k, at]);
        } else {
          return undefined;
        }
      }
      const hasMeta = (await r.take(1))?.[0];
      if (hasMeta === 1) {
        const at = await range();
        if (at === undefined) return undefined;
        meta = at;
      } else if (hasMeta === 0) {
        // For an area record, "no meta" leaves the meta alone; for the others it removes it.
        meta = type === RecordType.Area ? undefined : null;
      } else {
        return undefined;
      }
      if (type === RecordType.Area && meta !== undefined) return undefined;
      break;
    }
    default:
      return undefined;
  }
  if (r.pos !== bodyEnd) return undefined;
  const computed = r.crc;
  const stored = await r.take(CRC_BYTES);
  if (stored === undefined || stored.readUInt32BE(0) !== computed) return undefined;
  return { type, changes, meta, area };
}

/** Sequential buffered reads with a running CRC over every byte taken. */
class Reader {
  readonly #fh: FileHandle;
  readonly size: number;
  #buf = Buffer.alloc(0);
  #bufAt = 0;
  pos = 0;
  crc = 0;

  constructor(fh: FileHandle, size: number) {
    this.#fh = fh;
    this.size = size;
  }

  /** The next `n` bytes (a view valid until the next call), or `undefined` past the end. */
  async take(n: number): Promise<Buffer | undefined> {
    if (this.pos + n > this.size) return undefined;
    if (this.pos < this.#bufAt || this.pos + n > this.#bufAt + this.#buf.length) {
      this.#buf = Buffer.allocUnsafe(Math.min(Math.max(n, CHUNK), this.size - this.pos));
      await readFully(this.#fh, this.#buf, this.pos);
      this.#bufAt = this.pos;
    }
    const out = this.#buf.subarray(this.pos - this.#bufAt, this.pos - this.#bufAt + n);
    this.crc = crc32(out, this.crc);
    this.pos += n;
    return out;
  }

  /**
   * Consumes `n` bytes into the CRC without keeping them; resolves the CRC-32 of those bytes
   * alone (a value's own CRC, for the index), or `undefined` past the end.
   */
  async pass(n: number): Promise<number | undefined> {
    let own = 0;
    for (let left = n; left > 0;) {
      const step = Math.min(left, CHUNK);
      const bytes = await this.take(step);
      if (bytes === undefined) return undefined;
      own = crc32(bytes, own);
      left -= step;
    }
    return own;
  }
}

/** Reads exactly `buf.length` bytes at `position`. */
export async function readFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length;) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw new Error(`unexpected end of log file at ${position + done}`);
    done += bytesRead;
  }
}

/** Writes all of `buf` at `position`. */
export async function writeFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length;) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

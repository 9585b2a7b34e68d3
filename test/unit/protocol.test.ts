import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { crc32 } from 'node:zlib';
import { FrameError } from '../../src/errors.js';
import { FrameKind, PartAssembler, decodePart, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import {
  ImageCodec,
  ImageFormat,
  decodeFence,
  decodeImage,
  decodeSeal,
  decodeWrites,
  encodeFence,
  encodeImage,
  encodeSeal,
  encodeWrites,
} from '../../src/protocol/records.js';
import type { WriteOp } from '../../src/storage/adapter.js';

const frame = (body: Uint8Array, over: Partial<Frame> = {}): Frame => ({
  kind: FrameKind.Writes,
  epoch: 3,
  seq: 42,
  checkpoint: 7,
  body,
  ...over,
});

const reason = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    return (err as FrameError).reason;
  }
  throw new Error('expected a FrameError');
};

describe('frame codec', () => {
  it('round-trips a single-part frame with its header', () => {
    const [part, ...rest] = encodeFrame('ledger', frame(Buffer.from('hello')), 1 << 20);
    expect(rest).toHaveLength(0);
    const p = decodePart(part!, 'ledger');
    expect(p).toMatchObject({ kind: FrameKind.Writes, epoch: 3, seq: 42, checkpoint: 7, part: 0, parts: 1 });
    expect(Buffer.from(p.body).toString()).toBe('hello');
  });

  it('splits large bodies into parts and reassembles them in any order, ignoring duplicates', () => {
    const body = Buffer.alloc(10_000);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff;
    const parts = encodeFrame('ledger', frame(body, { seq: 9_007_199_254_740_991 }), 1000);
    expect(parts.length).toBeGreaterThan(10);
    for (const p of parts) expect(p.length).toBeLessThanOrEqual(1000);
    const asm = new PartAssembler();
    const reversed = [...parts].reverse();
    let whole: Frame | undefined;
    reversed.forEach((bytes, i) => {
      const got = asm.add(decodePart(bytes, 'ledger'));
      const dup = asm.add(decodePart(bytes, 'ledger')); // a duplicate part never completes a frame twice
      expect(dup).toBeUndefined();
      if (i < reversed.length - 1) expect(got).toBeUndefined();
      else whole = got;
    });
    expect(asm.pending).toBe(0);
    expect(whole?.seq).toBe(9_007_199_254_740_991);
    expect(Buffer.compare(Buffer.from(whole!.body), body)).toBe(0);
  });

  it('rejects corrupted, truncated, foreign and unknown frames with a reason', () => {
    const [good] = encodeFrame('ledger', frame(Buffer.from('payload')), 1 << 20);
    const flip = Buffer.from(good!);
    flip[flip.length - 6]! ^= 0x40;
    expect(reason(() => decodePart(flip, 'ledger'))).toBe('checksum');
    expect(reason(() => decodePart(good!.subarray(0, good!.length - 3), 'ledger'))).toBe('truncated');
    expect(reason(() => decodePart(good!.subarray(0, 10), 'ledger'))).toBe('truncated');
    expect(reason(() => decodePart(good!, 'other'))).toBe('foreign');
    const magic = Buffer.from(good!);
    magic[0] = 0;
    expect(reason(() => decodePart(magic, 'ledger'))).toBe('magic');
    const version = Buffer.from(good!);
    version[2] = 9;
    expect(reason(() => decodePart(version, 'ledger'))).toBe('checksum'); // a flipped byte is corruption
    version.writeUInt32BE(crc32(version.subarray(0, version.length - 4)), version.length - 4);
    expect(reason(() => decodePart(version, 'ledger'))).toBe('version'); // a well-formed frame of another version
  });

  it('never throws anything but FrameError on arbitrary or mutated bytes', () => {
    const [good] = encodeFrame(
      'ledger',
      frame(encodeWrites([{ op: 'put', key: 'k', value: new Uint8Array([1]) }])),
      1 << 20,
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(), fc.nat(255), (junk, at, byte) => {
        for (const input of [
          junk,
          (() => {
            const m = Buffer.from(good!);
            m[at % m.length] = byte;
            return m;
          })(),
        ]) {
          try {
            const p = decodePart(input, 'ledger');
            if (p.kind === FrameKind.Writes) decodeWrites(p.body);
          } catch (err) {
            if (!(err instanceof FrameError)) throw err;
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('record bodies', () => {
  it('round-trips write batches, including empty and binary values and non-ASCII keys', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({
              op: fc.constant('put' as const),
              key: fc.string({ minLength: 1, unit: 'grapheme' }),
              value: fc.uint8Array(),
            }),
            fc.record({ op: fc.constant('delete' as const), key: fc.string({ minLength: 1 }) }),
          ),
        ),
        (ops: WriteOp[]) => {
          expect(decodeWrites(encodeWrites(ops))).toEqual(
            ops.map((o) => (o.op === 'put' ? { ...o, value: new Uint8Array(o.value) } : o)),
          );
        },
      ),
      { numRuns: 200 },
    );
  });

  it('refuses a writes body whose count is a lie before allocating for it', () => {
    const body = Buffer.alloc(8);
    body.writeUInt32BE(0xffffffff, 0);
    expect(reason(() => decodeWrites(body))).toBe('malformed');
  });

  it('round-trips image, seal and fence records and rejects bad ones', () => {
    const img = {
      format: ImageFormat.Delta,
      codec: ImageCodec.None,
      base: 11,
      stateVersion: 3,
      rawLength: 7,
      payload: Buffer.from('{"a":1}'),
    };
    const back = decodeImage(encodeImage(img));
    expect(back).toMatchObject({
      format: ImageFormat.Delta,
      codec: ImageCodec.None,
      base: 11,
      stateVersion: 3,
      rawLength: 7,
    });
    expect(Buffer.from(back.payload).toString()).toBe('{"a":1}');
    expect(decodeSeal(encodeSeal({ writeFrames: 3, writeOps: 99, imageFrames: 1 }))).toEqual({
      writeFrames: 3,
      writeOps: 99,
      imageFrames: 1,
    });
    expect(decodeFence(encodeFence({ nodeId: 'nöde-a' }))).toEqual({ nodeId: 'nöde-a' });
    expect(reason(() => decodeSeal(Buffer.alloc(5)))).toBe('malformed');
    expect(reason(() => decodeImage(Buffer.from([9, 0, 0, 0, 0])))).toBe('malformed');
    const header = (format: number, codec: number, base: number, version: number, raw: number): Buffer => {
      const h = Buffer.alloc(14);
      h[0] = format;
      h[1] = codec;
      h.writeUInt32BE(base, 2);
      h.writeUInt32BE(version, 6);
      h.writeUInt32BE(raw, 10);
      return h;
    };
    expect(reason(() => decodeImage(header(9, 0, 0, 1, 0)))).toBe('malformed'); // unknown format
    expect(reason(() => decodeImage(header(1, 7, 0, 1, 0)))).toBe('malformed'); // unknown codec
    expect(reason(() => decodeImage(header(1, 0, 4, 1, 0)))).toBe('malformed'); // a full image with a base
    expect(reason(() => decodeImage(header(2, 0, 4, 0, 0)))).toBe('malformed'); // state version 0
    expect(reason(() => decodeImage(header(2, 0, 4, 1, 5)))).toBe('malformed'); // raw length is a lie
    expect(decodeImage(header(2, 1, 4, 1, 5)).rawLength).toBe(5); // compressed: checked when decoded
    expect(reason(() => decodeFence(Buffer.from([5, 65])))).toBe('malformed');
  });
});

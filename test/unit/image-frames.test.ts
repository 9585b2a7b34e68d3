import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { FrameError, ImageError, RestartpointError } from '../../src/errors.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import {
  MIN_COMPRESS_BYTES,
  SYNC_COMPRESS_BYTES,
  packImage,
  unpackImage,
} from '../../src/image/compression.js';
import { FrameKind, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import {
  ImageCodec,
  ImageFormat,
  encodeFence,
  encodeImage,
  encodeSeal,
  encodeWrites,
  type ImageRecord,
} from '../../src/protocol/records.js';
import type { Applier } from '../../src/standby/applier.js';
import { testIntake } from '../helpers/intake.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

const APP = 'chunks';

describe('image compression', () => {
  const text = (bytes: number): Buffer =>
    Buffer.from(
      JSON.stringify(
        Array.from({ length: Math.ceil(bytes / 40) }, (_, i) => ({ id: `user:${i}`, n: i % 97 })),
      ),
    );

  it('ships small payloads raw and compresses text when it pays, at once up to the sync limit', () => {
    const small = packImage(Buffer.alloc(MIN_COMPRESS_BYTES - 1, 'a'));
    expect(small).toMatchObject({ codec: ImageCodec.None, rawLength: MIN_COMPRESS_BYTES - 1 });
    const raw = text(100_000);
    const packed = packImage(raw);
    if (packed instanceof Promise) throw new Error('expected a synchronous result under the sync limit');
    expect(packed.codec).toBe(ImageCodec.Brotli);
    expect(packed.payload.byteLength).toBeLessThan(raw.byteLength / 4);
    expect(Buffer.from(unpackImage(packed.codec, packed.payload, packed.rawLength)).equals(raw)).toBe(true);
  });

  it('compresses large payloads off the event loop, and skips incompressible ones after a sample', async () => {
    const raw = text(SYNC_COMPRESS_BYTES * 4);
    const pending = packImage(raw);
    expect(pending).toBeInstanceOf(Promise);
    const packed = await pending;
    expect(packed.codec).toBe(ImageCodec.Brotli);
    expect(Buffer.from(unpackImage(packed.codec, packed.payload, packed.rawLength)).equals(raw)).toBe(true);
    const noise = randomBytes(SYNC_COMPRESS_BYTES * 4);
    const skipped = packImage(noise);
    if (skipped instanceof Promise) throw new Error('an incompressible payload should be decided at once');
    expect(skipped.codec).toBe(ImageCodec.None);
    expect(skipped.payload).toBe(noise);
  });

  it('refuses corrupt or mislabelled payloads with ImageError', () => {
    const packed = packImage(text(50_000));
    if (packed instanceof Promise) throw new Error('expected a synchronous result');
    const bad = Buffer.from(packed.payload);
    bad[Math.floor(bad.length / 2)]! ^= 0xff;
    const problems = [
      () => unpackImage(ImageCodec.Brotli, bad, packed.rawLength),
      () => unpackImage(ImageCodec.Brotli, packed.payload.subarray(0, 100), packed.rawLength),
      () => unpackImage(ImageCodec.Brotli, packed.payload, packed.rawLength - 1), // would write past it
      () => unpackImage(ImageCodec.Brotli, packed.payload, packed.rawLength + 1),
      () => unpackImage(ImageCodec.None, Buffer.alloc(3), 4),
    ];
    for (const problem of problems) expect(problem).toThrow(ImageError);
  });
});

/** Frames the way a primary of `epoch` numbers them, with its own image encoder. */
class Primary {
  seq = 1;
  readonly images = new ImageEncoder({ keyframeEvery: 100, maxChainShare: 1000 });
  constructor(readonly epoch: number) {}
  fence(cutoff = 0): Frame {
    return {
      kind: FrameKind.Fence,
      epoch: this.epoch,
      seq: this.seq++,
      checkpoint: cutoff,
      body: encodeFence({ nodeId: `n${this.epoch}` }),
    };
  }
  writes(cp: number, ops: WriteOp[]): Frame {
    return {
      kind: FrameKind.Writes,
      epoch: this.epoch,
      seq: this.seq++,
      checkpoint: cp,
      body: encodeWrites(ops),
    };
  }
  async image(cp: number, state: unknown): Promise<Frame> {
    const record = await this.images.encode(state, cp).record;
    return this.imageOf(cp, record);
  }
  imageOf(cp: number, record: ImageRecord): Frame {
    return {
      kind: FrameKind.Image,
      epoch: this.epoch,
      seq: this.seq++,
      checkpoint: cp,
      body: encodeImage(record),
    };
  }
  seal(cp: number, writeFrames: number, writeOps: number): Frame {
    return {
      kind: FrameKind.Seal,
      epoch: this.epoch,
      seq: this.seq++,
      checkpoint: cp,
      body: encodeSeal({ writeFrames, writeOps, imageFrames: 1 }),
    };
  }
}

/** Small parts, so that a state of a few dozen KB spans many. */
const PART_BYTES = 4096;

async function standby(): Promise<{
  adapter: StorageAdapter;
  chain: ImageChain;
  applier: Applier;
  rejected: string[];
  send: (bytes: Buffer) => Promise<void>;
  feed: (...frames: Frame[]) => Promise<void>;
}> {
  const adapter = memoryAdapter();
  await adapter.open();
  const chain = new ImageChain();
  const rejected: string[] = [];
  const { applier, take, feed } = testIntake({
    app: APP,
    adapter,
    images: chain,
    partBytes: PART_BYTES,
    onReject: (err) => rejected.push(err.reason),
  });
  const send = (bytes: Buffer): Promise<void> => take(bytes);
  return { adapter, chain, applier, rejected, send, feed };
}

const put = (key: string, v: string): WriteOp => ({ op: 'put', key, value: Buffer.from(v) });

/** A state whose image is incompressible and spans many parts. */
const bulky = (tag: string): { tag: string; blob: Uint8Array } => ({
  tag,
  blob: new Uint8Array(randomBytes(40_000)),
});

describe('multi-part images on the standby', () => {
  it('a corrupt chunk is rejected loudly; the checkpoint waits and the previous image stays until the part is re-sent', async () => {
    const s = await standby();
    const p = new Primary(1);
    await s.feed(p.fence(), p.writes(1, [put('a', '1')]), await p.image(1, bulky('one')), p.seal(1, 1, 1));
    expect(s.applier.position.checkpoint).toBe(1);
    await s.feed(p.writes(2, [put('a', '2')]));
    const img2 = await p.image(2, bulky('two')); // a delta replacing 40 KB of random bytes
    const parts = encodeFrame(APP, img2, PART_BYTES);
    expect(parts.length).toBeGreaterThan(5);
    const corrupt = Buffer.from(parts[3]!);
    corrupt[corrupt.length - 10]! ^= 0x01;
    for (const [i, part] of parts.entries()) await s.send(i === 3 ? corrupt : part);
    await s.feed(p.seal(2, 1, 1));
    expect(s.rejected).toEqual(['checksum']);
    expect(s.applier.position.checkpoint).toBe(1);
    expect(s.chain.checkpoint).toBe(1);
    expect((s.chain.materialize() as { tag: string }).tag).toBe('one');
    expect(Buffer.from((await s.adapter.get('a'))!).toString()).toBe('1');
    // The primary re-sends the part that was not acknowledged: the checkpoint completes.
    await s.send(parts[3]!);
    expect(s.applier.position.checkpoint).toBe(2);
    expect((s.chain.materialize() as { tag: string }).tag).toBe('two');
    expect(Buffer.from((await s.adapter.get('a'))!).toString()).toBe('2');
  });

  it('a missing chunk keeps the checkpoint out; a takeover resumes from the previous good image', async () => {
    const s = await standby();
    const old = new Primary(1);
    await s.feed(
      old.fence(),
      old.writes(1, [put('a', '1')]),
      await old.image(1, bulky('one')),
      old.seal(1, 1, 1),
    );
    const img2 = await old.image(2, bulky('two'));
    const parts = encodeFrame(APP, img2, PART_BYTES);
    await s.feed(old.writes(2, [put('a', '2')]));
    for (const [i, part] of parts.entries()) if (i !== 2) await s.send(part);
    await s.feed(old.seal(2, 1, 1));
    expect(s.applier.position.checkpoint).toBe(1);
    expect((s.chain.materialize() as { tag: string }).tag).toBe('one');
    // The old primary is gone; the new one resumes from checkpoint 1 and carries on.
    const next = new Primary(2);
    await s.feed(
      next.fence(1),
      next.writes(2, [put('b', 'new')]),
      await next.image(2, { tag: 'new' }),
      next.seal(2, 1, 1),
    );
    expect(s.applier.position).toMatchObject({ epoch: 2, checkpoint: 2 });
    expect(s.chain.materialize()).toEqual({ tag: 'new' });
    expect(Buffer.from((await s.adapter.get('a'))!).toString()).toBe('1');
    // The lost part turns up late: it belongs to the deposed history and changes nothing.
    await s.send(parts[2]!);
    expect(s.chain.materialize()).toEqual({ tag: 'new' });
  });

  it('an image that arrives whole but does not decode fails loudly, naming the checkpoint; the previous image stays', async () => {
    const s = await standby();
    const p = new Primary(1);
    const one = bulky('one');
    await s.feed(p.fence(), p.writes(1, [put('a', '1')]), await p.image(1, one), p.seal(1, 1, 1));
    const good = await new ImageEncoder().encode({ text: 'x'.repeat(50_000) }, 2).record;
    expect(good.codec).toBe(ImageCodec.Brotli);
    // Checksums pass (the frame is built from these bytes), but the compressed stream is cut short.
    const truncated: ImageRecord = {
      ...good,
      payload: good.payload.subarray(0, good.payload.byteLength - 20),
    };
    await s.feed(p.writes(2, [put('a', '2')]), p.imageOf(2, truncated));
    const err = await s.feed(p.seal(2, 1, 1)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RestartpointError);
    expect((err as RestartpointError).code).toBe('ERR_IMAGE');
    expect((err as Error).message).toMatch(/checkpoint 2 cannot be applied: brotli image payload/);
    expect(s.applier.position.checkpoint).toBe(1);
    expect(s.chain.checkpoint).toBe(1);
    expect(s.chain.materialize()).toEqual(one);
    expect(Buffer.from((await s.adapter.get('a'))!).toString()).toBe('1');
    expect(err).not.toBeInstanceOf(FrameError);
  });

  it('rejects a delta whose stateVersion differs from its base image', () => {
    const chain = new ImageChain();
    const v1 = new ImageEncoder({ stateVersion: 1, maxChainShare: 1000 });
    const first = v1.encode({ a: 1 }, 1).record as ImageRecord;
    chain.check(1, first);
    chain.apply(1, first);
    expect(chain.stateVersion).toBe(1);
    const delta = v1.encode({ a: 2 }, 2).record as ImageRecord;
    expect(delta.format).toBe(ImageFormat.Delta);
    expect(() => chain.check(2, { ...delta, stateVersion: 2 })).toThrow(/stateVersion 2.*base image has 1/);
  });
});

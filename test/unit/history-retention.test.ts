/**
 * Retention bookkeeping (src/history/retention.ts) and base records (records.ts), pure logic.
 */
import { describe, expect, it } from 'vitest';
import { RetentionTracker } from '../../src/history/retention.js';
import { baseFrames } from '../../src/history/base.js';
import { BaseType, ImageCodec, ImageFormat, decodeBase, encodeManifest } from '../../src/protocol/records.js';
import { FrameError } from '../../src/errors.js';

/** Relay `relay` stores checkpoint cp's 3 frames (epoch e, frame seqs from `fseq`) at `seq`... */
function feed(t: RetentionTracker, relay: number, seq: number, epoch: number, fseq: number, n: number): void {
  for (let i = 0; i < n; i++) t.record(relay, seq + i, epoch, fseq + i, 100);
}

describe('retention cut', () => {
  it('keeps every message of checkpoints after x, per relay, whatever their stream seqs', () => {
    const t = new RetentionTracker(2);
    // Epoch 1: fence (seq 1), then checkpoint c = frames 3c-1, 3c, 3c+1 (seal).
    t.record(0, 1, 1, 1, 10);
    t.record(1, 5, 1, 1, 10); // relay 1 numbers differently
    for (let c = 1; c <= 10; c++) {
      feed(t, 0, 3 * c - 1, 1, 3 * c - 1, 3);
      feed(t, 1, 3 * c + 3, 1, 3 * c - 1, 3);
      t.committed(1, c, 3 * c + 1, 0);
    }
    const history = [{ epoch: 1, cutoff: 0, cutoffEpoch: 0 }];
    // Keep checkpoints > 6: the first message of checkpoint 7 is stream seq 20 on relay 0, 24 on 1.
    expect(t.cut(0, 6, history)).toBe(20);
    expect(t.cut(1, 6, history)).toBe(24);
    // Nothing is ever cut past what was read.
    expect(t.cut(0, 10, history)).toBe(32);
  });

  it('a later fence makes the whole older epoch purgeable, its void frames included', () => {
    const t = new RetentionTracker(1);
    t.record(0, 1, 1, 1, 10);
    feed(t, 0, 2, 1, 2, 3); // checkpoint 1 of epoch 1
    t.committed(1, 1, 4, 0);
    feed(t, 0, 5, 1, 5, 3); // checkpoint 2 of epoch 1: void (never committed)
    t.record(0, 8, 2, 1, 10); // fence of epoch 2, cut at 1
    feed(t, 0, 9, 2, 2, 3); // checkpoint 2 of epoch 2
    t.committed(2, 2, 4, 0);
    feed(t, 0, 12, 2, 5, 3); // checkpoint 3 of epoch 2
    t.committed(2, 3, 7, 0);
    const history = [
      { epoch: 1, cutoff: 0, cutoffEpoch: 0 },
      { epoch: 2, cutoff: 1, cutoffEpoch: 1 },
    ];
    // x = 0: the fence of epoch 2 cuts at 1 > 0, so epoch 1 is not history yet.
    expect(t.cut(0, 0, history)).toBe(1);
    // x = 2: epoch 1 is history (void frames too), epoch 2 up to its seal of 2 (seq 4).
    expect(t.cut(0, 2, history)).toBe(12);
  });

  it('the window shrinks to fit `bytes` and `ms`, in whole checkpoints', () => {
    const t = new RetentionTracker(1);
    t.record(0, 1, 1, 1, 100);
    for (let c = 1; c <= 100; c++) {
      feed(t, 0, 3 * c - 1, 1, 3 * c - 1, 3);
      t.committed(1, c, 3 * c + 1, c * 1000);
    }
    const history = [{ epoch: 1, cutoff: 0, cutoffEpoch: 0 }];
    expect(t.purgeThrough(100, { checkpoints: 50, bytes: 1e9, ms: 1e12 }, history, 100_000)).toBe(50);
    // 300 bytes per checkpoint: 10 checkpoints fit in 3 000 bytes.
    expect(t.purgeThrough(100, { checkpoints: 50, bytes: 3_000, ms: 1e12 }, history, 100_000)).toBe(90);
    // Committed more than 20 s before t = 100 s: checkpoints up to 79 go.
    expect(t.purgeThrough(100, { checkpoints: 50, bytes: 1e9, ms: 20_000 }, history, 100_000)).toBe(79);
    t.forget(0, t.cut(0, 50, history), 50);
    expect(t.recorded(0)).toBe(150);
  });
});

describe('base records', () => {
  const image = {
    format: ImageFormat.Full,
    codec: ImageCodec.None,
    base: 0,
    stateVersion: 1,
    rawLength: 2,
    payload: Buffer.from('{}'),
  } as const;

  it('a base is entries chunks, one image chunk and a manifest naming their hashes', () => {
    const entries = Array.from({ length: 100 }, (_, i) => ({
      op: 'put' as const,
      key: `k${i}`,
      value: Buffer.alloc(100, i),
    }));
    const { frames, manifest } = baseFrames(
      { checkpoint: 7, epoch: 2, entries, image, history: [{ epoch: 2, cutoff: 3, cutoffEpoch: 1 }] },
      { builder: 'b', retainFrom: 4, builtAt: 1, tag: 5, chunkBytes: 2_000 },
    );
    expect(manifest.chunks).toBe(frames.length - 1);
    expect(manifest.chunks).toBeGreaterThan(2);
    expect(frames.map((f) => f.seq)).toEqual(frames.map((_, i) => 5 * 2 ** 20 + i + 1));
    const decoded = frames.map((f) => decodeBase(f.body));
    expect(decoded.at(-1)).toEqual({ type: BaseType.Manifest, manifest });
    expect(decoded.at(-2)!.type).toBe(BaseType.Image);
    const keys = decoded.flatMap((d) => (d.type === BaseType.Entries ? d.ops.map((o) => o.key) : []));
    expect(keys).toEqual(entries.map((e) => e.key));
  });

  it('a manifest with a field out of range is malformed', () => {
    const good = {
      checkpoint: 7,
      epoch: 2,
      tag: 1,
      builder: 'b',
      chunks: 1,
      chunkSha256: ['0'.repeat(64)],
      keys: 0,
      storeDigest: '0'.repeat(32),
      history: [],
      retainFrom: 8,
      builtAt: 1,
    };
    expect(decodeBase(encodeManifest(good)).type).toBe(BaseType.Manifest);
    for (const bad of [
      { ...good, retainFrom: 9 },
      { ...good, chunkSha256: [] },
      { ...good, checkpoint: 0 },
      { ...good, history: [{ epoch: 0, cutoff: 1 }] },
    ]) {
      expect(() => decodeBase(encodeManifest(bad))).toThrow(FrameError);
    }
  });
});

import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ConfigError, FencedError, FrameRejectReason, LimitError } from '../../src/errors.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import { DEFAULT_LIMITS, resolveLimits, type Limits } from '../../src/limits.js';
import { Replicator } from '../../src/primary/replicator.js';
import { FrameKind, type Frame } from '../../src/protocol/frame.js';
import {
  encodeFence,
  encodeImage,
  encodeSeal,
  encodeWrites,
  type ImageRecord,
} from '../../src/protocol/records.js';
import { resolveOptions } from '../../src/sdk/options.js';
import type { Applier, ApplyMode } from '../../src/standby/applier.js';
import type { Intake } from '../../src/standby/intake.js';
import { testIntake } from '../helpers/intake.js';
import type { WriteOp } from '../../src/storage/adapter.js';

const APP = 'limits';
const put = (key: string, v: string | Uint8Array): WriteOp => ({
  op: 'put',
  key,
  value: typeof v === 'string' ? Buffer.from(v) : v,
});

describe('limits option', () => {
  it('defaults, validates each field with an error naming it, and refuses more than the adapter contract allows', () => {
    expect(resolveLimits(undefined)).toEqual(DEFAULT_LIMITS);
    expect(resolveLimits({ maxImageBytes: 1 << 20 }).maxImageBytes).toBe(1 << 20);
    expect(() => resolveLimits({ maxKeyBytes: 4096 })).toThrow(ConfigError);
    expect(() => resolveLimits({ maxKeyBytes: 4096 })).toThrow(
      /'limits.maxKeyBytes' must be an integer from 1 to 1024/,
    );
    expect(() => resolveLimits({ maxValueBytes: 2 ** 30 })).toThrow(/limits.maxValueBytes/);
    expect(() => resolveLimits({ maxStagedBytes: -1 })).toThrow(/limits.maxStagedBytes/);
    expect(() => resolveLimits({ maxImageBites: 1 })).toThrow(/'limits.maxImageBites' is not a limit/);
    expect(() => resolveLimits('big')).toThrow(/'limits' must be an object/);
    const o = resolveOptions({
      app: 'a',
      nats: { servers: 'nats://127.0.0.1:4222' },
      storage: memoryAdapter(),
      limits: { maxWritesPerCheckpoint: 10 },
    });
    expect(o.limits).toEqual({ ...DEFAULT_LIMITS, maxWritesPerCheckpoint: 10 });
  });
});

/** A replicator whose frames are acknowledged at once; `frames` collects them. */
function replicator(limits: Partial<Limits>): {
  rep: Replicator;
  frames: Frame[];
  store: ReturnType<typeof memoryAdapter>;
} {
  const frames: Frame[] = [];
  const store = memoryAdapter();
  const rep = new Replicator({
    epoch: 1,
    firstCheckpoint: 1,
    firstSeq: 2,
    adapter: store,
    publisher: {
      publish: async (f) => {
        frames.push(f);
      },
      ready: async () => undefined,
    },
    images: new ImageEncoder({ compress: false }),
    batchBytes: 1 << 20,
    leaseValid: () => true,
    fencedError: () => new FencedError('fenced'),
    limits: { ...DEFAULT_LIMITS, ...limits },
  });
  return { rep, frames, store };
}

describe('limits on the primary (replicator)', () => {
  it('limits.maxWritesPerCheckpoint: the write past it is refused before it reaches the local store; the next checkpoint has room again', async () => {
    const { rep, store } = replicator({ maxWritesPerCheckpoint: 2 });
    await store.open();
    await rep.write(put('a', '1'));
    await rep.write(put('b', '2'));
    const over = rep.write(put('c', '3'));
    await expect(over).rejects.toThrow(LimitError);
    await expect(over).rejects.toThrow(/limits.maxWritesPerCheckpoint/);
    expect(await store.get('c')).toBeUndefined();
    await rep.checkpoint({ n: 1 });
    await rep.write(put('c', '3'));
    expect(Buffer.from((await store.get('c'))!).toString()).toBe('3');
  });

  it('limits.maxImageBytes: checkpoint() rejects without using up a number; the next image is a keyframe', async () => {
    const { rep, frames } = replicator({ maxImageBytes: 2048 });
    await rep.checkpoint({ small: 1 });
    const err = await rep.checkpoint({ big: 'x'.repeat(5000) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LimitError);
    expect((err as LimitError).limit).toBe('limits.maxImageBytes');
    expect((err as Error).message).toMatch(/over the limit of 2048/);
    const ack = await rep.checkpoint({ small: 2 });
    expect(ack.checkpoint).toBe(2);
    const images = frames.filter((f) => f.kind === FrameKind.Image);
    expect(images.map((f) => f.body[0])).toEqual([1, 1]); // both keyframes (format 1)
  });

  it('limits.maxFrameBytes: a single write that cannot fit a frame is refused', async () => {
    const { rep } = replicator({ maxFrameBytes: 64 * 1024 });
    await expect(rep.write(put('k', new Uint8Array(100 * 1024)))).rejects.toThrow(/limits.maxFrameBytes/);
  });
});

/** Frames a primary of epoch 1 would publish. */
class Primary {
  seq = 1;
  readonly images = new ImageEncoder({ compress: false });
  frame(kind: FrameKind, checkpoint: number, body: Uint8Array): Frame {
    return { kind, epoch: 1, seq: this.seq++, checkpoint, body };
  }
  fence(): Frame {
    return this.frame(FrameKind.Fence, 0, encodeFence({ nodeId: 'p' }));
  }
  writes(cp: number, ops: WriteOp[]): Frame {
    return this.frame(FrameKind.Writes, cp, encodeWrites(ops));
  }
  image(cp: number, state: unknown): Frame {
    return this.frame(FrameKind.Image, cp, encodeImage(this.images.encode(state, cp).record as ImageRecord));
  }
  seal(cp: number, frames: number, ops: number): Frame {
    return this.frame(FrameKind.Seal, cp, encodeSeal({ writeFrames: frames, writeOps: ops, imageFrames: 1 }));
  }
}

async function standby(
  limits: Partial<Limits>,
  mode: ApplyMode = 'delay-write',
): Promise<{
  applier: Applier;
  intake: Intake;
  feed: (...f: Frame[]) => Promise<void>;
  messages: string[];
}> {
  const adapter = memoryAdapter();
  await adapter.open();
  const messages: string[] = [];
  const { applier, intake, feed } = testIntake({
    app: APP,
    adapter,
    images: new ImageChain(),
    mode,
    limits: { ...DEFAULT_LIMITS, ...limits },
    onReject: (err) => messages.push(err.message),
  });
  return { applier, intake, feed, messages };
}

describe('limits on the standby (applier, image chain)', () => {
  it('limits.maxFrameBytes: a frame larger than it is refused and counted as limit', async () => {
    const { intake, feed, messages } = await standby({ maxFrameBytes: 64 * 1024 });
    const p = new Primary();
    await feed(p.fence(), p.writes(1, [put('k', new Uint8Array(80 * 1024))]));
    expect(intake.counters.rejected[FrameRejectReason.Limit]).toBe(1);
    expect(messages.at(-1)).toMatch(/limits.maxFrameBytes/);
  });

  it('limits.maxWritesPerCheckpoint: a write frame taking a checkpoint past it is refused; the checkpoint does not commit', async () => {
    const { applier, intake, feed, messages } = await standby({ maxWritesPerCheckpoint: 3 });
    const p = new Primary();
    await feed(
      p.fence(),
      p.writes(1, [put('a', '1'), put('b', '2')]),
      p.writes(1, [put('c', '3'), put('d', '4')]),
    );
    await feed(p.image(1, {}), p.seal(1, 2, 4));
    expect(intake.counters.rejected[FrameRejectReason.Limit]).toBe(1);
    expect(messages.at(-1)).toMatch(/would hold 4 write ops.*limits.maxWritesPerCheckpoint/);
    expect(applier.position.checkpoint).toBe(0);
  });

  it.each(['delay-write', 'snapshot'] as const)(
    'limits.maxStagedBytes (%s): frames past it are refused, and committing frees the room',
    async (mode) => {
      const { applier, intake, feed, messages } = await standby({ maxStagedBytes: 1024 * 1024 }, mode);
      const p = new Primary();
      const value = new Uint8Array(300 * 1024);
      await feed(p.fence());
      for (let i = 0; i < 5; i++) await feed(p.writes(1, [put(`k${i}`, value)]));
      if (mode === 'delay-write') {
        // Three bodies of 300 KiB fit in 1 MiB, the fourth does not.
        expect(intake.counters.rejected[FrameRejectReason.Limit]).toBe(2);
        expect(messages.at(-1)).toMatch(/limits.maxStagedBytes/);
        expect(applier.stagedBytes).toBeLessThanOrEqual(1024 * 1024);
      } else {
        // Snapshot mode writes go to the store's version areas, not to memory.
        expect(intake.counters.rejected[FrameRejectReason.Limit]).toBeUndefined();
      }
      const q = new Primary();
      const { applier: a2, feed: feed2 } = await standby({ maxStagedBytes: 1024 * 1024 }, mode);
      await feed2(q.fence());
      for (let cp = 1; cp <= 6; cp++)
        await feed2(q.writes(cp, [put('k', value)]), q.image(cp, { cp }), q.seal(cp, 1, 1));
      expect(a2.position.checkpoint).toBe(6);
      expect(a2.stagedBytes).toBe(0);
    },
  );

  it('limits.maxImageBytes: the image chain refuses an image announcing more, before decompressing', () => {
    const chain = new ImageChain({ maxImageBytes: 1024 });
    const rec = new ImageEncoder({ compress: false }).encode({ big: 'x'.repeat(4000) }, 1)
      .record as ImageRecord;
    expect(() => chain.check(1, rec)).toThrow(
      /announces \d+ bytes, over the limit of 1024 \(limit 'limits.maxImageBytes'/,
    );
  });
});

describe('the package entry point', () => {
  it('exports LimitError, so apps can match it with instanceof', async () => {
    const pkg = await import('../../src/index.js');
    expect(pkg.LimitError).toBe(LimitError);
    expect(new pkg.LimitError('limits.maxImageBytes', 'x').code).toBe('ERR_LIMIT');
  });
});

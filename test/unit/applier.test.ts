import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import { FrameKind, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import { encodeFence, encodeImage, encodeSeal, encodeWrites } from '../../src/protocol/records.js';
import { type Applier, decodeMeta } from '../../src/standby/applier.js';
import type { Intake } from '../../src/standby/intake.js';
import { testIntake } from '../helpers/intake.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

const APP = 'unit';

/** Builds the frames a primary of `epoch` would publish, numbering them like the replicator. */
class FakePrimary {
  seq = 1;
  readonly images = new ImageEncoder({ keyframeEvery: 4, maxChainShare: 10 });
  constructor(readonly epoch: number) {}
  /** The new primary's fence: it resumed from checkpoint `cutoff`. */
  fence(cutoff = 0, cutoffEpoch?: number): Frame {
    return {
      kind: FrameKind.Fence,
      epoch: this.epoch,
      seq: this.seq++,
      checkpoint: cutoff,
      body: encodeFence({ nodeId: `n${this.epoch}`, cutoffEpoch }),
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
  image(cp: number, state: unknown): Frame {
    const { record } = this.images.encode(state, cp);
    // Test states are small: their records are ready at once (only large ones are compressed off-thread).
    if (record instanceof Promise) throw new Error('test image unexpectedly large');
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

const put = (key: string, v: string): WriteOp => ({ op: 'put', key, value: Buffer.from(v) });

async function setup(): Promise<{
  adapter: StorageAdapter;
  chain: ImageChain;
  applier: Applier;
  intake: Intake;
  feed: (...f: Frame[]) => Promise<void>;
  take: (bytes: Uint8Array) => Promise<void>;
}> {
  const adapter = memoryAdapter();
  await adapter.open();
  const chain = new ImageChain();
  const { intake, applier, feed, take } = testIntake({ app: APP, adapter, images: chain });
  return { adapter, chain, applier, intake, feed, take };
}

async function dump(adapter: StorageAdapter): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const k of await adapter.keys()) out[k] = Buffer.from((await adapter.get(k))!).toString();
  return out;
}

describe('applier (delay-write)', () => {
  it('stages writes and commits them with the image only when the seal arrives', async () => {
    const { adapter, chain, applier, feed } = await setup();
    const p = new FakePrimary(1);
    await feed(p.fence(), p.writes(1, [put('a', '1'), put('b', '2')]));
    expect(await dump(adapter)).toEqual({});
    await feed(p.image(1, { n: 1, m: new Map([['x', 1n]]) }), p.seal(1, 1, 2));
    expect(await dump(adapter)).toEqual({ a: '1', b: '2' });
    expect(chain.materialize()).toEqual({ n: 1, m: new Map([['x', 1n]]) });
    expect(applier.position.checkpoint).toBe(1);
    expect(decodeMeta(await adapter.readMeta())).toMatchObject({
      app: APP,
      epoch: 1,
      checkpoint: 1,
      role: 'standby',
    });
    // A delta-encoded second checkpoint.
    await feed(
      p.writes(2, [{ op: 'delete', key: 'a' }]),
      p.image(2, { n: 2, m: new Map([['x', 2n]]) }),
      p.seal(2, 1, 1),
    );
    expect(await dump(adapter)).toEqual({ b: '2' });
    expect(chain.materialize()).toEqual({ n: 2, m: new Map([['x', 2n]]) });
  });

  it('waits for frames a seal names that arrive after it (a re-sent frame), applying in seq order', async () => {
    const { adapter, applier, feed } = await setup();
    const p = new FakePrimary(1);
    const w1 = p.writes(1, [put('k', 'first')]);
    const w2 = p.writes(1, [put('k', 'second')]);
    await feed(p.fence(), w2, p.image(1, {}), p.seal(1, 2, 2));
    expect(applier.position.checkpoint).toBe(0);
    await feed(w1);
    expect(applier.position.checkpoint).toBe(1);
    expect(await dump(adapter)).toEqual({ k: 'second' });
  });

  it('a fence rolls back unsealed writes of the old epoch and drops its later frames as stale', async () => {
    const { adapter, chain, applier, intake, feed } = await setup();
    const old = new FakePrimary(1);
    await feed(old.fence(), old.writes(1, [put('a', '1')]), old.image(1, { v: 1 }), old.seal(1, 1, 1));
    await feed(old.writes(2, [put('a', 'unsealed')]), old.image(2, { v: 2 }));
    const next = new FakePrimary(2);
    await feed(next.fence(1));
    // The deposed primary's seal arrives after the fence: it must not commit checkpoint 2.
    await feed(old.seal(2, 1, 1));
    expect(intake.counters.rejected.stale).toBe(1);
    // The writes and image of checkpoint 2, staged before the fence, were rolled back with it.
    expect(intake.counters.rolledBack).toBe(2);
    expect(applier.position).toMatchObject({ epoch: 1, checkpoint: 1 });
    expect(await dump(adapter)).toEqual({ a: '1' });
    await feed(next.writes(2, [put('b', 'new')]), next.image(2, { v: 'new' }), next.seal(2, 1, 1));
    expect(await dump(adapter)).toEqual({ a: '1', b: 'new' });
    expect(chain.materialize()).toEqual({ v: 'new' });
    expect(applier.position).toMatchObject({ epoch: 2, checkpoint: 2 });
  });

  it("reports a deposed primary's frames a fence discards: rolled back before it took effect, stale after", async () => {
    const adapter = memoryAdapter();
    await adapter.open();
    const rollbacks: unknown[] = [];
    const rejected: string[] = [];
    const { intake, feed } = testIntake({
      app: APP,
      adapter,
      onRollback: (r) => rollbacks.push(r),
      onReject: (err) => rejected.push(err.reason),
    });
    const old = new FakePrimary(1);
    await feed(old.fence(), old.writes(1, [put('a', '1')]), old.image(1, { v: 1 }), old.seal(1, 1, 1));
    // A zombie's checkpoints 2 and 3 (3 sealed but missing its image), read before the new fence.
    await feed(old.writes(2, [put('z', 'x')]), old.image(2, { v: 2 }));
    await feed(old.writes(3, [put('z', 'y')]), old.seal(3, 1, 1));
    expect(rollbacks).toEqual([]);
    const next = new FakePrimary(2);
    await feed(next.fence(1));
    expect(rollbacks).toEqual([{ epoch: 2, cutoff: 1, frames: 4, checkpoints: [2, 3], epochs: [1] }]);
    expect(intake.counters.rolledBack).toBe(4);
    expect(rejected).toEqual([]);
    // The same deposed epoch's frames read after the fence: refused one by one.
    await feed(old.seal(2, 1, 1), old.image(3, { v: 3 }));
    expect(rejected).toEqual(['stale', 'stale']);
    expect(rollbacks).toHaveLength(1);
    expect(await dump(adapter)).toEqual({ a: '1' });
  });

  it('ignores replays of committed checkpoints and counts corrupt frames without applying them', async () => {
    const { adapter, intake, feed, take } = await setup();
    const p = new FakePrimary(1);
    const frames = [p.fence(), p.writes(1, [put('a', '1')]), p.image(1, { v: 1 }), p.seal(1, 1, 1)];
    await feed(...frames);
    await feed(...frames.slice(1));
    expect(intake.counters.rejected.duplicate).toBe(3);
    const [bad] = encodeFrame(APP, p.writes(2, [put('a', 'evil')]), 1 << 20);
    bad![bad!.length - 5]! ^= 1;
    await take(bad!);
    await take(Buffer.from('not a frame at all'));
    const [foreign] = encodeFrame('other-app', p.writes(2, [put('a', 'evil')]), 1 << 20);
    await take(foreign!);
    expect(intake.counters.rejected).toMatchObject({ checksum: 1, foreign: 1, duplicate: 3 });
    expect(await dump(adapter)).toEqual({ a: '1' });
  });

  it('refuses a seal whose counts disagree with what was staged', async () => {
    const { adapter, applier, intake, feed } = await setup();
    const p = new FakePrimary(1);
    await feed(p.fence(), p.writes(1, [put('a', '1'), put('b', '2')]), p.image(1, {}), p.seal(1, 1, 3));
    expect(intake.counters.rejected.malformed).toBe(1);
    expect(applier.position.checkpoint).toBe(0);
    expect(await dump(adapter)).toEqual({});
  });

  it('a fence waits for its cutoff: late frames of the agreed history apply, later ones of the old epoch are stale', async () => {
    const { adapter, chain, applier, intake, feed } = await setup();
    const old = new FakePrimary(1);
    await feed(old.fence(), old.writes(1, [put('a', '1')]), old.image(1, { v: 1 }), old.seal(1, 1, 1));
    const w2 = old.writes(2, [put('b', '2')]);
    const i2 = old.image(2, { v: 2 });
    const s2 = old.seal(2, 1, 1); // held back: a lagging relay brings it after the fence
    const zombie = old.writes(3, [put('z', 'zombie')]);
    await feed(w2, i2);
    const next = new FakePrimary(2);
    await feed(next.fence(2), next.writes(3, [put('c', '3')]), next.image(3, { v: 3 }), next.seal(3, 1, 1));
    expect(applier.position.checkpoint).toBe(1); // the fence waits for checkpoint 2
    expect(applier.fenceEpoch).toBe(2);
    await feed(s2, zombie);
    expect(applier.position).toMatchObject({ epoch: 2, checkpoint: 3 });
    expect(intake.counters.rejected.stale).toBe(1);
    expect(await dump(adapter)).toEqual({ a: '1', b: '2', c: '3' });
    expect(chain.materialize()).toEqual({ v: 3 });
  });

  it('commits a checkpoint only once its seal is durable (seen on as many relays as the policy needs), unless relaxed for a takeover', async () => {
    const adapter = memoryAdapter();
    await adapter.open();
    const { applier, take } = testIntake({ app: APP, adapter, relays: 2, need: 2 });
    const p = new FakePrimary(1);
    const parts = (...fs: Frame[]): Buffer[] => fs.flatMap((f) => encodeFrame(APP, f, 1 << 20));
    const first = parts(p.fence(), p.writes(1, [put('a', '1')]), p.image(1, {}), p.seal(1, 1, 1));
    for (const m of first) await take(m, 0);
    expect(applier.position.checkpoint).toBe(0);
    // The second relay's copies arrive: the seal has its second witness.
    for (const m of first) await take(m, 1);
    expect(applier.position.checkpoint).toBe(1);
    for (const m of parts(p.writes(2, [put('b', '2')]), p.image(2, {}), p.seal(2, 1, 1))) await take(m, 0);
    expect(applier.position.checkpoint).toBe(1);
    await applier.relax();
    expect(applier.position.checkpoint).toBe(2);
  });

  it('fences take effect in epoch order, whatever order the relays deliver them in (issue 11, defect 1)', async () => {
    const { adapter, applier, feed } = await setup();
    const p1 = new FakePrimary(1);
    const p2 = new FakePrimary(2);
    const p3 = new FakePrimary(3);
    const f1 = [p1.fence(0, 0), p1.writes(1, [put('a', '1')]), p1.image(1, { v: 1 }), p1.seal(1, 1, 1)];
    const f2 = [p2.fence(1, 1), p2.writes(2, [put('b', '2')]), p2.image(2, { v: 2 }), p2.seal(2, 1, 1)];
    const f3 = [p3.fence(2, 2), p3.writes(3, [put('c', '3')]), p3.image(3, { v: 3 }), p3.seal(3, 1, 1)];
    // A relay that missed fence 2 delivers fence 3 first; fence 2 comes later from another relay.
    await feed(...f1, f3[0]!, ...f2.slice(1), f2[0]!, ...f3.slice(1));
    expect(applier.position).toMatchObject({ epoch: 3, checkpoint: 3 });
    expect(await dump(adapter)).toEqual({ a: '1', b: '2', c: '3' });
  });

  it("a fence names its cut by (epoch, checkpoint): a deposed primary's own checkpoint of that number never commits (issue 11, defect 1)", async () => {
    const adapter = memoryAdapter();
    await adapter.open();
    // Two relays, both must ack: what only relay 0 holds was never durable.
    const { applier, take } = testIntake({ app: APP, adapter, relays: 2, need: 2 });
    const on = async (relays: number[], ...fs: Frame[]): Promise<void> => {
      for (const f of fs)
        for (const m of encodeFrame(APP, f, 1 << 20)) for (const r of relays) await take(m, r);
    };
    const p1 = new FakePrimary(1);
    await on([0, 1], p1.fence(0, 0));
    for (let cp = 1; cp <= 4; cp++) {
      await on([0, 1], p1.writes(cp, [put('k', `1.${cp}`)]), p1.image(cp, { v: cp }), p1.seal(cp, 1, 1));
    }
    // Epoch 1's own checkpoint 5, complete on relay 0 only (never acknowledged; epoch 2 resumed
    // from 4, and epoch 3 from epoch 2's checkpoint 5). Fence 3 arrives before fence 2.
    await on([0], p1.writes(5, [put('k', 'deposed')]), p1.image(5, { v: 'deposed' }), p1.seal(5, 1, 1));
    const p2 = new FakePrimary(2);
    const p3 = new FakePrimary(3);
    const fence2 = p2.fence(4, 1);
    const e2 = [p2.writes(5, [put('k', '2.5')]), p2.image(5, { v: 5 }), p2.seal(5, 1, 1)];
    await on([0], p3.fence(5, 2));
    expect(applier.position).toMatchObject({ epoch: 1, checkpoint: 4 });
    await on([1], fence2, ...e2);
    expect(applier.position).toMatchObject({ epoch: 2, checkpoint: 5 });
    expect(await dump(adapter)).toEqual({ k: '2.5' });
  });

  it('refuses a fence whose cutoff is below what this standby committed (a diverged store)', async () => {
    const { applier, feed } = await setup();
    const old = new FakePrimary(1);
    await feed(old.fence(), old.writes(1, [put('a', '1')]), old.image(1, {}), old.seal(1, 1, 1));
    await expect(feed(new FakePrimary(2).fence(0))).rejects.toThrow(/already committed 1/);
    expect(applier.position.checkpoint).toBe(1);
  });
});

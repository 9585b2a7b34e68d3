/**
 * Late copies (issue 11, item 4): with several relays, every relay's copy of a committed
 * checkpoint's frames reaches the standby, most after the commit forgot their witnesses. Those
 * are expected: counted as late copies, never reported as `duplicate` rejections. A real
 * duplicate (the same part twice on one relay, before its commit) still is one.
 */
import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ImageEncoder } from '../../src/image/chain.js';
import { FrameKind, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import { encodeFence, encodeImage, encodeSeal, encodeWrites } from '../../src/protocol/records.js';
import { testIntake } from '../helpers/intake.js';

const APP = 'late';

function checkpointFrames(epoch: number, cp: number, firstSeq: number, images: ImageEncoder): Frame[] {
  const { record } = images.encode({ n: cp }, cp);
  if (record instanceof Promise) throw new Error('unexpectedly large image');
  let seq = firstSeq;
  return [
    {
      kind: FrameKind.Writes,
      epoch,
      seq: seq++,
      checkpoint: cp,
      body: encodeWrites([{ op: 'put', key: `k${cp}`, value: Buffer.from('v') }]),
    },
    { kind: FrameKind.Image, epoch, seq: seq++, checkpoint: cp, body: encodeImage(record) },
    {
      kind: FrameKind.Seal,
      epoch,
      seq: seq++,
      checkpoint: cp,
      body: encodeSeal({ writeFrames: 1, writeOps: 1, imageFrames: 1 }),
    },
  ];
}

describe('late copies of committed frames', () => {
  it('are counted as late copies, not duplicate rejections; a same-relay repeat still is a duplicate', async () => {
    const adapter = memoryAdapter();
    await adapter.open();
    const late: string[] = [];
    const rejected: string[] = [];
    const t = testIntake({
      app: APP,
      adapter,
      relays: 3,
      need: 2,
      onReject: (err) => rejected.push(err.reason),
      onLateCopy: (key, relay) => late.push(`${key.epoch}/${key.seq}@${relay}`),
    });
    const images = new ImageEncoder({ keyframeEvery: 4, maxChainShare: 10 });
    const fence: Frame = {
      kind: FrameKind.Fence,
      epoch: 1,
      seq: 1,
      checkpoint: 0,
      body: encodeFence({ nodeId: 'n1' }),
    };
    const frames = [fence, ...checkpointFrames(1, 1, 2, images)];
    const parts = frames.flatMap((f) => encodeFrame(APP, f, 1 << 20));
    // Relays 0 and 1 deliver checkpoint 1: it is durable (2 witnesses) and commits.
    for (const p of parts) await t.take(p, 0);
    for (const p of parts) await t.take(p, 1);
    expect(t.applier.position.checkpoint).toBe(1);
    // Relay 2 delivers its copies late, after the commit.
    for (const p of parts) await t.take(p, 2);
    expect(t.intake.counters.lateCopies).toBe(4);
    expect(late).toEqual(['1/1@2', '1/2@2', '1/3@2', '1/4@2']);
    expect(rejected).toEqual([]);
    expect(t.intake.counters.rejected).toEqual({});
    // The same relay's copy again (a replay, or a re-send past the dedupe window) is a duplicate.
    await t.take(parts[1]!, 0);
    await t.take(parts[1]!, 2);
    expect(rejected).toEqual(['duplicate', 'duplicate']);
    rejected.length = 0;
    // A later checkpoint's part twice on one relay (before its commit) is a real duplicate.
    const next = checkpointFrames(1, 2, 5, images);
    const w = encodeFrame(APP, next[0]!, 1 << 20)[0]!;
    await t.take(w, 0);
    await t.take(w, 0);
    expect(rejected).toEqual(['duplicate']);
    expect(t.intake.counters.lateCopies).toBe(4);
  });
});

/**
 * The image chain across a takeover, without servers: a new primary's encoder resumes from the
 * standby's materialized tree, its first image is a delta naming the base's epoch (format 3),
 * and a standby holding that checkpoint from another epoch refuses it.
 */
import { describe, expect, it } from 'vitest';
import { ImageError } from '../../src/errors.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import { track } from '../../src/image/tracked.js';
import { toTree, treesEqual } from '../../src/image/typed-tree.js';
import { ImageFormat, decodeImage, encodeImage, type ImageRecord } from '../../src/protocol/records.js';

interface S {
  m: Map<string, { v: number }>;
  n: number;
}
const initial = (): S => ({ m: new Map([...Array(50).keys()].map((i) => [`k${i}`, { v: i }])), n: 0 });

async function rec(enc: ImageEncoder, state: unknown, cp: number): Promise<ImageRecord> {
  // Through the wire format, as a standby reads it.
  return decodeImage(encodeImage(await enc.encode(state, cp).record));
}

describe('image chain across a takeover', () => {
  it('resumes from the standby tree: the first image is a tracked delta naming the base epoch', async () => {
    const old = new ImageEncoder();
    const standby = new ImageChain();
    const other = new ImageChain();
    const s = track(initial());
    for (let cp = 1; cp <= 3; cp++) {
      s.n = cp;
      const r = await rec(old, s, cp);
      for (const c of [standby, other]) {
        c.check(cp, r, 1);
        c.apply(cp, r, 1);
      }
    }
    expect(standby.epoch).toBe(1);
    // Takeover: the standby's tree becomes the new primary's base.
    const taken = standby.takeOver()!;
    expect(taken.objects).toBeDefined();
    const enc = new ImageEncoder();
    enc.resume({ ...taken, checkpoint: 3, epoch: standby.epoch, keyframeBytes: 10_000 });
    const state = track(taken.live as S);
    expect(enc.adoptTracker((await import('../../src/image/tracked.js')).trackerOf(state)!)).toBe(true);
    state.m.get('k3')!.v = -3;
    state.m.delete('k4');
    state.n = 4;
    const first = enc.encode(state, 4);
    expect(first).toMatchObject({ keyframe: false, path: 'tracked' });
    const r4 = decodeImage(encodeImage(await first.record));
    expect(r4).toMatchObject({ format: ImageFormat.DeltaAcross, base: 3, baseEpoch: 1 });
    other.check(4, r4, 2);
    other.apply(4, r4, 2);
    expect(treesEqual(other.tree!, toTree(taken.live))).toBe(true);
    // Then plain deltas of the new epoch.
    state.n = 5;
    const r5 = await rec(enc, state, 5);
    expect(r5.format).toBe(ImageFormat.Delta);
    other.check(5, r5, 2);
    other.apply(5, r5, 2);
    expect(other.materialize()).toEqual(structuredClone(taken.live));
  });

  it('a standby refuses a delta whose base is the same checkpoint of another epoch', async () => {
    const chain = new ImageChain();
    const enc = new ImageEncoder();
    const big = (n: number): S => ({ ...initial(), n });
    const r1 = await rec(enc, big(1), 1);
    chain.check(1, r1, 5);
    chain.apply(1, r1, 5);
    const r2 = await rec(enc, big(2), 2);
    expect(r2.format).toBe(ImageFormat.Delta);
    // A format-2 delta of another epoch than the image held.
    expect(() => chain.check(2, r2, 6)).toThrow(ImageError);
    expect(() => chain.check(2, r2, 6)).toThrow(
      /image 1 of epoch 6, but this standby holds image 1 of epoch 5/,
    );
    // A format-3 delta naming another epoch for the base.
    const across: ImageRecord = { ...r2, format: ImageFormat.DeltaAcross, baseEpoch: 4 };
    expect(() => chain.check(2, decodeImage(encodeImage(across)), 7)).toThrow(/of epoch 4, but .* epoch 5/);
    // Naming the right one, it applies.
    const ok: ImageRecord = { ...r2, format: ImageFormat.DeltaAcross, baseEpoch: 5 };
    chain.check(2, decodeImage(encodeImage(ok)), 7);
    chain.apply(2, ok, 7);
    expect(chain.materialize()).toEqual(big(2));
    expect(chain.epoch).toBe(7);
  });
});

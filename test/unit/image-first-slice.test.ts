/**
 * The first slice of a tracked state's keyframe runs inside `checkpoint()` and holds the event
 * loop whatever its length (src/image/keyframe-encode.ts). Issue 14's 100 MB drill: a first
 * slice of 65 536 children (a Map of 1 KiB strings: ~64 MB of them) blocked for 0.2–0.6 s on the
 * loaded machine and demoted the primary at a 1 000 ms lease. A state of tens of thousands of
 * large strings must fly; a small one stays on the synchronous path.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { ImageEncoder } from '../../src/image/chain.js';
import { DEFAULT_MIN_OFF_THREAD_CHILDREN } from '../../src/image/keyframe-encode.js';
import { track } from '../../src/image/tracked.js';

const encoders: ImageEncoder[] = [];
afterEach(async () => {
  await Promise.all(encoders.splice(0).map((e) => e.close()));
});

/** The drill's ballast: `n` records of 1 KiB of hex text in a Map. */
function ballast(n: number): { steps: number; ballast: Map<string, string> } {
  const m = new Map<string, string>();
  for (let i = 0; i < n; i++) m.set(`r${i}`, randomBytes(512).toString('hex'));
  return { steps: 0, ballast: m };
}

describe('the first slice of a keyframe', () => {
  it('leaves a state of 20 000 1 KiB strings (20 MB) to the flight, and keeps a small one synchronous', async () => {
    // sliceMs 0: every slice ends at the first clock check past the minimum, so whether the
    // state flies depends only on the first slice's minimum, not on the machine's speed.
    const enc = new ImageEncoder({ sliceMs: 0 });
    encoders.push(enc);
    const big = track(ballast(20_000));
    const image = enc.encode(big, 1);
    expect(image.offThread).toBe(true);
    expect((await image.record).payload.byteLength).toBeGreaterThan(0);
    expect(DEFAULT_MIN_OFF_THREAD_CHILDREN).toBeLessThanOrEqual(8_192);

    const small = new ImageEncoder({ sliceMs: 0 });
    encoders.push(small);
    const tiny = small.encode(track(ballast(1_000)), 1);
    expect(tiny.offThread).toBeUndefined();
    expect(small.flight).toBeUndefined();
    await tiny.record;
  });
});

/**
 * A primary's keyframe off the event loop (issue 14, src/image/keyframe-encode.ts): walked a
 * slice at a time with copy-on-write, serialized in the image worker. The image must be the
 * state at the `checkpoint()` call whatever the app changes meanwhile, and deltas must go on
 * after it.
 */
import fc from 'fast-check';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { ImageChain, ImageEncoder, type EncodedImage } from '../../src/image/chain.js';
import { track, untracked } from '../../src/image/tracked.js';
import { toTree, treesEqual, type TreeNode } from '../../src/image/typed-tree.js';
import type { ImageRecord } from '../../src/protocol/records.js';
import { initial, mutate as randomChange, opArb, type Held } from '../helpers/tracked-ops.js';

/** Property runs: 40 in the suite; `npm run fuzz` (FUZZ_RUNS) runs FUZZ_RUNS / 20. */
const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? '') || 0;
const PROPERTY_RUNS = FUZZ_RUNS > 0 ? Math.max(50, Math.round(FUZZ_RUNS / 20)) : 40;

interface Rec {
  id: string;
  name: string;
  balance: number;
  tags: string[];
  nested: { a: number; b?: { c: number } };
  moved?: unknown;
}

interface State {
  users: Map<string, Rec>;
  meta: { count: number; label: string; extra?: number };
  list: number[];
  seen: Set<string>;
}

function build(n: number): State {
  const users = new Map<string, Rec>();
  for (let i = 0; i < n; i++) {
    users.set(`u${i}`, {
      id: `u${i}`,
      name: `user number ${i}`,
      balance: i * 3,
      tags: ['a', `t${i % 7}`],
      nested: { a: i, b: { c: i % 5 } },
    });
  }
  return { users, meta: { count: n, label: 'start' }, list: [1, 2, 3], seen: new Set(['x']) };
}

const encoders: ImageEncoder[] = [];
const chains: ImageChain[] = [];
afterEach(async () => {
  await Promise.all(encoders.splice(0).map((e) => e.close()));
  await Promise.all(chains.splice(0).map((c) => c.close()));
});

function encoder(opts: ConstructorParameters<typeof ImageEncoder>[0] = {}): ImageEncoder {
  const e = new ImageEncoder({ sliceMs: 2, ...opts });
  encoders.push(e);
  return e;
}

async function apply(chain: ImageChain, n: number, image: EncodedImage): Promise<ImageRecord> {
  const rec = await image.record;
  chain.check(n, rec);
  chain.apply(n, rec);
  return rec;
}

/** Every kind of change the brief names, through the proxy: set, delete, nested, a subtree moved. */
function mutate(s: State, round: number, n: number): void {
  const r = (i: number): Rec => s.users.get(`u${i}`)!;
  // Map: an existing key replaced, a new key, a key deleted (near the end: not walked yet).
  s.users.set(`u${n - 10}`, { ...r(n - 10), balance: -round, tags: ['replaced'] });
  s.users.set(`new${round}`, { id: `new${round}`, name: 'n', balance: 0, tags: [], nested: { a: 0 } });
  s.users.delete(`u${n - 1000 + round}`);
  // Nested changes inside records not walked yet, and walked already.
  r(n - 50).nested.a = 1000 + round;
  r(n - 49).tags.push(`pushed${round}`);
  r(3).nested.b!.c = 77 + round;
  // A subtree moved from one record to another.
  const sub = r(n - 100 + round).nested.b;
  r(n - 200 + round).moved = sub;
  delete r(n - 100 + round).nested.b;
  // Plain object keys, an array, a Set.
  s.meta.count++;
  s.meta.extra = round;
  s.list.push(round);
  s.seen.add(`r${round}`);
}

describe('off-thread keyframes of a tracked state', () => {
  it('are the state at the call, whatever changes while the walk runs (first keyframe, uncounted state)', async () => {
    const N = 40_000;
    const raw = build(N);
    const state = track(raw);
    const enc = encoder();
    const atCall = structuredClone(raw);
    const image = enc.encode(state, 1);
    expect(image.offThread).toBe(true);
    const flight = enc.flight!;
    expect(flight.walking).toBe(true);
    // At once, and then between slices while the walk goes on.
    mutate(state, 1, N);
    let round = 2;
    while (flight.walking) {
      await new Promise((r) => setImmediate(r));
      if (round < 60) mutate(state, round++, N);
    }
    expect(flight.walkSlices).toBeGreaterThan(5);
    const chain = new ImageChain();
    chains.push(chain);
    await apply(chain, 1, image);
    expect(treesEqual(chain.tree!, toTree(atCall))).toBe(true);
    expect(chain.materialize()).toEqual(atCall);

    // The next checkpoint is a tracked delta (the marks made during the flight), exact.
    const second = enc.encode(state, 2);
    expect(second.path).toBe('tracked');
    await apply(chain, 2, second);
    expect(treesEqual(chain.tree!, toTree(raw))).toBe(true);
    // And one more after further changes.
    mutate(state, 70, N);
    const third = enc.encode(state, 3);
    expect(third.path).toBe('tracked');
    await apply(chain, 3, third);
    expect(treesEqual(chain.tree!, toTree(raw))).toBe(true);
  });

  it('are the state at the call when the keyframe comes by policy on a counted state', async () => {
    const N = 30_000;
    const raw = build(N);
    const state = track(raw);
    const enc = encoder({ keyframeEvery: 2 });
    const chain = new ImageChain();
    chains.push(chain);
    await apply(chain, 1, enc.encode(state, 1));
    mutate(state, 1, N);
    const d = enc.encode(state, 2);
    expect(d.path).toBe('tracked');
    await apply(chain, 2, d);
    mutate(state, 2, N);
    // Checkpoint 3: a keyframe by keyframeEvery, of a state the tracker counts.
    const atCall = structuredClone(raw);
    const key = enc.encode(state, 3);
    expect(key.keyframe && key.offThread).toBe(true);
    const flight = enc.flight!;
    let round = 3;
    mutate(state, round++, N);
    while (flight.walking) {
      await new Promise((r) => setImmediate(r));
      if (round < 60) mutate(state, round++, N);
    }
    await apply(chain, 3, key);
    expect(treesEqual(chain.tree!, toTree(atCall))).toBe(true);
    const after = enc.encode(state, 4);
    expect(after.path).toBe('tracked');
    await apply(chain, 4, after);
    expect(treesEqual(chain.tree!, toTree(raw))).toBe(true);
  });

  it('lands a keyframe in flight when the next checkpoint comes, and keeps the frames in order', async () => {
    const N = 30_000;
    const raw = build(N);
    const state = track(raw);
    const enc = encoder();
    const at1 = structuredClone(raw);
    const first = enc.encode(state, 1);
    expect(enc.flight?.walking).toBe(true);
    mutate(state, 1, N);
    const at2 = structuredClone(raw);
    const second = enc.encode(state, 2);
    // No second whole walk: a delta against the landed keyframe.
    expect(second.keyframe).toBe(false);
    expect(second.path).toBe('tracked');
    const order: number[] = [];
    const r1 = Promise.resolve(first.record).then((r) => (order.push(1), r));
    const r2 = Promise.resolve(second.record).then((r) => (order.push(2), r));
    const [rec1, rec2] = await Promise.all([r1, r2]);
    expect(order).toEqual([1, 2]);
    const chain = new ImageChain();
    chains.push(chain);
    chain.check(1, rec1);
    chain.apply(1, rec1);
    expect(treesEqual(chain.tree!, toTree(at1))).toBe(true);
    chain.check(2, rec2);
    chain.apply(2, rec2);
    expect(treesEqual(chain.tree!, toTree(at2))).toBe(true);
  });

  it('keep small states on the synchronous path', async () => {
    const state = track(build(200));
    const enc = encoder();
    const image = enc.encode(state, 1);
    expect(image.offThread).toBeUndefined();
    expect(enc.flight).toBeUndefined();
    expect(image.record).not.toBeInstanceOf(Promise);
    expect(image.rawBytes).toBeGreaterThan(0);
  });

  it('reject the record of a state found unserializable after the call, and start over with a keyframe', async () => {
    const raw = build(30_000);
    (raw.users.get('u29999')!.nested as Record<string, unknown>).fn = () => 1;
    const state = track(raw);
    const enc = encoder();
    const image = enc.encode(state, 1);
    expect(image.offThread).toBe(true);
    await expect(image.record).rejects.toMatchObject({ name: 'SerializationError' });
    delete (raw.users.get('u29999')!.nested as Record<string, unknown>).fn;
    const again = enc.encode(state, 2);
    expect(again.keyframe).toBe(true);
    await again.record;
  });

  it('hold the event loop for a few ms at a time during a large keyframe', async () => {
    // About 12 MB of records in a tracked Map (v8 bytes): on the synchronous path a keyframe of
    // it holds the loop for about a second.
    const state = track(build(100_000));
    const enc = new ImageEncoder();
    encoders.push(enc);
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    await new Promise((r) => setTimeout(r, 30));
    const t0 = performance.now();
    const image = enc.encode(state, 1);
    await image.record;
    const ms = performance.now() - t0;
    h.disable();
    const stall = h.max / 1e6;
    // The synchronous keyframe held the loop for all of `ms`; sliced, the worst is a slice
    // (8 ms) plus the timer's resolution plus what a loaded machine adds.
    expect(image.rawBytes).toBeGreaterThan(10_000_000);
    expect(stall, `worst event-loop delay ${stall} ms in a ${ms} ms keyframe`).toBeLessThan(
      Math.max(150, ms * 0.1),
    );
  });

  it('keep a Map reordered during the walk exact when it changes again after the walk (found by the property)', async () => {
    const enc = new ImageEncoder({ sliceMs: 0, minOffThreadChildren: 0, keyframeEvery: 10 });
    encoders.push(enc);
    const state = track(initial(120));
    const atCall = toTree(untracked(state));
    const first = enc.encode(state, 1);
    expect(enc.flight?.walking).toBe(true);
    // During the walk: a key moved to the end of the Map (deleted and set again), a record changed.
    const r0 = state.users.get('u0')!;
    state.users.delete('u0');
    state.users.set('u0', r0);
    state.users.get('u1')!.n = -1;
    while (enc.flight?.walking === true) await new Promise((r) => setImmediate(r));
    // After the walk, before the next checkpoint: the Map changes again.
    state.users.set('u0', { ...untracked(r0), n: 7 });
    const now = toTree(untracked(state));
    const second = enc.encode(state, 2);
    const chain = new ImageChain();
    chains.push(chain);
    await apply(chain, 1, first);
    expect(treesEqual(chain.tree!, atCall)).toBe(true);
    await apply(chain, 2, second);
    expect(treesEqual(chain.tree!, now)).toBe(true);
  });

  it(
    'are exact under random changes between slices, with checkpoints landing flights (property)',
    async () => {
      let flights = 0;
      let landed = 0;
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ op: opArb, turn: fc.boolean() }), { maxLength: 50 }),
          fc.integer({ min: 2, max: 6 }),
          async (steps, every) => {
            // Slices of 256 children (sliceMs 0): a state of 120 records takes several.
            const enc = new ImageEncoder({
              sliceMs: 0,
              minOffThreadChildren: 0,
              sliceNodes: 64,
              keyframeEvery: every,
              maxChainShare: 1000,
            });
            const chain = new ImageChain();
            const state = track(initial(120));
            const held: Held = {};
            const pending: { cp: number; image: EncodedImage; expected: TreeNode }[] = [];
            let cp = 0;
            const checkpoint = (): void => {
              cp++;
              // The image must be the state now, at the call.
              const expected = toTree(untracked(state));
              if (enc.flight !== undefined) landed++;
              const image = enc.encode(state, cp);
              if (image.offThread === true) flights++;
              pending.push({ cp, image, expected });
            };
            try {
              checkpoint();
              for (const { op, turn } of steps) {
                randomChange(state, op, held);
                if (op.cp === 0) checkpoint();
                // Let a slice of a flight run between changes.
                if (turn) await new Promise((r) => setImmediate(r));
              }
              checkpoint();
              for (const p of pending) {
                const rec: ImageRecord = await p.image.record;
                chain.check(p.cp, rec);
                chain.apply(p.cp, rec);
                if (!treesEqual(chain.tree!, p.expected)) {
                  throw new Error(
                    `checkpoint ${p.cp} (${p.image.path}): standby tree\n${JSON.stringify(chain.tree)}\n!= the state at the call\n${JSON.stringify(p.expected)}`,
                  );
                }
              }
            } finally {
              await enc.close();
            }
          },
        ),
        { numRuns: PROPERTY_RUNS },
      );
      // The property must have exercised flights, and checkpoints landing them.
      expect(flights).toBeGreaterThan(PROPERTY_RUNS);
      expect(landed).toBeGreaterThan(PROPERTY_RUNS / 12);
    },
    FUZZ_RUNS > 0 ? 3_600_000 : 60_000,
  );
});

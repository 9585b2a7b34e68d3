import { afterAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { ImageError, LimitError } from '../../src/errors.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import { decodeKeyframeTree } from '../../src/image/keyframe-decode.js';
import { sliceTree, TreeAssembler, type TreeSlice } from '../../src/image/tree-transfer.js';
import { cloneTree, toTree, treesEqual, type TreeNode } from '../../src/image/typed-tree.js';
import { ImageWorker } from '../../src/image/worker.js';
import { ImageCodec, ImageFormat, type ImageRecord } from '../../src/protocol/records.js';

/** A small deterministic PRNG (mulberry32). */
function prng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random JSON tree with wide and deep parts. */
function randomTree(r: () => number, depth: number): TreeNode {
  const pick = r();
  if (depth <= 0 || pick < 0.3) {
    if (pick < 0.1) return null;
    if (pick < 0.2) return Math.floor(r() * 1000);
    return 'x'.repeat(Math.floor(r() * 20));
  }
  const n = r() < 0.05 ? Math.floor(r() * 200) : Math.floor(r() * 6);
  if (r() < 0.5) return Array.from({ length: n }, () => randomTree(r, depth - 1));
  const o: Record<string, TreeNode> = {};
  for (let i = 0; i < n; i++)
    o[r() < 0.1 ? String(i) : `k${Math.floor(r() * 1e6)}`] = randomTree(r, depth - 1);
  return o;
}

function roundTrip(tree: TreeNode, maxNodes: number): { tree: TreeNode; slices: number } {
  const a = new TreeAssembler();
  let slices = 0;
  // Each slice goes through a structured clone, as over a MessagePort.
  for (const s of sliceTree(cloneTree(tree), maxNodes)) {
    a.add(structuredClone(s) as TreeSlice);
    slices++;
  }
  return { tree: a.tree, slices };
}

describe('tree transfer in slices', () => {
  it('rebuilds random trees exactly, whatever the slice size', () => {
    const r = prng(3);
    for (let i = 0; i < 60; i++) {
      const tree = randomTree(r, 4);
      for (const max of [1, 2, 7, 50, 100_000]) {
        const out = roundTrip(tree, max);
        expect(treesEqual(out.tree, tree), `tree ${i}, slices of ${max}`).toBe(true);
      }
    }
  });

  it('keeps every slice within its node budget and keeps key order, __proto__ keys included', () => {
    const big: Record<string, TreeNode> = {};
    for (let i = 0; i < 500; i++) big[`k${i}`] = { v: i, w: [i, i + 1] };
    const tree: TreeNode = JSON.parse(
      JSON.stringify({ a: big, list: Array.from({ length: 300 }, (_, i) => [i, { i }]), z: 1 }).replace(
        '"z":1',
        '"__proto__":{"x":[1,2,3]},"z":1',
      ),
    ) as TreeNode;
    let slices = 0;
    const a = new TreeAssembler();
    for (const s of sliceTree(cloneTree(tree), 64)) {
      // Nodes in a slice's payload: at most the budget plus the pair wrappers of one item.
      let nodes = 0;
      const stack: unknown[] = [s.payload];
      while (stack.length > 0) {
        const n = stack.pop();
        nodes++;
        if (typeof n === 'object' && n !== null) stack.push(...Object.values(n));
      }
      expect(nodes).toBeLessThanOrEqual(64 + 8);
      a.add(structuredClone(s) as TreeSlice);
      slices++;
    }
    expect(slices).toBeGreaterThan(20);
    expect(treesEqual(a.tree, tree)).toBe(true);
    expect(Object.keys(a.tree as object)).toEqual(['a', 'list', '__proto__', 'z']);
    expect(Object.getPrototypeOf(a.tree)).toBe(Object.prototype);
  });
});

/** States that exercise every kind of typed-tree node. */
function states(): unknown[] {
  const shared = { shared: true };
  const cyclic: { self?: unknown; n: number } = { n: 1 };
  cyclic.self = cyclic;
  const sparse: unknown[] = [1];
  sparse[50] = 2;
  const map = new Map<unknown, unknown>();
  for (let i = 0; i < 3000; i++) map.set(`user:${i}`, { id: i, tags: ['a', 'b'], at: new Date(i) });
  return [
    { map, set: new Set([1, 'two', 3n]), big: 12345678901234567890n, neg0: -0, nan: NaN, undef: undefined },
    { bytes: new Uint8Array(randomBytes(5000)), f64: new Float64Array([1.5, -2]), buf: Buffer.from('hi') },
    { a: shared, b: shared, cyclic, sparse, re: /x+/gi, err: new Error('boom'), boxed: Object(7) },
    Array.from({ length: 20_000 }, (_, i) => ({ i, s: `s${i}` })),
    'just a string',
  ];
}

async function keyframe(state: unknown): Promise<ImageRecord> {
  const enc = new ImageEncoder({});
  const rec = await enc.encode(state, 1).record;
  expect(rec.format).toBe(ImageFormat.Full);
  return rec;
}

describe('image worker: keyframes decoded off the main thread', () => {
  const worker = new ImageWorker({ sliceNodes: 500 });
  afterAll(() => worker.close());

  it('gives the same tree as the main-thread decode, for every kind of node', async () => {
    for (const [i, state] of states().entries()) {
      const rec = await keyframe(state);
      const onMain = decodeKeyframeTree(1, rec.codec, rec.payload, rec.rawLength, 1000);
      const before = Buffer.from(rec.payload);
      const off = await worker.decodeKeyframe(1, rec, 1000);
      expect(treesEqual(off, onMain), `state ${i}`).toBe(true);
      expect(treesEqual(off, toTree(state)), `state ${i}`).toBe(true);
      // The record's payload is neither detached nor changed.
      expect(Buffer.from(rec.payload).equals(before)).toBe(true);
    }
  });

  it('through ImageChain: a large keyframe is checked in the worker, a small one at once', async () => {
    const chain = new ImageChain({ offThreadBytes: 64 * 1024, sliceNodes: 1000 });
    try {
      const state = states()[3];
      const rec = await keyframe(state);
      expect(rec.rawLength).toBeGreaterThan(64 * 1024);
      await chain.checkAsync(1, rec);
      chain.apply(1, rec);
      expect(treesEqual(chain.tree!, toTree(state))).toBe(true);
      expect(chain.materialize()).toEqual(state);
      const small = await keyframe({ n: 1 });
      await chain.checkAsync(2, small);
      chain.apply(2, small);
      expect(chain.materialize()).toEqual({ n: 1 });
    } finally {
      await chain.close();
    }
  });

  it('refuses what the main thread refuses, with the same errors', async () => {
    const rec = await keyframe(states()[3]);
    const corrupt: ImageRecord = { ...rec, codec: ImageCodec.None, payload: randomBytes(rec.rawLength) };
    const expected = (() => {
      try {
        decodeKeyframeTree(9, corrupt.codec, corrupt.payload, corrupt.rawLength, 1000);
      } catch (err) {
        return err as ImageError;
      }
      throw new Error('the corrupt image decoded');
    })();
    const got = await worker.decodeKeyframe(9, corrupt, 1000).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(got).toBeInstanceOf(ImageError);
    expect((got as ImageError).message).toBe(expected.message);

    let deep: unknown = 0;
    for (let i = 0; i < 40; i++) deep = [deep];
    const deepRec = await keyframe(deep);
    const tooDeep = await worker.decodeKeyframe(4, deepRec, 10).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(tooDeep).toBeInstanceOf(ImageError);
    expect((tooDeep as ImageError).cause).toBeInstanceOf(LimitError);
    expect((tooDeep as ImageError).message).toMatch(/image for checkpoint 4 refused: .*maxDepth/);
  });
});

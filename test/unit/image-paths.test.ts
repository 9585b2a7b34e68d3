import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import v8 from 'node:v8';
import { ImageChain, ImageEncoder, type ImagePath } from '../../src/image/chain.js';
import { MapIndex } from '../../src/image/map-index.js';
import { track, untracked } from '../../src/image/tracked.js';
import { toTree, treesEqual } from '../../src/image/typed-tree.js';
import { InvalidArgumentError, SerializationError } from '../../src/errors.js';
import type { ImageRecord } from '../../src/protocol/records.js';
import {
  initial,
  mutate,
  names,
  opArb,
  pick,
  rec,
  type Held,
  type Op,
  type Rec,
  type State,
} from '../helpers/tracked-ops.js';

/** A standby's chain fed by an encoder, checked after every checkpoint against toTree(state). */
class Pair {
  readonly chain = new ImageChain();
  readonly paths: Record<ImagePath, number> = { keyframe: 0, tracked: 0, identity: 0, diff: 0 };
  cp = 0;
  constructor(readonly encoder: ImageEncoder) {}

  async checkpoint(state: unknown): Promise<void> {
    const cp = ++this.cp;
    const img = this.encoder.encode(state, cp);
    this.paths[img.path]++;
    const rec: ImageRecord = await img.record;
    this.chain.check(cp, rec);
    this.chain.apply(cp, rec);
    const raw = untracked(state);
    const expected = toTree(raw);
    if (!treesEqual(this.chain.tree!, expected)) {
      throw new Error(
        `checkpoint ${cp} (${img.path}): standby tree\n${JSON.stringify(this.chain.tree)}\n!= toTree(state)\n${JSON.stringify(expected)}`,
      );
    }
    expect(this.chain.materialize()).toEqual(v8.deserialize(v8.serialize(raw)));
  }
}

describe('tracked state: deltas stay exact', () => {
  it('the standby tree equals toTree(state) after random in-place changes (property)', async () => {
    let trackedDeltas = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(opArb, { maxLength: 60 }),
        fc.integer({ min: 2, max: 20 }),
        fc.boolean(),
        async (ops, every, early) => {
          const pair = new Pair(new ImageEncoder({ keyframeEvery: every, maxChainShare: 1000 }));
          const state = track(initial());
          const held: Held = {};
          // Sometimes the app reads and keeps proxies before the first checkpoint.
          if (early) await pair.checkpoint(state);
          for (const op of ops) {
            mutate(state, op, held);
            if (op.cp === 0) await pair.checkpoint(state);
          }
          await pair.checkpoint(state);
          trackedDeltas += pair.paths.tracked;
        },
      ),
      { numRuns: 500 },
    );
    // The property must have exercised the cheap path, not only the exact fallbacks.
    expect(trackedDeltas).toBeGreaterThan(400);
  });

  it('a checkpoint after one change to a 20k-entry Map is a small tracked delta', async () => {
    const raw = { users: new Map<string, Rec>() };
    for (let i = 0; i < 20_000; i++) raw.users.set(`u${i}`, rec(i));
    const state = track(raw);
    const pair = new Pair(new ImageEncoder({ keyframeEvery: 100 }));
    await pair.checkpoint(state);
    state.users.get('u12345')!.n = -1;
    state.users.delete('u7');
    state.users.set('new', rec(1));
    const img = pair.encoder.encode(state, ++pair.cp);
    expect(img.path).toBe('tracked');
    expect(img.rawBytes).toBeLessThan(200);
    const r = await img.record;
    pair.chain.check(pair.cp, r);
    pair.chain.apply(pair.cp, r);
    expect(treesEqual(pair.chain.tree!, toTree(raw))).toBe(true);
  });

  it('stays exact when records move while the state is shared (the walk is off meanwhile)', async () => {
    const pair = new Pair(new ImageEncoder({ keyframeEvery: 100, maxChainShare: 1000 }));
    const state = track({
      a: { r: { n: 1 } },
      b: {} as Record<string, { n: number }>,
      c: {} as Record<string, unknown>,
    });
    await pair.checkpoint(state);
    const r = state.a.r;
    state.c.shared = r; // shared: the next checkpoints diff the whole state
    await pair.checkpoint(state);
    state.b.moved = r; // moved while shared
    delete (state.a as { r?: unknown }).r;
    delete state.c.shared;
    await pair.checkpoint(state); // a tree again
    r.n = 2; // through a proxy read before the move
    await pair.checkpoint(state);
    state.b.moved!.n = 3;
    await pair.checkpoint(state);
    expect(pair.paths.tracked).toBeGreaterThan(0);
  });

  it('hands out proxies for containers and raw values for everything else', () => {
    const when = new Date(0);
    const raw = { list: [{ a: 1 }], when, m: new Map([['k', { v: 1 }]]) };
    const state = track(raw);
    expect(track(state)).toBe(state);
    expect(track(raw)).toBe(state);
    expect(state.list).toBe(state.list);
    expect(state.list[0]).not.toBe(raw.list[0]);
    expect(untracked(state.list[0])).toBe(raw.list[0]);
    expect(state.when).toBe(when);
    expect(state.m.get('k')).toEqual({ v: 1 });
    expect(state.m instanceof Map).toBe(true);
    expect(Array.isArray(state.list)).toBe(true);
    // Stored values never hold a proxy: the state must stay serializable.
    (state.list as unknown[]).push({ inner: state.m.get('k') });
    expect((raw.list[1] as unknown as { inner: unknown }).inner).toBe(raw.m.get('k'));
    expect(() => v8.serialize(raw)).not.toThrow();
  });

  it('refuses to track what it cannot proxy', () => {
    expect(() => track(new Date() as never)).toThrow(InvalidArgumentError);
    expect(() => track(42 as never)).toThrow(/plain object, an array, a Map or a Set/);
  });

  it('names the full path of an unserializable value stored deep, and recovers with a keyframe', async () => {
    const pair = new Pair(new ImageEncoder());
    const state = track({ a: { b: [1, { c: 2 }] } } as { a: { b: unknown[] } });
    await pair.checkpoint(state);
    (state.a.b[1] as Record<string, unknown>).fn = () => 1;
    let err: unknown;
    try {
      pair.encoder.encode(state, pair.cp + 1);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SerializationError);
    expect((err as SerializationError).path).toBe('state.a.b[1].fn');
    delete (state.a.b[1] as Record<string, unknown>).fn;
    await pair.checkpoint(state);
    expect(pair.paths.keyframe).toBe(2);
  });
});

/** One random immutable update: returns the next state, sharing what did not change. */
function update(s: State, op: Op): State {
  const keys = [...s.users.keys()];
  const k = pick(keys, op.a);
  const name = pick(names, op.b)!;
  switch (op.kind % 16) {
    case 0: {
      if (!k) return s;
      const users = new Map(s.users);
      users.set(k, { ...s.users.get(k)!, n: op.b });
      return { ...s, users };
    }
    case 1:
      return { ...s, users: new Map(s.users).set(`u${op.a}`, { ...rec(op.a), extra: op.v }) };
    case 2: {
      const users = new Map(s.users);
      if (k) users.delete(k);
      return { ...s, users };
    }
    case 3: {
      if (!k) return s;
      const users = new Map(s.users);
      const r = users.get(k)!;
      users.delete(k);
      users.set(k, r);
      return { ...s, users };
    }
    case 4:
      return { ...s, byId: { ...s.byId, [name]: rec(op.a, op.b) } };
    case 5: {
      const { [name]: _gone, ...byId } = s.byId;
      return { ...s, byId };
    }
    case 6:
      return { ...s, byId: { [name]: rec(op.b), ...s.byId } }; // an added key first
    case 7:
      return { ...s, list: [...s.list, op.v] };
    case 8:
      return { ...s, list: s.list.filter((_, i) => i !== op.a % Math.max(1, s.list.length)) };
    case 9:
      return { ...s, list: s.list.map((x, i) => (i === op.a % Math.max(1, s.list.length) ? op.v : x)) };
    case 10:
      return { ...s, tags: new Set([...s.tags, op.v]) };
    case 11:
      return k ? { ...s, byId: { ...s.byId, [name]: s.users.get(k)! } } : s; // sharing
    case 12:
      return { ...s, misc: { ...s.misc, [name]: op.v } };
    case 13:
      return { ...s, grid: s.grid.map((row, i) => (i === op.a % s.grid.length ? [op.a, op.b] : row)) };
    case 14:
      return s; // the same state again
    default:
      return { ...s, users: new Map([...s.users].reverse()) }; // same entries, another order
  }
}

describe('immutable updates: deltas by identity stay exact', () => {
  it('the standby tree equals toTree(state) after random copy-on-write updates (property)', async () => {
    let identityDeltas = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(opArb, { maxLength: 40 }),
        fc.integer({ min: 2, max: 20 }),
        async (ops, every) => {
          const pair = new Pair(
            new ImageEncoder({ keyframeEvery: every, maxChainShare: 1000, immutable: true }),
          );
          let state = initial();
          await pair.checkpoint(state);
          for (const op of ops) {
            state = update(state, op);
            if (op.cp === 0) await pair.checkpoint(state);
          }
          await pair.checkpoint(state);
          identityDeltas += pair.paths.identity;
        },
      ),
      { numRuns: 300 },
    );
    expect(identityDeltas).toBeGreaterThan(400);
  });

  it('skips unchanged records by reference: one changed record in 20k gives a small delta', async () => {
    const users = new Map<string, Rec>();
    for (let i = 0; i < 20_000; i++) users.set(`u${i}`, rec(i));
    const pair = new Pair(new ImageEncoder({ immutable: true }));
    const s1 = { users, n: 1 };
    await pair.checkpoint(s1);
    const s2 = { ...s1, users: new Map(users).set('u5', { ...users.get('u5')!, n: 99 }) };
    const img = pair.encoder.encode(s2, ++pair.cp);
    expect(img.path).toBe('identity');
    expect(img.rawBytes).toBeLessThan(100);
  });
});

describe('MapIndex', () => {
  it('tracks positions through removals and appends like an array of keys (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.nat(40), { maxLength: 30 }),
        fc.array(fc.record({ remove: fc.boolean(), key: fc.nat(60) }), { maxLength: 200 }),
        (start, ops) => {
          const model = [...new Set(start)];
          const index = new MapIndex(model);
          for (const op of ops) {
            const at = model.indexOf(op.key);
            if (op.remove && at >= 0) {
              model.splice(at, 1);
              index.remove(op.key);
            } else if (!op.remove && at < 0) {
              model.push(op.key);
              index.append(op.key);
            }
            expect(index.size).toBe(model.length);
            for (const [i, key] of model.entries()) expect(index.position(key)).toBe(i);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

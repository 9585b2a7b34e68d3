import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import v8 from 'node:v8';
import { ImageChain, ImageEncoder, type ImagePath } from '../../src/image/chain.js';
import { MapIndex } from '../../src/image/map-index.js';
import { track, untracked } from '../../src/image/tracked.js';
import { toTree, treesEqual } from '../../src/image/typed-tree.js';
import { InvalidArgumentError, SerializationError } from '../../src/errors.js';
import type { ImageRecord } from '../../src/protocol/records.js';

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

const names = ['a', 'b', 'c', 'd', 'e', '0', '7', '$rp', '_t', '~x', 'constructor', '__proto__'];
const pick = <T>(xs: readonly T[], n: number): T | undefined =>
  xs.length === 0 ? undefined : xs[n % xs.length];

/** Values a field can take: primitives of every kind the typed tree tags, and small containers. */
const leafArb = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 5 }),
  fc.boolean(),
  fc.constant(null),
  fc.constant(undefined),
  fc.bigInt(),
  fc.date({ noInvalidDate: false }),
  fc.uint8Array({ maxLength: 4 }).map((b) => Buffer.from(b)),
);
const valueArb = fc.oneof(
  { weight: 3, arbitrary: leafArb },
  { weight: 1, arbitrary: fc.array(leafArb, { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.dictionary(fc.constantFrom(...names), leafArb, { maxKeys: 3 }) },
);

interface Rec {
  id: string;
  n: number;
  tags: string[];
  extra?: unknown;
}

interface State {
  users: Map<string, Rec>;
  byId: Record<string, Rec>;
  list: unknown[];
  tags: Set<unknown>;
  misc: Record<string, unknown>;
  grid: number[][];
  keyed?: Map<unknown, unknown>;
}

const rec = (i: number, n = i): Rec => ({ id: `u${i}`, n, tags: ['t'] });

function initial(): State {
  const users = new Map<string, Rec>();
  for (let i = 0; i < 6; i++) users.set(`u${i}`, rec(i));
  return {
    users,
    byId: { x1: rec(100), x2: rec(101) },
    list: [1, 'two', rec(200), [3]],
    tags: new Set(['p', 'q']),
    misc: { deep: { deeper: { n: 1 } } },
    grid: [
      [1, 2],
      [3, 4],
    ],
  };
}

const opArb = fc.record({ kind: fc.nat(36), a: fc.nat(50), b: fc.nat(50), v: valueArb, cp: fc.nat(2) });
type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

/** Proxies a test run keeps between changes, as apps keep references. */
interface Held {
  rec?: Rec;
  users?: Map<string, Rec>;
}

/** Applies one random in-place change through the tracked proxy. */
function mutate(p: State, op: Op, held: Held): void {
  const keys = [...p.users.keys()];
  const k = pick(keys, op.a);
  const name = pick(names, op.b)!;
  switch (op.kind) {
    case 0:
      if (k) p.users.get(k)!.n = op.b;
      break;
    case 1:
      p.users.set(`u${op.a}`, { ...rec(op.a, op.b), extra: op.v });
      break;
    case 2:
      if (k) p.users.delete(k);
      break;
    case 3:
      if (k) {
        const r = p.users.get(k)!;
        p.users.delete(k);
        p.users.set(k, r); // moves to the end
      }
      break;
    case 4:
      p.byId[name] = rec(op.a, op.b);
      break;
    case 5: {
      const r = pick(Object.values(p.byId), op.a);
      if (r) r.n += 1;
      break;
    }
    case 6:
      delete p.byId[name];
      break;
    case 7:
      if (k) {
        // A move from the Map to the object.
        const r = p.users.get(k)!;
        p.users.delete(k);
        p.byId[name] = r;
      }
      break;
    case 8:
      if (k) p.byId[name] = p.users.get(k)!; // sharing
      break;
    case 9:
      p.list.push(op.v);
      break;
    case 10:
      p.list.pop();
      break;
    case 11:
      if (p.list.length > 0) p.list.splice(op.a % p.list.length, 1);
      break;
    case 12:
      if (p.list.length > 0) p.list[op.a % p.list.length] = op.v;
      break;
    case 13:
      p.list.unshift(op.v);
      break;
    case 14: {
      const item = pick(p.list, op.a);
      // A record, not a typed array or Buffer (its indexes take numbers only: a property named
      // like an index would be converted, and an object without a prototype cannot be).
      if (typeof item === 'object' && item !== null && !Array.isArray(item) && !ArrayBuffer.isView(item))
        (item as Record<string, unknown>)[name] = op.v;
      break;
    }
    case 15:
      p.tags.add(op.v);
      break;
    case 16:
      p.tags.delete(pick([...p.tags], op.a));
      break;
    case 17:
      p.misc[name] = op.v;
      break;
    case 18:
      delete p.misc[name];
      break;
    case 19:
      (p.misc.deep as { deeper: { n: number } }).deeper.n = op.b;
      break;
    case 20:
      if (k) p.misc[name] = { holder: p.users.get(k) }; // a new container holding a proxy: shared
      break;
    case 21:
      p.grid[op.a % p.grid.length]![op.b % 2] = op.a;
      break;
    case 22:
      p.grid.push([op.a, op.b]);
      break;
    case 23:
      if (k) p.users.get(k)!.tags.push(name);
      break;
    case 24:
      if (op.a % 5 === 0) p.users.clear();
      else if (k) p.users.get(k)!.extra = op.v;
      break;
    case 25:
      p.misc.self = op.a % 2 === 0 ? p.misc : 'no cycle'; // a cycle, then none
      break;
    case 26:
      if (op.a % 3 === 0) p.list.length = Math.min(p.list.length, 1);
      else p.list.reverse();
      break;
    case 27:
      p.keyed ??= new Map<unknown, unknown>([[{ key: 1 }, 1]]);
      p.keyed.set(op.a % 2 === 0 ? { key: op.a } : `s${op.a}`, op.v);
      break;
    case 28:
      if (p.list.length > 2) delete p.list[1]; // a hole: the array turns sparse
      break;
    case 29:
      p.byId = { ...p.byId, [name]: rec(op.b) };
      break;
    case 31:
      if (k) {
        // Changed while out of the state, then put back elsewhere.
        const r = p.users.get(k)!;
        p.users.delete(k);
        r.n = op.b;
        r.tags.push('moved');
        p.byId[name] = r;
      }
      break;
    case 32:
      for (const key of p.keyed?.keys() ?? [])
        if (typeof key === 'object') (key as { key: number }).key = op.b;
      break;
    case 33:
      held.rec = k ? p.users.get(k) : undefined;
      held.users = p.users;
      break;
    case 34:
      // A reference kept across checkpoints (and keyframes); its record may be gone by now.
      if (held.rec) {
        held.rec.n = op.b;
        held.rec.tags.push(name);
      }
      break;
    case 35:
      held.users?.set(`h${op.a % 4}`, rec(op.b));
      break;
    case 36:
      if (k) {
        // Shared for a moment: the registry loses track of the record's place.
        const r = p.users.get(k)!;
        p.misc.tmp = r;
        delete p.misc.tmp;
        r.n = op.b;
      }
      break;
    default: {
      // Replace a record by an edited copy, immutable style, through the proxy.
      if (k) {
        const r = untracked(p.users.get(k)!);
        p.users.set(k, { ...r, n: r.n + op.b });
      }
    }
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

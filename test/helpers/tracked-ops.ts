/**
 * Random in-place changes of a tracked state, through its proxy: the generator of the image
 * property tests (test/unit/image-paths.test.ts, image-keyframe-flight.test.ts).
 */
import fc from 'fast-check';
import { untracked } from '../../src/image/tracked.js';

export const names = ['a', 'b', 'c', 'd', 'e', '0', '7', '$rp', '_t', '~x', 'constructor', '__proto__'];
export const pick = <T>(xs: readonly T[], n: number): T | undefined =>
  xs.length === 0 ? undefined : xs[n % xs.length];

/** Values a field can take: primitives of every kind the typed tree tags, and small containers. */
export const leafArb = fc.oneof(
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
export const valueArb = fc.oneof(
  { weight: 3, arbitrary: leafArb },
  { weight: 1, arbitrary: fc.array(leafArb, { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.dictionary(fc.constantFrom(...names), leafArb, { maxKeys: 3 }) },
);

export interface Rec {
  id: string;
  n: number;
  tags: string[];
  extra?: unknown;
}

export interface State {
  users: Map<string, Rec>;
  byId: Record<string, Rec>;
  list: unknown[];
  tags: Set<unknown>;
  misc: Record<string, unknown>;
  grid: number[][];
  keyed?: Map<unknown, unknown>;
}

export const rec = (i: number, n = i): Rec => ({ id: `u${i}`, n, tags: ['t'] });

export function initial(users0 = 6): State {
  const users = new Map<string, Rec>();
  for (let i = 0; i < users0; i++) users.set(`u${i}`, rec(i));
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

export const opArb = fc.record({
  kind: fc.nat(36),
  a: fc.nat(50),
  b: fc.nat(50),
  v: valueArb,
  cp: fc.nat(2),
});
export type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

/** Proxies a test run keeps between changes, as apps keep references. */
export interface Held {
  rec?: Rec;
  users?: Map<string, Rec>;
}

/** Applies one random in-place change through the tracked proxy. */
export function mutate(p: State, op: Op, held: Held): void {
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

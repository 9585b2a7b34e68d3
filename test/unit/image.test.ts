import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { open } from 'node:fs/promises';
import { BlockList, SocketAddress } from 'node:net';
import { createHistogram } from 'node:perf_hooks';
import { createSecretKey } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { types } from 'node:util';
import v8 from 'node:v8';
import { MessageChannel } from 'node:worker_threads';
import { ImageError, SerializationError } from '../../src/errors.js';
import {
  cloneTree,
  decodeDelta,
  deserializeImage,
  diffTrees,
  encodeDelta,
  fromTree,
  patchTree,
  patchTreeInPlace,
  serializeImage,
  toTree,
  treesEqual,
  type ImageDelta,
  type TreeNode,
} from '../../src/image/index.js';

/** What node:v8 itself makes of a value: the reference every round trip is held to. */
const viaV8 = (value: unknown): unknown => v8.deserialize(v8.serialize(value));

const roundTrip = (value: unknown): unknown => fromTree(toTree(value));

/**
 * The first difference between two values, compared as reference graphs: same kinds, same
 * prototypes, same own keys in the same order, same holes, same bytes, and the same sharing
 * (an object met twice on one side is the same object met twice on the other). A path, or
 * undefined when they match.
 */
function graphDiff(left: unknown, right: unknown): string | undefined {
  const pairs = new Map<object, object>();
  const reverse = new Map<object, object>();
  const bytes = (v: ArrayBufferView | ArrayBuffer): Buffer =>
    ArrayBuffer.isView(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : Buffer.from(v);
  const walk = (x: unknown, y: unknown, path: string): string | undefined => {
    if (typeof x !== typeof y) return `${path}: ${typeof x} vs ${typeof y}`;
    if (typeof x !== 'object' || x === null || y === null) {
      return Object.is(x, y) ? undefined : `${path}: ${String(x)} vs ${String(y)}`;
    }
    const yo = y as object;
    const paired = pairs.get(x);
    if (paired !== undefined || reverse.has(yo))
      return paired === yo ? undefined : `${path}: sharing differs`;
    pairs.set(x, yo);
    reverse.set(yo, x);
    const tag = Object.prototype.toString.call(x);
    if (tag !== Object.prototype.toString.call(yo))
      return `${path}: ${tag} vs ${Object.prototype.toString.call(yo)}`;
    if (Object.getPrototypeOf(x) !== Object.getPrototypeOf(yo)) return `${path}: prototypes differ`;
    if (ArrayBuffer.isView(x) || x instanceof ArrayBuffer) {
      const same = bytes(x).equals(bytes(yo as ArrayBuffer));
      const resizable = (v: object): unknown => (v as { maxByteLength?: number }).maxByteLength;
      if (!same) return `${path}: bytes differ`;
      if (x instanceof ArrayBuffer && resizable(x) !== resizable(yo)) return `${path}: maxByteLength differs`;
      return undefined;
    }
    if (x instanceof Date)
      return Object.is(x.getTime(), (yo as Date).getTime()) ? undefined : `${path}: time`;
    if (x instanceof RegExp) {
      const r = yo as RegExp;
      return x.source === r.source && x.flags === r.flags ? undefined : `${path}: regexp`;
    }
    if (types.isBoxedPrimitive(x)) {
      const value = (v: object): unknown => (v as { valueOf(): unknown }).valueOf();
      return Object.is(value(x), value(yo)) ? undefined : `${path}: boxed value`;
    }
    if (x instanceof Map || x instanceof Set) {
      const xs = [...(x as Map<unknown, unknown>).entries()];
      const ys = [...(yo as Map<unknown, unknown>).entries()];
      if (xs.length !== ys.length) return `${path}: size ${xs.length} vs ${ys.length}`;
      for (let i = 0; i < xs.length; i++) {
        const [xk, xv] = xs[i] as [unknown, unknown];
        const [yk, yv] = ys[i] as [unknown, unknown];
        const problem = walk(xk, yk, `${path}<${i} key>`) ?? walk(xv, yv, `${path}<${i}>`);
        if (problem !== undefined) return problem;
      }
      return undefined;
    }
    if (x instanceof Error) {
      const names = (v: object): string => Object.getOwnPropertyNames(v).sort().join();
      if (names(x) !== names(yo)) return `${path}: error members ${names(x)} vs ${names(yo)}`;
      for (const key of ['name', 'message', 'stack', 'cause']) {
        const problem = walk(
          (x as unknown as Record<string, unknown>)[key],
          (yo as Record<string, unknown>)[key],
          `${path}.${key}`,
        );
        if (problem !== undefined) return problem;
      }
      return undefined;
    }
    const xKeys = Object.keys(x);
    const yKeys = Object.keys(yo);
    if (xKeys.join('\u0000') !== yKeys.join('\u0000')) return `${path}: keys [${xKeys}] vs [${yKeys}]`;
    if (Array.isArray(x) && x.length !== (yo as unknown[]).length) return `${path}: length`;
    for (const key of xKeys) {
      const problem = walk(
        (x as Record<string, unknown>)[key],
        (yo as Record<string, unknown>)[key],
        `${path}.${key}`,
      );
      if (problem !== undefined) return problem;
    }
    return undefined;
  };
  return walk(left, right, 'state');
}

/** Expects `value` to survive toTree/fromTree exactly as it survives node:v8. */
function expectFaithful(value: unknown): void {
  expect(graphDiff(roundTrip(value), viaV8(value))).toBeUndefined();
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

const serializationError = (fn: () => unknown): SerializationError => {
  const err = thrown(fn);
  expect(err).toBeInstanceOf(SerializationError);
  return err as SerializationError;
};

// Keys that collide with the encoding or with jsondiffpatch, mixed into ordinary ones.
const keyArb = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 6 }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '$rp',
      '_t',
      '__proto__',
      '~',
      '~x',
      'constructor',
      'toString',
      'hasOwnProperty',
      'id',
      '_id',
      '0',
      '7',
    ),
  },
);

const extraLeafArb = fc.oneof(
  fc.bigInt().map((n) => BigInt64Array.of(BigInt.asIntN(64, n), -1n)),
  fc.bigInt({ min: 0n }).map((n) => BigUint64Array.of(BigInt.asUintN(64, n))),
  fc.uint8Array({ maxLength: 8 }).map((u) => Buffer.from(u)),
  fc.uint8Array({ maxLength: 8 }).map((u) => u.slice().buffer),
  fc.uint8Array({ minLength: 2, maxLength: 8 }).map((u) => new DataView(u.slice().buffer, 1)),
  fc.float64Array({ maxLength: 3 }),
  fc.constantFrom(/a+b/gi, /x/y, /(?<n>\d)/du, /[\u{1F600}]/u),
  fc.string({ maxLength: 8 }).map((m) => new RangeError(m)),
  fc.constantFrom(new Date(Number.NaN), new Date(0), new Date(8.64e15)),
);

const leafArb = fc.oneof(
  fc.boolean(),
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 8 }),
  fc.string({ unit: 'binary', maxLength: 4 }),
  fc.constantFrom(null, undefined, Number.NaN, 0, -0, Infinity, -Infinity, Number.MAX_VALUE),
  extraLeafArb,
);

const anyArb = fc.anything({
  key: keyArb,
  values: [leafArb],
  maxDepth: 3,
  maxKeys: 5,
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withSparseArray: true,
  withTypedArray: true,
});

/** Values with shared references and cycles woven in. */
const graphArb = fc.tuple(anyArb, anyArb, fc.nat(4)).map(([x, y, shape]): unknown => {
  switch (shape) {
    case 0:
      return x;
    case 1:
      return { x, y, again: x, list: [y, x, y] };
    case 2: {
      const o: Record<string, unknown> = { x };
      o.self = o;
      o.list = [o, x];
      o.byKey = new Map<unknown, unknown>([
        [x, o],
        ['k', y],
      ]);
      return o;
    }
    case 3: {
      const a: unknown[] = [x];
      a.push(a, new Set([a, y, x]));
      return a;
    }
    default: {
      const shared = { id: 'same', y };
      return [shared, { id: 'same', other: true }, new Map([['s', shared]]), shared];
    }
  }
});

describe('typed tree round trip', () => {
  it('keeps Map, Set, Date, RegExp and BigInt', () => {
    const value = {
      map: new Map<unknown, unknown>([
        ['a', 1],
        [2, 'b'],
        [{ k: 1 }, [1]],
        [Number.NaN, null],
      ]),
      set: new Set<unknown>([1, 'x', { y: 2 }, undefined]),
      date: new Date(1_700_000_000_123),
      invalid: new Date(Number.NaN),
      re: /a(?<n>b)+/dgimsuy,
      big: -123456789012345678901234567890n,
      zero: 0n,
    };
    const back = roundTrip(value) as typeof value;
    expect(back.map.get('a')).toBe(1);
    expect(back.re.flags).toBe('dgimsuy');
    expect(back.big).toBe(-123456789012345678901234567890n);
    expectFaithful(value);
  });

  it('keeps undefined, NaN, -0, infinities and sparse arrays', () => {
    const holes = [1, , 3, , ,];
    const huge: unknown[] = [];
    huge[1e9] = 'far';
    const value = { u: undefined, nan: Number.NaN, neg: -0, inf: Infinity, ninf: -Infinity, holes, huge };
    const back = roundTrip(value) as typeof value;
    expect(Object.is(back.neg, -0)).toBe(true);
    expect(back.nan).toBeNaN();
    expect('u' in back).toBe(true);
    expect(back.holes).toHaveLength(5);
    expect(1 in back.holes).toBe(false);
    expect(back.huge).toHaveLength(1e9 + 1);
    expect(JSON.stringify(toTree(huge)).length).toBeLessThan(100);
    expectFaithful(value);
  });

  it('keeps every typed array, DataView, ArrayBuffer and Buffer', () => {
    const value = {
      i8: Int8Array.of(-1, 2),
      u8: Uint8Array.of(1, 255),
      c8: Uint8ClampedArray.of(0, 255),
      i16: Int16Array.of(-300),
      u16: Uint16Array.of(65535),
      i32: Int32Array.of(-7),
      u32: Uint32Array.of(4_000_000_000),
      f32: Float32Array.of(1.5, Number.NaN),
      f64: Float64Array.of(-0, Infinity, Number.NaN),
      bi64: BigInt64Array.of(-(2n ** 63n)),
      bu64: BigUint64Array.of(2n ** 64n - 1n),
      dv: new DataView(Uint8Array.of(9, 8, 7, 6).buffer, 1, 2),
      ab: Uint8Array.of(1, 2, 3).buffer,
      // (the ES2024 constructor overload is missing from this project's lib)
      resizable: new (ArrayBuffer as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(2, {
        maxByteLength: 16,
      }),
      buf: Buffer.from('hello'),
      // A view into the middle of a larger buffer carries only its own bytes.
      window: new Uint16Array(Uint8Array.of(0, 0, 1, 0, 2, 0, 9, 9).buffer, 2, 2),
    };
    const back = roundTrip(value) as typeof value;
    expect(Buffer.isBuffer(back.buf)).toBe(true);
    expect(back.window).toEqual(Uint16Array.of(1, 2));
    expect(back.window.buffer.byteLength).toBe(4);
    expect(Object.is(back.f64[0], -0)).toBe(true);
    expectFaithful(value);
  });

  it('keeps errors, boxed primitives, class instances and awkward keys', () => {
    class Point {
      #secret = 1;
      constructor(
        public x: number,
        public y: number,
      ) {}
      get secret(): number {
        return this.#secret;
      }
    }
    const err = new TypeError('bad', { cause: { code: 7 } });
    const value: Record<string, unknown> = {
      err,
      plainErr: new Error(),
      custom: Object.assign(new (class MyError extends Error {})('mine'), { name: 'MyError' }),
      boxed: [Object(-0), Object('s'), Object(false), Object(5n)],
      point: new Point(1, 2),
      nullProto: Object.assign(Object.create(null) as object, { a: 1 }),
      awkward: { $rp: 1, _t: 'a', '~': 2, '~~x': 3, constructor: 4, toString: 5, 'a b': 6, '': 7 },
    };
    Object.defineProperty(value.awkward, '__proto__', {
      value: 8,
      enumerable: true,
      configurable: true,
      writable: true,
    });
    const back = roundTrip(value) as Record<string, Record<string, unknown>>;
    expect(Object.keys(back.awkward as object)).toEqual(Object.keys(value.awkward as object));
    expect(Object.getPrototypeOf(back.awkward)).toBe(Object.prototype);
    expect(back.err).toBeInstanceOf(TypeError);
    expect(back.point).toEqual({ x: 1, y: 2 });
    expectFaithful(value);
  });

  it('keeps shared references and cycles, with identity', () => {
    const shared = { name: 'shared' };
    const list: unknown[] = [shared];
    list.push(list);
    const node: Record<string, unknown> = { shared, list };
    node.self = node;
    const map = new Map<unknown, unknown>([
      [shared, node],
      ['node', node],
    ]);
    const set = new Set<unknown>([shared, list, map]);
    const err = new Error('loop', { cause: node });
    const date = new Date(5);
    const bytes = Uint8Array.of(1);
    const value = { node, map, set, again: shared, list, err, dates: [date, date], bytes: [bytes, bytes] };
    map.set('value', value);

    const back = roundTrip(value) as typeof value;
    const bnode = back.node as Record<string, unknown>;
    expect(bnode.self).toBe(bnode);
    expect(bnode.shared).toBe(back.again);
    expect(back.list[1]).toBe(back.list);
    expect(back.map.get(back.again)).toBe(bnode);
    expect(back.map.get('value')).toBe(back);
    expect(back.set.has(back.map)).toBe(true);
    expect((back.err as Error & { cause: unknown }).cause).toBe(bnode);
    expect(back.dates[0]).toBe(back.dates[1]);
    expect(back.bytes[0]).toBe(back.bytes[1]);
    expect(graphDiff(back, value)).toBeUndefined();
  });

  it('keeps a root that refers to itself, and survives JSON', () => {
    const root: unknown[] = [];
    root.push(root, { up: root });
    const tree = JSON.parse(JSON.stringify(toTree(root))) as TreeNode;
    const back = fromTree(tree) as unknown[];
    expect(back[0]).toBe(back);
    expect((back[1] as { up: unknown }).up).toBe(back);
  });

  it('keeps plain data plain', () => {
    const value = { a: 1, list: [true, 'x', null, { b: [2.5] }] };
    expect(toTree(value)).toEqual(value);
  });

  it('uses a record id as its reference id, falling back to counting on a clash', () => {
    const a = { id: 'a1' };
    const b = { id: 'a1' };
    const tree = toTree({ all: [a, b], byId: [a, b] }) as { all: TreeNode[] };
    expect(tree.all).toEqual([
      { id: 'a1', $rp: '#s:a1' },
      { id: 'a1', $rp: 1 },
    ]);
  });

  it('matches node:v8 on arbitrary values (property)', () => {
    fc.assert(
      fc.property(graphArb, (value) => {
        expect(graphDiff(roundTrip(value), viaV8(value))).toBeUndefined();
      }),
      { numRuns: 200 },
    );
  });

  it('gives the same tree for a value and for its v8 image (property)', () => {
    // The standby rebuilds its tree from a keyframe; deltas made from the primary's tree must fit.
    fc.assert(
      fc.property(graphArb, (value) => {
        expect(treesEqual(toTree(value), toTree(deserializeImage(serializeImage(value))))).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  it('decodes a reference that comes before its definition', () => {
    const tree: TreeNode = {
      x: { $rp: 'ref', id: 1 },
      y: { $rp: 1, k: 2 },
      z: [
        { $rp: 'ref', id: '#s:q' },
        { $rp: '#s:q', id: 'q' },
      ],
    };
    const back = fromTree(tree) as Record<string, unknown>;
    expect(back.x).toBe(back.y);
    expect(back.y).toEqual({ k: 2 });
    const z = back.z as unknown[];
    expect(z[0]).toBe(z[1]);
  });

  it('nests deeper than node:v8 can, which then fails cleanly', () => {
    let deep: unknown = 'leaf';
    for (let i = 0; i < 30_000; i++) {
      deep = i % 3 === 0 ? { d: deep } : i % 3 === 1 ? [deep] : new Map([['k', deep]]);
    }
    const tree = toTree(deep);
    expect(treesEqual(cloneTree(tree), tree)).toBe(true);
    let back = fromTree(tree);
    for (let i = 30_000 - 1; i >= 0; i--) {
      back =
        i % 3 === 0
          ? (back as { d: unknown }).d
          : i % 3 === 1
            ? (back as unknown[])[0]
            : (back as Map<string, unknown>).get('k');
    }
    expect(back).toBe('leaf');
    expect(serializationError(() => serializeImage(deep)).message).toMatch(/nests too deeply/);
  });
});

describe('unserializable values', () => {
  it('names the path of a function, wherever it is', () => {
    const inObject = serializationError(() => toTree({ handlers: { onTick: () => 1 } }));
    expect(inObject.path).toBe('state.handlers.onTick');
    expect(inObject.message).toBe(
      'state.handlers.onTick is a function; functions cannot be part of a checkpoint image: keep them ' +
        'out of the state and rebuild them on resume',
    );
    expect(serializationError(() => toTree({ items: [0, 1, 2, function named() {}] })).path).toBe(
      'state.items[3]',
    );
    expect(serializationError(() => toTree({ byId: new Map([['x', { f: () => 1 }]]) })).path).toBe(
      'state.byId<Map key "x">.f',
    );
    expect(serializationError(() => toTree({ m: new Map([[() => 1, 1]]) })).path).toBe(
      'state.m<Map entry 0 key>',
    );
    expect(serializationError(() => toTree({ m: new Map([[{}, () => 1]]) })).path).toBe(
      'state.m<Map entry 0 value>',
    );
    expect(serializationError(() => toTree({ m: new Map([[7, () => 1]]) })).path).toBe('state.m<Map key 7>');
    expect(serializationError(() => toTree({ s: new Set([1, () => 1]) })).path).toBe('state.s<Set entry 1>');
    expect(serializationError(() => toTree({ 'a b': [{ c: () => 1 }] })).path).toBe('state["a b"][0].c');
    expect(serializationError(() => toTree({ e: new Error('x', { cause: () => 1 }) })).path).toBe(
      'state.e.cause',
    );
    expect(serializationError(() => toTree({ sparse: [, , () => 1] })).path).toBe('state.sparse[2]');
    expect(serializationError(() => toTree(() => 1)).path).toBe('state');
  });

  it('refuses an error caused by itself, which node:v8 writes but cannot read back', () => {
    const err = new Error('loop');
    err.cause = { wrapped: [err] };
    expect(() => v8.serialize(err)).not.toThrow();
    expect(() => v8.deserialize(v8.serialize(err))).toThrow();
    const refused = serializationError(() => toTree({ e: err }));
    expect(refused.path).toBe('state.e.cause.wrapped[0]');
    expect(refused.message).toMatch(/refers back to an Error from inside that error's own cause/);
    // Not a cycle through the cause: fine.
    const fine = new Error('ok');
    const holder = { fine, list: [fine] };
    fine.cause = holder;
    expectFaithful(holder);
  });

  it('names the path in serializeImage too', () => {
    expect(serializationError(() => serializeImage({ handlers: { onTick: () => 1 } })).path).toBe(
      'state.handlers.onTick',
    );
    expect(serializationError(() => serializeImage({ byId: new Map([['x', Symbol('s')]]) })).path).toBe(
      'state.byId<Map key "x">',
    );
    const blob = serializationError(() => serializeImage({ files: [new Blob(['x'])] }));
    expect(blob.path).toBe('state.files[0]');
    expect(blob.message).toMatch(/Blob/);
  });

  it('finds a native handle only v8 recognizes', async () => {
    const handle = await open(fileURLToPath(import.meta.url));
    try {
      const err = serializationError(() => serializeImage({ files: { open: [1, handle] } }));
      expect(err.path).toBe('state.files.open[1]');
      expect(err.message).toMatch(/FileHandle/);
    } finally {
      await handle.close();
    }
  });

  it('tells how to fix each kind', () => {
    const message = (value: unknown): string => serializationError(() => toTree({ v: value })).message;
    expect(message(Symbol('s'))).toMatch(/^state\.v is a symbol; .*string name/);
    expect(message(Promise.resolve(1))).toMatch(/^state\.v is a Promise; .*await it/);
    expect(message(new WeakMap())).toMatch(/^state\.v is a WeakMap; .*Map or Set/);
    expect(message(new Proxy({}, {}))).toMatch(/^state\.v is a Proxy/);
    expect(message(new SharedArrayBuffer(1))).toMatch(/SharedArrayBuffer/);
    expect(message(new Map().keys())).toMatch(/iterator; .*Array\.from/);
    expect(message(new Intl.Collator())).toMatch(/Intl\.Collator/);
    const getter = {
      get boom(): number {
        throw new Error('nope');
      },
    };
    expect(serializationError(() => toTree({ o: getter })).message).toMatch(
      /^state\.o\.boom threw while being read \(Error: nope\)/,
    );
  });

  it('accepts and refuses exactly what node:v8 does', async () => {
    const channel = new MessageChannel();
    const detached = new ArrayBuffer(4);
    structuredClone(detached, { transfer: [detached] });
    class WithPrivate {
      #hidden = 1;
      shown = 2;
      peek(): number {
        return this.#hidden;
      }
    }
    const candidates: [string, unknown][] = [
      ['function', () => 1],
      ['symbol', Symbol('x')],
      ['Promise', Promise.resolve()],
      ['WeakMap', new WeakMap()],
      ['WeakSet', new WeakSet()],
      ['WeakRef', new WeakRef({})],
      ['FinalizationRegistry', new FinalizationRegistry(() => undefined)],
      ['Proxy object', new Proxy({}, {})],
      ['Proxy array', new Proxy([], {})],
      ['generator', (function* gen() {})()],
      ['Map iterator', new Map().entries()],
      ['Array iterator', [][Symbol.iterator]()],
      [
        'arguments',
        (function args() {
          // eslint-disable-next-line prefer-rest-params
          return arguments;
        })(),
      ],
      ['boxed symbol', Object(Symbol('b'))],
      ['SharedArrayBuffer', new SharedArrayBuffer(2)],
      ['Intl.NumberFormat', new Intl.NumberFormat()],
      ['detached ArrayBuffer', detached],
      ['module namespace', await import('node:path')],
      ['Blob', new Blob(['x'])],
      ['MessagePort', channel.port1],
      ['KeyObject', createSecretKey(Buffer.alloc(8))],
      ['BlockList', new BlockList()],
      ['SocketAddress', new SocketAddress({ address: '127.0.0.1' })],
      ['Histogram', createHistogram()],
      ['URL', new URL('http://x/')],
      ['AbortSignal', new AbortController().signal],
      ['EventTarget', new EventTarget()],
      ['TextDecoder', new TextDecoder()],
      ['class with private fields', new WithPrivate()],
      ['Array subclass', new (class List extends Array {})()],
      ['Map subclass', new (class Registry extends Map<number, number> {})([[1, 2]])],
      ['AggregateError', new AggregateError([1], 'all')],
    ];
    try {
      for (const [name, value] of candidates) {
        const v8Refuses = thrown(() => {
          v8.serialize({ v: value });
          throw new Error('accepted');
        });
        const refused = (v8Refuses as Error).message !== 'accepted';
        if (refused) {
          expect(
            thrown(() => toTree({ v: value })),
            name,
          ).toBeInstanceOf(SerializationError);
          expect(
            thrown(() => serializeImage({ v: value })),
            name,
          ).toBeInstanceOf(SerializationError);
        } else {
          expect(graphDiff(roundTrip({ v: value }), viaV8({ v: value })), name).toBeUndefined();
        }
      }
    } finally {
      channel.port1.close();
    }
  });
});

describe('serializeImage and deserializeImage', () => {
  it('round-trips through v8 bytes', () => {
    const value = { a: new Map([[1, new Set([2n])]]), b: Float32Array.of(1.5) };
    expect(graphDiff(deserializeImage(serializeImage(value)), viaV8(value))).toBeUndefined();
  });

  it('gives typed arrays memory of their own, so the input can be reused', () => {
    const bytes = serializeImage({
      u8: Uint8Array.of(1, 2, 3),
      buf: Buffer.from('abc'),
      dv: new DataView(new ArrayBuffer(2)),
    });
    const back = deserializeImage(bytes) as { u8: Uint8Array; buf: Buffer; dv: DataView };
    bytes.fill(0);
    expect([...back.u8]).toEqual([1, 2, 3]);
    expect(back.buf.toString()).toBe('abc');
    expect(back.u8.buffer.byteLength).toBe(3);
  });

  it('rejects garbage with ImageError, never another error', () => {
    expect(thrown(() => deserializeImage(new Uint8Array()))).toBeInstanceOf(ImageError);
    expect(thrown(() => deserializeImage(Buffer.from('not an image')))).toBeInstanceOf(ImageError);
    expect(thrown(() => deserializeImage('str' as unknown as Uint8Array))).toBeInstanceOf(ImageError);
    const good = serializeImage({ list: [1, 2, 3], s: 'x'.repeat(40) });
    expect(thrown(() => deserializeImage(good.subarray(0, good.length - 5)))).toBeInstanceOf(ImageError);
    const header = serializeImage(null).subarray(0, 2);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.boolean(), (tail, withHeader) => {
        const bytes = withHeader ? Buffer.concat([header, tail]) : tail;
        try {
          deserializeImage(bytes);
        } catch (err) {
          expect(err).toBeInstanceOf(ImageError);
        }
      }),
      { numRuns: 500 },
    );
  });
});

/** Applies the delta the way a standby does: over the wire, then onto its own base. */
function expectDeltaWorks(a: unknown, b: unknown): void {
  const ta = toTree(a);
  const tb = toTree(b);
  const before = cloneTree(ta);
  const delta = diffTrees(ta, tb);
  if (delta === undefined) {
    expect(treesEqual(ta, tb)).toBe(true);
    return;
  }
  const wire = decodeDelta(encodeDelta(delta));
  expect(wire).toEqual(delta);
  const patched = patchTree(ta, wire);
  expect(treesEqual(ta, before)).toBe(true); // patchTree left its base alone
  expect(treesEqual(patched, tb)).toBe(true); // key order included
  expect(graphDiff(fromTree(patched), viaV8(b))).toBeUndefined();
  expect(treesEqual(patchTreeInPlace(cloneTree(ta), delta), tb)).toBe(true);
}

interface Row {
  id: number | string;
  v: unknown;
}

const rowArb: fc.Arbitrary<Row> = fc.record({
  id: fc.oneof(fc.integer({ min: 0, max: 30 }), fc.constantFrom('a', 'b', 'c')),
  v: fc.oneof(fc.integer(), fc.string({ maxLength: 3 }), fc.constant(undefined)),
});

type Edit = { op: 'delete' | 'insert' | 'move' | 'modify'; at: number; to: number; row: Row };

const editArb: fc.Arbitrary<Edit> = fc.record({
  op: fc.constantFrom('delete', 'insert', 'move', 'modify'),
  at: fc.nat(),
  to: fc.nat(),
  row: rowArb,
});

function applyEdits(rows: readonly Row[], edits: readonly Edit[]): Row[] {
  const out = rows.slice();
  for (const { op, at, to, row } of edits) {
    const i = out.length === 0 ? 0 : at % out.length;
    if (op === 'insert' || out.length === 0) out.splice(i, 0, { ...row });
    else if (op === 'delete') out.splice(i, 1);
    else if (op === 'modify') out[i] = { ...(out[i] as Row), v: row.v };
    else out.splice(to % out.length, 0, ...out.splice(i, 1));
  }
  return out;
}

/** A typical state: records in a list and in a Map by id (shared objects). */
const stateOf = (rows: Row[]): unknown => ({
  rows,
  byId: new Map(rows.map((r) => [r.id, r])),
  count: rows.length,
});

describe('image deltas', () => {
  it('is undefined when nothing changed', () => {
    expect(diffTrees(toTree({ a: [1, { b: 2 }] }), toTree({ a: [1, { b: 2 }] }))).toBeUndefined();
  });

  it('is small for a small change to a large state', () => {
    const rows = Array.from({ length: 2000 }, (_, i) => ({ id: `r${i}`, n: i, at: new Date(i) }));
    const next = rows.slice(1);
    next.splice(1000, 0, { id: 'new', n: -1, at: new Date(0) });
    next.push({ id: 'tail', n: 0, at: new Date(1) });
    const delta = diffTrees(
      toTree(stateOf(rows as unknown as Row[])),
      toTree(stateOf(next as unknown as Row[])),
    );
    expect(encodeDelta(delta as ImageDelta).byteLength).toBeLessThan(600);
    expectDeltaWorks(stateOf(rows as unknown as Row[]), stateOf(next as unknown as Row[]));
  });

  it('keeps key order exactly', () => {
    expectDeltaWorks({ a: 1, b: 2, c: 3 }, { b: 2, a: 1, c: 3 });
    expectDeltaWorks({ a: 1, b: 2 }, { a: 1, x: 0, b: 2 });
    expectDeltaWorks({ a: 1, 2: 'x', b: 2 }, { 1: 'y', a: 1, b: 3 });
  });

  it('handles keys that jsondiffpatch would misread', () => {
    // jsondiffpatch looks members up through the prototype chain and treats "_t" as its marker.
    const awkward = { constructor: 1, toString: 2, valueOf: 3, _t: 'a', $rp: 'map', '~': 4 };
    expectDeltaWorks({}, awkward);
    expectDeltaWorks(awkward, {});
    expectDeltaWorks(awkward, { ...awkward, _t: 'b', constructor: 5 });
    const proto = JSON.parse('{"__proto__": {"x": 1}}') as unknown;
    expectDeltaWorks({}, proto);
    expectDeltaWorks(proto, { __proto__x: 1 });
  });

  it('replaces a huge unkeyed array instead of running a quadratic LCS', () => {
    const a = Array.from({ length: 3000 }, (_, i) => i % 10);
    const b = [9, ...a.slice(0, -1)];
    const started = performance.now();
    expectDeltaWorks({ a }, { a: b });
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it('turns any value into any other (property)', () => {
    fc.assert(
      fc.property(graphArb, graphArb, (a, b) => expectDeltaWorks(a, b)),
      { numRuns: 200 },
    );
  });

  it('follows edits to records shared between a list and a Map (property)', () => {
    fc.assert(
      fc.property(fc.array(rowArb, { maxLength: 25 }), fc.array(editArb, { maxLength: 6 }), (rows, edits) =>
        expectDeltaWorks(stateOf(rows), stateOf(applyEdits(rows, edits))),
      ),
      { numRuns: 200 },
    );
  });

  it('follows edits to long keyed lists, matched by key (property)', () => {
    const longRows = fc
      .uniqueArray(fc.integer({ min: 0, max: 1_000_000 }), { minLength: 110, maxLength: 220 })
      .map((ids) => ids.map((id): Row => ({ id, v: id % 7 })));
    fc.assert(
      fc.property(longRows, fc.array(editArb, { minLength: 2, maxLength: 12 }), (rows, edits) =>
        expectDeltaWorks(stateOf(rows), stateOf(applyEdits(rows, edits))),
      ),
      { numRuns: 40 },
    );
  });

  it('rejects garbage bytes with ImageError', () => {
    expect(thrown(() => decodeDelta(Buffer.from([0xff, 0xfe])))).toBeInstanceOf(ImageError);
    expect(thrown(() => decodeDelta(Buffer.from('{"a":')))).toBeInstanceOf(ImageError);
    expect(thrown(() => decodeDelta(Buffer.from('42')))).toBeInstanceOf(ImageError);
    expect(thrown(() => decodeDelta(Buffer.from('{"a":[1,2,3,4]}')))).toBeInstanceOf(ImageError);
    expect(thrown(() => decodeDelta(Buffer.from('{"_t":"b"}')))).toBeInstanceOf(ImageError);
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 64 }),
          fc.json().map((j) => Buffer.from(j)),
        ),
        (bytes) => {
          try {
            decodeDelta(bytes);
          } catch (err) {
            expect(err).toBeInstanceOf(ImageError);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('rejects a delta that does not fit its base with ImageError', () => {
    const arrayDelta = diffTrees(toTree({ list: [1, 2, 3] }), toTree({ list: [1, 3] })) as ImageDelta;
    expect(thrown(() => patchTree(toTree({ list: 'no' }), arrayDelta))).toBeInstanceOf(ImageError);
    expect(thrown(() => patchTree(toTree({ list: [] }), arrayDelta))).toBeInstanceOf(ImageError);
    const objectDelta = diffTrees(toTree({ o: { a: 1 } }), toTree({ o: { a: 2 } })) as ImageDelta;
    expect(thrown(() => patchTree(toTree({ o: [1] }), objectDelta))).toBeInstanceOf(ImageError);
    expect(thrown(() => patchTree(toTree({ o: 5 }), objectDelta))).toBeInstanceOf(ImageError);
  });

  it('never fails with anything but ImageError on arbitrary trees and deltas (property)', () => {
    const deltaArb = fc.json().map((j) => JSON.parse(j) as unknown);
    fc.assert(
      fc.property(fc.jsonValue(), deltaArb, (tree, delta) => {
        for (const attempt of [
          () => fromTree(tree as TreeNode),
          () => fromTree(patchTree(tree as TreeNode, delta as ImageDelta)),
        ]) {
          try {
            attempt();
          } catch (err) {
            expect(err).toBeInstanceOf(ImageError);
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('malformed trees', () => {
  it('names the path of the bad node', () => {
    const unknownTag = thrown(() => fromTree({ a: [{ $rp: 'nope' }] }));
    expect(unknownTag).toBeInstanceOf(ImageError);
    expect((unknownTag as Error).message).toMatch(/state\.a\[0\] has an unknown tag "nope"/);
    const dangling = thrown(() => fromTree({ m: { $rp: 'map', e: [['k', { $rp: 'ref', id: 9 }]] } }));
    expect((dangling as Error).message).toMatch(
      /state\.m<Map key "k"> refers to id 9, which no node defines/,
    );
    const badView = thrown(() => fromTree({ $rp: 'view', t: 'Float64Array', b: 'AAA=' }));
    expect((badView as Error).message).toMatch(/not a whole number of Float64Array elements/);
  });
});

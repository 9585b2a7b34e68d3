/**
 * Tracked state: a proxy that records which entries an app changed in place, so that a
 * checkpoint's delta costs O(changed entries) instead of a walk of the whole state.
 *
 * ```text
 * const state = track(raw)            proxy over raw; reads give proxies of nested containers
 * state.users.get(id).balance += 5    the set is applied to raw and noted: (record, 'balance')
 * checkpoint(state)                   walk only the noted paths: delta + typed tree patched in place
 * ```
 *
 * Plain objects, arrays, Maps and Sets are tracked; they are what reads through the proxy hand
 * out as proxies. Every other object (Date, typed array, Buffer, class instance, Error...) is a
 * value: reads hand it out as is, and changing it in place is not seen. Replace it instead
 * (`rec.at = new Date()`), or assign it again after changing it (`rec.buf = rec.buf`): any
 * assignment through the proxy marks the entry changed.
 *
 * Exactness: the delta turns the previous typed tree into exactly `toTree(state)`. Changes are
 * found from marks, never guessed: a change marks its container dirty and every container above
 * it (found through the `Registry`'s homes) as leading to it. Arrays whose length changes, Sets,
 * Maps that are cleared or have object keys, and objects whose key order changes are re-encoded
 * whole (and diffed with jsondiffpatch). While the state shares an object between two places (or
 * has a cycle) the registry says so and the encoder takes its full, exact path instead.
 */
import { InvalidArgumentError } from '../errors.js';
import type { ChangeHook } from './cow.js';
import { diffTrees, type ImageDelta } from './delta.js';
import {
  Container,
  MAP_KEY,
  Registry,
  type Members,
  containerKind,
  forEachChild,
  hasEnumerable,
  isIndexKey,
  isObject,
} from './graph.js';
import { MapIndex } from './map-index.js';
import {
  TREE_TAG,
  TreeTag,
  toTree,
  toTreeIndexed,
  treeKey,
  treesEqual,
  type TreeNode,
  type TreeObject,
} from './typed-tree.js';

/** What changed in one container since the last checkpoint. */
interface Dirty {
  /** Keys set or deleted (object keys, array indices as numbers, Map keys): see `KeySet`. */
  readonly keys: KeySet;
  /** Keys deleted at least once (objects and Maps): a key deleted and set again moved to the end. */
  removed: Set<unknown> | undefined;
  /** Map keys set while absent, in the order they were added: the Map's new tail. */
  appended: Set<unknown> | undefined;
  /** Re-encode this container whole. */
  whole: boolean;
}

/**
 * A set of keys in insertion order, kept as a short array until it grows: most dirty containers
 * are records with one or two changed fields, and a Set each would dominate the garbage.
 */
class KeySet implements Iterable<unknown> {
  #list: unknown[] = [];
  #set: Set<unknown> | undefined;

  add(key: unknown): void {
    if (this.#set !== undefined) {
      this.#set.add(key);
    } else if (!this.#list.includes(key) && !(key !== key && this.#list.some((k) => k !== k))) {
      this.#list.push(key);
      if (this.#list.length > 8) this.#set = new Set(this.#list);
    }
  }

  has(key: unknown): boolean {
    return this.#set !== undefined ? this.#set.has(key) : this.#list.includes(key);
  }

  [Symbol.iterator](): Iterator<unknown> {
    return (this.#set ?? this.#list)[Symbol.iterator]();
  }
}

/** A position's new node and its delta (undefined when unchanged). */
interface Step {
  readonly node: TreeNode;
  readonly delta: unknown;
}

type DeltaRecord = Record<string, unknown>;

/**
 * What a tracked proxy answers with its target (stored values are unwrapped so the state holds
 * no proxy). A symbol no one else can name, instead of one more WeakMap entry per proxy.
 */
const TARGET = Symbol('restartpoint tracked target');
/** Root proxies, to their tracker. */
const trackerOfRoot = new WeakMap<object, StateTracker>();
/** Tracked roots, to their tracker: tracking a state twice gives the same proxy. */
const trackerOfTarget = new WeakMap<object, StateTracker>();

/** The raw value behind a tracked proxy (any level), or `value` itself. */
export function untracked<T>(value: T): T {
  return isObject(value) ? (((value as { [TARGET]?: T })[TARGET] as T | undefined) ?? value) : value;
}

/** The tracker of a root proxy made by `track`, or undefined. */
export function trackerOf(value: unknown): StateTracker | undefined {
  return isObject(value) ? trackerOfRoot.get(value) : undefined;
}

/**
 * Wraps `state` (a plain object, array, Map or Set) in a proxy that records what the app changes.
 * Change the state only through the proxy (and the proxies its reads return); the raw object
 * must not be changed directly any more. Tracking the same object twice returns the same proxy.
 *
 * Throws `InvalidArgumentError` when `state` is not a container that can be tracked.
 */
export function track<S extends object>(state: S): S {
  const raw = untracked(state);
  if (containerKind(raw) === undefined) {
    throw new InvalidArgumentError(
      `track() needs a plain object, an array, a Map or a Set as the state, got ${describe(raw)}: ` +
        'wrap your state in a plain object, for example track({ app })',
    );
  }
  let tracker = trackerOfTarget.get(raw);
  if (tracker === undefined) {
    tracker = new StateTracker(raw);
    trackerOfTarget.set(raw, tracker);
  }
  return tracker.proxy as S;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  const name = (v as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === 'string' ? `a ${name}` : 'an object';
}

/** The dirty marks of one tracked state and the bookkeeping that makes them exact. */
export class StateTracker {
  /** The raw state. */
  readonly target: object;
  /** The root proxy. */
  readonly proxy: object;
  readonly #registry = new Registry(true);
  /** Whether the registry counts the state (after the first full walk). */
  #indexed = false;
  #generation = 0;
  /** During `walk`: `limits.maxDepth`, and how many containers hold the one being walked. */
  #maxDepth = Infinity;
  #level = 0;
  #dirty = new Map<object, Dirty>();
  #descend = new Map<object, Set<unknown>>();
  /** Entry positions of Maps, kept in step with their tree nodes (see walkMap). */
  #maps = new Map<Map<unknown, unknown>, MapIndex>();
  readonly #proxies = new WeakMap<object, object>();
  /**
   * Reads made before the first full walk (`value, parent, key` triples): the places of the
   * objects the app may already hold proxies of. Replayed, if still true, once the walk is done.
   */
  #early: unknown[] | 'overflow' | undefined = [];
  /** While an off-thread keyframe walks the state: told before every change (cow.ts). */
  #cow: ChangeHook | undefined;
  /**
   * During such a keyframe of a state that was not counted at its call: the registry's share of
   * every change (counts, homes, marks up to the root), replayed once the walk's objects are
   * known (`endFlight`).
   */
  #replay: (() => void)[] | undefined;

  constructor(target: object) {
    this.target = target;
    this.proxy = this.wrap(target) as object;
    trackerOfRoot.set(this.proxy, this);
  }

  /** Changes every time the marks are consumed; lets an encoder tell whether it saw them all. */
  get generation(): number {
    return this.#generation;
  }

  /** Whether the marks can be walked: the state is counted and is still a tree. */
  get walkable(): boolean {
    return this.#indexed && !this.#registry.shared();
  }

  /**
   * After a full walk of the state (keyframe or full diff): `members` are the objects that walk
   * met, each held once (undefined when the state shares objects: nothing can be walked then).
   * The marks, which that walk covered, are dropped; entry indexes of Maps that did not change
   * are kept.
   */
  rebuild(members: Members | undefined): void {
    const maps = new Map<Map<unknown, unknown>, MapIndex>();
    if (members !== undefined) {
      this.#registry.reset(members, this.target);
      this.#replayEarlyReads();
      for (const [m, index] of this.#maps) {
        if (!this.#dirty.has(m) && members.has(m)) maps.set(m, index);
      }
      // Index large Maps now, during the (already whole-state) walk, rather than in the first
      // delta that touches one: deltas stay O(change).
      for (const o of members instanceof Map ? members.keys() : []) {
        if (o instanceof Map && o.size >= EAGER_INDEX_ENTRIES && !maps.has(o) && !this.#dirty.has(o)) {
          const index = mapIndexOf(o as Map<unknown, unknown>);
          if (index !== undefined) maps.set(o as Map<unknown, unknown>, index);
        }
      }
    }
    this.#maps = maps;
    this.#indexed = members !== undefined;
    // Unindexed, stores do not keep homes: the next reset must learn them all again.
    if (!this.#indexed) this.#registry.lose();
    this.#consume();
  }

  /** After a failed encode: nothing here can be trusted until the next full walk. */
  invalidate(): void {
    this.#indexed = false;
    this.#registry.lose();
    this.#maps = new Map();
    this.#consume();
  }

  #consume(): void {
    this.#dirty = new Map();
    this.#descend = new Map();
    this.#generation++;
  }

  /**
   * A keyframe of the state as it is now starts, walked a slice at a time (keyframe-encode.ts):
   * the marks so far are covered by it and dropped; changes from now on are told to `cow` first
   * and marked as usual, for the first delta after the keyframe. Ends with `endFlight`.
   */
  beginFlight(cow: ChangeHook): void {
    if (this.walkable) {
      // The registry stays valid through the keyframe: only the Map indexes must reach the
      // state of now, the keyframe's tree (the marks say what moved in them).
      this.#advanceMapIndexes();
      this.#replay = undefined;
    } else {
      // Counted once the walk is done; what changes meanwhile is replayed then.
      this.#indexed = false;
      this.#maps = new Map();
      this.#replay = [];
    }
    this.#cow = cow;
    this.#consume();
  }

  /**
   * The keyframe's walk is done: `walked` is what it found (undefined when it failed). The
   * marks made during it stay, for the next delta; the Maps' entry indexes the walk built
   * (`indexes`, in the keyframe tree's order) are taken.
   */
  endFlight(
    walked: { readonly shared: boolean; readonly objects: Members } | undefined,
    indexes: ReadonlyMap<Map<unknown, unknown>, MapIndex | null>,
  ): void {
    const replay = this.#replay;
    this.#cow = undefined;
    this.#replay = undefined;
    if (walked === undefined) {
      this.invalidate();
      return;
    }
    if (walked.shared) {
      this.rebuild(undefined);
      return;
    }
    if (replay !== undefined) {
      this.#registry.reset(walked.objects, this.target);
      this.#replayEarlyReads();
      this.#indexed = true;
      this.#maps = new Map();
    }
    for (const [m, index] of indexes) {
      if (index !== null && !this.#maps.has(m) && walked.objects.has(m)) this.#maps.set(m, index);
    }
    if (replay !== undefined) {
      // A Map changed during the walk without an index: its order now is not the keyframe
      // tree's, so an index made from it later would point at the wrong entries. Re-encode it.
      for (const [c, d] of this.#dirty) if (c instanceof Map && !this.#maps.has(c)) d.whole = true;
      for (const fn of replay) fn();
    }
  }

  /** Moves each Map index past the marks, to the Map's order now (beginFlight). */
  #advanceMapIndexes(): void {
    for (const [m, index] of this.#maps) {
      const d = this.#dirty.get(m);
      if (d === undefined) continue;
      if (d.whole) {
        this.#maps.delete(m);
        continue;
      }
      for (const k of d.keys) {
        if (index.has(k) && (!m.has(k) || d.removed?.has(k) === true)) index.remove(k);
      }
      for (const k of d.appended ?? []) if (m.has(k) && !index.has(k)) index.append(k);
      if (index.size !== m.size) this.#maps.delete(m);
    }
  }

  /**
   * The registry's share of a change to `c`: `count` (adopt and release, run only if `c` is
   * counted) and the marks up to the root. Replayed later during a keyframe's walk of an
   * uncounted state.
   */
  #counting(c: object, count: () => void): void {
    if (this.#replay !== undefined) {
      this.#replay.push(() => {
        if (this.#counted(c)) count();
        this.#markUp(c);
      });
      return;
    }
    if (this.#counted(c)) count();
    this.#markUp(c);
  }

  /**
   * Turns `tree` (the typed tree of the state at the last checkpoint, owned by the caller) into
   * the typed tree of the state now, IN PLACE, and returns it with the delta between the two.
   * Only call when `walkable`. On a throw, `tree` is partly patched: discard it and `invalidate`.
   */
  walk(tree: TreeNode, maxDepth = Infinity): { tree: TreeNode; delta: ImageDelta | undefined } {
    this.#maxDepth = maxDepth;
    this.#level = 0;
    const step = this.#walk(this.target, tree);
    this.#consume();
    return { tree: step.node, delta: step.delta as ImageDelta | undefined };
  }

  // ---- proxies ------------------------------------------------------------------------------

  /** What a read of (`parent`, `key`) hands out; notes where the value sits. */
  #read(v: unknown, parent: object, key: unknown): unknown {
    if (isObject(v)) {
      if (this.#indexed) this.#registry.seen(v, parent, key);
      else if (Array.isArray(this.#early)) {
        if (this.#early.length < MAX_EARLY_READS * 3) this.#early.push(v, parent, key);
        // Too many to replay: the first walk learns every place instead.
        else this.#early = 'overflow';
      }
    }
    return this.wrap(v);
  }

  /** After the first full walk: the places of objects read before it, where still true. */
  #replayEarlyReads(): void {
    const early = this.#early;
    if (early === 'overflow') {
      this.#registry.relearn(this.target);
    } else if (early !== undefined) {
      for (let i = 0; i < early.length; i += 3) {
        const v = early[i] as object;
        const parent = early[i + 1] as object;
        const key = early[i + 2];
        if (holds(parent, key, v)) this.#registry.seen(v, parent, key);
      }
    }
    this.#early = undefined;
  }

  /** A proxy for a container (cached), or `v` itself. */
  wrap(v: unknown): unknown {
    if (!isObject(v)) return v;
    // A proxy made once stays: an object whose prototype was set through it is still tracked.
    let p = this.#proxies.get(v);
    if (p !== undefined) return p;
    const kind = containerKind(v);
    if (kind === undefined) return v;
    p = new Proxy(v, this.#handler(kind, v));
    this.#proxies.set(v, p);
    return p;
  }

  /** One handler per kind for all plain objects and arrays: a proxy costs no closures. */
  #objects: ProxyHandler<object> | undefined;
  #arrays: ProxyHandler<object> | undefined;

  #handler(kind: Container, raw: object): ProxyHandler<object> {
    switch (kind) {
      case Container.Object:
        return (this.#objects ??= this.#objectHandler());
      case Container.Array:
        return (this.#arrays ??= this.#arrayHandler());
      case Container.Map:
        return this.#collectionHandler(this.#mapMethods(raw as Map<unknown, unknown>));
      default:
        return this.#collectionHandler(this.#setMethods(raw as Set<unknown>));
    }
  }

  #objectHandler(): ProxyHandler<object> {
    return {
      get: (t, k, r) => {
        if (k === TARGET) return t;
        const v: unknown = Reflect.get(t, k, r);
        return typeof k === 'string' && isObject(v) ? this.#read(v, t, k) : this.wrap(v);
      },
      set: (t, k, v) => {
        if (typeof k === 'symbol') return Reflect.set(t, k, v);
        this.#cow?.beforeSet(t, k);
        const had = hasEnumerable(t, k);
        const old = had ? (t as Record<string, unknown>)[k] : undefined;
        const value = this.#storable(v);
        if (!Reflect.set(t, k, value)) return false;
        this.#noteMember(t, k, had, old);
        return true;
      },
      deleteProperty: (t, k) => {
        if (typeof k === 'symbol') return Reflect.deleteProperty(t, k);
        const had = hasEnumerable(t, k);
        if (had) this.#cow?.beforeDelete(t, k);
        const old = had ? (t as Record<string, unknown>)[k] : undefined;
        if (!Reflect.deleteProperty(t, k)) return false;
        if (had) this.#noteMember(t, k, had, old);
        return true;
      },
      defineProperty: (t, k, desc) => {
        if (typeof k === 'symbol') return Reflect.defineProperty(t, k, desc);
        this.#cow?.beforeWhole(t);
        const had = hasEnumerable(t, k);
        const old = had ? (t as Record<string, unknown>)[k] : undefined;
        const d = 'value' in desc ? { ...desc, value: this.#storable(desc.value) } : desc;
        if (!Reflect.defineProperty(t, k, d)) return false;
        this.#noteMember(t, k, had, old);
        return true;
      },
    };
  }

  #arrayHandler(): ProxyHandler<object> {
    return {
      get: (t, k, r) => {
        if (k === TARGET) return t;
        const v: unknown = Reflect.get(t, k, r);
        return typeof k === 'string' && isObject(v) && isIndexKey(k)
          ? this.#read(v, t, Number(k))
          : this.wrap(v);
      },
      set: (t, k, v) => {
        const a = t as unknown[];
        if (k === 'length') {
          this.#cow?.beforeWhole(a);
          const before = a.length;
          const dropped = a.slice(typeof v === 'number' && v < before ? v : before);
          if (!Reflect.set(a, k, v)) return false;
          if (a.length !== before) this.#noteArrayResize(a, dropped, before - dropped.length);
          return true;
        }
        if (typeof k !== 'string' || !isIndexKey(k)) return Reflect.set(a, k, v);
        this.#cow?.beforeWhole(a);
        const i = Number(k);
        const before = a.length;
        const had = Object.hasOwn(a, i);
        const old = had ? a[i] : undefined;
        const value = this.#storable(v);
        if (!Reflect.set(a, k, value)) return false;
        this.#noteItem(a, i, had && i < before, old, value);
        return true;
      },
      deleteProperty: (t, k) => {
        const a = t as unknown[];
        if (typeof k !== 'string' || !isIndexKey(k)) return Reflect.deleteProperty(a, k);
        this.#cow?.beforeWhole(a);
        const i = Number(k);
        const had = Object.hasOwn(a, i);
        const old = had ? a[i] : undefined;
        if (!Reflect.deleteProperty(a, k)) return false;
        if (had) this.#noteHole(a, i, old);
        return true;
      },
      defineProperty: (t, k, desc) => {
        const a = t as unknown[];
        this.#cow?.beforeWhole(a);
        if (typeof k !== 'string' || !isIndexKey(k) || !('value' in desc)) {
          // Accessors on items, or the length redefined: not worth tracking finely.
          const ok = Reflect.defineProperty(a, k, desc);
          if (ok && typeof k === 'string' && (k === 'length' || isIndexKey(k))) this.#noteWhole(a);
          return ok;
        }
        const i = Number(k);
        const before = a.length;
        const had = Object.hasOwn(a, i);
        const old = had ? a[i] : undefined;
        const value = this.#storable(desc.value);
        if (!Reflect.defineProperty(a, k, { ...desc, value })) return false;
        this.#noteItem(a, i, had && i < before, old, value);
        return true;
      },
    };
  }

  /** Maps and Sets keep their entries in internal slots: only their methods can change them. */
  #collectionHandler(methods: Record<PropertyKey, unknown>): ProxyHandler<object> {
    return {
      get: (t, k) => {
        if (k === TARGET) return t;
        if (Object.hasOwn(methods, k)) return methods[k];
        if (k === 'size') return (t as Map<unknown, unknown>).size;
        const v: unknown = Reflect.get(t, k, t);
        return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(t) : v;
      },
    };
  }

  #mapMethods(m: Map<unknown, unknown>): Record<PropertyKey, unknown> {
    const proxy = (): unknown => this.#proxies.get(m);
    const entries = function* (this: StateTracker): IterableIterator<[unknown, unknown]> {
      for (const [k, v] of m) yield [this.#read(k, m, MAP_KEY), this.#read(v, m, k)];
    }.bind(this);
    return {
      get: (k: unknown) => {
        const key = untracked(k);
        return this.#read(m.get(key), m, key);
      },
      has: (k: unknown) => m.has(untracked(k)),
      set: (k: unknown, v: unknown) => {
        this.#mapSet(m, this.#storable(k), this.#storable(v));
        return proxy();
      },
      delete: (k: unknown) => this.#mapDelete(m, untracked(k)),
      clear: () => this.#clear(m),
      forEach: (cb: (v: unknown, k: unknown, map: unknown) => void, thisArg?: unknown) => {
        for (const [k, v] of m) cb.call(thisArg, this.#read(v, m, k), this.#read(k, m, MAP_KEY), proxy());
      },
      entries,
      [Symbol.iterator]: entries,
      keys: function* (this: StateTracker): IterableIterator<unknown> {
        for (const k of m.keys()) yield this.#read(k, m, MAP_KEY);
      }.bind(this),
      values: function* (this: StateTracker): IterableIterator<unknown> {
        for (const [k, v] of m) yield this.#read(v, m, k);
      }.bind(this),
    };
  }

  #setMethods(s: Set<unknown>): Record<PropertyKey, unknown> {
    const proxy = (): unknown => this.#proxies.get(s);
    const values = function* (this: StateTracker): IterableIterator<unknown> {
      for (const v of s) yield this.#read(v, s, v);
    }.bind(this);
    return {
      has: (v: unknown) => s.has(untracked(v)),
      add: (v: unknown) => {
        const value = this.#storable(v);
        if (!s.has(value)) {
          this.#cow?.beforeWhole(s);
          s.add(value);
          this.#dirtyOf(s).whole = true;
          this.#counting(s, () => this.#registry.adopt(value, s, value));
        }
        return proxy();
      },
      delete: (v: unknown) => {
        const value = untracked(v);
        if (!s.has(value)) return false;
        this.#cow?.beforeWhole(s);
        s.delete(value);
        this.#dirtyOf(s).whole = true;
        this.#counting(s, () => this.#registry.release(value, s, value));
        return true;
      },
      clear: () => this.#clear(s),
      forEach: (cb: (v: unknown, k: unknown, set: unknown) => void, thisArg?: unknown) => {
        for (const v of s) {
          const item = this.#read(v, s, v);
          cb.call(thisArg, item, item, proxy());
        }
      },
      values,
      keys: values,
      [Symbol.iterator]: values,
      entries: function* (this: StateTracker): IterableIterator<[unknown, unknown]> {
        for (const v of s) {
          const item = this.#read(v, s, v);
          yield [item, item];
        }
      }.bind(this),
    };
  }

  // ---- noting changes -----------------------------------------------------------------------

  #dirtyOf(c: object): Dirty {
    let d = this.#dirty.get(c);
    if (d === undefined) {
      // Most dirty containers only ever see sets: the other two sets come when needed.
      d = { keys: new KeySet(), removed: undefined, appended: undefined, whole: false };
      this.#dirty.set(c, d);
    }
    return d;
  }

  /** Whether `c` is in the state as counted: only then do its children's counts change. */
  #counted(c: object): boolean {
    return this.#indexed && this.#registry.count(c) >= 1;
  }

  /**
   * The raw form of a value about to be stored. A proxy becomes its target; a new container
   * (not in the state yet) has the proxies inside it replaced by their targets, in place, since
   * the state must hold no proxy (v8 cannot serialize one).
   */
  #storable(v: unknown): unknown {
    const raw = untracked(v);
    if (!isObject(raw) || this.#registry.count(raw) >= 1) return raw;
    const seen = new Set<object>();
    const stack: object[] = [raw];
    while (stack.length > 0) {
      const o = stack.pop()!;
      if (seen.has(o) || this.#registry.count(o) >= 1) continue;
      seen.add(o);
      unwrapChildren(o, (child) => {
        if (isObject(child)) stack.push(child);
      });
    }
    return raw;
  }

  #noteMember(t: object, k: string, had: boolean, old: unknown): void {
    const now = hasEnumerable(t, k);
    const d = this.#dirtyOf(t);
    d.keys.add(k);
    if (had && !now) (d.removed ??= new Set()).add(k);
    const value = now ? (t as Record<string, unknown>)[k] : undefined;
    this.#counting(t, () => {
      if (now) this.#registry.adopt(value, t, k);
      if (had) this.#registry.release(old, t, k);
    });
  }

  #noteItem(a: unknown[], i: number, replaced: boolean, old: unknown, value: unknown): void {
    const d = this.#dirtyOf(a);
    if (replaced) d.keys.add(i);
    else d.whole = true;
    this.#counting(a, () => {
      this.#registry.adopt(value, a, i);
      if (replaced) this.#registry.release(old, a, i);
    });
  }

  #noteHole(a: unknown[], i: number, old: unknown): void {
    this.#dirtyOf(a).whole = true;
    this.#counting(a, () => this.#registry.release(old, a, i));
  }

  #noteArrayResize(a: unknown[], dropped: unknown[], firstDropped: number): void {
    this.#dirtyOf(a).whole = true;
    this.#counting(a, () => dropped.forEach((item, j) => this.#registry.release(item, a, firstDropped + j)));
  }

  #noteWhole(c: object): void {
    this.#dirtyOf(c).whole = true;
    this.#counting(c, () => undefined);
  }

  /** Before a Map first changes since the last checkpoint: index its entries as the tree has them. */
  #indexMap(m: Map<unknown, unknown>): void {
    if (this.#maps.has(m) || !this.#counted(m)) return;
    const d = this.#dirty.get(m);
    if (d?.whole) return;
    const index = mapIndexOf(m);
    if (index === undefined) this.#dirtyOf(m).whole = true;
    else this.#maps.set(m, index);
  }

  #mapSet(m: Map<unknown, unknown>, k: unknown, v: unknown): void {
    this.#cow?.beforeSet(m, k);
    this.#indexMap(m);
    const had = m.has(k);
    const old = had ? m.get(k) : undefined;
    m.set(k, v);
    const d = this.#dirtyOf(m);
    d.keys.add(k);
    if (!had) {
      d.appended ??= new Set();
      d.appended.delete(k);
      d.appended.add(k);
      if (isObject(k)) d.whole = true;
    }
    this.#counting(m, () => {
      if (!had && isObject(k)) this.#registry.adopt(k, m, MAP_KEY);
      this.#registry.adopt(v, m, k);
      if (had) this.#registry.release(old, m, k);
    });
  }

  #mapDelete(m: Map<unknown, unknown>, k: unknown): boolean {
    if (!m.has(k)) return false;
    this.#cow?.beforeDelete(m, k);
    this.#indexMap(m);
    const old = m.get(k);
    m.delete(k);
    const d = this.#dirtyOf(m);
    d.keys.add(k);
    (d.removed ??= new Set()).add(k);
    d.appended?.delete(k);
    this.#counting(m, () => {
      this.#registry.release(old, m, k);
      if (isObject(k)) this.#registry.release(k, m, MAP_KEY);
    });
    return true;
  }

  #clear(c: Map<unknown, unknown> | Set<unknown>): void {
    if (c.size === 0) return;
    this.#cow?.beforeWhole(c);
    const all = this.#counted(c) || this.#replay !== undefined ? [...c.entries()] : [];
    c.clear();
    this.#dirtyOf(c).whole = true;
    this.#counting(c, () => {
      for (const [k, v] of all) {
        if (c instanceof Map && isObject(k)) this.#registry.release(k, c, MAP_KEY);
        this.#registry.release(v, c, k);
      }
    });
  }

  /** Marks every container above `c` as leading to a change, up to the root or a marked one. */
  #markUp(c: object): void {
    if (!this.#indexed) return;
    for (let x = c; x !== this.target;) {
      const h = this.#registry.home(x);
      if (h === undefined) {
        // In the state, but where? (A proxy kept from before the registry lost its homes.)
        // The walk cannot reach this change: the next checkpoint must walk the whole state.
        if (this.#registry.count(x) >= 1) this.#registry.lose();
        return;
      }
      if (h.key === MAP_KEY) this.#dirtyOf(h.parent).whole = true;
      let s = this.#descend.get(h.parent);
      if (s === undefined) {
        s = new Set();
        this.#descend.set(h.parent, s);
      }
      if (s.has(h.key)) return;
      s.add(h.key);
      x = h.parent;
    }
  }

  // ---- the walk -----------------------------------------------------------------------------

  #walk(c: object, node: TreeNode): Step {
    const d = this.#dirty.get(c);
    const down = this.#descend.get(c);
    if (d === undefined && down === undefined) return { node, delta: undefined };
    // `c` sits where its node sat, as deep as before: only values new at a place are measured.
    this.#level++;
    try {
      return this.#walkAt(c, node, d, down);
    } finally {
      this.#level--;
    }
  }

  #walkAt(c: object, node: TreeNode, d: Dirty | undefined, down: Set<unknown> | undefined): Step {
    const kind = containerKind(c);
    if (d?.whole === true || kind === Container.Set || kind === undefined || !fits(kind, node)) {
      return this.#refresh(c, node);
    }
    switch (kind) {
      case Container.Object:
        return this.#walkObject(c as Record<string, unknown>, node as TreeObject, d, down);
      case Container.Array:
        return this.#walkArray(c as unknown[], node as TreeNode[], d, down);
      default:
        return this.#walkMap(c as Map<unknown, unknown>, node as TreeObject, d, down);
    }
  }

  /** Re-encodes `c` whole; jsondiffpatch finds what changed in it. */
  #refresh(c: object, node: TreeNode): Step {
    const fresh = this.#fresh(c, this.#level - 1);
    // Items of a re-encoded array or Set may have moved: their homes must say where they are now.
    forEachChild(c, (child, key) => {
      if (isObject(child)) this.#registry.rehome(child, c, key);
    });
    return { node: fresh, delta: diffTrees(node, fresh) };
  }

  /** `toTree(v)` for a value new at its place; Maps inside it get their entry index afresh. */
  #fresh(v: unknown, above = this.#level): TreeNode {
    if (!isObject(v)) return toTree(v);
    // `above` containers hold it: it may nest only the rest of `limits.maxDepth`.
    const r = toTreeIndexed(v, this.#maxDepth, above);
    // The registry saw no sharing, so no subtree can have any: a tree with ids here would
    // not match the ids a whole walk gives.
    if (r.shared) throw new Error('internal: a tracked subtree holds a shared object the registry missed');
    for (const o of r.objects.keys()) if (o instanceof Map) this.#maps.delete(o as Map<unknown, unknown>);
    return r.tree;
  }

  /** A value stored again at a place: its new node and delta, or undefined when equal. */
  #replace(old: TreeNode, value: unknown): Step | undefined {
    const fresh = this.#fresh(value);
    if (treesEqual(old, fresh)) return undefined;
    if (isObject(old) && isObject(fresh) && Array.isArray(old) === Array.isArray(fresh)) {
      return { node: fresh, delta: diffTrees(old, fresh) };
    }
    return { node: fresh, delta: [0, fresh] };
  }

  #walkObject(
    c: Record<string, unknown>,
    node: TreeObject,
    d: Dirty | undefined,
    down: Set<unknown> | undefined,
  ): Step {
    if (d?.removed !== undefined) {
      // A key deleted and set again moved to the end: a patch cannot move keys.
      for (const k of d.removed) {
        if (!isIndexKey(k as string) && hasEnumerable(c, k as string)) return this.#refresh(c, node);
      }
    }
    const delta: DeltaRecord = {};
    let changed = false;
    if (d !== undefined) {
      for (const key of d.keys) {
        const k = key as string;
        const esc = treeKey(k);
        const now = hasEnumerable(c, k);
        const was = Object.hasOwn(node, esc);
        if (was && !now) {
          delete node[esc];
          delta[esc] = [0, 0, 0];
          changed = true;
        } else if (now && !was) {
          const fresh = this.#fresh(c[k]);
          node[esc] = fresh;
          delta[esc] = [fresh];
          changed = true;
        } else if (now) {
          const step = this.#replace(node[esc]!, c[k]);
          if (step !== undefined) {
            node[esc] = step.node;
            delta[esc] = step.delta;
            changed = true;
          }
        }
      }
    }
    if (down !== undefined) {
      for (const key of down) {
        if (typeof key !== 'string' || d?.keys.has(key) === true || !hasEnumerable(c, key)) continue;
        const esc = treeKey(key);
        const child = c[key];
        if (!isObject(child) || !Object.hasOwn(node, esc)) continue;
        const step = this.#walk(child, node[esc]!);
        if (step.node !== node[esc]) node[esc] = step.node;
        if (step.delta !== undefined) {
          delta[esc] = step.delta;
          changed = true;
        }
      }
    }
    return { node, delta: changed ? delta : undefined };
  }

  #walkArray(c: unknown[], node: TreeNode[], d: Dirty | undefined, down: Set<unknown> | undefined): Step {
    if (c.length !== node.length) return this.#refresh(c, node);
    const delta: DeltaRecord = { _t: 'a' };
    let changed = false;
    if (d !== undefined) {
      for (const key of d.keys) {
        const i = key as number;
        const step = this.#replace(node[i]!, c[i]);
        if (step !== undefined) {
          node[i] = step.node;
          delta[i] = step.delta;
          changed = true;
        }
      }
    }
    if (down !== undefined) {
      for (const key of down) {
        if (typeof key !== 'number' || d?.keys.has(key) === true || key >= c.length) continue;
        const child = c[key];
        if (!isObject(child)) continue;
        const step = this.#walk(child, node[key]!);
        if (step.node !== node[key]) node[key] = step.node;
        if (step.delta !== undefined) {
          delta[key] = step.delta;
          changed = true;
        }
      }
    }
    return { node, delta: changed ? delta : undefined };
  }

  /**
   * A Map's entries array changes by position: removals at their old positions, then values
   * changed in place at their positions once the removals are done, then the keys added since,
   * at the tail in the order they were added (as a Map appends them). jsondiffpatch applies
   * array deltas in exactly that order.
   */
  #walkMap(
    c: Map<unknown, unknown>,
    node: TreeObject,
    d: Dirty | undefined,
    down: Set<unknown> | undefined,
  ): Step {
    let index = this.#maps.get(c);
    if (index === undefined) {
      // Only the values changed, not the Map: its order is still the tree's.
      if (d !== undefined) return this.#refresh(c, node);
      index = mapIndexOf(c);
      if (index === undefined) return this.#refresh(c, node);
      this.#maps.set(c, index);
    }
    let entries = node.e as TreeNode[][];
    if (index.size !== entries.length) return this.#refresh(c, node);
    const inner: DeltaRecord = { _t: 'a' };
    let changed = false;
    if (d !== undefined) {
      const gone: [number, unknown][] = [];
      for (const k of d.keys) {
        if (index.has(k) && (!c.has(k) || d.removed?.has(k) === true)) gone.push([index.position(k), k]);
      }
      if (gone.length > 0) {
        changed = true;
        const drop = new Set<number>();
        for (const [at, k] of gone) {
          inner[`_${at}`] = [0, 0, 0];
          drop.add(at);
          index.remove(k);
        }
        if (drop.size <= 16) {
          for (const at of [...drop].sort((a, b) => b - a)) entries.splice(at, 1);
        } else {
          entries = entries.filter((_, at) => !drop.has(at));
          node.e = entries;
        }
      }
      for (const k of d.keys) {
        if (!c.has(k) || d.removed?.has(k) === true || !index.has(k)) continue;
        const at = index.position(k);
        const pair = entries[at]!;
        const step = this.#replace(pair[1]!, c.get(k));
        if (step !== undefined) {
          pair[1] = step.node;
          inner[at] = { _t: 'a', 1: step.delta };
          changed = true;
        }
      }
      for (const k of d.appended ?? []) {
        if (!c.has(k)) continue;
        const pair: TreeNode[] = [this.#fresh(k), this.#fresh(c.get(k))];
        inner[entries.length] = [pair];
        entries.push(pair);
        index.append(k);
        changed = true;
      }
      if (entries.length !== c.size) throw new Error('internal: tracked Map entries out of step');
    }
    if (down !== undefined) {
      for (const k of down) {
        if (d?.keys.has(k) === true || !index.has(k)) continue;
        const child = c.get(k);
        if (!isObject(child)) continue;
        const at = index.position(k);
        const pair = entries[at]!;
        const step = this.#walk(child, pair[1]!);
        if (step.node !== pair[1]) pair[1] = step.node;
        if (step.delta !== undefined) {
          inner[at] = { _t: 'a', 1: step.delta };
          changed = true;
        }
      }
    }
    return { node, delta: changed ? { e: inner } : undefined };
  }
}

/** Maps this large get their entry index at a keyframe instead of in their first delta. */
const EAGER_INDEX_ENTRIES = 1024;

/** Most reads remembered before the first full walk (beyond, that walk learns every place). */
const MAX_EARLY_READS = 65_536;

/** An entry index of `m`, or undefined when a key is an object (such Maps are re-encoded whole). */
function mapIndexOf(m: Map<unknown, unknown>): MapIndex | undefined {
  for (const k of m.keys()) if (isObject(k)) return undefined;
  return new MapIndex(m.keys());
}

/** Whether `parent` holds `v` at `key` (as `forEachChild` names places). */
function holds(parent: object, key: unknown, v: object): boolean {
  if (parent instanceof Map) return key === MAP_KEY ? parent.has(v) : parent.get(key) === v;
  if (parent instanceof Set) return parent.has(v);
  if (Array.isArray(parent)) return typeof key === 'number' && parent[key] === v;
  return (
    typeof key === 'string' && hasEnumerable(parent, key) && (parent as Record<string, unknown>)[key] === v
  );
}

/** Whether `node` is the kind of node `toTree` makes for a container of `kind`. */
export function fits(kind: Container, node: TreeNode): boolean {
  if (typeof node !== 'object' || node === null) return false;
  switch (kind) {
    case Container.Array:
      return Array.isArray(node);
    case Container.Object:
      return !Array.isArray(node) && !Object.hasOwn(node, TREE_TAG);
    case Container.Map:
      return !Array.isArray(node) && node[TREE_TAG] === TreeTag.Map && Array.isArray(node.e);
    default:
      return !Array.isArray(node) && node[TREE_TAG] === TreeTag.Set && Array.isArray(node.e);
  }
}

/** Replaces tracked proxies among the children of a new container by their targets, in place. */
function unwrapChildren(o: object, visit: (child: unknown) => void): void {
  const kind = containerKind(o);
  if (kind === Container.Map) {
    const m = o as Map<unknown, unknown>;
    let keyProxy = false;
    for (const [k, v] of m) {
      if (isObject(k) && untracked(k) !== k) keyProxy = true;
      const raw = untracked(v);
      if (raw !== v) m.set(k, raw);
    }
    if (keyProxy) {
      // Keys cannot be swapped in place: rebuild the Map in the same order.
      const all = [...m];
      m.clear();
      for (const [k, v] of all) m.set(untracked(k), v);
    }
    for (const [k, v] of m) {
      visit(k);
      visit(v);
    }
    return;
  }
  if (kind === Container.Set) {
    const s = o as Set<unknown>;
    if ([...s].some((v) => untracked(v) !== v)) {
      const all = [...s];
      s.clear();
      for (const v of all) s.add(untracked(v));
    }
    for (const v of s) visit(v);
    return;
  }
  if (kind === Container.Array || kind === Container.Object) {
    const r = o as Record<string, unknown>;
    for (const key of Object.keys(o)) {
      const v = r[key];
      const raw = untracked(v);
      if (raw !== v) r[key] = raw;
      visit(raw);
    }
    return;
  }
  forEachChild(o, (child) => visit(child));
}

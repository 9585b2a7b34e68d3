/**
 * The object graph of a state, as the incremental image paths see it.
 *
 * The tracked and identity paths (tracked.ts, identity.ts) patch the previous typed tree in place
 * instead of rebuilding it. That is exact only while the state is a tree: every object reached
 * from exactly one place. Then the typed tree holds no ids or refs (see typed-tree.ts), and a
 * change to one object changes only that object's node. The `Registry` counts, for every object
 * in the state, how many places hold it, so that sharing (an object stored a second time, a
 * cycle) is noticed in time to take the slow, exact path instead.
 */
import { types } from 'node:util';

/** Containers the incremental paths look into; everything else is a value, replaced whole. */
export const Container = { Object: 1, Array: 2, Map: 3, Set: 4 } as const;
export type Container = (typeof Container)[keyof typeof Container];

/**
 * The container kind of `v`, or undefined for primitives and every other object (class
 * instances, Dates, typed arrays, errors...), which the incremental paths re-encode whole.
 */
export function containerKind(v: unknown): Container | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const proto: unknown = Object.getPrototypeOf(v);
  if (proto === Object.prototype || proto === null) return Container.Object;
  if (proto === Array.prototype) return Array.isArray(v) ? Container.Array : undefined;
  if (proto === Map.prototype) return types.isMap(v) ? Container.Map : undefined;
  if (proto === Set.prototype) return types.isSet(v) ? Container.Set : undefined;
  return undefined;
}

/** The key a Map's key object gets in `forEachChild` and in its home (its value's key is the Map key). */
export const MAP_KEY = Symbol('map key');

/** Whether `v` is an object (children counted by the registry). */
export function isObject(v: unknown): v is object {
  return (typeof v === 'object' && v !== null) || typeof v === 'function';
}

/** SameValueZero, the key equality of Map and Set. */
export function sameKey(a: unknown, b: unknown): boolean {
  return a === b || (a !== a && b !== b);
}

const propertyIsEnumerable = Object.prototype.propertyIsEnumerable;

/** Whether `o` has `key` as an own enumerable property: what `toTree` walks. */
export function hasEnumerable(o: object, key: string): boolean {
  return propertyIsEnumerable.call(o, key);
}

/** Whether a property key is an array index (`"0"`, `"17"`; not `"01"`). */
export function isIndexKey(key: string): boolean {
  const c = key.charCodeAt(0);
  if (c < 48 || c > 57) return false;
  const n = Number(key);
  return n < 4294967295 && String(n) === key;
}

/**
 * Calls `visit(child, key)` for every object-or-primitive child `toTree` walks in `o`: own
 * enumerable members of plain objects and class instances, array items, Map keys and values
 * (the value's key is the Map key; a key object gets `MAP_KEY`), Set members (their own key),
 * an Error's own `cause`. Dates, RegExps, views, ArrayBuffers and boxed primitives have none.
 */
export function forEachChild(o: object, visit: (child: unknown, key: unknown) => void): void {
  if (Array.isArray(o)) {
    const length = o.length;
    for (let i = 0; i < length; i++) {
      const item: unknown = o[i];
      if (item === undefined && !Object.hasOwn(o, i)) {
        // A hole: walk the indices that exist, as toTree does for sparse arrays.
        for (const key of Object.keys(o)) if (isIndexKey(key)) visit(o[Number(key)], Number(key));
        return;
      }
      visit(item, i);
    }
    return;
  }
  if (types.isMap(o)) {
    for (const [k, v] of o as Map<unknown, unknown>) {
      if (isObject(k)) visit(k, MAP_KEY);
      visit(v, k);
    }
    return;
  }
  if (types.isSet(o)) {
    for (const v of o as Set<unknown>) visit(v, v);
    return;
  }
  if (
    types.isDate(o) ||
    types.isRegExp(o) ||
    ArrayBuffer.isView(o) ||
    types.isAnyArrayBuffer(o) ||
    types.isBoxedPrimitive(o)
  ) {
    return;
  }
  if (types.isNativeError(o)) {
    const cause = Object.getOwnPropertyDescriptor(o, 'cause');
    if (cause !== undefined && 'value' in cause) visit(cause.value, 'cause');
    return;
  }
  const record = o as Record<string, unknown>;
  for (const key of Object.keys(o)) visit(record[key], key);
}

/** Where an object sits: its container and its key there (array: the index when stored). */
export interface Home {
  readonly parent: object;
  readonly key: unknown;
}

/** Objects known to be in the state, each held once (the objects a full walk met). */
export interface Members {
  has(o: object): boolean;
}

const NO_MEMBERS: Members = { has: () => false };

/**
 * What the registry knows of one object: how many places hold it (valid for generation `gen`
 * only; otherwise the members of the last full walk say), and where it was last seen.
 */
interface Entry {
  count: number;
  gen: number;
  parent: object | undefined;
  key: unknown;
}

/**
 * Pushes `(child, o, key)` triples for the object children of `o`, as `forEachChild` lists them,
 * onto a flat stack: no closure or tuple per object (registry walks touch every object).
 */
function pushChildren(o: object, stack: unknown[]): void {
  if (Array.isArray(o)) {
    const length = o.length;
    for (let i = 0; i < length; i++) {
      const item: unknown = o[i];
      if (item === undefined && !Object.hasOwn(o, i)) {
        for (const key of Object.keys(o)) {
          if (!isIndexKey(key)) continue;
          const v: unknown = o[Number(key)];
          if (isObject(v)) stack.push(v, o, Number(key));
        }
        return;
      }
      if (isObject(item)) stack.push(item, o, i);
    }
    return;
  }
  const proto: unknown = Object.getPrototypeOf(o);
  if (proto === Object.prototype || proto === null) {
    const record = o as Record<string, unknown>;
    for (const key in record) {
      if (!Object.hasOwn(record, key)) continue;
      const v = record[key];
      if (isObject(v)) stack.push(v, o, key);
    }
    return;
  }
  forEachChild(o, (child, key) => {
    if (isObject(child)) stack.push(child, o, key);
  });
}

/**
 * How many places of the state hold each object. While every count is at most 1, the state is a
 * tree and the incremental paths are exact; `shared()` says when that stopped being true.
 *
 * After a full walk (`reset`), the objects that walk met are the state, each held once: nothing
 * is copied, the walk's own object set is the base. `adopt` counts a value stored somewhere,
 * walking into objects that were not in the state; `release` uncounts a value taken out,
 * walking into objects that left; both record what changed on top of the base. Callers adopt
 * before they release, so that a move (stored in the new place, then taken out of the old one)
 * never looks shared for longer than the move.
 *
 * With homes, the registry also remembers where each object was last stored or read from
 * (`seen`), so a change deep inside can be found from the root. Homes outlive `reset` (the state
 * is still the same objects); when one could be wrong the registry says `shared()` instead.
 */
export class Registry {
  #base: Members = NO_MEMBERS;
  #gen = 0;
  #entries = new WeakMap<object, Entry>();
  readonly #homes: boolean;
  #suspects = new Set<object>();
  #lost = false;

  constructor(withHomes: boolean) {
    this.#homes = withHomes;
  }

  /** A registry whose state is `members`, each held once. */
  static ofTree(members: Members): Registry {
    const r = new Registry(false);
    r.reset(members);
    return r;
  }

  /**
   * After a full walk of a tree-shaped state: `members` are its objects, each held once. Homes
   * are kept (the state is the same objects), unless the registry lost track of them since the
   * last reset: then they are learned again by a walk from `root`.
   */
  reset(members: Members, root?: unknown): void {
    const lost = this.#lost;
    this.#base = members;
    this.#gen++;
    this.#suspects = new Set();
    this.#lost = false;
    if (!lost || !this.#homes) return;
    this.#entries = new WeakMap();
    this.relearn(root);
  }

  #entry(o: object): Entry {
    let e = this.#entries.get(o);
    if (e === undefined) {
      e = { count: this.#base.has(o) ? 1 : 0, gen: this.#gen, parent: undefined, key: undefined };
      this.#entries.set(o, e);
    } else if (e.gen !== this.#gen) {
      e.count = this.#base.has(o) ? 1 : 0;
      e.gen = this.#gen;
    }
    return e;
  }

  /** How many places hold `o` (0 when it is not in the state). */
  count(o: object): number {
    const e = this.#entries.get(o);
    return e !== undefined && e.gen === this.#gen ? e.count : this.#base.has(o) ? 1 : 0;
  }

  /** Where `o` was last stored or read from, if known. */
  home(o: object): Home | undefined {
    const e = this.#entries.get(o);
    return e?.parent === undefined ? undefined : (e as Home);
  }

  /**
   * `o` was read at (`parent`, `key`), in the state: remember it as `o`'s place unless one is
   * known (a place learned from a store is never older than one learned from a read).
   */
  seen(o: object, parent: object, key: unknown): void {
    if (!this.#homes) return;
    const e = this.#entries.get(o);
    if (e?.parent !== undefined || this.count(parent) === 0) return;
    const entry = e ?? this.#entry(o);
    entry.parent = parent;
    entry.key = key;
  }

  /** Records `o`'s place (an array item's index after the array changed). */
  rehome(o: object, parent: object, key: unknown): void {
    if (!this.#homes) return;
    const e = this.#entry(o);
    e.parent = parent;
    e.key = key;
  }

  /** Learns the place of every object of the state by a walk from `root` (counts unchanged). */
  relearn(root: unknown): void {
    if (!this.#homes || !isObject(root)) return;
    const stack: unknown[] = [];
    pushChildren(root, stack);
    while (stack.length > 0) {
      const k = stack.pop();
      const p = stack.pop() as object;
      const v = stack.pop() as object;
      const e = this.#entry(v);
      e.parent = p;
      e.key = k;
      pushChildren(v, stack);
    }
  }

  /** The registry can no longer vouch for the state being a tree, or for its homes. */
  lose(): void {
    this.#lost = true;
  }

  /** Counts `value`, now held at (`parent`, `key`); walks into objects new to the state. */
  adopt(value: unknown, parent: object | undefined, key: unknown): void {
    if (!isObject(value)) return;
    const homes = this.#homes;
    const stack: unknown[] = [value, parent, key];
    while (stack.length > 0) {
      const k = stack.pop();
      const p = stack.pop() as object | undefined;
      const v = stack.pop() as object;
      const e = this.#entry(v);
      const c = e.count;
      e.count = c + 1;
      if (homes && p !== undefined) {
        e.parent = p;
        e.key = k;
      }
      if (c >= 1) this.#suspects.add(v);
      else pushChildren(v, stack);
    }
  }

  /** Uncounts `value`, no longer held at (`parent`, `key`); walks into objects that left. */
  release(value: unknown, parent: object | undefined, key: unknown): void {
    if (!isObject(value)) return;
    const stack: unknown[] = [value, parent, key];
    while (stack.length > 0) {
      const k = stack.pop();
      const p = stack.pop() as object | undefined;
      const v = stack.pop() as object;
      const e = this.#entry(v);
      if (e.count === 0) {
        // Taken out of a place it was never counted in: the state changed behind our back.
        this.#lost = true;
        continue;
      }
      e.count--;
      if (e.count > 0) {
        // Still held elsewhere, but its remembered place was this one: where is it now?
        if (this.#homes && e.parent === p && sameKey(e.key, k)) this.#lost = true;
        continue;
      }
      pushChildren(v, stack);
    }
  }

  /** Counts `o` itself as held once more, without walking into it (identity path). */
  adoptSelf(o: object): void {
    const e = this.#entry(o);
    e.count++;
    if (e.count >= 2) this.#suspects.add(o);
  }

  /** Uncounts `o` itself, without walking into it (identity path). */
  releaseSelf(o: object): void {
    const e = this.#entry(o);
    if (e.count === 0) this.#lost = true;
    else e.count--;
  }

  /**
   * Whether the state may no longer be a tree: some object is held in two places, or the
   * registry lost track. False positives are allowed (they cost a full walk); misses are not.
   */
  shared(): boolean {
    if (this.#lost) return true;
    for (const o of this.#suspects) {
      if (this.count(o) >= 2) return true;
      this.#suspects.delete(o);
    }
    return false;
  }
}

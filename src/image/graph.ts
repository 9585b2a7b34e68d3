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

/** What the registry knows of one object: how many places hold it, and the last of them. */
interface Entry {
  count: number;
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
 * `adopt` counts a value stored somewhere, walking into objects that were not in the state;
 * `release` uncounts a value taken out, walking into objects that left. Callers adopt before they
 * release, so that a move (stored in the new place, then taken out of the old one) never looks
 * shared for longer than the move. With `homes`, the registry also remembers each object's
 * place, so a change deep inside can be found from the root.
 */
export class Registry {
  #entries = new WeakMap<object, Entry>();
  readonly #homes: boolean;
  #suspects = new Set<object>();
  #lost = false;

  constructor(withHomes: boolean) {
    this.#homes = withHomes;
  }

  /** A registry counting each of `objects` once: the objects of a tree-shaped state. */
  static ofTree(objects: Iterable<object>): Registry {
    const r = new Registry(false);
    for (const o of objects) r.#entries.set(o, { count: 1, parent: undefined, key: undefined });
    return r;
  }

  /** Forgets everything, then counts the objects of `root` (and records their homes). */
  rebuild(root: unknown): void {
    this.#entries = new WeakMap();
    this.#suspects = new Set();
    this.#lost = false;
    this.adopt(root, undefined, undefined);
  }

  /** How many places hold `o` (0 when it is not in the state). */
  count(o: object): number {
    return this.#entries.get(o)?.count ?? 0;
  }

  /** Where `o` was last stored, if known. */
  home(o: object): Home | undefined {
    const e = this.#entries.get(o);
    return e?.parent === undefined ? undefined : (e as Home);
  }

  /** Records `o`'s place without counting (an array item's index after the array changed). */
  rehome(o: object, parent: object, key: unknown): void {
    const e = this.#entries.get(o);
    if (e !== undefined && this.#homes) {
      e.parent = parent;
      e.key = key;
    }
  }

  /** Counts `value`, now held at (`parent`, `key`); walks into objects new to the state. */
  adopt(value: unknown, parent: object | undefined, key: unknown): void {
    if (!isObject(value)) return;
    const entries = this.#entries;
    const homes = this.#homes;
    const stack: unknown[] = [value, parent, key];
    while (stack.length > 0) {
      const k = stack.pop();
      const p = stack.pop() as object | undefined;
      const v = stack.pop() as object;
      const e = entries.get(v);
      if (e === undefined) {
        entries.set(v, homes ? { count: 1, parent: p, key: k } : { count: 1, parent: undefined, key: undefined });
        pushChildren(v, stack);
        continue;
      }
      e.count++;
      if (homes && p !== undefined) {
        e.parent = p;
        e.key = k;
      }
      if (e.count >= 2) this.#suspects.add(v);
    }
  }

  /** Uncounts `value`, no longer held at (`parent`, `key`); walks into objects that left. */
  release(value: unknown, parent: object | undefined, key: unknown): void {
    if (!isObject(value)) return;
    const entries = this.#entries;
    const stack: unknown[] = [value, parent, key];
    while (stack.length > 0) {
      const k = stack.pop();
      const p = stack.pop() as object | undefined;
      const v = stack.pop() as object;
      const e = entries.get(v);
      if (e === undefined || e.count === 0) {
        // Taken out of a place it was never counted in: the state changed behind our back.
        this.#lost = true;
        continue;
      }
      if (e.count > 1) {
        e.count--;
        // Still held elsewhere, but its remembered place was this one: where is it now?
        if (this.#homes && e.parent === p && sameKey(e.key, k)) this.#lost = true;
        continue;
      }
      entries.delete(v);
      pushChildren(v, stack);
    }
  }

  /** Counts `o` itself as held once more, without walking into it (identity path). */
  adoptSelf(o: object): void {
    const e = this.#entries.get(o);
    if (e === undefined) {
      this.#entries.set(o, { count: 1, parent: undefined, key: undefined });
      return;
    }
    e.count++;
    this.#suspects.add(o);
  }

  /** Uncounts `o` itself, without walking into it (identity path). */
  releaseSelf(o: object): void {
    const e = this.#entries.get(o);
    if (e === undefined) this.#lost = true;
    else if (e.count === 1) this.#entries.delete(o);
    else e.count--;
  }

  /**
   * Whether the state may no longer be a tree: some object is held in two places, or the
   * registry lost track. False positives are allowed (they cost a full walk); misses are not.
   */
  shared(): boolean {
    if (this.#lost) return true;
    for (const o of this.#suspects) {
      if ((this.#entries.get(o)?.count ?? 0) >= 2) return true;
      this.#suspects.delete(o);
    }
    return false;
  }
}

/**
 * Copy-on-write for a keyframe walked a slice at a time while the app goes on changing its state.
 *
 * The image of checkpoint n is the state at the `checkpoint()` call. A tracked state is walked
 * into its typed tree in slices (keyframe-encode.ts), with the event loop running in between:
 * the app changes the state through its proxy meanwhile. The tracker (tracked.ts) tells this
 * module before every change; a container the walk is not done with keeps what the walk must
 * still read:
 *
 * ```text
 * change                                   kept for the walk (until it is done)
 * Map / object: set of an existing key     the key's old value (an overlay: O(1))
 * Map / object: set of a new key           the key is marked added (the walk skips it)
 * Map / object: delete of a key it had     a shallow copy as it was (O(size), once per container)
 * array, Set, Map.clear, defineProperty    a shallow copy as it was (O(size), once per container)
 * ```
 *
 * A container the walk has finished (`SlicedTreeWalk.finished`) is left alone: its node is
 * written. One that is open (being walked) switches to its copy where it stands
 * (`SlicedTreeWalk.rebase`). Nothing is kept once the walk is done.
 *
 * It also builds the entry index of every Map of `INDEX_MAP_ENTRIES` or more as the walk goes
 * through it (the keys in the order of the keyframe's tree), so the tracker's first delta after
 * the keyframe finds Map entries by position without an O(n) pass on the event loop.
 */
import { hasEnumerable } from './graph.js';
import { MapIndex } from './map-index.js';
import { ADDED, UNCHANGED, type SlicedTreeWalk, type WalkViews } from './typed-tree.js';

/** Maps of this many entries or more get their entry index built by the walk. */
export const INDEX_MAP_ENTRIES = 1024;

/** What the tracker calls before it changes a container (see the module comment). */
export interface ChangeHook {
  /** `key` of Map or plain object `c` is about to be set. */
  beforeSet(c: object, key: unknown): void;
  /** `key`, which `c` holds, is about to be deleted. */
  beforeDelete(c: object, key: unknown): void;
  /** `c` is about to change in some other way (arrays, Sets, clear, defineProperty). */
  beforeWhole(c: object): void;
}

/** The walk's views of the state as it was when the keyframe began. */
export class CopyOnWrite implements WalkViews, ChangeHook {
  #walk: SlicedTreeWalk | undefined;
  readonly #copies = new Map<object, object>();
  /** Per container read in place: keys changed since the walk began, to their old value or ADDED. */
  readonly #old = new Map<object, Map<unknown, unknown>>();
  /** Entry indexes of large Maps, built as the walk met their keys (null: a key is an object). */
  readonly indexes = new Map<Map<unknown, unknown>, MapIndex | null>();
  /** How many containers were copied whole (for tests and the docs' cost notes). */
  copies = 0;
  /** Whether the app changed anything through the proxy while the walk ran. */
  changed = false;

  /** The walk these views serve (set once it exists; before, nothing can change). */
  attach(walk: SlicedTreeWalk): void {
    this.#walk = walk;
  }

  /** Lets go of everything kept (the walk is done or failed). */
  detach(): void {
    this.#walk = undefined;
    this.#copies.clear();
    this.#old.clear();
  }

  // ---- WalkViews ----------------------------------------------------------------------------

  source(o: object): object {
    return this.#copies.get(o) ?? o;
  }

  was(o: object, key: unknown): unknown {
    const old = this.#old.get(o);
    if (old === undefined || !old.has(key)) return UNCHANGED;
    return old.get(key);
  }

  overlaid(o: object): boolean {
    return this.#old.has(o);
  }

  enterMap(m: Map<unknown, unknown>, size: number): ((key: unknown) => void) | undefined {
    if (size < INDEX_MAP_ENTRIES || this.indexes.has(m)) return undefined;
    const index = new MapIndex([], size);
    this.indexes.set(m, index);
    return (key) => {
      if (this.indexes.get(m) === null) return;
      if (typeof key === 'object' ? key !== null : typeof key === 'function') this.indexes.set(m, null);
      else index.append(key);
    };
  }

  // ---- ChangeHook ---------------------------------------------------------------------------

  beforeSet(c: object, key: unknown): void {
    this.changed = true;
    if (!this.#pending(c)) return;
    if (Array.isArray(c) || c instanceof Set) {
      this.#copy(c);
      return;
    }
    let old = this.#old.get(c);
    if (old?.has(key) === true) return;
    let had: boolean;
    let value: unknown;
    if (c instanceof Map) {
      had = c.has(key);
      value = had ? c.get(key) : undefined;
    } else {
      had = hasEnumerable(c, key as string);
      value = had ? (c as Record<string, unknown>)[key as string] : undefined;
    }
    if (old === undefined) {
      old = new Map();
      this.#old.set(c, old);
    }
    old.set(key, had ? value : ADDED);
  }

  beforeDelete(c: object, key: unknown): void {
    this.changed = true;
    if (!this.#pending(c)) return;
    // A key added since the walk began can go: the walk skips it anyway.
    if (this.#old.get(c)?.get(key) === ADDED && !Array.isArray(c)) return;
    this.#copy(c);
  }

  beforeWhole(c: object): void {
    this.changed = true;
    if (this.#pending(c)) this.#copy(c);
  }

  /** Whether the walk may still read `c` as it is now (not done with it, no copy yet). */
  #pending(c: object): boolean {
    const walk = this.#walk;
    return walk !== undefined && !this.#copies.has(c) && !walk.finished(c);
  }

  /** Keeps a shallow copy of `c` as the walk must see it, and moves the walk onto it. */
  #copy(c: object): void {
    const old = this.#old.get(c);
    const was = (key: unknown, now: unknown): unknown =>
      old !== undefined && old.has(key) ? old.get(key) : now;
    let copy: object;
    if (c instanceof Map) {
      const m = new Map<unknown, unknown>();
      for (const [k, v] of c) {
        const w = was(k, v);
        if (w !== ADDED) m.set(k, w);
      }
      copy = m;
    } else if (c instanceof Set) {
      copy = new Set(c);
    } else if (Array.isArray(c)) {
      copy = c.slice();
    } else {
      // Same prototype, same keys in the same order: the walk reads it as the object itself.
      const o = Object.create(Object.getPrototypeOf(c) as object | null) as Record<string, unknown>;
      const src = c as Record<string, unknown>;
      for (const k of Object.keys(c)) {
        const w = was(k, src[k]);
        if (w === ADDED) continue;
        Object.defineProperty(o, k, { value: w, writable: true, enumerable: true, configurable: true });
      }
      copy = o;
    }
    this.#old.delete(c);
    this.#copies.set(c, copy);
    this.copies++;
    this.#walk!.rebase(c, copy);
  }
}

/**
 * Positions of a Map's keys in insertion order, kept current as keys are removed and appended.
 *
 * The typed tree stores a Map as an array of `[key, value]` entries and a delta addresses entries
 * by position, so the tracked path needs "where is key k" for a few keys of a large Map without
 * walking it. Every key gets a slot when appended; a removed key's slot goes dead. A Fenwick tree
 * over the slots counts live slots before a slot in O(log n). The slots are compacted when they
 * run out, so memory stays within twice the live keys.
 */

const DEAD = Symbol('dead');

/** Live positions of a Map's keys. Keys compare as Map keys do (SameValueZero). */
export class MapIndex {
  #slotOf = new Map<unknown, number>();
  #keys: unknown[] = [];
  #tree = new Int32Array(1);
  #capacity = 0;
  #live = 0;

  /** Indexes `keys`, in the Map's order; `room`: keys expected in all (appended later, no re-layout). */
  constructor(keys: Iterable<unknown>, room = 0) {
    this.#reset(Array.from(keys), room);
  }

  /** Number of live keys. */
  get size(): number {
    return this.#live;
  }

  /** Whether `key` is live. */
  has(key: unknown): boolean {
    return this.#slotOf.has(key);
  }

  /** The position of live `key` among the live keys (0-based). Throws for a key not held. */
  position(key: unknown): number {
    const slot = this.#slotOf.get(key);
    if (slot === undefined) throw new Error('internal: MapIndex.position of a key it does not hold');
    let sum = 0;
    for (let i = slot; i > 0; i -= i & -i) sum += this.#tree[i]!;
    return sum;
  }

  /** Removes live `key`. */
  remove(key: unknown): void {
    const slot = this.#slotOf.get(key);
    if (slot === undefined) throw new Error('internal: MapIndex.remove of a key it does not hold');
    this.#slotOf.delete(key);
    this.#keys[slot] = DEAD;
    this.#add(slot + 1, -1);
    this.#live--;
  }

  /** Appends `key` after every live key. */
  append(key: unknown): void {
    if (this.#slotOf.has(key)) throw new Error('internal: MapIndex.append of a key it holds');
    if (this.#keys.length >= this.#capacity) {
      this.#reset(this.#keys.filter((k) => k !== DEAD));
    }
    const slot = this.#keys.length;
    this.#keys.push(key);
    this.#slotOf.set(key, slot);
    this.#add(slot + 1, 1);
    this.#live++;
  }

  #add(at: number, delta: number): void {
    for (let i = at; i <= this.#capacity; i += i & -i) this.#tree[i]! += delta;
  }

  /** Lays out `keys` (all live) in fresh slots, with room to grow. O(n). */
  #reset(keys: unknown[], room = 0): void {
    const n = keys.length;
    const capacity = Math.max(16, n * 2, room + 16);
    const tree = new Int32Array(capacity + 1);
    const slotOf = new Map<unknown, number>();
    for (let i = 1; i <= n; i++) {
      slotOf.set(keys[i - 1], i - 1);
      tree[i]! += 1;
      const parent = i + (i & -i);
      if (parent <= capacity) tree[parent]! += tree[i]!;
    }
    // Fenwick nodes past the last key still need their children's sums.
    for (let i = n + 1; i <= capacity; i++) {
      const parent = i + (i & -i);
      if (parent <= capacity) tree[parent]! += tree[i]!;
    }
    this.#keys = keys;
    this.#slotOf = slotOf;
    this.#tree = tree;
    this.#capacity = capacity;
    this.#live = n;
  }
}

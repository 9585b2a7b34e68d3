/**
 * A typed tree moved between threads in bounded slices.
 *
 * Why: a worker that decodes a 100 MB keyframe (image-worker.ts) has to hand the typed tree to
 * the main thread. One `postMessage` of the whole tree is one structured-clone read on the
 * receiving side, as long as a `v8.deserialize` of the state: the event loop would stall for
 * it. Sliced, every message holds at most `maxNodes` tree nodes, and the receiver takes one
 * message per event-loop turn (it asks for the next one), so its longest stall is one slice.
 *
 * ```text
 * worker: tree ──sliceTree──▶ slice 0 (the tree, big containers cut out, "holes")
 *                             slice 1..n (items of one cut-out container, maybe with holes)
 * main:   TreeAssembler.add(slice) per message ──▶ the same tree (treesEqual)
 * ```
 *
 * A container is cut out when its subtree has more than `maxNodes` nodes. Its place holds
 * `null`, and the slice names it as a hole: a path from the slice's payload, the id of the
 * container, and its kind. The container's items (array items, or `[key, value]` pairs of an
 * object, in key order) follow in later slices, each item cut in turn. Pure data, no threads:
 * the worker glue is in worker.ts.
 */
import type { TreeNode, TreeObject } from './typed-tree.js';

/** Nodes per slice by default: about 2-6 ms of structured-clone read on the receiver. */
export const DEFAULT_SLICE_NODES = 16_384;

/** A cut-out container: where it goes in its slice's payload, and what it is. */
export interface Hole {
  /** Keys and indices from the slice's payload to the container's place (empty: the payload). */
  readonly path: readonly (string | number)[];
  /** Id of the container; later slices with this `shell` carry its items. */
  readonly id: number;
  /** `a`: array, `o`: object. */
  readonly kind: 'a' | 'o';
}

/** One message. `shell` undefined: the root slice; otherwise items of container `shell`. */
export interface TreeSlice {
  readonly shell?: number;
  /** The root slice: the tree. An items slice: array items, or `[key, value]` pairs. */
  readonly payload: TreeNode;
  readonly holes: readonly Hole[];
}

/** Node weight of a string: one more per 128 characters (copying them costs too: a slice of 1 KiB strings is about 2 MB). */
function weightOf(node: TreeNode): number {
  return typeof node === 'string' ? 1 + (node.length >>> 7) : 1;
}

/**
 * The weight of `node` (1 per container, `weightOf` per leaf, summed over the subtree), counted
 * no further than just past `cap`: deciding "more than a slice" costs at most a slice. Iterative
 * (trees may be deep).
 */
function weightUpTo(node: TreeNode, cap: number): number {
  if (typeof node !== 'object' || node === null) return weightOf(node);
  let w = 0;
  const stack: object[] = [node];
  while (stack.length > 0) {
    const n = stack.pop()!;
    w++;
    if (Array.isArray(n)) {
      for (const c of n as TreeNode[]) {
        if (typeof c === 'object' && c !== null) stack.push(c);
        else w += weightOf(c);
      }
    } else {
      for (const k in n) {
        const c = (n as TreeObject)[k]!;
        if (typeof c === 'object' && c !== null) stack.push(c);
        else w += weightOf(c);
      }
    }
    if (w > cap) return w;
  }
  return w;
}

/**
 * The slices of `tree`, in the order the receiver must take them. Lazy, and each step costs
 * about one slice: a main thread can send a tree it built this way, a slice per event-loop turn.
 * `tree` is not changed (cut-out places are `null` in the slices' own copies of their parents),
 * but must not change while the slices are taken.
 */
export function* sliceTree(tree: TreeNode, maxNodes = DEFAULT_SLICE_NODES): Generator<TreeSlice> {
  const shells: object[] = [];
  // A container within the budget holds nothing over it (weights add up): only containers over
  // the budget are cut out, and each is cut out whole.
  // The root slice.
  const rootHoles: Hole[] = [];
  if (typeof tree === 'object' && tree !== null && weightUpTo(tree, maxNodes) > maxNodes) {
    rootHoles.push({ path: [], id: 0, kind: Array.isArray(tree) ? 'a' : 'o' });
    shells.push(tree);
    yield { payload: null, holes: rootHoles };
  } else {
    yield { payload: tree, holes: rootHoles };
  }
  // Then the items of every cut-out container, in the order they were cut.
  for (let id = 0; id < shells.length; id++) {
    const shell = shells[id]!;
    const isArray = Array.isArray(shell);
    const keys = isArray ? undefined : Object.keys(shell);
    const count = isArray ? (shell as TreeNode[]).length : keys!.length;
    let batch: TreeNode[] = [];
    let holes: Hole[] = [];
    let budget = 0;
    for (let i = 0; i < count; i++) {
      // An object's items are [key, value] pairs made here: weigh the value.
      const value = isArray ? (shell as TreeNode[])[i]! : (shell as TreeObject)[keys![i]!]!;
      const wv = weightUpTo(value, maxNodes);
      const cut = typeof value === 'object' && value !== null && wv > maxNodes;
      const w = cut ? 2 : isArray ? wv : 2 + wv;
      if (batch.length > 0 && budget + w > maxNodes) {
        yield { shell: id, payload: batch, holes };
        batch = [];
        holes = [];
        budget = 0;
      }
      const at = batch.length;
      batch.push(isArray ? (cut ? null : value) : [keys![i]!, cut ? null : value]);
      budget += w;
      if (cut) {
        const kind = Array.isArray(value) ? 'a' : 'o';
        holes.push({ path: isArray ? [at] : [at, 1], id: shells.length, kind });
        shells.push(value as object);
      }
    }
    if (batch.length > 0 || count === 0) yield { shell: id, payload: batch, holes };
  }
}

/** Puts `value` at `key` of `parent` as an own data property (also for `__proto__`). */
function put(parent: Record<string | number, unknown>, key: string | number, value: unknown): void {
  if (key === '__proto__') {
    Object.defineProperty(parent, key, { value, writable: true, enumerable: true, configurable: true });
  } else {
    parent[key] = value;
  }
}

/** Rebuilds a tree from the slices of `sliceTree`, taken in order. */
export class TreeAssembler {
  readonly #shells: (TreeNode[] | TreeObject)[] = [];
  #root: TreeNode = null;
  #started = false;

  /** Takes the next slice. Throws on a slice out of order (a bug, not bad input). */
  add(slice: TreeSlice): void {
    let payload = slice.payload;
    if (slice.shell === undefined) {
      if (this.#started) throw new Error('tree transfer: a second root slice');
      this.#started = true;
    } else if (this.#shells[slice.shell] === undefined) {
      throw new Error(`tree transfer: items for container ${slice.shell} before its place`);
    }
    for (const hole of slice.holes) {
      const container: TreeNode[] | TreeObject = hole.kind === 'a' ? [] : {};
      this.#shells[hole.id] = container;
      if (hole.path.length === 0) {
        payload = container;
        continue;
      }
      let at = payload as Record<string | number, TreeNode>;
      for (let i = 0; i < hole.path.length - 1; i++)
        at = at[hole.path[i]!] as Record<string | number, TreeNode>;
      put(at, hole.path[hole.path.length - 1]!, container);
    }
    if (slice.shell === undefined) {
      this.#root = payload;
      return;
    }
    const shell = this.#shells[slice.shell]!;
    const items = payload as TreeNode[];
    if (Array.isArray(shell)) {
      for (const item of items) shell.push(item);
    } else {
      for (const item of items) {
        const [k, v] = item as [string, TreeNode];
        put(shell as Record<string, unknown>, k, v);
      }
    }
  }

  /** The tree, once every slice was added. */
  get tree(): TreeNode {
    return this.#root;
  }
}

/**
 * Image deltas: the difference between two typed trees, as jsondiffpatch deltas in pure JSON.
 *
 * ```text
 * primary:  diffTrees(prevTree, nextTree) ──encodeDelta──▶ bytes ──▶ relay
 * standby:  bytes ──decodeDelta──▶ delta ──patchTreeInPlace(baseTree, delta)──▶ nextTree
 * ```
 *
 * The jsondiffpatch instance is tuned for images:
 * - no text diffs (a changed string is replaced whole), so deltas stay plain JSON;
 * - `omitRemovedValues`: the standby only patches forward, so old values are not shipped;
 * - array items match by `id`/`_id` for records and by key for Map entries, by position
 *   otherwise; moves are detected (a re-sorted list ships indices, not items);
 * - equal subtrees are skipped before jsondiffpatch builds its per-node contexts (a 1 % change
 *   to 100k records diffs several times faster);
 * - long arrays are matched by item key in O(n log n) instead of jsondiffpatch's quadratic
 *   LCS (a queue that shifts one item and pushes one ships two items, not the queue); when
 *   items have no distinct keys and the LCS matrix would be too large, the array is replaced
 *   whole (memory stays bounded);
 * - an object whose key order the patch would not reproduce is replaced whole, so that a
 *   patched tree equals the new tree exactly, key order included (fromTree restores objects
 *   with the keys in tree order, and shared-reference ids rely on walk order).
 *
 * jsondiffpatch itself walks iteratively. JSON.stringify recurses (it fails near 4 000 JSON
 * levels, and a Map level of the state is three levels of tree and delta), so `encodeDelta`
 * falls back to an iterative writer when it overflows: any delta of a state within
 * `limits.maxDepth` encodes.
 */
import { Buffer } from 'node:buffer';
import { create, type Delta, type DiffContext, type Filter, type PatchContext } from 'jsondiffpatch';
import { ImageError } from '../errors.js';
import { TREE_TAG, cloneTree, treesEqual, type TreeNode, type TreeObject } from './typed-tree.js';

/** A jsondiffpatch delta between two typed trees; JSON-compatible. */
export type ImageDelta = NonNullable<Delta>;

/** Up to this many LCS matrix cells, arrays go through jsondiffpatch's own LCS. */
const LCS_CELLS_SMALL = 10_000;

/** Above this many LCS matrix cells, an array that cannot be matched by keys is replaced whole. */
const LCS_CELL_LIMIT = 1_000_000;

/** jsondiffpatch's move marker (`[value, newIndex, 3]`). */
const ARRAY_MOVE = 3;

/**
 * How array items are matched between two versions. Only the delta's size depends on it, never
 * its correctness.
 */
function objectHash(item: object, index?: number): string | undefined {
  if (item === null) return `i:${index}`;
  if (Array.isArray(item)) {
    // Map entries are [key, value] pairs: matching by key keeps one inserted or deleted entry
    // from shifting every later one.
    if (item.length === 2) {
      const key: unknown = item[0];
      if (typeof key === 'string') return `k:s:${key}`;
      if (typeof key === 'number') return `k:n:${key}`;
    }
    return `i:${index}`;
  }
  const node = item as TreeObject;
  const tag = node[TREE_TAG];
  // A string "$rp" is a tag, unless it is a record's keyed reference id ("#...").
  if (typeof tag !== 'string' || tag.charCodeAt(0) === 0x23) {
    const id = node.id ?? node._id;
    if (typeof id === 'string') return `id:s:${id}`;
    if (typeof id === 'number') return `id:n:${id}`;
  }
  return `i:${index}`;
}

function sameItem(a: TreeNode[], b: TreeNode[], i: number, j: number): boolean {
  const x = a[i];
  const y = b[j];
  if (x === y) return true;
  if (typeof x !== 'object' || typeof y !== 'object' || x === null || y === null) return false;
  return objectHash(x, i) === objectHash(y, j);
}

/**
 * A key identifying an array item across versions (its value for a primitive, its id or Map key
 * for an object), or undefined when the item has none but its position.
 */
function itemKey(item: TreeNode, index: number): string | undefined {
  switch (typeof item) {
    case 'string':
      return `p:s:${item}`;
    case 'number':
      return `p:n:${item}`;
    case 'boolean':
      return item ? 'p:true' : 'p:false';
    default: {
      if (item === null) return 'p:null';
      const hash = objectHash(item, index);
      return hash === undefined || hash.startsWith('i:') ? undefined : hash;
    }
  }
}

/**
 * The longest increasing subsequence of `values` (entries < 0 are skipped), as a set of the
 * indices into `values` that belong to it. O(n log n).
 */
function longestIncreasing(values: readonly number[]): Set<number> {
  const tailIndex: number[] = []; // tailIndex[k]: index of the smallest tail of a run of length k+1
  const previous = new Array<number>(values.length).fill(-1);
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    if (v < 0) continue;
    let lo = 0;
    let hi = tailIndex.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((values[tailIndex[mid] as number] as number) < v) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) previous[i] = tailIndex[lo - 1] as number;
    tailIndex[lo] = i;
  }
  const kept = new Set<number>();
  for (
    let i = tailIndex.length === 0 ? -1 : (tailIndex[tailIndex.length - 1] as number);
    i >= 0;
    i = previous[i] as number
  ) {
    kept.add(i);
  }
  return kept;
}

type ArrayDeltaRecord = Record<string, unknown>;

function putNested(result: ArrayDeltaRecord, index: number, left: TreeNode, right: TreeNode): void {
  // Most matched items are unchanged: skip jsondiffpatch's per-call setup for them.
  if (treesEqual(left, right)) return;
  const nested = differ.diff(left, right);
  if (nested !== undefined) result[index] = nested;
}

/**
 * An array delta in jsondiffpatch's format, built by matching items by key in linear time
 * (plus O(n log n) for the longest run kept in order) instead of a quadratic LCS. Undefined when
 * some item in the changed middle has no key, or a key repeats.
 */
function keyedArrayDelta(
  a: TreeNode[],
  b: TreeNode[],
  head: number,
  tail: number,
): ArrayDeltaRecord | undefined {
  const end1 = a.length - tail;
  const end2 = b.length - tail;
  const inRight = new Map<string, number>();
  for (let j = head; j < end2; j++) {
    const key = itemKey(b[j] as TreeNode, j);
    if (key === undefined || inRight.has(key)) return undefined;
    inRight.set(key, j);
  }
  const inLeft = new Set<string>();
  const target: number[] = []; // for each left item of the middle: its right index, or -1
  const matchedRight = new Set<number>();
  for (let i = head; i < end1; i++) {
    const key = itemKey(a[i] as TreeNode, i);
    if (key === undefined || inLeft.has(key)) return undefined;
    inLeft.add(key);
    const j = inRight.get(key) ?? -1;
    target.push(j);
    if (j >= 0) matchedRight.add(j);
  }
  const result: ArrayDeltaRecord = { _t: 'a' };
  for (let k = 0; k < head; k++) putNested(result, k, a[k] as TreeNode, b[k] as TreeNode);
  for (let t = 0; t < tail; t++) {
    putNested(result, b.length - 1 - t, a[a.length - 1 - t] as TreeNode, b[b.length - 1 - t] as TreeNode);
  }
  // Items kept in order stay; other matched items move; the rest are removed or added.
  const inOrder = longestIncreasing(target);
  for (let x = 0; x < target.length; x++) {
    const i = head + x;
    const j = target[x] as number;
    if (j < 0) {
      result[`_${i}`] = [0, 0, 0];
      continue;
    }
    if (!inOrder.has(x)) result[`_${i}`] = ['', j, ARRAY_MOVE];
    putNested(result, j, a[i] as TreeNode, b[j] as TreeNode);
  }
  for (let j = head; j < end2; j++) {
    if (!matchedRight.has(j)) result[j] = [b[j]];
  }
  return result;
}

/**
 * Large arrays: jsondiffpatch's LCS needs a (n+1)x(m+1) matrix over the changed middle, which
 * for a queue that shifts and pushes is the whole array. Match by keys instead when every item
 * has a distinct one; otherwise replace the array whole once the matrix would be too large.
 */
const largeArrays: Filter<DiffContext> = Object.assign(
  (context: DiffContext): void => {
    if (context.leftIsArray !== true || context.children !== undefined) return;
    const a = context.left as TreeNode[];
    const b = context.right as TreeNode[];
    const len1 = a.length;
    const len2 = b.length;
    if ((len1 + 1) * (len2 + 1) <= LCS_CELLS_SMALL) return;
    // Same trimming as jsondiffpatch: only the differing middle needs matching.
    let head = 0;
    while (head < len1 && head < len2 && sameItem(a, b, head, head)) head++;
    let tail = 0;
    while (tail + head < len1 && tail + head < len2 && sameItem(a, b, len1 - 1 - tail, len2 - 1 - tail)) {
      tail++;
    }
    const n1 = len1 - head - tail;
    const n2 = len2 - head - tail;
    if (n1 === 0 || n2 === 0 || (n1 + 1) * (n2 + 1) <= LCS_CELLS_SMALL) return;
    const keyed = keyedArrayDelta(a, b, head, tail);
    if (keyed !== undefined) {
      context.setResult(keyed as ImageDelta).exit();
    } else if ((n1 + 1) * (n2 + 1) > LCS_CELL_LIMIT) {
      context.setResult([a, b]).exit();
    }
  },
  { filterName: 'rpLargeArrays' },
);

/** Equal subtrees stop here, before jsondiffpatch builds a context for every node inside. */
const equalShortcut: Filter<DiffContext> = Object.assign(
  (context: DiffContext): void => {
    if (context.leftType !== 'object' || context.children !== undefined) return;
    if (treesEqual(context.left as TreeNode, context.right as TreeNode)) context.setResult(undefined).exit();
  },
  { filterName: 'rpEqual' },
);

function isIndexKey(key: string): boolean {
  const c = key.charCodeAt(0);
  if (c < 48 || c > 57) return false;
  const n = Number(key);
  return n < 4294967295 && String(n) === key;
}

/**
 * Whether patching `left` with an object delta yields `right`'s key order. A patch keeps kept
 * keys where they are, drops deleted ones and appends new ones in `right`'s order; integer keys
 * always enumerate first in numeric order, so they never matter.
 */
function patchKeepsKeyOrder(left: TreeObject, right: TreeObject): boolean {
  const leftKeys = Object.keys(left);
  let li = 0;
  let appending = false;
  for (const key of Object.keys(right)) {
    if (isIndexKey(key)) continue;
    if (!Object.hasOwn(left, key)) {
      appending = true;
      continue;
    }
    if (appending) return false;
    for (;;) {
      const l = leftKeys[li++];
      if (l === key) break;
      if (l === undefined) return false;
      if (!isIndexKey(l) && Object.hasOwn(right, l)) return false;
    }
  }
  return true;
}

const keyOrderGuard: Filter<DiffContext> = Object.assign(
  (context: DiffContext): void => {
    if (context.leftType !== 'object' || context.leftIsArray === true || context.children !== undefined)
      return;
    if (!patchKeepsKeyOrder(context.left as TreeObject, context.right as TreeObject)) {
      context.setResult([context.left, context.right]).exit();
    }
  },
  { filterName: 'rpKeyOrderGuard' },
);

function deltaPath(context: PatchContext): string {
  const names: (string | number)[] = [];
  for (let c: PatchContext | undefined = context; c?.childName !== undefined; c = c.parent) {
    names.push(c.childName);
  }
  return names.length === 0 ? '(root)' : `/${names.reverse().join('/')}`;
}

function shapeOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

/**
 * jsondiffpatch silently skips a nested delta whose base is not the container it expects; a
 * delta applied to the wrong base must fail loudly instead.
 */
const shapeGuard: Filter<PatchContext> = Object.assign(
  (context: PatchContext): void => {
    if (context.nested !== true) return;
    const delta = context.delta as Record<string, unknown>;
    const left = context.left;
    if (delta._t === 'a') {
      if (!Array.isArray(left)) {
        throw new ImageError(
          `image delta does not fit its base: an array change at ${deltaPath(context)} meets ${shapeOf(left)}`,
        );
      }
      for (const key of Object.keys(delta)) {
        if (key.charCodeAt(0) === 0x5f /* _ */ && key !== '_t' && Number(key.slice(1)) >= left.length) {
          throw new ImageError(
            `image delta does not fit its base: it removes item ${key.slice(1)} at ${deltaPath(context)}, ` +
              `but the base array has ${left.length}`,
          );
        }
      }
    } else if (left === null || typeof left !== 'object' || Array.isArray(left)) {
      throw new ImageError(
        `image delta does not fit its base: an object change at ${deltaPath(context)} meets ${shapeOf(left)}`,
      );
    }
  },
  { filterName: 'rpShapeGuard' },
);

const differ = create({
  objectHash,
  arrays: { detectMove: true, includeValueOnMove: false },
  omitRemovedValues: true,
  cloneDiffValues: false,
});
differ.processor.pipes.diff.before('objects', equalShortcut, keyOrderGuard);
differ.processor.pipes.diff.before('arrays', largeArrays);
differ.processor.pipes.patch.after('trivial', shapeGuard);

/**
 * The delta that turns `prev` into `next`, or undefined when they are equal.
 *
 * Both trees are read, never changed. The delta shares nodes with `next` (values are not
 * cloned, for speed): encode it, or stop changing `next`, before `next` is mutated.
 * Cost is at least linear in the size of both trees; on large states finding changed records
 * by identity upstream is much cheaper than a deep diff.
 */
export function diffTrees(prev: TreeNode, next: TreeNode): ImageDelta | undefined {
  const delta = differ.diff(prev, next);
  return delta === undefined ? undefined : delta;
}

/**
 * Applies `delta` to `base` IN PLACE and returns the new tree, which is `base` itself unless
 * the root was replaced. The caller must own `base` (no one else may hold it) and hands over
 * `delta`: its nodes become part of the result. Made for the standby, which keeps one
 * materialized tree and patches it as deltas arrive.
 *
 * Throws `ImageError` when `delta` is malformed or does not fit `base`; `base` may then be
 * partly patched and must be discarded (rebuild it from the last keyframe). Use `patchTree`
 * to keep `base` intact.
 */
export function patchTreeInPlace(base: TreeNode, delta: ImageDelta): TreeNode {
  checkDelta(delta);
  try {
    return differ.patch(base, delta) as TreeNode;
  } catch (cause) {
    if (cause instanceof ImageError) throw cause;
    throw new ImageError(`image delta could not be applied: ${errorText(cause)}`, { cause });
  }
}

/**
 * Like `patchTreeInPlace`, but `base` and `delta` are left untouched: both are deep-copied
 * first (`cloneTree`, several times faster than structuredClone on trees), and the result
 * shares nothing with either.
 */
export function patchTree(base: TreeNode, delta: ImageDelta): TreeNode {
  checkDelta(delta);
  return patchTreeInPlace(cloneTree(base), cloneTree(delta as TreeNode) as ImageDelta);
}

/** Encodes a delta as UTF-8 JSON. */
export function encodeDelta(delta: ImageDelta): Buffer {
  let text: string;
  try {
    text = JSON.stringify(delta);
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
    // "Maximum call stack size exceeded": the same text, written without recursion.
    text = stringifyDeep(delta);
  }
  return Buffer.from(text, 'utf8');
}

/**
 * `JSON.stringify` of a JSON value (no `toJSON`, no cycles), written with an explicit stack so
 * that nesting is limited by memory only. Output is identical: members in own-key order,
 * `undefined` members skipped, `undefined` items and non-finite numbers as `null`.
 */
export function stringifyDeep(value: unknown): string {
  const out: string[] = [];
  // Each entry: a container and where its walk is (index into items or keys).
  const stack: { c: unknown[] | Record<string, unknown>; keys: string[] | undefined; i: number }[] = [];
  const scalar = (v: unknown): string | undefined => {
    if (v === null) return 'null';
    switch (typeof v) {
      case 'string':
      case 'boolean':
      case 'number':
        return JSON.stringify(v);
      case 'object':
        return undefined;
      default:
        return v === undefined ? undefined : 'null';
    }
  };
  const open = (v: object): void => {
    if (Array.isArray(v)) {
      out.push('[');
      stack.push({ c: v, keys: undefined, i: 0 });
    } else {
      out.push('{');
      stack.push({ c: v as Record<string, unknown>, keys: Object.keys(v), i: 0 });
    }
  };
  const first = scalar(value);
  if (first !== undefined) return first;
  if (typeof value !== 'object' || value === null) return 'null';
  open(value);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.keys === undefined) {
      const items = top.c as unknown[];
      if (top.i >= items.length) {
        out.push(']');
        stack.pop();
        continue;
      }
      if (top.i > 0) out.push(',');
      const v = items[top.i++];
      const s = scalar(v);
      if (s !== undefined) out.push(s);
      else if (typeof v === 'object' && v !== null) open(v);
      else out.push('null');
    } else {
      const keys = top.keys;
      let pushed = false;
      while (top.i < keys.length) {
        const k = keys[top.i++]!;
        const v = (top.c as Record<string, unknown>)[k];
        const s = scalar(v);
        if (s === undefined && (typeof v !== 'object' || v === null)) continue;
        if (out[out.length - 1] !== '{') out.push(',');
        out.push(JSON.stringify(k), ':');
        if (s !== undefined) out.push(s);
        else open(v as object);
        pushed = true;
        break;
      }
      if (!pushed) {
        out.push('}');
        stack.pop();
      }
    }
  }
  return out.join('');
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Decodes bytes made by `encodeDelta`. Throws `ImageError` for anything else: invalid UTF-8,
 * invalid JSON, or JSON that is not a well-formed image delta.
 */
export function decodeDelta(bytes: Uint8Array): ImageDelta {
  if (!(bytes instanceof Uint8Array)) throw new ImageError('an image delta must be a Uint8Array');
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch (cause) {
    throw new ImageError(`image delta of ${bytes.byteLength} bytes is not valid UTF-8`, { cause });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new ImageError(`image delta of ${bytes.byteLength} bytes is not valid JSON: ${errorText(cause)}`, {
      cause,
    });
  }
  checkDelta(parsed);
  return parsed;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Checks the structure of a delta (not the tree values it carries: fromTree checks those), so
 * that jsondiffpatch never meets a shape it would skip, misread, log, or turn into `undefined`.
 */
function checkDelta(delta: unknown): asserts delta is ImageDelta {
  const problem = deltaProblem(delta);
  if (problem !== undefined) throw new ImageError(`image delta is malformed: ${problem}`);
}

/**
 * Where a change sits: the whole tree, an object member, an array item in the new array
 * (`"3"`), or an item of the old array (`"_3"`, removals and moves only).
 */
type Slot = 'root' | 'member' | 'item' | 'removed';

/** What is wrong with a delta's structure, or undefined. Iterative: any depth. */
function deltaProblem(root: unknown): string | undefined {
  const pending: [unknown, string, Slot][] = [[root, '', 'root']];
  while (pending.length > 0) {
    const [delta, at, slot] = pending.pop() as [unknown, string, Slot];
    const where = at === '' ? '(root)' : at;
    if (Array.isArray(delta)) {
      if (slot === 'removed') {
        if (delta.length !== 3) return `only removals and moves may sit at ${where}`;
        if (delta[2] === 0) continue;
        if (delta[2] === ARRAY_MOVE && Number.isSafeInteger(delta[1]) && (delta[1] as number) >= 0) continue;
        return `bad removal or move at ${where}`;
      }
      if (delta.length === 1 || delta.length === 2) continue;
      // Deleting the root or an array item by its new index would leave `undefined` in the tree.
      if (delta.length === 3 && delta[2] === 0 && slot === 'member') continue;
      return `unsupported change ${JSON.stringify(delta.slice(1))} at ${where}`;
    }
    if (typeof delta !== 'object' || delta === null)
      return `${typeof delta} where a change belongs at ${where}`;
    if (slot === 'removed') return `only removals and moves may sit at ${where}`;
    const record = delta as Record<string, unknown>;
    const isArrayDelta = Object.hasOwn(record, '_t');
    if (isArrayDelta && record._t !== 'a') return `unknown container marker at ${where}`;
    for (const key of Object.keys(record)) {
      if (isArrayDelta) {
        if (key === '_t') continue;
        if (!/^_?(?:0|[1-9]\d*)$/.test(key)) return `bad array index ${JSON.stringify(key)} at ${where}`;
        pending.push([record[key], `${at}/${key}`, key.charCodeAt(0) === 0x5f ? 'removed' : 'item']);
      } else {
        if (key === '__proto__') return `forbidden key __proto__ at ${where}`;
        pending.push([record[key], `${at}/${key}`, 'member']);
      }
    }
  }
  return undefined;
}

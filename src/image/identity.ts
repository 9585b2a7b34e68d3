/**
 * The identity path: deltas for apps that update their state immutably (spread copies, Immer,
 * Redux). An object handed to a checkpoint is never changed afterwards, so a reference that is
 * the same as at the last checkpoint is the same value, and its subtree is skipped in O(1).
 * Only the containers on the way to a change are new, and only they are compared, entry by
 * entry, against their previous version.
 *
 * ```text
 * prev = { users: Map(100k) }             next = { ...prev, users: new Map(prev.users).set(id, rec2) }
 *   next !== prev: compare members         users !== users: compare entries (same key order: lockstep)
 *   rec2 !== rec: compare fields           one field differs: one delta entry, node patched in place
 * ```
 *
 * Cost: O(changed objects + the entries of every new container). The typed tree of the previous
 * checkpoint is patched in place, so the caller must discard it if the walk throws or finds the
 * state shared (the registry counts objects; see graph.ts); the encoder then takes a keyframe.
 */
import { diffTrees } from './delta.js';
import { Container, Registry, containerKind, hasEnumerable, isIndexKey, isObject, sameKey } from './graph.js';
import { fits } from './tracked.js';
import { toTree, treeKey, treesEqual, type TreeNode, type TreeObject } from './typed-tree.js';

interface Step {
  readonly node: TreeNode;
  readonly delta: unknown;
}

type DeltaRecord = Record<string, unknown>;

/**
 * Turns `tree` (the typed tree of `prev`) into the typed tree of `next`, mostly in place, and
 * returns it with the delta. `registry` counts the objects of `prev` and is updated to count
 * those of `next`; when it reports `shared()` afterwards, the result is not exact (discard it).
 */
export function identityDelta(
  prev: unknown,
  next: unknown,
  tree: TreeNode,
  registry: Registry,
  maxDepth = Infinity,
): { tree: TreeNode; delta: unknown } {
  const step = new IdentityWalk(registry, maxDepth).visit(prev, next, tree);
  return { tree: step.node, delta: step.delta };
}

class IdentityWalk {
  /** How many containers hold the value being visited. */
  private level = 0;

  /** @param maxDepth `limits.maxDepth`: values new at a place may nest only what is left of it. */
  constructor(
    private readonly registry: Registry,
    private readonly maxDepth = Infinity,
  ) {}

  visit(prev: unknown, next: unknown, node: TreeNode): Step {
    if (prev === next) return { node, delta: undefined };
    const kind = containerKind(next);
    if (kind !== undefined && kind === containerKind(prev) && fits(kind, node)) {
      // `next` takes the place of `prev`, as deep as it was: only new values are measured.
      this.level++;
      try {
        return this.container(kind, prev, next, node);
      } finally {
        this.level--;
      }
    }
    return this.replace(prev, next, node);
  }

  /** `next`, a container of the same kind as `prev`, compared entry by entry. */
  container(kind: Container, prev: unknown, next: unknown, node: TreeNode): Step {
    {
      // The container is new; what it shares with its predecessor stays counted.
      this.registry.adoptSelf(next as object);
      this.registry.releaseSelf(prev as object);
      switch (kind) {
        case Container.Object:
          return this.object(
            prev as Record<string, unknown>,
            next as Record<string, unknown>,
            node as TreeObject,
          );
        case Container.Array:
          return this.array(prev as unknown[], next as unknown[], node as TreeNode[]);
        case Container.Map:
          return this.map(prev as Map<unknown, unknown>, next as Map<unknown, unknown>, node as TreeObject);
        default:
          return this.set(prev as Set<unknown>, next as Set<unknown>, node as TreeObject);
      }
    }
  }

  /**
   * `next` takes `prev`'s place whole. `above`: the containers that hold it (one less than the
   * current level when a container being compared gives up and is replaced itself).
   */
  replace(prev: unknown, next: unknown, node: TreeNode, above = this.level): Step {
    this.registry.adopt(next, undefined, undefined);
    this.registry.release(prev, undefined, undefined);
    const fresh = toTree(next, this.maxDepth, above);
    if (treesEqual(node, fresh)) return { node, delta: undefined };
    if (isObject(node) && isObject(fresh) && Array.isArray(node) === Array.isArray(fresh)) {
      return { node: fresh, delta: diffTrees(node, fresh) };
    }
    return { node: fresh, delta: [0, fresh] };
  }

  /** A value new at its place (no predecessor there). */
  added(next: unknown): TreeNode {
    this.registry.adopt(next, undefined, undefined);
    return toTree(next, this.maxDepth, this.level);
  }

  object(prev: Record<string, unknown>, next: Record<string, unknown>, node: TreeObject): Step {
    const before = Object.keys(prev);
    const after = Object.keys(next);
    const delta: DeltaRecord = {};
    let changed = false;
    if (sameKeys(before, after)) {
      for (const k of after) {
        const a = prev[k];
        const b = next[k];
        if (a === b) continue;
        const esc = treeKey(k);
        const step = this.visit(a, b, node[esc]!);
        if (step.node !== node[esc]) node[esc] = step.node;
        if (step.delta !== undefined) {
          delta[esc] = step.delta;
          changed = true;
        }
      }
      return { node, delta: changed ? delta : undefined };
    }
    if (!patchKeepsOrder(before, after, prev, next)) {
      this.registry.releaseSelf(next);
      this.registry.adoptSelf(prev);
      return this.replace(prev, next, node, this.level - 1);
    }
    for (const k of before) {
      if (hasEnumerable(next, k)) continue;
      const esc = treeKey(k);
      this.registry.release(prev[k], undefined, undefined);
      delete node[esc];
      delta[esc] = [0, 0, 0];
      changed = true;
    }
    for (const k of after) {
      const esc = treeKey(k);
      if (!hasEnumerable(prev, k)) {
        const fresh = this.added(next[k]);
        node[esc] = fresh;
        delta[esc] = [fresh];
        changed = true;
        continue;
      }
      const a = prev[k];
      const b = next[k];
      if (a === b) continue;
      const step = this.visit(a, b, node[esc]!);
      if (step.node !== node[esc]) node[esc] = step.node;
      if (step.delta !== undefined) {
        delta[esc] = step.delta;
        changed = true;
      }
    }
    return { node, delta: changed ? delta : undefined };
  }

  array(prev: unknown[], next: unknown[], node: TreeNode[]): Step {
    if (prev.length === next.length && node.length === prev.length) {
      const delta: DeltaRecord = { _t: 'a' };
      let changed = false;
      for (let i = 0; i < next.length; i++) {
        const a = prev[i];
        const b = next[i];
        if (a === b) continue;
        // A hole makes the array sparse, a different node: re-encode.
        if (b === undefined && !Object.hasOwn(next, i)) return this.rebuildList(prev, next, node);
        const step = this.visit(a, b, node[i]!);
        if (step.node !== node[i]) node[i] = step.node;
        if (step.delta !== undefined) {
          delta[i] = step.delta;
          changed = true;
        }
      }
      return { node, delta: changed ? delta : undefined };
    }
    return this.rebuildList(prev, next, node);
  }

  /**
   * An array whose length changed: a new node from the old nodes of the items kept (same
   * reference) and fresh nodes for the rest; jsondiffpatch matches the two lists.
   */
  rebuildList(prev: unknown[], next: unknown[], node: TreeNode[]): Step {
    for (let i = 0; i < next.length; i++) {
      if (next[i] === undefined && !Object.hasOwn(next, i)) {
        this.registry.releaseSelf(next);
        this.registry.adoptSelf(prev);
        return this.replace(prev, next, node, this.level - 1);
      }
    }
    const oldNodes = new Map<unknown, TreeNode>();
    prev.forEach((item, i) => {
      if (isObject(item)) oldNodes.set(item, node[i]!);
    });
    const fresh: TreeNode[] = new Array<TreeNode>(next.length);
    const kept = new Set<unknown>();
    for (let i = 0; i < next.length; i++) {
      const item = next[i];
      const reused = isObject(item) && !kept.has(item) ? oldNodes.get(item) : undefined;
      if (reused !== undefined) {
        kept.add(item);
        fresh[i] = reused;
      } else {
        fresh[i] = this.added(item);
      }
    }
    for (const item of prev)
      if (isObject(item) && !kept.has(item)) this.registry.release(item, undefined, undefined);
    return { node: fresh, delta: diffTrees(node, fresh) };
  }

  map(prev: Map<unknown, unknown>, next: Map<unknown, unknown>, node: TreeObject): Step {
    const entries = node.e as TreeNode[][];
    const inner: DeltaRecord = { _t: 'a' };
    let changed = false;
    if (prev.size === next.size && entries.length === prev.size) {
      // Same keys in the same order (values changed in place): one lockstep pass.
      const a = prev.entries();
      const b = next.entries();
      const differ: [number, unknown, unknown][] = [];
      let same = true;
      for (let i = 0; ; i++) {
        const x = a.next();
        if (x.done === true) break;
        const y = b.next() as IteratorResult<[unknown, unknown]>;
        if (!sameKey(x.value[0], y.value[0])) {
          same = false;
          break;
        }
        if (x.value[1] !== y.value[1]) differ.push([i, x.value[1], y.value[1]]);
      }
      if (same) {
        for (const [i, before, after] of differ) {
          const pair = entries[i]!;
          const step = this.visit(before, after, pair[1]!);
          if (step.node !== pair[1]) pair[1] = step.node;
          if (step.delta !== undefined) {
            inner[i] = { _t: 'a', 1: step.delta };
            changed = true;
          }
        }
        return { node, delta: changed ? { e: inner } : undefined };
      }
    }
    // Keys were added or removed. Kept keys must still be in the same order, or a patch (which
    // cannot move entries cheaply here) is not worth it: re-encode the Map.
    const before = [...prev.keys()];
    let p = 0;
    for (const k of next.keys()) {
      if (!prev.has(k)) continue;
      while (p < before.length && !next.has(before[p])) p++;
      if (p >= before.length || !sameKey(before[p], k)) {
        this.registry.releaseSelf(next);
        this.registry.adoptSelf(prev);
        return this.replace(prev, next, node, this.level - 1);
      }
      p++;
    }
    const position = new Map<unknown, number>();
    before.forEach((k, i) => {
      if (next.has(k)) {
        position.set(k, i);
      } else {
        inner[`_${i}`] = [0, 0, 0];
        changed = true;
        this.registry.release(prev.get(k), undefined, undefined);
        if (isObject(k)) this.registry.release(k, undefined, undefined);
      }
    });
    const fresh: TreeNode[][] = [];
    let j = 0;
    for (const [k, v] of next) {
      const at = position.get(k);
      if (at === undefined) {
        if (isObject(k)) this.registry.adopt(k, undefined, undefined);
        const pair: TreeNode[] = [toTree(k, this.maxDepth, this.level), this.added(v)];
        inner[j] = [pair];
        changed = true;
        fresh.push(pair);
      } else {
        const pair = entries[at]!;
        const old = prev.get(k);
        if (old !== v) {
          const step = this.visit(old, v, pair[1]!);
          if (step.node !== pair[1]) pair[1] = step.node;
          if (step.delta !== undefined) {
            inner[j] = { _t: 'a', 1: step.delta };
            changed = true;
          }
        }
        fresh.push(pair);
      }
      j++;
    }
    node.e = fresh;
    return { node, delta: changed ? { e: inner } : undefined };
  }

  set(prev: Set<unknown>, next: Set<unknown>, node: TreeObject): Step {
    const entries = node.e as TreeNode[];
    const oldNodes = new Map<unknown, TreeNode>();
    let i = 0;
    for (const v of prev) oldNodes.set(v, entries[i++]!);
    const fresh: TreeNode[] = [];
    for (const v of next) {
      const reused = oldNodes.get(v);
      fresh.push(reused !== undefined && prev.has(v) ? reused : this.added(v));
    }
    for (const v of prev) if (!next.has(v)) this.registry.release(v, undefined, undefined);
    const delta = diffTrees(entries, fresh);
    node.e = fresh;
    return { node, delta: delta === undefined ? undefined : { e: delta } };
  }
}

function sameKeys(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Whether patching an object with keys `before` into one with keys `after` keeps `after`'s
 * order: kept keys stay where they are, removed ones go, added ones are appended. Integer keys
 * always enumerate first in numeric order, so they never matter.
 */
function patchKeepsOrder(before: string[], after: string[], prev: object, next: object): boolean {
  let li = 0;
  let appending = false;
  for (const key of after) {
    if (isIndexKey(key)) continue;
    if (!hasEnumerable(prev, key)) {
      appending = true;
      continue;
    }
    if (appending) return false;
    for (;;) {
      const l = before[li++];
      if (l === key) break;
      if (l === undefined) return false;
      if (!isIndexKey(l) && hasEnumerable(next, l)) return false;
    }
  }
  return true;
}

/**
 * A primary's keyframe off the event loop (issue 14): the state is walked into its typed tree a
 * slice at a time on the main thread, with copy-on-write for what the app changes meanwhile, and
 * the tree goes to the image worker in slices, where it is serialized and compressed.
 *
 * ```text
 * checkpoint() ─ walk, first slice (≤ sliceMs) ─┬─ done: a small state, finished on the spot
 *                                                └─ not done: a flight
 * flight:  walk slice ─ turn ─ walk slice ─ … ─ walked (the tree is the keyframe's; the encoder's base)
 *          send slices to the worker (tree-transfer.ts), a few per turn ─ … ─ last
 * worker:  fromTree → node:v8 → brotli ──payload (transferred)──▶ the image record
 * ```
 *
 * Each slice blocks the event loop for about `sliceMs` (the walk looks at the clock every 256
 * children), so lease renewal, presence and the app's own work go on during a 100 MB keyframe.
 *
 * The image is the state at the call: the tracker (tracked.ts) tells the copy-on-write views
 * (cow.ts) before every change, and they keep for the walk what it has not read yet. `flush()`
 * finishes a flight synchronously: the encoder calls it when the next checkpoint comes before
 * the flight is over (the walk must be done before a delta is taken, and the tree must be sent
 * before a delta patches it).
 */
import { CopyOnWrite } from './cow.js';
import type { MapIndex } from './map-index.js';
import { sliceTree, type TreeSlice } from './tree-transfer.js';
import { SlicedTreeWalk, type IndexedTree, type TreeNode } from './typed-tree.js';
import type { ImageWorker, KeyframeUpload, PackedKeyframe } from './worker.js';

/** How long one slice of a flight may hold the event loop, by default (ms). */
export const DEFAULT_SLICE_MS = 8;

/**
 * The first slice walks at least this many children before it may stop: a state smaller than
 * that is always serialized on the spot, whatever the machine's speed, so small states keep one
 * path (and synchronous records) deterministically. Kept low because this part of the walk
 * holds the event loop whatever its length: 65 536 children (the value until issue 14's drill)
 * took 0.2–0.6 s of one block for the drill's 100 MB state of 1 KiB strings on the loaded
 * 2-core machine, and demoted its primary at a 1 000 ms lease; 8 192 take a few tens of ms.
 */
export const DEFAULT_MIN_OFF_THREAD_CHILDREN = 8_192;

/** What the walk found, and the Map indexes it built (cow.ts). */
export interface Walked extends IndexedTree {
  readonly indexes: ReadonlyMap<Map<unknown, unknown>, MapIndex | null>;
}

/** Options of a flight. */
export interface FlightOptions {
  readonly maxDepth: number;
  readonly sliceMs: number;
  /** The first slice visits at least this many children (`DEFAULT_MIN_OFF_THREAD_CHILDREN`). */
  readonly minChildren?: number;
  /** The worker that serializes (started on first use). */
  readonly worker: () => ImageWorker;
  /**
   * Called once, on the main thread, when the walk is done (with its result) or failed (with the
   * error): the encoder takes the tree as its base (or forgets its base). `cow` is whom the
   * tracker must tell of changes until then.
   */
  readonly onWalked: (walked: Walked | Error) => void;
  /** Called before the first slice is left for later, to arm the copy-on-write (tracker.beginFlight). */
  readonly onFlight: (cow: CopyOnWrite) => void;
  /** Tree nodes per slice sent to the worker (tests). */
  readonly sliceNodes?: number;
  /** The image's `stateVersion` (its record's header is made in the worker). */
  readonly stateVersion: number;
}

/**
 * Starts a keyframe of `raw`. Walks the first slice now: a state walked within it is small and
 * comes back as `{ walked }` (the caller serializes it on the spot, as before); otherwise the
 * walk goes on as a flight. Throws as `toTree` does when the first slice meets a value that
 * cannot be serialized (nothing started then).
 */
export function startKeyframe(
  raw: unknown,
  opts: FlightOptions,
): { walked: Walked } | { flight: KeyframeFlight } {
  const cow = new CopyOnWrite();
  const walk = new SlicedTreeWalk(raw, opts.maxDepth, cow);
  cow.attach(walk);
  if (walk.advance(performance.now() + opts.sliceMs, opts.minChildren ?? DEFAULT_MIN_OFF_THREAD_CHILDREN)) {
    cow.detach();
    return { walked: { ...walk.result, indexes: cow.indexes } };
  }
  opts.onFlight(cow);
  return { flight: new KeyframeFlight(walk, cow, opts) };
}

/** A keyframe in flight: see the module comment. */
export class KeyframeFlight {
  readonly #walk: SlicedTreeWalk;
  readonly #cow: CopyOnWrite;
  readonly #opts: FlightOptions;
  #phase: 'walk' | 'send' | 'sent' | 'failed' = 'walk';
  #turn: NodeJS.Immediate | undefined;
  #slices: Iterator<TreeSlice> | undefined;
  #ahead: IteratorResult<TreeSlice> | undefined;
  #upload: KeyframeUpload | undefined;
  #settle!: { resolve: (p: PackedKeyframe) => void; reject: (err: Error) => void };
  /** The payload and record body; rejects when the walk or the worker failed. */
  readonly packed: Promise<PackedKeyframe>;
  /** Slices the walk took, and the longest of them (ms; for tests and the bench). */
  walkSlices = 1;
  longestSliceMs = 0;

  constructor(walk: SlicedTreeWalk | undefined, cow: CopyOnWrite, opts: FlightOptions, tree?: TreeNode) {
    this.#walk = walk!;
    this.#cow = cow;
    this.#opts = opts;
    this.packed = new Promise<PackedKeyframe>((resolve, reject) => {
      this.#settle = { resolve, reject };
    });
    // Handled by whoever awaits it; keep Node from reporting it as unhandled meanwhile.
    this.packed.catch(() => undefined);
    if (walk === undefined) this.#startSending(tree!);
    this.#next();
  }

  /**
   * A keyframe whose tree is already made (the encoder's base, patched up to the state now):
   * only sent and serialized. The tree must not change until the flight is sent (`flush`).
   */
  static ofTree(tree: TreeNode, opts: Omit<FlightOptions, 'onWalked' | 'onFlight'>): KeyframeFlight {
    const none = (): void => undefined;
    return new KeyframeFlight(
      undefined,
      new CopyOnWrite(),
      { ...opts, onWalked: none, onFlight: none },
      tree,
    );
  }

  /** Whether the walk is still going (changes to the state are copied on write). */
  get walking(): boolean {
    return this.#phase === 'walk';
  }

  /** How many containers the copy-on-write copied whole. */
  get copies(): number {
    return this.#cow.copies;
  }

  /** Finishes the walk and sends the rest of the tree now, synchronously (see the module comment). */
  flush(): void {
    if (this.#turn !== undefined) clearImmediate(this.#turn);
    this.#turn = undefined;
    if (this.#phase === 'walk') this.#walkFor(Infinity);
    if (this.#phase === 'send') this.#sendFor(Infinity);
  }

  #next(): void {
    this.#turn = setImmediate(() => {
      this.#turn = undefined;
      const t0 = performance.now();
      if (this.#phase === 'walk') {
        this.walkSlices++;
        this.#walkFor(t0 + this.#opts.sliceMs);
      } else if (this.#phase === 'send') {
        this.#sendFor(t0 + this.#opts.sliceMs);
      }
      this.longestSliceMs = Math.max(this.longestSliceMs, performance.now() - t0);
      if (this.#phase === 'walk' || this.#phase === 'send') this.#next();
    });
  }

  #walkFor(deadline: number): void {
    let done: boolean;
    try {
      done = this.#walk.advance(deadline);
    } catch (err) {
      this.#phase = 'failed';
      this.#cow.detach();
      this.#opts.onWalked(err as Error);
      this.#settle.reject(err as Error);
      return;
    }
    if (!done) return;
    const result = this.#walk.result;
    this.#cow.detach();
    this.#opts.onWalked({ ...result, indexes: this.#cow.indexes });
    this.#startSending(result.tree);
  }

  #startSending(tree: TreeNode): void {
    this.#phase = 'send';
    let upload: KeyframeUpload;
    try {
      upload = this.#opts.worker().encodeKeyframe();
    } catch (err) {
      this.#phase = 'failed';
      this.#settle.reject(err as Error);
      return;
    }
    this.#upload = upload;
    upload.packed.then(this.#settle.resolve, this.#settle.reject);
    this.#slices = sliceTree(tree, this.#opts.sliceNodes);
    this.#ahead = this.#slices.next();
  }

  #sendFor(deadline: number): void {
    const upload = this.#upload!;
    for (;;) {
      const cur = this.#ahead!;
      if (cur.done === true) {
        this.#phase = 'sent';
        return;
      }
      this.#ahead = this.#slices!.next();
      const last = this.#ahead.done === true;
      upload.send(cur.value, last, this.#opts.stateVersion);
      if (last) {
        this.#phase = 'sent';
        this.#slices = undefined;
        return;
      }
      if (performance.now() >= deadline) return;
    }
  }
}

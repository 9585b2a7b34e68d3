/**
 * The main thread's side of the image worker: large keyframes are decoded off the event loop.
 *
 * ```text
 * main: decodeKeyframe(rec) ──payload (copied once into a buffer of its own, then transferred)──▶ worker
 *       worker: decompress, v8.deserialize, toTree (keyframe-decode.ts)
 * main: ◀── slice ── "more" ──▶ ◀── slice ── … (one slice per event-loop turn, tree-transfer.ts)
 * ```
 *
 * A standby that receives a 100 MB keyframe therefore keeps its event loop (the lease watch,
 * presence, the stream consumers) running: its longest stall is one slice of the tree (a few
 * ms), not the whole decode (about a second). The tree it builds is the one the main thread
 * would have built (`treesEqual`; tested in test/unit/image-worker.test.ts).
 *
 * One worker thread per `ImageWorker`, started at the first job and kept (idle, unref'd) for
 * the next; it holds the process open only while a job runs. `close()` ends it.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ImageError, LimitError } from '../errors.js';
import { IMAGE_HEADER_BYTES, type ImageRecord } from '../protocol/records.js';
import type { PackedPayload } from './compression.js';
import type { KeyframeJob, WorkerReply } from './keyframe-decode.js';
import type { EncodeJob, EncodeReply } from './keyframe-serialize.js';
import { TreeAssembler, type TreeSlice } from './tree-transfer.js';
import type { TreeNode } from './typed-tree.js';

/**
 * The worker's script: the compiled `image-worker.js` beside this file, or, when this file runs
 * from TypeScript sources (tests), the one in the build (`dist/`).
 */
function workerScript(): string {
  const here = fileURLToPath(import.meta.url);
  const sibling = join(dirname(here), 'image-worker.js');
  if (!here.endsWith('.ts') && existsSync(sibling)) return sibling;
  const built = join(dirname(here), '..', '..', 'dist', 'src', 'image', 'image-worker.js');
  if (existsSync(built)) return built;
  throw new ImageError(
    `the image worker's script is missing (looked for ${sibling} and ${built}): build the project (npx tsc -p tsconfig.json)`,
  );
}

interface Pending {
  readonly assembler: TreeAssembler;
  readonly resolve: (tree: TreeNode) => void;
  readonly reject: (err: Error) => void;
}

/** A keyframe being encoded in the worker (keyframe-serialize.ts). */
interface PendingEncode {
  readonly assembler?: undefined;
  readonly resolve: (packed: PackedKeyframe) => void;
  readonly reject: (err: Error) => void;
}

/** A keyframe's payload, and its whole image record body (`payload` is a view into it). */
export interface PackedKeyframe extends PackedPayload {
  readonly body: Buffer;
}

/** A keyframe's tree on its way to the worker: `send` its slices in order; `packed` is the payload. */
export interface KeyframeUpload {
  send(slice: TreeSlice, last: boolean, stateVersion?: number): void;
  readonly packed: Promise<PackedKeyframe>;
}

/** Decodes keyframes in a worker thread. */
export class ImageWorker {
  #worker: Worker | undefined;
  #nextId = 1;
  readonly #pending = new Map<number, Pending | PendingEncode>();
  readonly #sliceNodes: number | undefined;
  #closed = false;

  /** `sliceNodes`: tree nodes per slice (tests make it small to exercise the slicing). */
  constructor(opts: { readonly sliceNodes?: number } = {}) {
    this.#sliceNodes = opts.sliceNodes;
  }

  /**
   * The typed tree of keyframe `rec` (checkpoint `checkpoint`), as `decodeKeyframeTree` makes
   * it. Rejects with the same `ImageError`s. `rec.payload` is not changed or detached.
   */
  decodeKeyframe(checkpoint: number, rec: ImageRecord, maxDepth: number): Promise<TreeNode> {
    if (this.#closed) return Promise.reject(new ImageError('the image worker was closed'));
    const worker = this.#start();
    const id = this.#nextId++;
    // A buffer of its own, so it can be transferred: the record's payload is a view into the
    // joined frame, which the caller still owns. One memcpy of the compressed bytes.
    const copy = new Uint8Array(rec.payload.byteLength);
    copy.set(rec.payload);
    const job: KeyframeJob = {
      id,
      op: 'keyframe',
      checkpoint,
      codec: rec.codec,
      rawLength: rec.rawLength,
      payload: copy.buffer,
      maxDepth,
      sliceNodes: this.#sliceNodes,
    };
    return new Promise<TreeNode>((resolve, reject) => {
      this.#pending.set(id, { assembler: new TreeAssembler(), resolve, reject });
      if (this.#pending.size === 1) worker.ref();
      worker.postMessage(job, [copy.buffer]);
    });
  }

  /**
   * Encodes a keyframe from its typed tree in the worker: the caller sends the tree's slices
   * (`sliceTree`), the last one with `last`; `packed` resolves with the payload (compressed when it
   * pays, its memory transferred from the worker) or rejects with an `ImageError`.
   */
  encodeKeyframe(): KeyframeUpload {
    if (this.#closed) {
      const packed = Promise.reject<PackedKeyframe>(new ImageError('the image worker was closed'));
      packed.catch(() => undefined);
      return { send: () => undefined, packed };
    }
    const worker = this.#start();
    const id = this.#nextId++;
    const packed = new Promise<PackedKeyframe>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      if (this.#pending.size === 1) worker.ref();
    });
    return {
      send: (slice, last, stateVersion) => {
        if (this.#pending.has(id) && this.#worker === worker) {
          worker.postMessage({ id, op: 'encode', slice, last, stateVersion } satisfies EncodeJob);
        }
      },
      packed,
    };
  }

  /** Ends the worker thread; jobs in progress reject. */
  async close(): Promise<void> {
    this.#closed = true;
    const w = this.#worker;
    this.#worker = undefined;
    this.#failAll(new ImageError('the image worker was closed'));
    if (w) await w.terminate();
  }

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const w = new Worker(workerScript());
    w.unref();
    w.on('message', (reply: WorkerReply) => this.#onReply(w, reply));
    w.on('error', (err) => {
      this.#worker = undefined;
      this.#failAll(new ImageError(`the image worker failed: ${err.message}`, { cause: err }));
    });
    w.on('exit', (code) => {
      if (this.#worker !== w) return;
      this.#worker = undefined;
      this.#failAll(new ImageError(`the image worker exited (code ${code})`));
    });
    this.#worker = w;
    return w;
  }

  #onReply(w: Worker, reply: WorkerReply | EncodeReply): void {
    const p = this.#pending.get(reply.id);
    if (p === undefined) return;
    if (reply.error !== undefined) {
      this.#done(w, reply.id);
      p.reject(rebuild(reply.error));
      return;
    }
    if (p.assembler === undefined) {
      const r = (reply as EncodeReply).packed!;
      this.#done(w, reply.id);
      const body = Buffer.from(r.body);
      p.resolve({ codec: r.codec, rawLength: r.rawLength, payload: body.subarray(IMAGE_HEADER_BYTES), body });
      return;
    }
    const sliced = reply as WorkerReply;
    try {
      p.assembler.add(sliced.slice!);
    } catch (err) {
      this.#done(w, reply.id);
      p.reject(err as Error);
      return;
    }
    if (sliced.last === true) {
      this.#done(w, reply.id);
      (p as Pending).resolve(p.assembler.tree);
      return;
    }
    // The next slice on a later turn of the event loop: timers and I/O run in between.
    setImmediate(() => {
      if (this.#pending.has(reply.id)) w.postMessage({ id: reply.id, op: 'more' });
    });
  }

  #done(w: Worker, id: number): void {
    this.#pending.delete(id);
    if (this.#pending.size === 0) w.unref();
  }

  #failAll(err: Error): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of all) p.reject(err);
  }
}

/** The worker's error as the main thread's `decodeKeyframeTree` would have thrown it. */
function rebuild(e: NonNullable<WorkerReply['error']> & { limit?: string; limitMessage?: string }): Error {
  if (!e.image) return new ImageError(`the image worker failed: ${e.message}`);
  if (e.limit === undefined) return new ImageError(e.message);
  const cause = new LimitError(e.limit, '');
  Object.defineProperty(cause, 'message', { value: e.limitMessage ?? e.message });
  return new ImageError(e.message, { cause });
}

/**
 * The image worker's thread (worker_threads entry; started by worker.ts).
 *
 * One job: turn a keyframe record's payload (transferred, not copied) into its typed tree:
 * decompress, `v8.deserialize`, `toTree`, exactly what `ImageChain.check` does on the main thread
 * for small images. The tree goes back in slices (tree-transfer.ts), one per request of the main
 * thread, so the main thread's event loop never stalls for more than one slice.
 *
 * Messages in: `{ id, op: 'keyframe', checkpoint, codec, rawLength, payload, maxDepth }`,
 * `{ id, op: 'more' }`. Out: `{ id, slice, last }` or `{ id, error }`.
 */
import { parentPort } from 'node:worker_threads';
import { decodeKeyframeTree, type KeyframeJob, type WorkerReply } from './keyframe-decode.js';
import { keyframeBody, ownBuffer, packTree, type EncodeJob, type EncodeReply } from './keyframe-serialize.js';
import { sliceTree, TreeAssembler, type TreeSlice } from './tree-transfer.js';

const port = parentPort;
if (port === null) throw new Error('image-worker.ts runs as a worker thread only');

/** A job in progress: its slices, and the next one (so a slice can say it is the last). */
interface Job {
  readonly it: Iterator<TreeSlice>;
  ahead: IteratorResult<TreeSlice>;
}
const jobs = new Map<number, Job>();

function next(id: number): void {
  const job = jobs.get(id);
  if (job === undefined) return;
  const cur = job.ahead;
  if (cur.done === true) {
    jobs.delete(id);
    return;
  }
  job.ahead = job.it.next();
  const last = job.ahead.done === true;
  if (last) jobs.delete(id);
  port!.postMessage({ id, slice: cur.value, last } satisfies WorkerReply);
}

/** Keyframes being encoded (keyframe-serialize.ts): their trees, as the slices come in. */
const encoding = new Map<number, TreeAssembler>();

function encodeSlice(msg: EncodeJob): void {
  let assembler = encoding.get(msg.id);
  if (assembler === undefined) {
    assembler = new TreeAssembler();
    encoding.set(msg.id, assembler);
  }
  try {
    assembler.add(msg.slice);
  } catch (err) {
    encoding.delete(msg.id);
    port!.postMessage({ id: msg.id, error: describe(err) } satisfies EncodeReply);
    return;
  }
  if (!msg.last) return;
  encoding.delete(msg.id);
  packTree(assembler.tree).then(
    (packed) => {
      const body = ownBuffer(keyframeBody(packed, msg.stateVersion ?? 1));
      port!.postMessage(
        {
          id: msg.id,
          packed: { codec: packed.codec, rawLength: packed.rawLength, body },
        } satisfies EncodeReply,
        [body],
      );
    },
    (err: unknown) => port!.postMessage({ id: msg.id, error: describe(err) } satisfies EncodeReply),
  );
}

port.on('message', (msg: KeyframeJob | EncodeJob | { id: number; op: 'more' }) => {
  if (msg.op === 'more') {
    next(msg.id);
    return;
  }
  if (msg.op === 'encode') {
    encodeSlice(msg);
    return;
  }
  let tree;
  try {
    tree = decodeKeyframeTree(
      msg.checkpoint,
      msg.codec,
      new Uint8Array(msg.payload),
      msg.rawLength,
      msg.maxDepth,
    );
  } catch (err) {
    port.postMessage({ id: msg.id, error: describe(err) } satisfies WorkerReply);
    return;
  }
  const it = sliceTree(tree, msg.sliceNodes);
  jobs.set(msg.id, { it, ahead: it.next() });
  next(msg.id);
});

function describe(err: unknown): WorkerReply['error'] {
  const e = err as { message?: unknown; cause?: { name?: unknown; limit?: unknown; message?: unknown } };
  const cause = e.cause;
  return {
    message: typeof e.message === 'string' ? e.message : String(err),
    limit: typeof cause?.limit === 'string' ? cause.limit : undefined,
    limitMessage: typeof cause?.message === 'string' ? cause.message : undefined,
    image:
      (err as { name?: unknown }).name === 'ImageError' || (err as { code?: unknown }).code === 'ERR_IMAGE',
  };
}

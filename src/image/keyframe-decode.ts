/**
 * A keyframe's payload to its typed tree: the check a standby runs on every whole image, on the
 * main thread (`ImageChain.check`, small images) or in the image worker (large ones). One
 * function for both, so both give the same tree and the same errors.
 */
import { ImageError, LimitError } from '../errors.js';
import type { ImageCodec } from '../protocol/records.js';
import { unpackImage } from './compression.js';
import { deserializeImage } from './serialize.js';
import type { TreeSlice } from './tree-transfer.js';
import { toTree, type TreeNode } from './typed-tree.js';

/**
 * Decompresses, deserializes and walks a keyframe's payload. Throws `ImageError` when it cannot
 * be used; one over `maxDepth` has a `LimitError` as its cause.
 */
export function decodeKeyframeTree(
  checkpoint: number,
  codec: ImageCodec,
  payload: Uint8Array,
  rawLength: number,
  maxDepth: number,
): TreeNode {
  const raw = unpackImage(codec, payload, rawLength);
  // node:v8 reads on the call stack: an image nested too deep fails there ("Maximum call
  // stack size exceeded", an ImageError) or, within what it reads, in the walk below.
  try {
    return toTree(deserializeImage(raw), maxDepth);
  } catch (err) {
    if (err instanceof LimitError) throw tooDeep(checkpoint, err);
    if (err instanceof ImageError && err.cause instanceof RangeError) {
      throw tooDeep(
        checkpoint,
        new LimitError('limits.maxDepth', `node:v8 could not read it: ${err.cause.message}`),
      );
    }
    throw err;
  }
}

/** The standby's refusal of an image nested deeper than its `limits.maxDepth`. */
export function tooDeep(checkpoint: number, err: LimitError): ImageError {
  return new ImageError(
    `image for checkpoint ${checkpoint} refused: ${err.message}; give every node the same limits`,
    { cause: err },
  );
}

/** A keyframe for the worker to decode. `payload` is transferred. */
export interface KeyframeJob {
  readonly id: number;
  readonly op: 'keyframe';
  readonly checkpoint: number;
  readonly codec: ImageCodec;
  readonly rawLength: number;
  readonly payload: ArrayBuffer;
  readonly maxDepth: number;
  readonly sliceNodes?: number;
}

/** What the worker answers: a slice of the tree, or why the keyframe cannot be used. */
export interface WorkerReply {
  readonly id: number;
  readonly slice?: TreeSlice;
  readonly last?: boolean;
  readonly error?: {
    readonly message: string;
    /** Set when the cause was a LimitError: its limit and message. */
    readonly limit?: string;
    readonly limitMessage?: string;
    /** The error was an ImageError (else: a bug or an out-of-memory in the worker). */
    readonly image: boolean;
  };
}

/**
 * The image worker's second job: a primary's keyframe, from its typed tree to its record's
 * payload. The main thread walks the live state into the typed tree a slice at a time
 * (keyframe-encode.ts) and sends the tree here in slices (tree-transfer.ts); the worker rebuilds
 * the tree, turns it into a value (`fromTree`), serializes it with node:v8 and compresses it,
 * and hands the bytes back transferred, not copied.
 *
 * ```text
 * main:   slice ── slice ── … ── last slice ──▶ worker: TreeAssembler → fromTree → v8 → brotli
 * main:   ◀── { codec, rawLength, payload (transferred) }
 * ```
 *
 * The bytes are what `serializeImage(state)` gives on the main thread, up to what a typed tree
 * does not keep (class prototypes; see typed-tree.ts): a standby decodes them to the same typed
 * tree (tested in test/unit/image-keyframe-flight.test.ts).
 */
import { encodeImage, ImageFormat, type ImageCodec } from '../protocol/records.js';
import { packImage, type PackedPayload } from './compression.js';
import { serializeImage } from './serialize.js';
import type { TreeSlice } from './tree-transfer.js';
import { fromTree, type TreeNode } from './typed-tree.js';

/** One slice of a keyframe's tree for the worker; the last one starts the serialization. */
export interface EncodeJob {
  readonly id: number;
  readonly op: 'encode';
  readonly slice: TreeSlice;
  readonly last: boolean;
  /** With the last slice: the image's `stateVersion`, for the record's header. */
  readonly stateVersion?: number;
}

/**
 * The worker's answer to the last slice: the whole image record body (`encodeImage`: header and
 * payload, so the main thread copies nothing; its buffer transferred), or why not.
 */
export interface EncodeReply {
  readonly id: number;
  readonly packed?: { readonly codec: ImageCodec; readonly rawLength: number; readonly body: ArrayBuffer };
  readonly error?: { readonly message: string; readonly image: boolean };
}

/** v8 bytes of the value `tree` describes, packed as an image payload is (compression.ts). */
export async function packTree(tree: TreeNode): Promise<PackedPayload> {
  const raw = serializeImage(fromTree(tree));
  return packImage(raw);
}

/** A keyframe's record body (`encodeImage`) of `packed`. */
export function keyframeBody(packed: PackedPayload, stateVersion: number): Buffer {
  return encodeImage({
    format: ImageFormat.Full,
    codec: packed.codec,
    base: 0,
    stateVersion,
    rawLength: packed.rawLength,
    payload: packed.payload,
  });
}

/** `bytes` in an ArrayBuffer of their own (to transfer it): the same memory when it already is. */
export function ownBuffer(bytes: Uint8Array): ArrayBuffer {
  if (
    bytes.byteOffset === 0 &&
    bytes.byteLength === bytes.buffer.byteLength &&
    bytes.buffer instanceof ArrayBuffer
  ) {
    return bytes.buffer;
  }
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return copy.buffer;
}

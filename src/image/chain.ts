/**
 * Image chains: keyframes (whole node:v8 images) and deltas between them.
 *
 * Primary (`ImageEncoder`): every checkpoint's state becomes either a keyframe or a delta
 * against the previous checkpoint's image. A keyframe is taken for the first checkpoint of an
 * epoch, every `keyframeEvery` checkpoints, and when the deltas since the last keyframe add up
 * to more than `maxChainShare` of its size (then a keyframe is cheaper to restore from).
 *
 * Standby (`ImageChain`): keeps the latest committed image materialized as a typed tree and
 * applies each delta as it commits, so a takeover turns one tree into a live value instead of
 * replaying a chain.
 */
import { ImageError } from '../errors.js';
import { ImageFormat, type ImageRecord } from '../protocol/records.js';
import { decodeDelta, diffTrees, encodeDelta, patchTreeInPlace, type ImageDelta } from './delta.js';
import { deserializeImage, serializeImage } from './serialize.js';
import { fromTree, toTree, type TreeNode } from './typed-tree.js';

/** Keyframe policy. */
export interface KeyframePolicy {
  /** A keyframe at least every this many checkpoints (>= 1; 1 = every image is whole). */
  readonly keyframeEvery: number;
  /** A keyframe when the deltas since the last one exceed this share of its size (> 0). */
  readonly maxChainShare: number;
}

/** Default keyframe policy. */
export const DEFAULT_KEYFRAME_POLICY: KeyframePolicy = { keyframeEvery: 32, maxChainShare: 0.5 };

/** An encoded image, ready to ship, and the step that makes it the new base once shipped. */
export interface EncodedImage {
  readonly record: ImageRecord;
  /** Whole image (true) or delta. */
  readonly keyframe: boolean;
  /**
   * Makes this image the base of the next delta. The replicator calls it as soon as the number is
   * taken: the frames then go out before any later checkpoint's, and a failed publish is re-sent.
   */
  advance(): void;
}

/** The primary's side of the chain. */
export class ImageEncoder {
  readonly #policy: KeyframePolicy;
  #prev: TreeNode | undefined;
  #prevCheckpoint = 0;
  #sinceKeyframe = 0;
  #keyframeBytes = 0;
  #chainBytes = 0;

  constructor(policy: KeyframePolicy = DEFAULT_KEYFRAME_POLICY) {
    this.#policy = policy;
  }

  /**
   * Encodes `state` as checkpoint `checkpoint`'s image. Throws `SerializationError` (naming the
   * path) when the state holds something node:v8 cannot serialize; nothing changes then.
   */
  encode(state: unknown, checkpoint: number): EncodedImage {
    const tree = toTree(state);
    const wantKeyframe =
      this.#prev === undefined ||
      this.#prevCheckpoint !== checkpoint - 1 ||
      this.#sinceKeyframe + 1 >= this.#policy.keyframeEvery;
    if (!wantKeyframe) {
      const delta: ImageDelta | undefined = diffTrees(this.#prev!, tree);
      // An empty payload means "unchanged": the cheapest delta of all.
      const payload = delta === undefined ? Buffer.alloc(0) : encodeDelta(delta);
      if (this.#chainBytes + payload.byteLength <= this.#keyframeBytes * this.#policy.maxChainShare) {
        return {
          record: { format: ImageFormat.Delta, base: checkpoint - 1, payload },
          keyframe: false,
          advance: () => {
            this.#prev = tree;
            this.#prevCheckpoint = checkpoint;
            this.#sinceKeyframe++;
            this.#chainBytes += payload.byteLength;
          },
        };
      }
    }
    const payload = serializeImage(state);
    return {
      record: { format: ImageFormat.Full, base: 0, payload },
      keyframe: true,
      advance: () => {
        this.#prev = tree;
        this.#prevCheckpoint = checkpoint;
        this.#sinceKeyframe = 0;
        this.#keyframeBytes = payload.byteLength;
        this.#chainBytes = 0;
      },
    };
  }

  /** Forgets the base: the next image is a keyframe (after a takeover). */
  reset(): void {
    this.#prev = undefined;
    this.#prevCheckpoint = 0;
  }
}

/** The standby's side: the latest committed image, materialized. */
export class ImageChain {
  #tree: TreeNode | undefined;
  #checkpoint = 0;
  #checked: { checkpoint: number; full?: unknown; delta?: ImageDelta | null } | undefined;

  /** Checkpoint of the materialized image (0 = none). */
  get checkpoint(): number {
    return this.#checkpoint;
  }

  /** Validates `rec` as checkpoint `checkpoint`'s image; throws `ImageError` if it cannot apply. */
  check(checkpoint: number, rec: ImageRecord): void {
    if (rec.format === ImageFormat.Full) {
      this.#checked = { checkpoint, full: deserializeImage(rec.payload) };
      return;
    }
    if (this.#tree === undefined || rec.base !== this.#checkpoint) {
      throw new ImageError(
        `delta for checkpoint ${checkpoint} applies to image ${rec.base}, but this standby holds image ${this.#checkpoint || 'none'}`,
      );
    }
    this.#checked = { checkpoint, delta: rec.payload.byteLength === 0 ? null : decodeDelta(rec.payload) };
  }

  /** Advances to `checkpoint`'s image, which `check` accepted. */
  apply(checkpoint: number, _rec: ImageRecord): void {
    const c = this.#checked;
    if (!c || c.checkpoint !== checkpoint)
      throw new ImageError(`image ${checkpoint} was not checked before apply`);
    this.#checked = undefined;
    if ('full' in c) this.#tree = toTree(c.full);
    else if (c.delta) this.#tree = patchTreeInPlace(this.#tree!, c.delta);
    this.#checkpoint = checkpoint;
  }

  /** A live copy of the materialized image, or `undefined` when no checkpoint was committed. */
  materialize(): unknown {
    return this.#tree === undefined ? undefined : fromTree(this.#tree);
  }
}

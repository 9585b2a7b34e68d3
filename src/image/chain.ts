/**
 * Image chains: keyframes (whole node:v8 images) and deltas between them.
 *
 * Primary (`ImageEncoder`): every checkpoint's state becomes either a keyframe or a delta
 * against the previous checkpoint's image. A keyframe is taken for the first checkpoint of an
 * epoch (the encoder has no base yet), every `keyframeEvery` checkpoints, and when the deltas
 * since the last keyframe add up to more than `maxChainShare` of its size (raw bytes, before
 * compression): past that point a keyframe is cheaper to ship and to restore from.
 *
 * A delta is found on one of three paths, all exact (the standby's tree equals `toTree(state)`):
 *
 * | path       | when                                   | cost                                      |
 * | ---------- | -------------------------------------- | ----------------------------------------- |
 * | `tracked`  | `state` is a proxy made by `track()`    | O(changed entries)                        |
 * | `identity` | `immutable: true`, state updated by copy | O(changed objects + new containers' entries) |
 * | `diff`     | otherwise, or while the state shares objects | `toTree` + jsondiffpatch of the whole state |
 *
 * Every payload is then compressed when it pays (compression.ts).
 *
 * Standby (`ImageChain`): keeps the latest committed image materialized as a typed tree and
 * applies each delta as it commits, so a takeover turns one tree into a live value instead of
 * replaying a chain.
 */
import { ImageError, LimitError, SerializationError } from '../errors.js';
import { DEFAULT_LIMITS } from '../limits.js';
import { ImageCodec, ImageFormat, type ImageRecord } from '../protocol/records.js';
import { packImage, unpackImage, type PackedPayload } from './compression.js';
import { decodeDelta, diffTrees, encodeDelta, patchTreeInPlace, type ImageDelta } from './delta.js';
import { Registry } from './graph.js';
import { identityDelta } from './identity.js';
import { decodeKeyframeTree, tooDeep } from './keyframe-decode.js';
import {
  DEFAULT_SLICE_MS,
  KeyframeFlight,
  startKeyframe,
  type Walked as FlightWalk,
} from './keyframe-encode.js';
import { serializeImage } from './serialize.js';
import { trackerOf, untracked, type StateTracker } from './tracked.js';
import {
  findUnserializable,
  fromTree,
  fromTreeIndexed,
  toTree,
  toTreeIndexed,
  type TreeNode,
} from './typed-tree.js';
import { ImageWorker } from './worker.js';

/** Keyframe policy. */
export interface KeyframePolicy {
  /** A keyframe at least every this many checkpoints (>= 1; 1 = every image is whole). */
  readonly keyframeEvery: number;
  /** A keyframe when the deltas since the last one exceed this share of its size (> 0). */
  readonly maxChainShare: number;
}

/** Default keyframe policy. */
export const DEFAULT_KEYFRAME_POLICY: KeyframePolicy = { keyframeEvery: 32, maxChainShare: 0.5 };

/** Options of an image encoder. */
export interface ImageEncoderOptions extends Partial<KeyframePolicy> {
  /** Carried in every image (>= 1). Default 1. */
  readonly stateVersion?: number;
  /**
   * The app never changes an object after passing it to a checkpoint (it copies instead):
   * unchanged references are skipped in O(1). Default false.
   */
  readonly immutable?: boolean;
  /** Compress payloads when it pays. Default true. */
  readonly compress?: boolean;
  /**
   * The most containers nested in one another (`limits.maxDepth`); a deeper state is refused
   * with `LimitError` on every path. Default `DEFAULT_LIMITS.maxDepth`.
   */
  readonly maxDepth?: number;
  /**
   * Keyframes of a tracked state that cannot be walked within one slice are walked a slice at a
   * time and serialized in the image worker (keyframe-encode.ts). Default true.
   */
  readonly offThread?: boolean;
  /** The longest the event loop is held by one slice of such a keyframe (ms). Default 8. */
  readonly sliceMs?: number;
  /**
   * A keyframe goes off the event loop only once its walk has visited this many children
   * without finishing (smaller states are serialized on the spot). Default 65 536 (about 1 MB
   * of records).
   */
  readonly minOffThreadChildren?: number;
  /** Tree nodes per slice sent to the worker (tests). */
  readonly sliceNodes?: number;
  /**
   * `limits.maxImageBytes` and `limits.maxFrameBytes`: an off-thread keyframe's size is known
   * only once the worker is done; one over them makes its record reject with `LimitError`.
   */
  readonly maxImageBytes?: number;
  readonly maxFrameBytes?: number;
}

/** A keyframe whose previous keyframe was this large (raw bytes) is serialized off the event loop even when its tree is at hand. */
const OFF_THREAD_KEYFRAME_BYTES = 1024 * 1024;

/** Bytes of an image record's header (records.ts): counted against `maxFrameBytes`. */
const IMAGE_RECORD_HEADER_BYTES = 14;

/** How an image was found. */
export type ImagePath = 'keyframe' | 'tracked' | 'identity' | 'diff';

/** An encoded image, ready to ship. */
export interface EncodedImage {
  /**
   * The record. Small payloads are ready at once; a large one (a keyframe, usually) is compressed
   * on the threadpool and comes as a promise that never rejects.
   */
  readonly record: ImageRecord | Promise<ImageRecord>;
  /** Whole image (true) or delta. */
  readonly keyframe: boolean;
  /**
   * An off-thread keyframe (keyframe-encode.ts): its `rawBytes` are 0 until `record` resolves,
   * and `record` rejects (`SerializationError`, `LimitError`, `ImageError`) when the state turned
   * out not to be serializable, too large, or the worker failed.
   */
  readonly offThread?: boolean;
  /**
   * An off-thread keyframe's whole image record body (`encodeImage` of `record`), made in the
   * worker so that the main thread does not copy tens of MB; settles with `record`.
   */
  readonly body?: Promise<Uint8Array>;
  /** How the image was found. */
  readonly path: ImagePath;
  /** Payload bytes before compression. */
  readonly rawBytes: number;
}

/** What the next delta is computed against: the previous image's typed tree, and how to reach the next one. */
type Base =
  | { readonly kind: 'diff'; readonly tree: TreeNode }
  | {
      readonly kind: 'identity';
      readonly tree: TreeNode;
      readonly live: unknown;
      readonly registry: Registry;
    }
  | {
      readonly kind: 'tracked';
      readonly tree: TreeNode;
      readonly tracker: StateTracker;
      readonly generation: number;
    };

/** Result of a full walk of the state. */
interface Walked {
  readonly tree: TreeNode;
  readonly shared: boolean;
  readonly objects: ReadonlyMap<object, TreeNode>;
}

/**
 * The primary's side of the chain. `encode` commits: once it returns, the encoded image is the
 * base of the next delta (the replicator ships every image it encodes, re-sending until acked).
 */
export class ImageEncoder {
  readonly #policy: KeyframePolicy;
  readonly #stateVersion: number;
  readonly #immutable: boolean;
  readonly #compress: boolean;
  readonly #maxDepth: number;
  #base: Base | undefined;
  #prevCheckpoint = 0;
  #sinceKeyframe = 0;
  #keyframeBytes = 0;
  #chainBytes = 0;
  /** After `resume`: the epoch of the resumed image, named by the first delta (format 3). */
  #baseEpoch: number | undefined;
  /** After `resume`, until the first checkpoint: the resumed live state and its objects. */
  #resumed:
    { readonly live: unknown; readonly objects: ReadonlyMap<object, TreeNode> | undefined } | undefined;
  readonly #offThread: boolean;
  readonly #sliceMs: number;
  readonly #minChildren: number | undefined;
  readonly #sliceNodes: number | undefined;
  readonly #maxImageBytes: number;
  readonly #maxFrameBytes: number;
  /** A keyframe in flight (walked or sent a slice at a time), until the next encode lands it. */
  #flight: KeyframeFlight | undefined;
  #worker: ImageWorker | undefined;
  /** The last record still pending: later records resolve after it, so frames go out in order. */
  #tail: Promise<ImageRecord> | undefined;
  /** Counts keyframes, so an off-thread keyframe's size lands only if it is still the last one. */
  #keyframes = 0;

  constructor(options: ImageEncoderOptions = {}) {
    this.#policy = {
      keyframeEvery: options.keyframeEvery ?? DEFAULT_KEYFRAME_POLICY.keyframeEvery,
      maxChainShare: options.maxChainShare ?? DEFAULT_KEYFRAME_POLICY.maxChainShare,
    };
    this.#stateVersion = options.stateVersion ?? 1;
    this.#immutable = options.immutable ?? false;
    this.#compress = options.compress ?? true;
    this.#maxDepth = options.maxDepth ?? DEFAULT_LIMITS.maxDepth;
    this.#offThread = options.offThread ?? true;
    this.#sliceMs = options.sliceMs ?? DEFAULT_SLICE_MS;
    this.#minChildren = options.minOffThreadChildren;
    this.#sliceNodes = options.sliceNodes;
    this.#maxImageBytes = options.maxImageBytes ?? DEFAULT_LIMITS.maxImageBytes;
    this.#maxFrameBytes = options.maxFrameBytes ?? DEFAULT_LIMITS.maxFrameBytes;
  }

  /** The keyframe in flight, if any (tests and the bench). */
  get flight(): KeyframeFlight | undefined {
    return this.#flight;
  }

  /** Ends the image worker, if one was started (a keyframe in flight is landed first). */
  async close(): Promise<void> {
    this.#land();
    const packed = this.#tail;
    if (packed !== undefined) await packed.then(undefined, () => undefined);
    await this.#worker?.close();
    this.#worker = undefined;
  }

  /**
   * Finishes a keyframe in flight synchronously: its walk (the next image is taken from its
   * tree) and the sending of its tree (which a delta is about to patch). The cost of a
   * checkpoint called before the previous keyframe's flight was over.
   */
  #land(): void {
    const flight = this.#flight;
    if (flight === undefined) return;
    this.#flight = undefined;
    flight.flush();
  }

  /** Later records resolve after the ones before them: image frames are published in checkpoint order. */
  #ordered(image: EncodedImage): EncodedImage {
    const tail = this.#tail;
    let record = image.record;
    if (tail !== undefined) {
      const own = record;
      record = tail.then(
        () => own,
        () => own,
      );
    }
    if (record instanceof Promise) {
      const mine = record;
      this.#tail = mine;
      const clear = (): void => {
        if (this.#tail === mine) this.#tail = undefined;
      };
      mine.then(clear, clear);
    }
    if (record === image.record) return image;
    let body = image.body;
    if (body !== undefined) {
      const own = body;
      body = (record as Promise<ImageRecord>).then(() => own);
      body.catch(() => undefined);
    }
    return {
      record,
      keyframe: image.keyframe,
      path: image.path,
      offThread: image.offThread,
      ...(body === undefined ? {} : { body }),
      get rawBytes() {
        return image.rawBytes;
      },
    };
  }

  /**
   * Encodes `state` as checkpoint `checkpoint`'s image. `state` may be a proxy made by `track()`.
   *
   * Throws `SerializationError` (naming the path from the root) when the state holds something
   * node:v8 cannot serialize. Nothing was encoded then, and the next image is a keyframe.
   */
  encode(state: unknown, checkpoint: number): EncodedImage {
    this.#land();
    const tracker = trackerOf(state);
    const raw = tracker?.target ?? untracked(state);
    try {
      return this.#ordered(this.#encode(raw, tracker, checkpoint));
    } catch (err) {
      this.#base = undefined;
      this.#baseEpoch = undefined;
      tracker?.invalidate();
      // Incremental paths encode subtrees; a whole walk names the path from the root.
      if (err instanceof SerializationError) throw findUnserializable(raw) ?? err;
      throw err;
    }
  }

  #encode(raw: unknown, tracker: StateTracker | undefined, checkpoint: number): EncodedImage {
    const base = this.#base;
    let keyframe = base === undefined || this.#prevCheckpoint !== checkpoint - 1;
    keyframe ||= this.#sinceKeyframe + 1 >= this.#policy.keyframeEvery;
    let delta: ImageDelta | undefined;
    let path: ImagePath = 'keyframe';
    // Whether the base already is the tree of `raw` (a delta was found).
    let current = false;
    if (!keyframe) {
      const found = this.#delta(raw, tracker, base!);
      delta = found.delta;
      path = found.path;
      keyframe = found.keyframe;
      current = !found.keyframe;
    }
    this.#prevCheckpoint = checkpoint;
    const baseEpoch = this.#baseEpoch;
    this.#baseEpoch = undefined;
    this.#resumed = undefined;
    if (!keyframe) {
      // An empty payload means "unchanged": the cheapest delta of all.
      const payload = delta === undefined ? Buffer.alloc(0) : encodeDelta(delta);
      if (this.#chainBytes + payload.byteLength <= this.#keyframeBytes * this.#policy.maxChainShare) {
        this.#sinceKeyframe++;
        this.#chainBytes += payload.byteLength;
        // The first delta of an epoch names its base's epoch: a standby holding another image
        // of that checkpoint (from a deposed history) refuses it instead of patching it.
        return baseEpoch === undefined
          ? this.#result(ImageFormat.Delta, checkpoint - 1, payload, path)
          : this.#result(ImageFormat.DeltaAcross, checkpoint - 1, payload, path, baseEpoch);
      }
    }
    this.#keyframes++;
    let walked: Walked | undefined;
    if (current) {
      // The delta's tree is the state now: only serialize it, off the event loop when large.
      if (this.#offThread && this.#keyframeBytes >= OFF_THREAD_KEYFRAME_BYTES) {
        const flight = KeyframeFlight.ofTree(this.#base!.tree, this.#flightOptions());
        return this.#flew(flight, checkpoint);
      }
    } else if (tracker !== undefined && this.#offThread) {
      // Walked a slice at a time; a state done within the first slice is small: on the spot.
      const started = startKeyframe(raw, {
        ...this.#flightOptions(),
        minChildren: this.#minChildren,
        onFlight: (cow) => tracker.beginFlight(cow),
        onWalked: (w) => this.#walked(w, tracker),
      });
      if ('flight' in started) return this.#flew(started.flight, checkpoint);
      walked = started.walked;
    } else {
      // The walk first: it refuses a state nested deeper than maxDepth before node:v8 overflows
      // the call stack on it.
      walked = toTreeIndexed(raw, this.#maxDepth);
    }
    const payload = serializeImage(raw);
    if (walked !== undefined) this.#adopt(walked, raw, tracker);
    this.#sinceKeyframe = 0;
    this.#keyframeBytes = payload.byteLength;
    this.#chainBytes = 0;
    return this.#result(ImageFormat.Full, 0, payload, 'keyframe');
  }

  #flightOptions(): {
    maxDepth: number;
    sliceMs: number;
    sliceNodes?: number;
    stateVersion: number;
    worker: () => ImageWorker;
  } {
    return {
      maxDepth: this.#maxDepth,
      stateVersion: this.#stateVersion,
      sliceMs: this.#sliceMs,
      sliceNodes: this.#sliceNodes,
      worker: () => (this.#worker ??= new ImageWorker({ sliceNodes: this.#sliceNodes })),
    };
  }

  /** An off-thread keyframe's walk is done: its tree is the base (on the main thread, between slices). */
  #walked(w: FlightWalk | Error, tracker: StateTracker): void {
    if (w instanceof Error) {
      this.#base = undefined;
      this.#baseEpoch = undefined;
      tracker.endFlight(undefined, new Map());
      return;
    }
    tracker.endFlight({ shared: w.shared, objects: w.objects }, w.indexes);
    this.#base = { kind: 'tracked', tree: w.tree, tracker, generation: tracker.generation };
  }

  /** The image of a keyframe in flight: its record once the worker is done. */
  #flew(flight: KeyframeFlight, checkpoint: number): EncodedImage {
    this.#flight = flight;
    this.#sinceKeyframe = 0;
    this.#chainBytes = 0;
    // Unknown until the worker is done: deltas meanwhile are not held to maxChainShare.
    this.#keyframeBytes = Infinity;
    const keyframe = this.#keyframes;
    let rawBytes = 0;
    let body: Uint8Array | undefined;
    const record = flight.packed.then((p): ImageRecord => {
      const over =
        p.rawLength > this.#maxImageBytes
          ? ['maxImageBytes', p.rawLength, this.#maxImageBytes]
          : p.rawLength + IMAGE_RECORD_HEADER_BYTES > this.#maxFrameBytes
            ? ['maxFrameBytes', p.rawLength + IMAGE_RECORD_HEADER_BYTES, this.#maxFrameBytes]
            : undefined;
      if (over !== undefined) {
        if (this.#keyframes === keyframe) this.#base = undefined;
        throw new LimitError(
          `limits.${over[0]}`,
          `the image of checkpoint ${checkpoint} is ${over[1]} bytes, over limits.${over[0]} (${over[2]}): raise it in the start options, or keep less in the state`,
        );
      }
      if (this.#keyframes === keyframe) this.#keyframeBytes = p.rawLength;
      rawBytes = p.rawLength;
      body = p.body;
      return {
        format: ImageFormat.Full,
        codec: p.codec,
        base: 0,
        stateVersion: this.#stateVersion,
        rawLength: p.rawLength,
        payload: p.payload,
      };
    });
    const whole = record.then(() => body!);
    // Settles with `record`, which the caller handles; keep Node from reporting it twice.
    whole.catch(() => undefined);
    return {
      record,
      body: whole,
      keyframe: true,
      path: 'keyframe',
      offThread: true,
      get rawBytes() {
        return rawBytes;
      },
    };
  }

  /**
   * The delta from the base to `raw`, with the base moved to `raw`. `keyframe: true` when the
   * incremental walk found the state shared: its tree is then unusable and `#base` is cleared.
   */
  #delta(
    raw: unknown,
    tracker: StateTracker | undefined,
    base: Base,
  ): { delta: ImageDelta | undefined; path: ImagePath; keyframe: boolean } {
    if (
      tracker !== undefined &&
      base.kind === 'tracked' &&
      base.tracker === tracker &&
      base.generation === tracker.generation &&
      tracker.walkable
    ) {
      const { tree, delta } = tracker.walk(base.tree, this.#maxDepth);
      this.#base = { kind: 'tracked', tree, tracker, generation: tracker.generation };
      return { delta, path: 'tracked', keyframe: false };
    }
    if (tracker === undefined && this.#immutable && base.kind === 'identity') {
      const { tree, delta } = identityDelta(base.live, raw, base.tree, base.registry, this.#maxDepth);
      if (base.registry.shared()) {
        this.#base = undefined;
        return { delta: undefined, path: 'keyframe', keyframe: true };
      }
      this.#base = { kind: 'identity', tree, live: raw, registry: base.registry };
      return { delta: delta as ImageDelta | undefined, path: 'identity', keyframe: false };
    }
    const walked = tracker !== undefined || this.#immutable ? toTreeIndexed(raw, this.#maxDepth) : undefined;
    const tree = walked?.tree ?? toTree(raw, this.#maxDepth);
    const delta = diffTrees(base.tree, tree);
    if (walked !== undefined) this.#adopt(walked, raw, tracker);
    else this.#base = { kind: 'diff', tree };
    return { delta, path: 'diff', keyframe: false };
  }

  /** Makes a whole walk of `raw` the base. */
  #adopt(walked: Walked, raw: unknown, tracker: StateTracker | undefined): void {
    if (tracker !== undefined) {
      tracker.rebuild(walked.shared ? undefined : walked.objects);
      this.#base = { kind: 'tracked', tree: walked.tree, tracker, generation: tracker.generation };
    } else if (this.#immutable && !walked.shared) {
      this.#base = {
        kind: 'identity',
        tree: walked.tree,
        live: raw,
        registry: Registry.ofTree(walked.objects),
      };
    } else {
      this.#base = { kind: 'diff', tree: walked.tree };
    }
  }

  #result(
    format: ImageFormat,
    base: number,
    payload: Buffer,
    path: ImagePath,
    baseEpoch?: number,
  ): EncodedImage {
    const make = (p: PackedPayload): ImageRecord => ({
      format,
      codec: p.codec,
      base,
      ...(baseEpoch === undefined ? {} : { baseEpoch }),
      stateVersion: this.#stateVersion,
      rawLength: p.rawLength,
      payload: p.payload,
    });
    const packed: PackedPayload | Promise<PackedPayload> = this.#compress
      ? packImage(payload)
      : { codec: ImageCodec.None, rawLength: payload.byteLength, payload };
    return {
      record: packed instanceof Promise ? packed.then(make) : make(packed),
      keyframe: format === ImageFormat.Full,
      path,
      rawBytes: payload.byteLength,
    };
  }

  /** Forgets the base: the next image is a keyframe. */
  reset(): void {
    this.#land();
    this.#base = undefined;
    this.#prevCheckpoint = 0;
    this.#baseEpoch = undefined;
    this.#resumed = undefined;
  }

  /**
   * After a takeover: makes the resumed image the base, so that the first checkpoint of the new
   * epoch (`checkpoint + 1`) is a delta against it (format 3, naming `epoch`), not a keyframe.
   * `tree` is the standby's materialized tree (the encoder owns it from now on and patches it);
   * `live` the state restored from it, `objects` its objects as `fromTreeIndexed` found them
   * (undefined when the state shares objects). The keyframe policy counts from here: the chain
   * the standbys hold has an unknown length, so the next keyframe comes by `maxChainShare` of
   * `keyframeBytes` (the raw size of the resumed image) or by `keyframeEvery`.
   */
  resume(r: {
    readonly tree: TreeNode;
    readonly checkpoint: number;
    readonly epoch: number;
    readonly live: unknown;
    readonly objects: ReadonlyMap<object, TreeNode> | undefined;
    readonly keyframeBytes: number;
  }): void {
    this.#prevCheckpoint = r.checkpoint;
    this.#baseEpoch = r.epoch;
    this.#sinceKeyframe = 0;
    this.#keyframeBytes = r.keyframeBytes;
    this.#chainBytes = 0;
    this.#resumed = { live: r.live, objects: r.objects };
    if (this.#immutable && r.objects !== undefined) {
      this.#base = { kind: 'identity', tree: r.tree, live: r.live, registry: Registry.ofTree(r.objects) };
    } else {
      this.#base = { kind: 'diff', tree: r.tree };
    }
  }

  /** Whether the next image is a delta against a resumed image (`resume` was called). */
  get resumed(): boolean {
    return this.#baseEpoch !== undefined;
  }

  /**
   * `rp.track(state)` of the resumed state, before anything changed through the proxy: the
   * tracker adopts the objects the restore found, so the first checkpoint walks only what
   * changes (no whole-state diff). Returns whether it was adopted; undefined when nothing was
   * resumed or it was adopted already.
   */
  adoptTracker(tracker: StateTracker): boolean | undefined {
    const r = this.#resumed;
    const base = this.#base;
    // Nothing resumed (a fresh app), or adopted already.
    if (r === undefined || base === undefined) return undefined;
    if (tracker.target !== r.live || r.objects === undefined) return false;
    tracker.rebuild(r.objects);
    this.#base = { kind: 'tracked', tree: base.tree, tracker, generation: tracker.generation };
    this.#resumed = undefined;
    return true;
  }
}

/** The standby's side: the latest committed image, materialized. */
export class ImageChain {
  /** The largest raw image `check` accepts; see the constructor. Settable before the first `check`. */
  maxImageBytes: number;
  /** The deepest image `check` accepts (`limits.maxDepth`). Settable before the first `check`. */
  maxDepth: number;
  #tree: TreeNode | undefined;
  #checkpoint = 0;
  #stateVersion = 0;
  #epoch = 0;
  #rawBytes = 0;
  #checked:
    | {
        checkpoint: number;
        stateVersion: number;
        full?: TreeNode;
        delta?: ImageDelta | null;
        rawBytes?: number;
      }
    | undefined;

  /**
   * `maxImageBytes`: the largest raw image accepted (`limits.maxImageBytes`, default 256 MiB); a
   * record announcing more is refused before anything is decompressed, so a small compressed
   * payload cannot make the standby allocate gigabytes.
   */
  constructor(
    opts: {
      readonly maxImageBytes?: number;
      readonly maxDepth?: number;
      /**
       * Decode keyframes of at least this many raw bytes in a worker thread (worker.ts), so the
       * event loop keeps running. Default: never (every check on the calling thread).
       */
      readonly offThreadBytes?: number;
      /** Tree nodes per slice coming back from the worker (tests). */
      readonly sliceNodes?: number;
    } = {},
  ) {
    this.maxImageBytes = opts.maxImageBytes ?? 256 * 1024 * 1024;
    this.maxDepth = opts.maxDepth ?? DEFAULT_LIMITS.maxDepth;
    this.offThreadBytes = opts.offThreadBytes ?? Infinity;
    if (this.offThreadBytes !== Infinity) this.#worker = new ImageWorker({ sliceNodes: opts.sliceNodes });
  }

  /** Keyframes of at least this many raw bytes are decoded in the worker (if there is one). */
  readonly offThreadBytes: number;
  readonly #worker: ImageWorker | undefined;

  /** Ends the image worker, if one was started. */
  async close(): Promise<void> {
    await this.#worker?.close();
  }

  /** Checkpoint of the materialized image (0 = none). */
  get checkpoint(): number {
    return this.#checkpoint;
  }

  /** The `stateVersion` the materialized image was taken with (0 = no image). */
  get stateVersion(): number {
    return this.#stateVersion;
  }

  /**
   * Validates `rec` as checkpoint `checkpoint`'s image: decompresses it, decodes it, and checks
   * that a delta applies to the image held. Throws `ImageError` if it cannot apply; the image
   * held is untouched either way.
   */
  check(checkpoint: number, rec: ImageRecord, epoch?: number): void {
    void this.#check(checkpoint, rec, epoch, false);
  }

  /**
   * `check`, except that a keyframe of `offThreadBytes` or more is decoded in the image worker
   * (with the same result and the same errors) while the event loop keeps running.
   */
  async checkAsync(checkpoint: number, rec: ImageRecord, epoch?: number): Promise<void> {
    const pending = this.#check(checkpoint, rec, epoch, true);
    if (pending !== undefined) await pending;
  }

  #check(
    checkpoint: number,
    rec: ImageRecord,
    epoch: number | undefined,
    async: boolean,
  ): Promise<void> | undefined {
    if (rec.format === ImageFormat.Delta || rec.format === ImageFormat.DeltaAcross) {
      if (this.#tree === undefined || rec.base !== this.#checkpoint) {
        throw new ImageError(
          `delta for checkpoint ${checkpoint} applies to image ${rec.base}, but this standby holds image ${this.#checkpoint || 'none'}`,
        );
      }
      // Which history the base belongs to: a format-3 delta names its base's epoch; a format-2
      // delta applies to an image of its own epoch. (Unknown when the caller gives no epoch.)
      const baseEpoch = rec.format === ImageFormat.DeltaAcross ? rec.baseEpoch : epoch;
      if (baseEpoch !== undefined && this.#epoch !== 0 && baseEpoch !== this.#epoch) {
        throw new ImageError(
          `delta for checkpoint ${checkpoint} applies to image ${rec.base} of epoch ${baseEpoch}, but this standby holds image ${this.#checkpoint} of epoch ${this.#epoch}`,
        );
      }
      if (rec.stateVersion !== this.#stateVersion) {
        throw new ImageError(
          `delta for checkpoint ${checkpoint} carries stateVersion ${rec.stateVersion}, but its base image has ${this.#stateVersion}: a new stateVersion must start with a keyframe`,
        );
      }
    }
    if (rec.rawLength > this.maxImageBytes) {
      throw new ImageError(
        `image for checkpoint ${checkpoint} announces ${rec.rawLength} bytes, over the limit of ${this.maxImageBytes} (limit 'limits.maxImageBytes'; raise it in the start options)`,
      );
    }
    if (rec.format === ImageFormat.Full) {
      if (async && this.#worker !== undefined && rec.rawLength >= this.offThreadBytes) {
        // Large: decoded in the worker, the tree comes back in slices (worker.ts).
        this.#checked = undefined;
        return this.#worker.decodeKeyframe(checkpoint, rec, this.maxDepth).then((tree) => {
          this.#checked = { checkpoint, stateVersion: rec.stateVersion, full: tree, rawBytes: rec.rawLength };
        });
      }
      const tree = decodeKeyframeTree(checkpoint, rec.codec, rec.payload, rec.rawLength, this.maxDepth);
      this.#checked = { checkpoint, stateVersion: rec.stateVersion, full: tree, rawBytes: rec.rawLength };
      return undefined;
    }
    const raw = unpackImage(rec.codec, rec.payload, rec.rawLength);
    const delta = raw.byteLength === 0 ? null : decodeDelta(raw);
    // A delta is nested about as deep as the tree it changes (up to three levels per Map level,
    // plus its own markers); one deeper than that would make a state this node refuses.
    const depth = delta === null ? 0 : jsonDepth(delta, 3 * this.maxDepth + 8);
    if (depth > 3 * this.maxDepth + 8) {
      throw tooDeep(
        checkpoint,
        new LimitError(
          'limits.maxDepth',
          `its delta is nested more than ${3 * this.maxDepth + 8} JSON levels deep, deeper than a state within the limit of ${this.maxDepth} levels makes`,
        ),
      );
    }
    this.#checked = { checkpoint, stateVersion: rec.stateVersion, delta };
    return undefined;
  }

  /** Advances to `checkpoint`'s image, which `check` accepted. */
  apply(checkpoint: number, _rec: ImageRecord, epoch?: number): void {
    const c = this.#checked;
    if (!c || c.checkpoint !== checkpoint)
      throw new ImageError(`image ${checkpoint} was not checked before apply`);
    this.#checked = undefined;
    if (c.full !== undefined) this.#tree = c.full;
    else if (c.delta) this.#tree = patchTreeInPlace(this.#tree!, c.delta);
    this.#checkpoint = checkpoint;
    this.#stateVersion = c.stateVersion;
    this.#epoch = epoch ?? 0;
    this.#rawBytes = c.rawBytes ?? this.#rawBytes;
  }

  /** Epoch of the frame that carried the materialized image's checkpoint (0 = unknown or none). */
  get epoch(): number {
    return this.#epoch;
  }

  /** Raw bytes of the last keyframe applied (the size of the image, about). */
  get keyframeBytes(): number {
    return this.#rawBytes;
  }

  /**
   * A live copy of the materialized image with its objects, for a new primary: the tree then
   * belongs to the caller (its encoder patches it), so this chain must not apply anything more.
   */
  takeOver():
    { live: unknown; tree: TreeNode; objects: ReadonlyMap<object, TreeNode> | undefined } | undefined {
    if (this.#tree === undefined) return undefined;
    const { value, objects } = fromTreeIndexed(this.#tree);
    return { live: value, tree: this.#tree, objects };
  }

  /** A live copy of the materialized image, or `undefined` when no checkpoint was committed. */
  materialize(): unknown {
    return this.#tree === undefined ? undefined : fromTree(this.#tree);
  }

  /** The materialized typed tree (for tests and tools; do not change it). */
  get tree(): TreeNode | undefined {
    return this.#tree;
  }
}

/** How deep JSON `value` nests (a scalar is 0), counting no further than `stop` + 1. Iterative. */
export function jsonDepth(value: unknown, stop = Infinity): number {
  let max = 0;
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    const depth = d + 1;
    if (depth > max) {
      max = depth;
      if (max > stop) return max;
    }
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (typeof child === 'object' && child !== null) stack.push([child, depth]);
    }
  }
  return max;
}

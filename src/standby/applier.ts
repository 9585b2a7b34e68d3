/**
 * The standby's applier: turns the ordered stream of parts into committed checkpoints.
 *
 * For each message, in stream order:
 * 1. decode and verify the part (checksum, version, app); reject and count what fails;
 * 2. join the parts of multi-part frames;
 * 3. drop frames of an epoch older than the newest fence (a deposed primary's late frames);
 * 4. a fence of a newer epoch discards everything staged and unsealed (the rollback);
 * 5. stage writes and images under their checkpoint; a seal marks its checkpoint complete once
 *    every frame it names is staged;
 * 6. commit checkpoints strictly in order: the store gets all of a checkpoint's writes and its
 *    meta in one atomic `commit`, then the image chain advances to the checkpoint's image.
 *
 * Mode `delay-write` (seed claims 17–19): writes are staged in memory and the store only ever
 * holds sealed checkpoints, so a rollback is just dropping the staged, unsealed frames.
 *
 * Mode `snapshot` (seed claims 20–23): frames are taken strictly in (epoch, seq) order (a frame
 * that arrives early waits for the ones before it); each write frame goes at once into the
 * store's version area of its checkpoint; the seal forms the snapshot once every frame before
 * it is stored and the previous snapshot is formed (claim 22); a fence releases the areas
 * written after the last snapshot (claim 23).
 */
import { FrameError, FrameRejectReason, ImageError, RestartpointError } from '../errors.js';
import { FrameKind, PartAssembler, decodePart, type Frame } from '../protocol/frame.js';
import {
  decodeFence,
  decodeImage,
  decodeSeal,
  decodeWrites,
  type ImageRecord,
  type SealRecord,
} from '../protocol/records.js';
import type { StorageAdapter, WriteOp } from '../storage/adapter.js';

/** Where committed images go: validates and materializes them (see image/chain.ts). */
export interface ImageSink {
  /** Checks that `rec` can become checkpoint `checkpoint`'s image; throws `ImageError` if not. */
  check(checkpoint: number, rec: ImageRecord): void;
  /** Advances the materialized image to `checkpoint`. Called after `check` and the store commit. */
  apply(checkpoint: number, rec: ImageRecord): void;
}

/** The store meta written with every commit: where this store stands. */
export interface StoreMeta {
  readonly app: string;
  readonly epoch: number;
  readonly checkpoint: number;
  readonly streamSeq: number;
  readonly role: 'standby' | 'primary';
}

/** Encodes store meta. */
export function encodeMeta(meta: StoreMeta): Uint8Array {
  return Buffer.from(JSON.stringify(meta), 'utf8');
}

/** Decodes store meta; `undefined` for absent or unreadable meta. */
export function decodeMeta(bytes: Uint8Array | undefined): StoreMeta | undefined {
  if (!bytes) return undefined;
  try {
    const m = JSON.parse(Buffer.from(bytes).toString('utf8')) as StoreMeta;
    return typeof m.app === 'string' && Number.isSafeInteger(m.checkpoint) ? m : undefined;
  } catch {
    return undefined;
  }
}

/** Where the applier stands. */
export interface AppliedPosition {
  /** Epoch of the last committed checkpoint (0 when none). */
  readonly epoch: number;
  /** Last committed checkpoint (0 when none). */
  readonly checkpoint: number;
  /** Stream sequence of the seal that completed it (0 when none). */
  readonly streamSeq: number;
}

interface Staged {
  epoch: number;
  /** Delay-write: the write batches, by frame seq. Snapshot: empty (they went to the store). */
  writes: Map<number, WriteOp[]>;
  /** Write frames and ops received for this checkpoint. */
  writeFrames: number;
  writeOps: number;
  image: ImageRecord | undefined;
  seal: SealRecord | undefined;
  sealStreamSeq: number;
}

/** Counts of what the applier did and refused. */
export interface ApplierCounters {
  framesApplied: number;
  checkpointsCommitted: number;
  rejected: Record<string, number>;
}

/** Standby modes the applier implements. */
export type ApplyMode = 'delay-write' | 'snapshot';

/** Options of an applier. */
export interface ApplierOptions {
  readonly app: string;
  readonly adapter: StorageAdapter;
  readonly images: ImageSink;
  /** Default `'delay-write'`. `'snapshot'` needs an adapter with `capabilities.snapshot`. */
  readonly mode?: ApplyMode;
  /** Called for every rejected part or frame (after counting it). */
  readonly onReject?: (err: FrameError, streamSeq: number) => void;
  /** Called after each committed checkpoint. */
  readonly onCommit?: (pos: AppliedPosition) => void;
  /** Called when a newer epoch's fence is applied. */
  readonly onFence?: (epoch: number, nodeId: string, streamSeq: number) => void;
}

/** Most frames a snapshot-mode standby holds while waiting for an earlier one. */
const MAX_REORDER = 65_536;

/** Applies stream messages to a store and an image chain. One instance per standby run. */
export class Applier {
  readonly #o: ApplierOptions;
  readonly #mode: ApplyMode;
  readonly #parts = new PartAssembler();
  readonly #staged = new Map<number, Staged>();
  /** Snapshot mode: frames that came before their turn, by seq, and the next seq to take. */
  readonly #early = new Map<number, { frame: Frame; streamSeq: number }>();
  #nextSeq = 1;
  #position: AppliedPosition = { epoch: 0, checkpoint: 0, streamSeq: 0 };
  #fenceEpoch = 0;
  #lastStreamSeq = 0;
  readonly counters: ApplierCounters = { framesApplied: 0, checkpointsCommitted: 0, rejected: {} };

  constructor(opts: ApplierOptions) {
    this.#o = opts;
    this.#mode = opts.mode ?? 'delay-write';
    if (this.#mode === 'snapshot' && !opts.adapter.capabilities.snapshot) {
      throw new Error(`internal: the ${opts.adapter.kind} adapter has no snapshot capability`);
    }
  }

  /** Last committed checkpoint. */
  get position(): AppliedPosition {
    return this.#position;
  }

  /** Newest epoch seen in a fence or frame. */
  get fenceEpoch(): number {
    return this.#fenceEpoch;
  }

  /** Stream sequence of the last message handled. */
  get lastStreamSeq(): number {
    return this.#lastStreamSeq;
  }

  /** Checkpoints staged and not yet committed (for lag reporting). */
  get stagedCheckpoints(): number {
    return this.#staged.size;
  }

  /**
   * Handles one stream message. Never throws for bad input (it is counted and reported through
   * `onReject`); throws only when the store or the image chain fails, which stops the standby.
   */
  async handle(streamSeq: number, data: Uint8Array): Promise<void> {
    this.#lastStreamSeq = streamSeq;
    let frame: Frame | undefined;
    try {
      frame = this.#parts.add(decodePart(data, this.#o.app));
    } catch (err) {
      if (err instanceof FrameError) return this.#reject(err, streamSeq);
      throw err;
    }
    if (!frame) return;
    try {
      await this.#route(frame, streamSeq);
    } catch (err) {
      if (err instanceof FrameError) return this.#reject(err, streamSeq);
      throw err;
    }
  }

  #reject(err: FrameError, streamSeq: number): void {
    this.counters.rejected[err.reason] = (this.counters.rejected[err.reason] ?? 0) + 1;
    this.#o.onReject?.(err, streamSeq);
  }

  async #route(f: Frame, streamSeq: number): Promise<void> {
    if (f.epoch < this.#fenceEpoch) {
      throw new FrameError(
        FrameRejectReason.Stale,
        `frame ${f.epoch}/${f.seq} of epoch ${f.epoch} after the fence of epoch ${this.#fenceEpoch}: a deposed primary's write, dropped`,
      );
    }
    if (f.kind === FrameKind.Fence) {
      const fence = decodeFence(f.body);
      if (f.epoch === this.#fenceEpoch) return; // a re-sent fence
      await this.#fence(f.epoch, f.seq);
      this.#o.onFence?.(f.epoch, fence.nodeId, streamSeq);
      return;
    }
    if (f.epoch > this.#fenceEpoch) {
      // Frames of a newer epoch always follow its fence in the stream; one without a fence can
      // only come from a stream that lost messages. Fence anyway: the newer epoch wins (its
      // fence took seq 1).
      await this.#fence(f.epoch, 1);
    }
    if (this.#mode === 'delay-write') return this.#take(f, streamSeq);
    if (f.seq < this.#nextSeq || this.#early.has(f.seq)) {
      throw new FrameError(FrameRejectReason.Duplicate, `frame ${f.epoch}/${f.seq} was already taken`);
    }
    if (this.#early.size >= MAX_REORDER) {
      throw new FrameError(
        FrameRejectReason.Gap,
        `frame ${f.epoch}/${f.seq}: ${MAX_REORDER} frames wait for frame ${this.#nextSeq}, which never came`,
      );
    }
    this.#early.set(f.seq, { frame: f, streamSeq });
    for (let next = this.#early.get(this.#nextSeq); next; next = this.#early.get(this.#nextSeq)) {
      this.#early.delete(this.#nextSeq);
      this.#nextSeq++;
      try {
        await this.#take(next.frame, next.streamSeq);
      } catch (err) {
        // A bad frame in the sequence is counted; the ones after it still get their turn.
        if (err instanceof FrameError) this.#reject(err, next.streamSeq);
        else throw err;
      }
    }
  }

  /** Takes one frame of the current epoch: stages or stores it, then commits what is complete. */
  async #take(f: Frame, streamSeq: number): Promise<void> {
    if (f.checkpoint <= this.#position.checkpoint) {
      throw new FrameError(
        FrameRejectReason.Duplicate,
        `frame ${f.epoch}/${f.seq} belongs to checkpoint ${f.checkpoint}, already committed`,
      );
    }
    const st = this.#stage(f.checkpoint, f.epoch);
    switch (f.kind) {
      case FrameKind.Writes: {
        if (st.writes.has(f.seq)) return;
        const ops = decodeWrites(f.body);
        if (this.#mode === 'snapshot') {
          await this.#o.adapter.writeArea!(f.checkpoint, ops);
          st.writes.set(f.seq, []);
        } else {
          st.writes.set(f.seq, ops);
        }
        st.writeFrames++;
        st.writeOps += ops.length;
        break;
      }
      case FrameKind.Image:
        st.image = decodeImage(f.body);
        break;
      case FrameKind.Seal:
        st.seal = decodeSeal(f.body);
        st.sealStreamSeq = streamSeq;
        break;
    }
    this.counters.framesApplied++;
    await this.#commitReady();
  }

  #stage(checkpoint: number, epoch: number): Staged {
    let st = this.#staged.get(checkpoint);
    if (!st) {
      st = {
        epoch,
        writes: new Map(),
        writeFrames: 0,
        writeOps: 0,
        image: undefined,
        seal: undefined,
        sealStreamSeq: 0,
      };
      this.#staged.set(checkpoint, st);
    }
    return st;
  }

  async #fence(epoch: number, fenceSeq: number): Promise<void> {
    this.#fenceEpoch = epoch;
    // Rollback: whatever the old primary staged and never sealed is gone for good.
    for (const [cp, st] of this.#staged) if (st.epoch < epoch) this.#staged.delete(cp);
    this.#parts.discardBefore(epoch);
    this.#early.clear();
    this.#nextSeq = fenceSeq + 1;
    if (this.#mode === 'snapshot') await this.#o.adapter.releaseAreas!();
  }

  async #commitReady(): Promise<void> {
    for (;;) {
      const next = this.#position.checkpoint + 1;
      const st = this.#staged.get(next);
      if (!st?.seal) return;
      // Frames a re-sent seal names may still be on their way: wait for them.
      if (st.writeFrames < st.seal.writeFrames || !st.image) return;
      if (st.writeFrames > st.seal.writeFrames || st.writeOps !== st.seal.writeOps) {
        this.#staged.delete(next);
        throw new FrameError(
          FrameRejectReason.Malformed,
          `checkpoint ${next} holds ${st.writeFrames} write frames / ${st.writeOps} ops, its seal names ${st.seal.writeFrames} / ${st.seal.writeOps}`,
        );
      }
      try {
        this.#o.images.check(next, st.image);
      } catch (err) {
        if (err instanceof ImageError) {
          throw new RestartpointError(
            err.code,
            `checkpoint ${next} cannot be applied: ${err.message}`,
            false,
            {
              cause: err,
            },
          );
        }
        throw err;
      }
      const pos = { epoch: st.epoch, checkpoint: next, streamSeq: st.sealStreamSeq };
      const meta = encodeMeta({ app: this.#o.app, ...pos, role: 'standby' });
      if (this.#mode === 'snapshot') {
        await this.#o.adapter.formSnapshot!(next, meta);
      } else {
        const seqs = [...st.writes.keys()].sort((a, b) => a - b);
        const all: WriteOp[] = [];
        for (const s of seqs) for (const op of st.writes.get(s)!) all.push(op);
        await this.#o.adapter.commit(all, meta);
      }
      this.#o.images.apply(next, st.image);
      this.#staged.delete(next);
      this.#position = pos;
      this.counters.checkpointsCommitted++;
      this.#o.onCommit?.(pos);
    }
  }
}

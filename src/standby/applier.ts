/**
 * The standby's applier: turns the ordered stream of parts into committed checkpoints.
 *
 * For each message, in stream order:
 * 1. decode and verify the part (checksum, version, app); reject and count what fails;
 * 2. join the parts of multi-part frames;
 * 3. a fence `(epoch, cutoff)` says the new primary resumed from checkpoint `cutoff`: frames
 *    of older epochs for checkpoints after it are a deposed primary's and are dropped as stale;
 *    frames up to it are the agreed history and still apply (a lagging relay may bring them
 *    late). The fence takes effect once this standby has committed up to `cutoff`; frames of
 *    the new epoch wait for it. Then everything staged after the cutoff is discarded (rollback);
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
import {
  ErrorCode,
  FrameError,
  FrameRejectReason,
  ImageError,
  LimitError,
  RestartpointError,
} from '../errors.js';
import { FrameKind, type Frame } from '../protocol/frame.js';
import {
  decodeFence,
  decodeImage,
  decodeSeal,
  decodeWrites,
  type EpochCut,
  type ImageRecord,
  type SealRecord,
} from '../protocol/records.js';
import type { StorageAdapter, WriteOp } from '../storage/adapter.js';
import { DEFAULT_LIMITS, type Limits } from '../limits.js';

/** Where committed images go: validates and materializes them (see image/chain.ts). */
export interface ImageSink {
  /** Checks that `rec` can become checkpoint `checkpoint`'s image; throws `ImageError` if not. */
  check(checkpoint: number, rec: ImageRecord, epoch?: number): void;
  /** `check`, possibly off the event loop (ImageChain: large keyframes in a worker). */
  checkAsync?(checkpoint: number, rec: ImageRecord, epoch?: number): Promise<void>;
  /** Advances the materialized image to `checkpoint`. Called after `check` and the store commit. */
  apply(checkpoint: number, rec: ImageRecord, epoch?: number): void;
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
  imageSeq: number;
  /**
   * The frames taken for this checkpoint, as they came: a new primary that commits it without
   * having seen it durable (`relax()`) publishes them again before its fence.
   */
  frames: Frame[];
  /** Body bytes of the frames staged here (counted against `limits.maxStagedBytes`). */
  bytes: number;
  seal: SealRecord | undefined;
  sealSeq: number;
  sealStreamSeq: number;
}

/** Counts of what the applier did (refusals are counted where every message enters: `Intake`). */
export interface ApplierCounters {
  framesApplied: number;
  checkpointsCommitted: number;
  /** Store commits (snapshots formed) that committed them: fewer when batched. */
  batches: number;
}

/** What a fence discarded when it took effect (see `ApplierOptions.onRollback`). */
export interface RollbackReport {
  /** The fence's epoch and cut. */
  readonly epoch: number;
  readonly cutoff: number;
  /** Frames discarded, and the checkpoints and epochs they belonged to (ascending). */
  readonly frames: number;
  readonly checkpoints: readonly number[];
  readonly epochs: readonly number[];
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
  /**
   * Called for every frame refused on the way (stale, duplicate, gap, limit, malformed), including
   * frames that waited for their turn or their fence and were refused when it came.
   */
  readonly onReject?: (err: FrameError, streamSeq: number) => void;
  /** Called after each committed checkpoint, with the seq of the seal frame that completed it. */
  readonly onCommit?: (pos: AppliedPosition, sealSeq: number) => void;
  /**
   * Called for the seal of a checkpoint the seed (a base) already holds, skipped: retention
   * still learns which frames belong to which checkpoint.
   */
  readonly onSkippedSeal?: (epoch: number, checkpoint: number, sealSeq: number) => void;
  /** Called before a store call that failed with a retryable error is tried again. */
  readonly onStoreRetry?: (err: RestartpointError, attempt: number) => void;
  /** Called when a newer epoch's fence is applied. */
  readonly onFence?: (epoch: number, nodeId: string, streamSeq: number) => void;
  /**
   * Called when a fence that took effect discarded frames older epochs had sent for checkpoints
   * after its cut: taken and staged, or waiting for their turn. They are a deposed primary's
   * unacknowledged tail, or a zombie's late frames that arrived before the fence did; the same
   * frames arriving after it are refused one by one as `stale` (`onReject`).
   */
  readonly onRollback?: (r: RollbackReport) => void;
  /**
   * Whether every frame `(epoch, seq)` of `seqs` is durable under the ack policy as far as this
   * standby can see (with several relays: seen on as many relays as the policy needs acks). A
   * checkpoint is committed only once every frame it names is (its write frames, its image and
   * its seal: `checkpoint()` resolved only once all of them were acknowledged); default: always
   * (one relay).
   */
  readonly durable?: (epoch: number, seqs: readonly number[]) => boolean;
  /**
   * `maxWritesPerCheckpoint` and `maxStagedBytes` (bytes held for checkpoints not committed yet:
   * staged write bodies and images, frames waiting for their turn or fence): a frame past one is
   * refused and counted as `limit`. Default: `DEFAULT_LIMITS`. (`maxFrameBytes` is enforced where
   * frames are joined: `FrameDecoder`.)
   */
  readonly limits?: Pick<Limits, 'maxWritesPerCheckpoint' | 'maxStagedBytes'>;
  /**
   * Whether more messages wait to be handled right behind the current one: ready checkpoints may
   * then wait for them, to be committed together (see `#commitReady`). Default: never batch
   * across messages. The caller must `recheck()` once the queue is empty while `deferred`.
   */
  readonly more?: () => boolean;
}

/** Longest a ready checkpoint waits for the messages queued behind it (see `#commitReady`). */
const BATCH_MS = 50;
/** Longest a run of checkpoints is checked and applied before it is cut (see `#commitRun`). */
const SLICE_MS = 20;
/** Most checkpoints in one store commit. */
const BATCH_CHECKPOINTS = 1_000;
/** Most write ops in one store commit (one checkpoint with more is committed alone). */
const BATCH_OPS = 100_000;
/** Most staged bytes in one store commit (likewise). */
const BATCH_BYTES = 32 * 1024 * 1024;

/** How long a standby retries a store call that fails with a retryable error. */
const STORE_RETRY_MS = 30_000;

/** Most frames a standby holds while waiting for an earlier one or for a fence. */
const MAX_WAITING = 65_536;

/** A fence: the primary of `epoch` resumed from checkpoint `cutoff`, sealed by `cutoffEpoch`. */
export interface FenceCut {
  readonly epoch: number;
  readonly cutoff: number;
  /** `undefined` for fences written before the cut carried its epoch: matched by number only. */
  readonly cutoffEpoch: number | undefined;
}

interface HeldFence extends FenceCut {
  readonly nodeId: string;
  readonly streamSeq: number;
}

/** Applies stream messages to a store and an image chain. One instance per standby run. */
export class Applier {
  readonly #o: ApplierOptions;
  readonly #mode: ApplyMode;
  readonly #staged = new Map<number, Staged>();
  /** Snapshot mode: per epoch, the next seq to take and the frames that came before their turn. */
  readonly #order = new Map<
    number,
    { next: number; early: Map<number, { frame: Frame; streamSeq: number }> }
  >();
  /** Fences applied: each cuts the history of older epochs after its checkpoint. */
  readonly #fences: FenceCut[] = [];
  /**
   * Fences received that have not taken effect yet, ordered by epoch (whatever order the relays
   * delivered them in): each waits for this standby to reach its cutoff. More than one waits
   * when takeovers follow each other faster than this standby catches up (a lagging relay, a
   * relay that missed a fence and delivers the next one first); each takes effect in epoch order.
   */
  readonly #heldFences: HeldFence[] = [];
  /** Frames of an epoch whose fence has not taken effect yet, in arrival order. */
  #waiting: { frame: Frame; streamSeq: number }[] = [];
  #position: AppliedPosition = { epoch: 0, checkpoint: 0, streamSeq: 0 };
  #fenceEpoch = 0;
  #lastStreamSeq = 0;
  #relaxed = false;
  /** Ready checkpoints wait for a batch (see `#commitReady`). */
  #deferred = false;
  /** When the last store commit of checkpoints ended (`performance.now()`). */
  #committedAt = -Infinity;
  /** Seeded from a base: frames of checkpoints up to it (and fences up to its history) are skipped. */
  #seededThrough = 0;
  #seededEpoch = 0;
  /**
   * Restart on its own store: the store already holds up to this checkpoint (of `epoch`), so
   * checkpoints up to it only advance the image; a fence that cuts below it diverges.
   */
  #storeAt: { epoch: number; checkpoint: number } = { epoch: 0, checkpoint: 0 };
  /** See `takeUnconfirmed()`. */
  readonly #unconfirmed: Frame[] = [];
  /** Bytes held for uncommitted checkpoints and waiting frames. */
  #stagedBytes = 0;
  /** The limits in force (see `ApplierOptions.limits`). */
  readonly limits: NonNullable<ApplierOptions['limits']>;
  readonly counters: ApplierCounters = { framesApplied: 0, checkpointsCommitted: 0, batches: 0 };

  constructor(opts: ApplierOptions) {
    this.#o = opts;
    this.#mode = opts.mode ?? 'delay-write';
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    if (this.#mode === 'snapshot' && !opts.adapter.capabilities.snapshot) {
      throw new Error(`internal: the ${opts.adapter.kind} adapter has no snapshot capability`);
    }
  }

  /** Last committed checkpoint. */
  get position(): AppliedPosition {
    return this.#position;
  }

  /**
   * Seeds this (fresh) applier from a base at `position` (its store and image were loaded by the
   * caller), with the fences applied up to it (`history`): frames of checkpoints up to it are
   * skipped silently, and so are the fences of the history. `storeAt`: the store already holds
   * up to this later checkpoint (a restart on its own store): those commit to the image only.
   */
  seed(
    position: AppliedPosition,
    history: readonly EpochCut[],
    storeAt?: { epoch: number; checkpoint: number },
    sealSeq?: number,
  ): void {
    if (this.#position.checkpoint > 0 || this.#fences.length > 0 || this.#staged.size > 0) {
      throw new Error('internal: only a fresh applier can be seeded');
    }
    this.#position = position;
    this.#seededThrough = position.checkpoint;
    for (const h of history)
      this.#fences.push({ epoch: h.epoch, cutoff: h.cutoff, cutoffEpoch: h.cutoffEpoch });
    this.#fenceEpoch = Math.max(0, ...history.map((h) => h.epoch));
    this.#seededEpoch = this.#fenceEpoch;
    if (storeAt) this.#storeAt = storeAt;
    // Snapshot mode takes an epoch's frames in seq order: the base's epoch goes on after its seal.
    if (this.#mode === 'snapshot' && sealSeq !== undefined && position.epoch > 0)
      this.#order.set(position.epoch, { next: sealSeq + 1, early: new Map() });
  }

  /** The fences applied so far (seeded ones first), in epoch order: the epoch history. */
  get history(): readonly FenceCut[] {
    return this.#fences;
  }

  /** Newest epoch seen in a fence (applied or waiting) or frame. */
  get fenceEpoch(): number {
    return Math.max(this.#fenceEpoch, this.#heldFences.at(-1)?.epoch ?? 0);
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
   * From now on, commits every complete sealed checkpoint without waiting for its seal to be
   * seen as durable: for the new primary once its lease is claimed (the old primary is fenced
   * and can add nothing), so it resumes from everything the reachable relays hold.
   */
  async relax(): Promise<void> {
    this.#relaxed = true;
    await this.recheck();
    // Everything committable is committed now, in slices with the event loop let run between.
    while (this.#deferred) {
      await new Promise((r) => setImmediate(r));
      await this.recheck();
    }
  }

  /** Commits what became committable since (a seal seen on one more relay, say). */
  async recheck(): Promise<void> {
    await this.#commitReady();
  }

  /**
   * Takes one whole frame, decoded and verified (see protocol/codec.ts), read at `streamSeq`.
   * Throws `FrameError` when the frame is refused (stale, duplicate, gap, limit, malformed);
   * throws other errors only when the store or the image chain fails, which stops the standby.
   */
  async handleFrame(frame: Frame, streamSeq: number): Promise<void> {
    this.#lastStreamSeq = Math.max(this.#lastStreamSeq, streamSeq);
    // Seeded from a base: what the base already holds is not a duplicate to report, just history.
    if (
      frame.kind === FrameKind.Fence
        ? frame.epoch <= this.#seededEpoch
        : frame.checkpoint <= this.#seededThrough
    ) {
      if (frame.kind === FrameKind.Seal) this.#o.onSkippedSeal?.(frame.epoch, frame.checkpoint, frame.seq);
      return;
    }
    await this.#route(frame, streamSeq);
  }

  async #routeCounted(frame: Frame, streamSeq: number): Promise<void> {
    try {
      await this.#route(frame, streamSeq);
    } catch (err) {
      if (err instanceof FrameError) return this.#reject(err, streamSeq);
      throw err;
    }
  }

  /** Reports a frame refused after it waited (its turn, its fence). */
  #reject(err: FrameError, streamSeq: number): void {
    this.#o.onReject?.(err, streamSeq);
  }

  /**
   * Throws `stale` when a fence of a later epoch (applied or held) voids frame `f`: its
   * checkpoint is after the cut, or it is the cut's number but another epoch sealed the cut.
   */
  #checkStale(f: Frame): void {
    for (const fences of [this.#fences, this.#heldFences]) {
      for (const h of fences) {
        if (h.epoch <= f.epoch) continue;
        const after = f.checkpoint > h.cutoff;
        const otherAtCut =
          f.checkpoint === h.cutoff && h.cutoffEpoch !== undefined && h.cutoffEpoch !== f.epoch;
        if (after || otherAtCut) {
          throw new FrameError(
            FrameRejectReason.Stale,
            `frame ${f.epoch}/${f.seq} for checkpoint ${f.checkpoint}: the primary of epoch ${h.epoch} resumed from checkpoint ${h.cutoff}${h.cutoffEpoch === undefined ? '' : ` of epoch ${h.cutoffEpoch}`}; a deposed primary's write, dropped`,
          );
        }
      }
    }
  }

  /**
   * Throws (fatal) when this standby already committed a checkpoint that fence `h`'s history does
   * not hold: one past the cut, or the cut's number sealed by another epoch.
   */
  #checkNotDiverged(h: FenceCut): void {
    const at = this.#storeAt;
    if (h.epoch > at.epoch && discards(h, at.epoch, at.checkpoint)) {
      throw new DivergedError(
        `the primary of epoch ${h.epoch} resumed from checkpoint ${h.cutoff}${h.cutoffEpoch === undefined ? '' : ` of epoch ${h.cutoffEpoch}`}; this node's own store holds checkpoint ${at.checkpoint} of epoch ${at.epoch}, which that history discards: it rebuilds from the base`,
      );
    }
    const pos = this.#position;
    const past = pos.checkpoint > h.cutoff;
    const otherAtCut =
      pos.checkpoint === h.cutoff &&
      pos.checkpoint > 0 &&
      h.cutoffEpoch !== undefined &&
      h.cutoffEpoch !== pos.epoch;
    if (!past && !otherAtCut) return;
    throw new DivergedError(
      `the primary of epoch ${h.epoch} resumed from checkpoint ${h.cutoff}${h.cutoffEpoch === undefined ? '' : ` of epoch ${h.cutoffEpoch}`}, but this standby already committed ${pos.checkpoint} of epoch ${pos.epoch}: its store holds a checkpoint the new history does not; restart it to rebuild from the relays`,
    );
  }

  async #route(f: Frame, streamSeq: number): Promise<void> {
    if (f.kind === FrameKind.Fence) {
      const fence = decodeFence(f.body);
      if (f.epoch <= this.#fenceEpoch || this.#heldFences.some((h) => h.epoch === f.epoch)) {
        // A fence seen before (another relay's copy, a re-send, a replay): counted, no effect.
        throw new FrameError(FrameRejectReason.Duplicate, `fence of epoch ${f.epoch} seen before`);
      }
      const held: HeldFence = {
        epoch: f.epoch,
        cutoff: f.checkpoint,
        cutoffEpoch: fence.cutoffEpoch,
        nodeId: fence.nodeId,
        streamSeq,
      };
      this.#checkNotDiverged(held);
      // In epoch order: a relay that missed a fence may deliver a later one first.
      const at = this.#heldFences.findIndex((h) => h.epoch > held.epoch);
      this.#heldFences.splice(at < 0 ? this.#heldFences.length : at, 0, held);
      await this.#commitReady();
      return;
    }
    this.#checkStale(f);
    if (f.epoch > this.#fenceEpoch) {
      // Its fence has not taken effect (it waits for this standby to reach its cutoff, or has
      // not arrived yet from the relay that carries it): the frame waits too.
      if (this.#waiting.length >= MAX_WAITING) {
        throw new FrameError(
          FrameRejectReason.Gap,
          `frame ${f.epoch}/${f.seq}: too many frames wait for the fence of epoch ${f.epoch}`,
        );
      }
      this.#hold(f);
      this.#waiting.push({ frame: f, streamSeq });
      return;
    }
    if (this.#mode === 'delay-write') return this.#take(f, streamSeq);
    // An epoch whose successor's fence took effect is over: each of its frames is committed
    // (a replay) or void, and #take says which. Ordering it would park it forever.
    if (f.epoch < this.#fenceEpoch) return this.#take(f, streamSeq);
    let ord = this.#order.get(f.epoch);
    if (!ord) {
      ord = { next: 2, early: new Map() }; // seq 1 of every epoch is its fence
      this.#order.set(f.epoch, ord);
    }
    if (f.seq < ord.next || ord.early.has(f.seq)) {
      throw new FrameError(FrameRejectReason.Duplicate, `frame ${f.epoch}/${f.seq} was already taken`);
    }
    if (ord.early.size >= MAX_WAITING) {
      throw new FrameError(
        FrameRejectReason.Gap,
        `frame ${f.epoch}/${f.seq}: ${MAX_WAITING} frames wait for frame ${ord.next}, which never came`,
      );
    }
    this.#hold(f);
    ord.early.set(f.seq, { frame: f, streamSeq });
    for (let next = ord.early.get(ord.next); next; next = ord.early.get(ord.next)) {
      ord.early.delete(ord.next);
      this.#stagedBytes -= next.frame.body.byteLength;
      ord.next++;
      try {
        await this.#take(next.frame, next.streamSeq);
      } catch (err) {
        // A bad frame in the sequence is counted; the ones after it still get their turn.
        if (err instanceof FrameError) this.#reject(err, next.streamSeq);
        else throw err;
      }
    }
  }

  /** Takes one frame: stages or stores it, then commits what is complete. */
  async #take(f: Frame, streamSeq: number): Promise<void> {
    // Checked again here, not only on arrival: a frame that waited for its turn (snapshot mode)
    // may have been overtaken by a fence that took effect meanwhile and voids it.
    this.#checkStale(f);
    if (f.checkpoint <= this.#position.checkpoint) {
      throw new FrameError(
        FrameRejectReason.Duplicate,
        `frame ${f.epoch}/${f.seq} belongs to checkpoint ${f.checkpoint}, already committed`,
      );
    }
    const st = this.#stage(f.checkpoint, f.epoch);
    if (st.epoch !== f.epoch) {
      // Two primaries numbered this checkpoint; only the agreed history's may be staged here.
      throw new FrameError(
        FrameRejectReason.Stale,
        `frame ${f.epoch}/${f.seq}: checkpoint ${f.checkpoint} is staged from epoch ${st.epoch}`,
      );
    }
    switch (f.kind) {
      case FrameKind.Writes: {
        if (st.writes.has(f.seq)) return;
        const ops = decodeWrites(f.body);
        if (st.writeOps + ops.length > this.limits.maxWritesPerCheckpoint) {
          throw limitFrameError(
            'maxWritesPerCheckpoint',
            `frame ${f.epoch}/${f.seq}: checkpoint ${f.checkpoint} would hold ${st.writeOps + ops.length} write ops`,
            this.limits.maxWritesPerCheckpoint,
          );
        }
        // Snapshot mode stores writes at once; only delay-write holds them in memory.
        if (this.#mode === 'delay-write') this.#stageBytes(st, f);
        if (this.#mode === 'snapshot') {
          // A restart on its own store: the store holds this checkpoint already.
          if (f.checkpoint > this.#storeAt.checkpoint)
            await this.#store(() => this.#o.adapter.writeArea!(f.checkpoint, ops));
          st.writes.set(f.seq, []);
        } else {
          st.writes.set(f.seq, ops);
        }
        st.writeFrames++;
        st.writeOps += ops.length;
        break;
      }
      case FrameKind.Image: {
        const image = decodeImage(f.body);
        if (!st.image) this.#stageBytes(st, f);
        st.image = image;
        st.imageSeq = f.seq;
        break;
      }
      case FrameKind.Seal:
        st.seal = decodeSeal(f.body);
        st.sealSeq = f.seq;
        st.sealStreamSeq = streamSeq;
        break;
    }
    st.frames.push(f);
    this.counters.framesApplied++;
    await this.#commitReady();
  }

  /**
   * Runs a store call; a `retryable` failure (a connection lost, a timeout: the adapter reconnects
   * and checks the store's identity on the next call) is retried with backoff for up to
   * `STORE_RETRY_MS`, since committing the same batch again is safe. What cannot be retried, or
   * still fails, stops the standby with the store's own error.
   */
  async #store<T>(call: () => Promise<T>): Promise<T> {
    const until = performance.now() + STORE_RETRY_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        return await call();
      } catch (err) {
        if (!(err instanceof RestartpointError) || !err.retryable || performance.now() >= until) throw err;
        this.#o.onStoreRetry?.(err, attempt);
        await new Promise((r) => setTimeout(r, Math.min(2_000, 100 * 2 ** Math.min(attempt, 5))));
      }
    }
  }

  /** Counts a frame held while it waits (for its turn or its fence) against the staged limit. */
  #hold(f: Frame): void {
    this.#reserve(f);
    this.#stagedBytes += f.body.byteLength;
  }

  /** Counts a staged frame's body against the staged limit. */
  #stageBytes(st: Staged, f: Frame): void {
    this.#reserve(f);
    st.bytes += f.body.byteLength;
    this.#stagedBytes += f.body.byteLength;
  }

  /** Throws the `limit` refusal when holding `f` too would pass `limits.maxStagedBytes`. */
  #reserve(f: Frame): void {
    const max = this.limits.maxStagedBytes;
    if (this.#stagedBytes + f.body.byteLength > max) {
      throw limitFrameError(
        'maxStagedBytes',
        `frame ${f.epoch}/${f.seq} of ${f.body.byteLength} bytes on top of ${this.#stagedBytes} bytes staged`,
        max,
      );
    }
  }

  #unstage(checkpoint: number, st: Staged): void {
    this.#staged.delete(checkpoint);
    this.#stagedBytes -= st.bytes;
  }

  /** Bytes held for checkpoints not committed yet (staged and waiting frames). */
  get stagedBytes(): number {
    return this.#stagedBytes;
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
        imageSeq: 0,
        frames: [],
        bytes: 0,
        seal: undefined,
        sealSeq: 0,
        sealStreamSeq: 0,
      };
      this.#staged.set(checkpoint, st);
    }
    return st;
  }

  /** Puts the waiting fence into effect once this standby reached its cutoff. */
  async #applyFence(): Promise<boolean> {
    const h = this.#heldFences[0];
    if (!h || this.#position.checkpoint < h.cutoff) return false;
    this.#checkNotDiverged(h);
    this.#heldFences.shift();
    this.#fenceEpoch = h.epoch;
    this.#fences.push({ epoch: h.epoch, cutoff: h.cutoff, cutoffEpoch: h.cutoffEpoch });
    // Rollback: whatever an older primary staged after the cutoff is gone for good.
    const gone = { frames: 0, checkpoints: new Set<number>(), epochs: new Set<number>() };
    const drop = (f: Frame): void => {
      gone.frames++;
      gone.checkpoints.add(f.checkpoint);
      gone.epochs.add(f.epoch);
    };
    for (const [cp, st] of this.#staged) {
      if (st.epoch < h.epoch && cp > h.cutoff) {
        st.frames.forEach(drop);
        this.#unstage(cp, st);
      }
    }
    for (const [e, ord] of this.#order) {
      if (e >= h.epoch) continue;
      for (const x of ord.early.values()) {
        drop(x.frame);
        this.#stagedBytes -= x.frame.body.byteLength;
      }
      // Cleared, not only forgotten: a take loop of that epoch may still hold the object.
      ord.early.clear();
      this.#order.delete(e);
    }
    if (this.#mode === 'snapshot') await this.#store(() => this.#o.adapter.releaseAreas!());
    this.#o.onFence?.(h.epoch, h.nodeId, h.streamSeq);
    if (gone.frames > 0) {
      const asc = (xs: Set<number>): number[] => [...xs].sort((a, b) => a - b);
      this.#o.onRollback?.({
        epoch: h.epoch,
        cutoff: h.cutoff,
        frames: gone.frames,
        checkpoints: asc(gone.checkpoints),
        epochs: asc(gone.epochs),
      });
    }
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const w of waiting) this.#stagedBytes -= w.frame.body.byteLength;
    for (const w of waiting) await this.#routeCounted(w.frame, w.streamSeq);
    return true;
  }

  #committable(next: number, st: Staged): boolean {
    if (this.#relaxed) return true;
    // A fence says its cut is the agreed history: up to it, the checkpoints the cut's epoch sealed
    // need no durability of their own. Older epochs' checkpoints are vouched for by their own
    // successor's fence, which takes effect first.
    const vouched = (h: FenceCut): boolean =>
      next <= h.cutoff && (h.cutoffEpoch === undefined ? st.epoch < h.epoch : st.epoch === h.cutoffEpoch);
    if (this.#heldFences.some(vouched)) return true;
    return this.#durable(st);
  }

  /** Whether every frame of `st` is durable under the ack policy, as far as this standby sees. */
  #durable(st: Staged): boolean {
    if (!this.#o.durable) return true;
    return this.#o.durable(st.epoch, [...st.writes.keys(), st.imageSeq, st.sealSeq]);
  }

  /**
   * Why this standby cannot resume from where it stands, or `undefined`: a fence that waits for a
   * checkpoint it never reached, frames that wait for a fence that never came, frames waiting for
   * one that never came (snapshot mode). A new primary must not fence in any of these states: it
   * would cut the history short of what was agreed. (An incomplete checkpoint at the tail of the
   * last epoch is not one: acknowledgements are cumulative — `checkpoint(n)` resolves only once
   * every frame before it is durable — so nothing after it was acknowledged, and the rollback
   * drops it. Frames this node dropped itself are `Intake.stuck()`'s concern.)
   */
  stuck(): string | undefined {
    const pos = this.#position;
    const h = this.#heldFences[0];
    if (h) {
      return `the fence of epoch ${h.epoch} names checkpoint ${h.cutoff} as its cut, and this node holds only up to checkpoint ${pos.checkpoint}`;
    }
    const w = this.#waiting[0];
    if (w) {
      return `${this.#waiting.length} frame(s) of epoch ${w.frame.epoch} wait for that epoch's fence, which this node never read`;
    }
    for (const [epoch, ord] of this.#order) {
      if (ord.early.size > 0) {
        return `${ord.early.size} frame(s) of epoch ${epoch} wait for frame ${ord.next}, which this node never read`;
      }
    }
    return undefined;
  }

  /**
   * The frames of checkpoints committed since `relax()` that this node never saw durable: a
   * checkpoint seen complete on one relay of a read quorum may have been acknowledged, so the new
   * primary keeps it, and must make it durable (publish these again, same ids) before its fence.
   * Otherwise a later takeover that reads other relays could miss the cut the fence names.
   * Returns them in order and forgets them.
   */
  takeUnconfirmed(): Frame[] {
    return this.#unconfirmed.splice(0);
  }

  /**
   * Commits what is ready, in batches: every complete, committable checkpoint from the next one
   * on goes into one store commit (their writes in order, a key written twice kept once, with its
   * last write), and the image chain advances through them one by one. While more messages wait
   * behind this one (`more()`), a ready checkpoint may wait for them (at most `BATCH_MS`, and not
   * once relaxed), so that a standby behind its primary commits many checkpoints per store
   * commit and catches up instead of falling further behind. The store, the image and the
   * position only ever move together, between messages, to one committed checkpoint.
   */
  async #commitReady(): Promise<void> {
    for (;;) {
      // A waiting fence whose cutoff is reached takes effect first: it discards what an older
      // primary staged after the cutoff, which may be exactly the next checkpoint here.
      if (await this.#applyFence()) continue;
      if (!this.#staged.get(this.#position.checkpoint + 1)?.seal) {
        this.#deferred = false;
        return;
      }
      if (this.#mayDefer()) {
        this.#deferred = true;
        return;
      }
      const run = this.#readyRun();
      if (run.length === 0) {
        this.#deferred = false;
        return;
      }
      if (!(await this.#commitRun(run))) {
        // Out of time for this turn of the event loop: the rest waits for the next one.
        this.#deferred = true;
        return;
      }
    }
  }

  /** Whether ready checkpoints may wait for the messages queued behind this one. */
  #mayDefer(): boolean {
    if (this.#relaxed || this.#mode !== 'delay-write' || !this.#o.more?.()) return false;
    return (
      performance.now() - this.#committedAt < BATCH_MS &&
      this.#staged.size < BATCH_CHECKPOINTS &&
      this.#stagedBytes < BATCH_BYTES
    );
  }

  /**
   * Whether ready checkpoints wait: for a batch to fill, or (a long run cut) for the next turn
   * of the event loop. The caller `recheck()`s once its queue is empty, letting timers run first.
   */
  get deferred(): boolean {
    return this.#deferred;
  }

  /**
   * The checkpoints that can be committed now, in order from the next one: complete, sealed,
   * committable; up to a waiting fence's cutoff (the fence takes effect there), one at a time in
   * snapshot mode (each forms its own snapshot). Throws `malformed` when the next one is not
   * what its seal says (a later one is left for its turn).
   */
  #readyRun(): { next: number; st: Staged }[] {
    const run: { next: number; st: Staged }[] = [];
    const cut = this.#heldFences[0]?.cutoff ?? Infinity;
    let ops = 0;
    let bytes = 0;
    for (let next = this.#position.checkpoint + 1; run.length < BATCH_CHECKPOINTS; next++) {
      const st = this.#staged.get(next);
      if (!st?.seal) break;
      // Frames a re-sent seal names may still be on their way: wait for them.
      if (st.writeFrames < st.seal.writeFrames || !st.image) break;
      if (st.writeFrames > st.seal.writeFrames || st.writeOps !== st.seal.writeOps) {
        if (run.length > 0) break;
        this.#unstage(next, st);
        throw new FrameError(
          FrameRejectReason.Malformed,
          `checkpoint ${next} holds ${st.writeFrames} write frames / ${st.writeOps} ops, its seal names ${st.seal.writeFrames} / ${st.seal.writeOps}`,
        );
      }
      if (!this.#committable(next, st)) break;
      if (run.length > 0 && (ops + st.writeOps > BATCH_OPS || bytes + st.bytes > BATCH_BYTES)) break;
      run.push({ next, st });
      ops += st.writeOps;
      bytes += st.bytes;
      if (next >= cut || this.#mode === 'snapshot') break;
    }
    return run;
  }

  /**
   * Commits `run` (see `#readyRun`): checks and applies each image in order, gathers the writes,
   * then one store commit with the meta of the last checkpoint checked. An image that cannot be
   * applied ends the run there: what came before it is committed first, then it is refused as
   * one checkpoint alone always was (a limit: counted; otherwise fatal). A run that takes more
   * than `SLICE_MS` is cut after the checkpoint that passed it: returns false, the rest is
   * left for the caller's next turn (`deferred`).
   */
  async #commitRun(run: { next: number; st: Staged }[]): Promise<boolean> {
    const images = this.#o.images;
    const writes = new Map<string, WriteOp>();
    const done: { next: number; st: Staged; unconfirmed: boolean }[] = [];
    let failure: unknown;
    let diverged: DivergedError | undefined;
    const t0 = performance.now();
    let whole = true;
    for (const { next, st } of run) {
      // A long run is cut, so that timers (a lease keeper, the lease watch) run in between.
      if (done.length > 0 && performance.now() - t0 > SLICE_MS) {
        whole = false;
        break;
      }
      try {
        if (images.checkAsync) await images.checkAsync(next, st.image!, st.epoch);
        else images.check(next, st.image!, st.epoch);
      } catch (err) {
        failure = err;
        break;
      }
      if (next <= this.#storeAt.checkpoint) {
        // A restart on its own store, which holds this checkpoint: only the image advances.
        if (st.epoch !== this.#storeAt.epoch && next === this.#storeAt.checkpoint) {
          diverged = new DivergedError(
            `checkpoint ${next} of epoch ${st.epoch} is the agreed history; this node's own store holds it from epoch ${this.#storeAt.epoch}: it rebuilds from the base`,
          );
          break;
        }
      } else if (this.#mode === 'delay-write') {
        const seqs = [...st.writes.keys()].sort((a, b) => a - b);
        for (const s of seqs) for (const op of st.writes.get(s)!) writes.set(op.key, op);
      }
      // The image runs ahead of the store only inside this call; it is never seen so.
      images.apply(next, st.image!, st.epoch);
      done.push({ next, st, unconfirmed: this.#relaxed && !this.#durable(st) });
    }
    const last = done.at(-1);
    if (last !== undefined) {
      const pos = { epoch: last.st.epoch, checkpoint: last.next, streamSeq: last.st.sealStreamSeq };
      const meta = encodeMeta({ app: this.#o.app, ...pos, role: 'standby' });
      if (last.next > this.#storeAt.checkpoint) {
        if (this.#mode === 'snapshot') {
          await this.#store(() => this.#o.adapter.formSnapshot!(last.next, meta));
        } else {
          const all = [...writes.values()];
          await this.#store(() => this.#o.adapter.commit(all, meta));
        }
      }
      this.#committedAt = performance.now();
      this.counters.batches++;
      for (const d of done) {
        if (d.unconfirmed) this.#unconfirmed.push(...d.st.frames);
        this.#unstage(d.next, d.st);
        const p = { epoch: d.st.epoch, checkpoint: d.next, streamSeq: d.st.sealStreamSeq };
        this.#position = p;
        this.counters.checkpointsCommitted++;
        this.#o.onCommit?.(p, d.st.sealSeq);
      }
    }
    if (diverged) throw diverged;
    if (failure === undefined) return whole;
    const failed = run[done.length]!;
    if (failure instanceof ImageError && failure.cause instanceof LimitError) {
      // Over this node's limits.maxDepth: counted once under `limit`, like the other limits.
      this.#unstage(failed.next, failed.st);
      throw new FrameError(FrameRejectReason.Limit, `checkpoint ${failed.next}: ${failure.message}`);
    }
    if (failure instanceof ImageError) {
      throw new RestartpointError(
        failure.code,
        `checkpoint ${failed.next} cannot be applied: ${failure.message}`,
        false,
        { cause: failure },
      );
    }
    throw failure;
  }
}

/** Whether fence `h` discards checkpoint `checkpoint` sealed by `epoch` (a later history). */
export function discards(h: EpochCut, epoch: number, checkpoint: number): boolean {
  if (h.epoch <= epoch || checkpoint === 0) return false;
  if (checkpoint > h.cutoff) return true;
  return checkpoint === h.cutoff && h.cutoffEpoch !== undefined && h.cutoffEpoch !== epoch;
}

/**
 * Fatal: this node's store (or what it committed) holds a checkpoint a later fence discards.
 * The standby runner rebuilds from the base when it sees one (src/standby/runner.ts).
 */
export class DivergedError extends RestartpointError {
  constructor(message: string) {
    super(ErrorCode.Frame, message, false);
    this.name = 'DivergedError';
  }
}

/** A counted refusal for passing `limits.<name>`, naming the option that raises it. */
function limitFrameError(name: keyof Limits, what: string, max: number): FrameError {
  return new FrameError(
    FrameRejectReason.Limit,
    `${what}: over the limit of ${max} (limit 'limits.${name}'; raise it in the start options of every node)`,
  );
}

/**
 * Where every message a standby reads enters: the production path from relay bytes to the
 * applier, without the transport (so tests drive exactly this).
 *
 * ```text
 * (relay, streamSeq, bytes) ─► codec.open ─► witnesses ─► decoder (FEC rebuild, multi-part join)
 *                                                          └─► whole frame ─► applier
 * ```
 *
 * Each part is counted once per relay (or, with FEC, once per distinct shard): that count is how
 * the standby tells a checkpoint the ack policy made durable. Every refusal, whichever stage
 * refused it, is counted here by reason and reported through `onReject`.
 */
import { FrameError, FrameRejectReason } from '../errors.js';
import { FrameDecoder, type FrameCodec, type PartKey } from '../protocol/codec.js';
import type { StorageAdapter } from '../storage/adapter.js';
import { DEFAULT_LIMITS, type Limits } from '../limits.js';
import { Applier, type ApplierOptions, type ApplyMode, type ImageSink } from './applier.js';
import { Witnesses } from './witnesses.js';

/** Reasons for which a genuine frame is dropped (and may be taken again from another copy). */
const DROPPED: ReadonlySet<string> = new Set([FrameRejectReason.Gap, FrameRejectReason.Limit]);

const frameKey = (f: { epoch: number; seq: number }): string => `${f.epoch}:${f.seq}`;

/** Options of an intake. */
export interface IntakeOptions {
  readonly app: string;
  readonly codec: FrameCodec;
  /** Number of relays read. */
  readonly relays: number;
  /**
   * Witnesses a checkpoint needs before it counts as durable: relays that hold it (the ack
   * policy's count), or with FEC, distinct shards of it. Default 1.
   */
  readonly need?: number;
  readonly adapter: StorageAdapter;
  readonly images: ImageSink;
  readonly mode?: ApplyMode;
  readonly limits?: Pick<Limits, 'maxFrameBytes' | 'maxWritesPerCheckpoint' | 'maxStagedBytes'>;
  readonly onReject?: (err: FrameError, streamSeq: number) => void;
  readonly onCommit?: ApplierOptions['onCommit'];
  readonly onFence?: ApplierOptions['onFence'];
  readonly onRollback?: ApplierOptions['onRollback'];
  readonly onStoreRetry?: ApplierOptions['onStoreRetry'];
  /**
   * A late copy: another relay's copy of a frame of a checkpoint already committed here (its
   * witnesses were forgotten at the commit). Expected with several relays, not a refusal.
   */
  readonly onLateCopy?: (key: PartKey, relay: number, streamSeq: number) => void;
  readonly onSkippedSeal?: ApplierOptions['onSkippedSeal'];
  /** More messages wait behind the current one: commits may be batched (`ApplierOptions.more`). */
  readonly more?: ApplierOptions['more'];
  /**
   * Sees every message that opened (a genuine part or shard of this app), with the frame it
   * belongs to: retention (src/history/retention.ts) learns which stream seq carries which frame.
   */
  readonly onOpened?: (relay: number, streamSeq: number, epoch: number, seq: number, bytes: number) => void;
}

/** Refusals by reason, and late copies (expected, not refusals). */
export interface IntakeCounters {
  rejected: Record<string, number>;
  /** Copies of frames of already committed checkpoints read from another relay. */
  lateCopies: number;
  /** Frames of older epochs a fence discarded when it took effect (`ApplierOptions.onRollback`). */
  rolledBack: number;
}

/** The message path of one standby run. */
export class Intake {
  readonly applier: Applier;
  readonly witnesses = new Witnesses();
  readonly counters: IntakeCounters = { rejected: {}, lateCopies: 0, rolledBack: 0 };
  /** Frames up to here (epoch, seq) had their witnesses forgotten at a commit. */
  #forgot: { epoch: number; seq: number } | undefined;
  readonly #o: IntakeOptions;
  readonly #decoder: FrameDecoder;
  /** Genuine frames dropped here (gap, limit) and not taken since, by `epoch:seq`. */
  readonly #dropped = new Map<string, { epoch: number; checkpoint: number }>();

  constructor(o: IntakeOptions) {
    this.#o = o;
    const limits = o.limits ?? DEFAULT_LIMITS;
    const need = o.need ?? 1;
    this.#decoder = new FrameDecoder({
      app: o.app,
      maxFrameBytes: limits.maxFrameBytes,
      onRebuilt: (p) => this.witnesses.setParts(p.epoch, p.seq, p.parts),
    });
    this.applier = new Applier({
      app: o.app,
      adapter: o.adapter,
      images: o.images,
      mode: o.mode,
      limits,
      onReject: (err, seq) => this.reject(err, seq),
      onCommit: (pos, sealSeq) => {
        this.witnesses.forgetThrough(pos.epoch, sealSeq);
        const f = this.#forgot;
        if (!f || pos.epoch > f.epoch || (pos.epoch === f.epoch && sealSeq > f.seq)) {
          this.#forgot = { epoch: pos.epoch, seq: sealSeq };
        }
        // Dropped frames of committed checkpoints were replaced by another copy, or are void.
        for (const [k, d] of this.#dropped) if (d.checkpoint <= pos.checkpoint) this.#dropped.delete(k);
        o.onCommit?.(pos, sealSeq);
      },
      onFence: (epoch, nodeId, seq) => {
        this.#decoder.discardBefore(epoch);
        o.onFence?.(epoch, nodeId, seq);
      },
      onRollback: (r) => {
        this.counters.rolledBack += r.frames;
        o.onRollback?.(r);
      },
      onStoreRetry: o.onStoreRetry,
      onSkippedSeal: o.onSkippedSeal,
      more: o.more,
      durable: (epoch, seqs) => seqs.every((seq) => this.witnesses.frameCount(epoch, seq) >= need),
    });
  }

  /**
   * Takes one message read from relay `relay` at stream sequence `streamSeq`. Never throws for
   * bad input (it is counted and reported); throws only when the store or the image chain
   * fails, which stops the standby.
   */
  async take(relay: number, streamSeq: number, data: Uint8Array): Promise<void> {
    try {
      const m = this.#o.codec.open(data, relay);
      // Witnesses of committed frames are forgotten at the commit; another relay's copy of one
      // arriving now is expected, not a refusal (the same relay's copy again still is a duplicate).
      const after = this.#isForgotten(m.key)
        ? this.witnesses.afterCommit(m.key, m.shard ? m.shard.index : relay)
        : undefined;
      if (after === 'late') {
        this.counters.lateCopies++;
        this.#o.onLateCopy?.(m.key, relay, streamSeq);
        return;
      }
      // (FEC: a repeated shard index goes on to the assembler, which counts it as before.)
      if (after === 'repeat' && !m.shard) {
        throw new FrameError(
          FrameRejectReason.Duplicate,
          `part ${m.key.epoch}/${m.key.seq}.${m.key.part} again on relay ${relay}, after its checkpoint was committed`,
        );
      }
      this.#o.onOpened?.(relay, streamSeq, m.key.epoch, m.key.seq, data.byteLength);
      if (m.shard) {
        this.witnesses.add(m.key, m.shard.index);
      } else {
        this.witnesses.setParts(m.key.epoch, m.key.seq, m.part.parts);
        if (this.witnesses.has(m.key, relay)) {
          // The same part twice on one relay: a replay (or a re-send past the dedupe window).
          throw new FrameError(
            FrameRejectReason.Duplicate,
            `part ${m.key.epoch}/${m.key.seq}.${m.key.part} again on relay ${relay}`,
          );
        }
        if (!this.witnesses.add(m.key, relay)) {
          // Another relay's copy: one more witness, which may make a checkpoint durable.
          if (this.#o.relays > 1) await this.applier.recheck();
          return;
        }
      }
      const frame = await this.#decoder.add(m);
      if (!frame) return await this.applier.recheck();
      try {
        await this.applier.handleFrame(frame, streamSeq);
      } catch (err) {
        // A genuine frame dropped for lack of room or order: another relay's copy may fill the
        // hole later, so the copies seen so far stop counting as taken.
        if (err instanceof FrameError && DROPPED.has(err.reason)) {
          this.witnesses.resetFrame(frame.epoch, frame.seq);
          this.#dropped.set(frameKey(frame), { epoch: frame.epoch, checkpoint: frame.checkpoint });
        }
        throw err;
      }
      this.#dropped.delete(frameKey(frame));
    } catch (err) {
      if (err instanceof FrameError) this.reject(err, streamSeq);
      else throw err;
    }
  }

  /** Whether `key`'s witnesses were forgotten at a commit (its frame is committed or void). */
  #isForgotten(key: PartKey): boolean {
    const f = this.#forgot;
    return f !== undefined && (key.epoch < f.epoch || (key.epoch === f.epoch && key.seq <= f.seq));
  }

  /**
   * Why this node cannot resume from where it stands (see `Applier.stuck()`), including genuine
   * frames it dropped itself (for lack of room or order) that no other copy replaced yet and that
   * may belong to an acknowledged checkpoint. `undefined` when nothing is missing.
   */
  stuck(): string | undefined {
    const why = this.applier.stuck();
    if (why) return why;
    const pos = this.applier.position;
    for (const d of this.#dropped.values()) {
      if (d.checkpoint > pos.checkpoint && d.epoch >= this.applier.fenceEpoch) {
        return `a frame of checkpoint ${d.checkpoint} (epoch ${d.epoch}) was dropped here (limits or order) and no relay's copy replaced it yet`;
      }
    }
    return undefined;
  }

  /** Counts and reports a refusal. */
  reject(err: FrameError, streamSeq: number): void {
    this.counters.rejected[err.reason] = (this.counters.rejected[err.reason] ?? 0) + 1;
    this.#o.onReject?.(err, streamSeq);
  }

  /** Shard figures (FEC): rejected shards by reason, parts rebuilt, rebuilt with parity. */
  get shardCounters(): FrameDecoder['shardCounters'] {
    return this.#decoder.shardCounters;
  }
}

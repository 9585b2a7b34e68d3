/**
 * The base keeper of a standby: when this node is the builder (the live standby with the
 * smallest node id), it makes a base every `everyCheckpoints` committed checkpoints or when an
 * operator asks (`restartpoint compact`), and once the base is durable it purges every relay
 * below the retention window.
 *
 * ```text
 * tick (1 s) ─► builder? ─► due? ─► runner.exclusive: read store + image + history at C
 *            ─► baseFrames ─► publishBase (ack policy) ─► durable ─► purge each relay below its cut
 *                                                          (a relay down: purged when it is back)
 * ```
 *
 * The primary is never stalled: only this standby pauses its applying while it reads its store;
 * the relays hold the frames that arrive meanwhile.
 */
import { ImageCodec, ImageFormat, type EpochCut, type ImageRecord } from '../protocol/records.js';
import type { FrameCodec } from '../protocol/codec.js';
import type { AppNames } from '../protocol/subjects.js';
import { serializeImage } from '../image/serialize.js';
import type { StorageAdapter, WriteOp } from '../storage/adapter.js';
import type { NatsLink } from '../transport/connection.js';
import { purgeBelow, streamBounds } from '../transport/consumer.js';
import type { StandbyRunner } from '../standby/runner.js';
import type { LogEvent } from '../types.js';
import { BaseHaltedError, baseFrames, publishBase, type BaseContent } from './base.js';
import { DEFAULT_RETAIN, type RetainOptions } from './retention.js';

/** Options of a keeper. */
export interface KeeperOptions {
  readonly runner: StandbyRunner;
  readonly links: readonly NatsLink[];
  readonly names: AppNames;
  readonly codec: FrameCodec;
  /** Acks (or FEC shards) a message needs: the ack policy. */
  readonly need: number;
  readonly adapter: StorageAdapter;
  readonly app: string;
  readonly nodeId: string;
  /** A base every this many committed checkpoints (default 1 000). */
  readonly everyCheckpoints?: number;
  /**
   * A base once the frames of checkpoints after the last base take this many stream bytes on
   * some relay (default 256 MiB): bounds the disk a burst of large checkpoints takes between bases.
   */
  readonly everyBytes?: number;
  readonly retain?: Partial<RetainOptions>;
  /** Per message, over all attempts. */
  readonly timeoutMs: number;
  /** Whether this node is the builder now. */
  readonly isBuilder: () => Promise<boolean>;
  /** A pending compaction request's id. */
  readonly compactRequest?: () => Promise<string | undefined>;
  /** Answers a compaction request once its base is durable. */
  readonly compactDone?: (id: string, checkpoint: number, purgedBelow: (number | null)[]) => Promise<void>;
  readonly log?: (e: LogEvent) => void;
  /** How often to look (default 1 000 ms). */
  readonly everyMs?: number;
  /** Sees each base made durable and each purge. */
  readonly onBase?: (b: BaseEvent) => void;
}

/** A base made durable, or a purge done. */
export interface BaseEvent {
  readonly checkpoint: number;
  readonly buildMs: number;
  readonly readMs: number;
  readonly chunks: number;
  readonly keys: number;
  readonly bytes: number;
  readonly retainFrom: number;
  /** Per relay, the first stream seq kept after the purge (`null`: not purged yet). */
  readonly purgedBelow: readonly (number | null)[];
}

/** Default byte trigger: a base once 256 MiB of frames followed the last one on some relay. */
export const DEFAULT_EVERY_BYTES = 256 * 1024 * 1024;

/** Builds bases and purges below them, for one standby run. */
export class BaseKeeper {
  readonly #o: KeeperOptions;
  readonly #retain: RetainOptions;
  #timer: NodeJS.Timeout | undefined;
  #busy: Promise<void> | undefined;
  #stopped = false;
  /** Halted (the node is taking over): a build in flight sends nothing more and purges nothing. */
  #halted = false;
  /** Checkpoint of the last base this keeper made durable (or the one its run started from). */
  #last: number;
  /** Purges still to do, per relay: the cut, and the checkpoint the window ends at. */
  #pending: ({ cut: number; x: number } | undefined)[];
  /** Figures of the last base made here. */
  last: BaseEvent | undefined;

  constructor(o: KeeperOptions) {
    this.#o = o;
    this.#retain = { ...DEFAULT_RETAIN, ...stripUndefined(o.retain ?? {}) };
    this.#last = o.runner.base?.manifest.checkpoint ?? 0;
    this.#pending = o.links.map(() => undefined);
  }

  /** Looks every `everyMs` whether a base is due. */
  start(): void {
    this.#timer = setInterval(() => void this.tick(), this.#o.everyMs ?? 1_000);
    this.#timer.unref();
  }

  /** One look: purges left over, then a base if due. Resolves when that work is done. */
  tick(force = false): Promise<void> {
    if (this.#busy || this.#stopped) return this.#busy ?? Promise.resolve();
    this.#busy = this.#tick(force)
      .catch((err: unknown) =>
        this.#o.log?.({
          // A build the takeover halted is not a failure.
          level: err instanceof BaseHaltedError ? 'info' : 'warn',
          msg: 'base',
          error: (err as Error)?.message ?? String(err),
        }),
      )
      .finally(() => {
        this.#busy = undefined;
      });
    return this.#busy;
  }

  async #tick(force: boolean): Promise<void> {
    await this.#purgePending();
    if (!(await this.#o.isBuilder())) {
      await this.#trim();
      return;
    }
    const request = await this.#o.compactRequest?.().catch(() => undefined);
    const pos = this.#o.runner.applier.position;
    const every = this.#o.everyCheckpoints ?? 1_000;
    const due =
      pos.checkpoint - this.#last >= every ||
      (pos.checkpoint > this.#last && this.bytesSinceBase() >= (this.#o.everyBytes ?? DEFAULT_EVERY_BYTES));
    if (!(force || request || due) || pos.checkpoint <= this.#last) {
      // Nothing new since the last base: a request is answered with it.
      if (request && pos.checkpoint === this.#last && this.last)
        await this.#o.compactDone?.(request, this.#last, [...this.last.purgedBelow]);
      return;
    }
    const ev = await this.build();
    if (ev && request) await this.#o.compactDone?.(request, ev.checkpoint, [...ev.purgedBelow]);
  }

  /**
   * Stream bytes, on the relay that holds most, of the frames this run read that belong to
   * checkpoints after the last base (the byte trigger, `everyBytes`).
   */
  bytesSinceBase(): number {
    const { retention, applier } = this.#o.runner;
    const history = applier.history;
    let most = 0;
    for (let r = 0; r < this.#o.links.length; r++) {
      const from = retention.cut(r, this.#last, history);
      most = Math.max(most, retention.bytesBetween(r, from, Number.MAX_SAFE_INTEGER));
    }
    return most;
  }

  /** Makes a base now (if this standby committed anything new) and purges below it. */
  async build(): Promise<BaseEvent | undefined> {
    const o = this.#o;
    const t0 = performance.now();
    const content = await o.runner.exclusive(() => this.#read());
    if (!content || this.#stopped) return undefined;
    const readMs = performance.now() - t0;
    const history = content.history;
    const x = o.runner.retention.purgeThrough(content.checkpoint, this.#retain, history, Date.now());
    const { frames, manifest } = baseFrames(content, {
      builder: o.nodeId,
      retainFrom: x + 1,
      builtAt: Date.now(),
    });
    const published = await publishBase(frames, {
      links: o.links,
      names: o.names,
      codec: o.codec,
      need: o.need,
      timeoutMs: o.timeoutMs,
      app: o.app,
      afterChunk: holdAfterChunks(content.checkpoint, o.log),
      halted: () => this.#halted,
    });
    if (this.#halted) return undefined;
    this.#last = content.checkpoint;
    // Durable under the policy: cut each relay below the window, never below this base.
    for (let r = 0; r < o.links.length; r++) {
      let cut = o.runner.retention.cut(r, x, history);
      const first = published.firstSeq[r];
      if (first !== undefined) cut = Math.min(cut, first);
      if (cut > 1) this.#pending[r] = { cut, x };
    }
    await this.#purgePending();
    const ev: BaseEvent = {
      checkpoint: content.checkpoint,
      buildMs: performance.now() - t0,
      readMs,
      chunks: manifest.chunks,
      keys: manifest.keys,
      bytes: frames.reduce((n, f) => n + f.body.byteLength, 0),
      retainFrom: manifest.retainFrom,
      purgedBelow: this.#purgedBelow,
    };
    this.last = ev;
    o.log?.({ level: 'info', msg: 'base durable', ...ev, purgedBelow: [...ev.purgedBelow] });
    o.onBase?.(ev);
    return ev;
  }

  #purged: (number | null)[] = [];

  get #purgedBelow(): (number | null)[] {
    return this.#o.links.map((_, r) => this.#purged[r] ?? null);
  }

  async #purgePending(): Promise<void> {
    const o = this.#o;
    if (this.#halted) return;
    await Promise.all(
      this.#pending.map(async (p, r) => {
        if (!p) return;
        const link = o.links[r]!;
        if (!link.connected()) return;
        try {
          await purgeBelow(link, o.names.stream, p.cut);
          this.#pending[r] = undefined;
          this.#purged[r] = p.cut;
          o.runner.retention.forget(r, p.cut, p.x);
          o.log?.({ level: 'info', msg: 'purged', relay: link.servers, below: p.cut, through: p.x });
        } catch (err) {
          o.log?.({ level: 'warn', msg: 'purge', relay: link.servers, error: (err as Error).message });
        }
      }),
    );
  }

  #trimmedAt = 0;

  /**
   * A standby that does not build still records every message it reads: every 10 s it forgets
   * what the relays no longer hold (another node purged it) and seals no future window needs,
   * so its bookkeeping stays bounded by the window, not the history.
   */
  async #trim(): Promise<void> {
    const now = Date.now();
    if (now - this.#trimmedAt < 10_000) return;
    this.#trimmedAt = now;
    const o = this.#o;
    const x = o.runner.applier.position.checkpoint - this.#retain.checkpoints - 1;
    await Promise.all(
      o.links.map(async (link, r) => {
        if (!link.connected()) return;
        const b = await streamBounds(link, o.names.stream).catch(() => undefined);
        if (b) o.runner.retention.forget(r, b.firstSeq, x);
      }),
    );
  }

  /** Reads the store, the image and the history at the committed checkpoint (applying paused). */
  async #read(): Promise<BaseContent | undefined> {
    const { runner, adapter } = this.#o;
    if (this.#stopped) return undefined;
    const pos = runner.applier.position;
    if (pos.checkpoint === 0 || pos.checkpoint <= this.#last) return undefined;
    const images = runner.images;
    if (images.checkpoint !== pos.checkpoint) return undefined;
    const keys = await adapter.keys();
    const entries: WriteOp[] = [];
    for (const key of keys) {
      const value = await adapter.get(key);
      if (value !== undefined) entries.push({ op: 'put', key, value });
    }
    const raw = serializeImage(images.materialize());
    const image: ImageRecord = {
      format: ImageFormat.Full,
      codec: ImageCodec.None,
      base: 0,
      stateVersion: images.stateVersion,
      rawLength: raw.byteLength,
      payload: raw,
    };
    const history: EpochCut[] = runner.applier.history.map((h) => ({
      epoch: h.epoch,
      cutoff: h.cutoff,
      cutoffEpoch: h.cutoffEpoch,
    }));
    const sealSeq = runner.lastSealSeq;
    return { checkpoint: pos.checkpoint, epoch: pos.epoch, entries, image, history, sealSeq };
  }

  /** Stops looking; a build in flight finishes (it never reads the store after this). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#busy;
  }

  /**
   * Stops at once, without waiting for a build in flight (the node is taking over): that build
   * sends no more chunks, no manifest, and purges nothing.
   */
  halt(): void {
    this.#stopped = true;
    this.#halted = true;
    clearInterval(this.#timer);
  }
}

/**
 * Test hook (`RESTARTPOINT_TEST_BASE_HOLD_AFTER_CHUNKS=N`): once N chunks of a base are durable,
 * log `base held` and never go on, so that a test SIGKILLs a real builder mid-build, with chunks
 * on the relays and no manifest (test/integration/history-kill.test.ts). Unset: no hook.
 */
function holdAfterChunks(
  checkpoint: number,
  log: ((e: LogEvent) => void) | undefined,
): ((durable: number, chunks: number) => Promise<void>) | undefined {
  const n = Number(process.env.RESTARTPOINT_TEST_BASE_HOLD_AFTER_CHUNKS ?? 0);
  if (!(n > 0)) return undefined;
  return async (durable, chunks) => {
    if (durable < n) return;
    log?.({ level: 'warn', msg: 'base held', checkpoint, durable, chunks });
    await new Promise<never>(() => undefined);
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

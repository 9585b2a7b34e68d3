/**
 * The hot standby as a running thing: reads the app's stream on every relay from the
 * beginning, merges what the relays deliver (each frame counted once, a gap on one relay filled
 * by another), feeds the applier, keeps the image chain materialized, and tells the takeover
 * when it has caught up with enough relays to have seen every acknowledged checkpoint.
 */
import { ErrorCode, RestartpointError } from '../errors.js';
import { ImageChain } from '../image/chain.js';

/** Keyframes of at least this many raw bytes are decoded off the main thread. */
export const OFF_THREAD_IMAGE_BYTES = 1024 * 1024;
/** Longest the applier runs a backlog before it lets the event loop turn (see `#enqueue`). */
const TURN_MS = 20;
/** Most messages queued for the applier before a reader waits (see `#enqueue`). */
const MAX_QUEUED = 1_024;
/** Most bytes queued for the applier before a reader waits. */
const MAX_QUEUED_BYTES = 64 * 1024 * 1024;
import type { FrameCodec } from '../protocol/codec.js';
import type { AppNames } from '../protocol/subjects.js';
import type { Limits } from '../limits.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { NatsLink } from '../transport/connection.js';
import {
  StreamReader,
  lastStreamSeq,
  lastSubjectSeq,
  streamState,
  type StreamMessage,
} from '../transport/consumer.js';
import { isPending } from '../transport/relays.js';
import type { RelayLagSample } from '../observability/observer.js';
import { surveyHistory, type LoadedBase } from '../history/base.js';
import { RetentionTracker } from '../history/retention.js';
import type { EpochCut } from '../protocol/records.js';
import { DivergedError, decodeMeta, discards, encodeMeta, type Applier, type ApplyMode } from './applier.js';
import { Intake, type IntakeOptions } from './intake.js';

/** Options of a standby run. */
export interface StandbyOptions {
  /** One link per relay, in config order. */
  readonly links: readonly NatsLink[];
  readonly names: AppNames;
  readonly app: string;
  readonly adapter: StorageAdapter;
  readonly mode: ApplyMode;
  /**
   * Witnesses a seal needs before it counts as durable: relays that hold it (the ack policy's
   * count), or with FEC, distinct shards of it.
   */
  readonly need: number;
  /**
   * The codec shared with the primary: opens each message (signed mode: MAC verified, body
   * decrypted before any decoder reads it) and, with FEC, rebuilds parts from shards.
   */
  readonly codec: FrameCodec;
  /** Limits in force (frame, writes per checkpoint, staged bytes, image bytes). */
  readonly limits?: Limits;
  readonly onReject?: IntakeOptions['onReject'];
  readonly onCommit?: IntakeOptions['onCommit'];
  readonly onFence?: IntakeOptions['onFence'];
  readonly onRollback?: IntakeOptions['onRollback'];
  readonly onStoreRetry?: IntakeOptions['onStoreRetry'];
  /** Another relay's copy of a frame already committed (expected; logged at debug level). */
  readonly onLateCopy?: IntakeOptions['onLateCopy'];
  /**
   * When to apply (seed claim 2: the relays hold the data durably meanwhile): `everyMs` applies
   * what arrived in batches once per interval; `maxBytesPerSec` caps the apply bandwidth.
   * Default: continuously, as fast as frames arrive. A takeover always catches up at full speed.
   */
  readonly apply?: { readonly everyMs?: number; readonly maxBytesPerSec?: number };
  /**
   * Trust this node's own store at start when it is on the current history (default true);
   * `false` always loads the base (or replays the relays) into a cleared store.
   */
  readonly resumeOwnStore?: boolean;
  /**
   * How the own store is checked before a restart trusts it: `quick` (identity token and key
   * count, the default) or `full` (every key and value against the committed digest). The SDK
   * passes `full` when the node's `verifyStore` is `full`.
   */
  readonly verifyOwnStore?: 'quick' | 'full';
  /** Told how the start went: from the base, from the own store, or from the first message. */
  readonly onStartPath?: (path: StartPath) => void;
}

/** How a standby started (see `StandbyRunner.start`). */
export interface StartPath {
  readonly from: 'own-store' | 'base' | 'relays';
  /** The base used (its checkpoint), if any. */
  readonly base: number | undefined;
  /** The own store's checkpoint trusted (own-store), or why it was not trusted. */
  readonly own: number | undefined;
  readonly why: string;
}

/** Per-relay progress of a standby. */
export interface RelayLag {
  readonly servers: string;
  /** Stream sequence applied so far. */
  readonly applied: number;
}

/** Resolves once `n` of `promises` resolved. */
function atLeast(n: number, promises: Promise<void>[]): Promise<void> {
  return new Promise((resolve) => {
    let done = 0;
    if (n <= 0) resolve();
    for (const p of promises) {
      void p.then(() => {
        if (++done === n) resolve();
      });
    }
  });
}

/** One standby run. */
export class StandbyRunner {
  #intake!: Intake;
  #images!: ImageChain;
  /** Which stream seq carries which frame, and the seals committed: for retention. */
  #retention: RetentionTracker;
  /** The base this run started from (or rebuilt from), if any. */
  #base: LoadedBase | undefined;
  #startPath: StartPath | undefined;
  /** Frame seq of the seal of the last committed checkpoint (or of the base's), if known. */
  #lastSealSeq: number | undefined;
  readonly #o: StandbyOptions;
  #readers: StreamReader[];
  readonly #applied: number[];
  /** Per relay: stream seq of the last message whose take committed a checkpoint (watchdog). */
  readonly #committedSeq: number[];
  /** Per relay: when the relay stored the last message applied from it (wall-clock ms). */
  readonly #appliedAt: number[];
  readonly #waiters: { relay: number; seq: number; resolve: () => void }[] = [];
  #chain: Promise<void> = Promise.resolve();
  /** Messages enqueued and not yet being handled, and their bytes. */
  #queued = 0;
  #queuedBytes = 0;
  /** Bumped by a rebuild: messages its stopped readers queued before are not applied. */
  #generation = 0;
  /** When the applier last let the event loop turn (see `#enqueue`). */
  #turnAt = performance.now();
  #paced: boolean;
  #tick = 0;
  #tickWaiters: (() => void)[] = [];
  #tickTimer: NodeJS.Timeout | undefined;
  #tokens = 0;
  #tokensAt = performance.now();
  #failure: unknown;
  #stopped = false;
  #started = false;
  #onFailure: ((err: unknown) => void)[] = [];

  constructor(opts: StandbyOptions) {
    this.#o = opts;
    this.#retention = new RetentionTracker(opts.links.length);
    this.#fresh();
    this.#readers = opts.links.map((l) => new StreamReader(l, opts.names.stream));
    this.#applied = opts.links.map(() => 0);
    this.#committedSeq = opts.links.map(() => 0);
    this.#appliedAt = opts.links.map(() => 0);
    this.#paced = opts.apply?.everyMs !== undefined || opts.apply?.maxBytesPerSec !== undefined;
    if (opts.apply?.everyMs !== undefined) {
      this.#tickTimer = setInterval(() => {
        this.#tick++;
        for (const w of this.#tickWaiters.splice(0)) w();
      }, opts.apply.everyMs);
      this.#tickTimer.unref();
    }
  }

  /** A new intake and image chain (at start, and when rebuilding from the base). */
  #fresh(): void {
    const opts = this.#o;
    this.#images = new ImageChain({
      maxImageBytes: opts.limits?.maxImageBytes,
      maxDepth: opts.limits?.maxDepth,
      // Large keyframes are decoded in a worker thread: the lease watch and the consumers keep
      // running while a 100 MB image is read (docs/images.md#off-the-main-thread).
      offThreadBytes: OFF_THREAD_IMAGE_BYTES,
    });
    this.#retention = new RetentionTracker(opts.links.length);
    const retention = this.#retention;
    this.#intake = new Intake({
      app: opts.app,
      codec: opts.codec,
      relays: opts.links.length,
      need: opts.need,
      adapter: opts.adapter,
      images: this.#images,
      mode: opts.mode,
      limits: opts.limits,
      onReject: opts.onReject,
      onCommit: (pos, sealSeq) => {
        this.#lastSealSeq = sealSeq;
        retention.committed(pos.epoch, pos.checkpoint, sealSeq, Date.now());
        opts.onCommit?.(pos, sealSeq);
      },
      onFence: opts.onFence,
      onRollback: opts.onRollback,
      onStoreRetry: opts.onStoreRetry,
      onLateCopy: opts.onLateCopy,
      onSkippedSeal: (epoch, checkpoint, sealSeq) =>
        retention.committed(epoch, checkpoint, sealSeq, Date.now()),
      onOpened: (relay, streamSeq, epoch, seq, bytes) =>
        retention.record(relay, streamSeq, epoch, seq, bytes),
      // Messages queued behind the one applied: checkpoints are committed in batches.
      more: () => this.#queued > 0,
    });
  }

  /** The message path of this run. */
  get intake(): Intake {
    return this.#intake;
  }

  /** The materialized image chain of this run. */
  get images(): ImageChain {
    return this.#images;
  }

  /** Retention bookkeeping of this run (src/history/retention.ts). */
  get retention(): RetentionTracker {
    return this.#retention;
  }

  /** The base this run loaded (or `undefined`: none, or it resumed without one). */
  get base(): LoadedBase | undefined {
    return this.#base;
  }

  /** Frame seq of the seal of the last committed checkpoint, if known (a base carries it). */
  get lastSealSeq(): number | undefined {
    return this.#lastSealSeq;
  }

  /** How this run started. */
  get startPath(): StartPath | undefined {
    return this.#startPath;
  }

  /**
   * Runs `fn` between two messages: nothing is applied while it runs (the relays hold what
   * arrives meanwhile), so the store, the image and the position are those of one committed
   * checkpoint. A base builder reads its copy here.
   */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn);
    this.#chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /**
   * The applier's `relax()` (commit every complete sealed checkpoint), between two messages: the
   * message path commits too, and two commits interleaved would both apply the next image (the
   * second finds the chain ahead of the store: "delta for checkpoint n applies to image n-1, but
   * this standby holds image n").
   */
  relax(): Promise<void> {
    return this.exclusive(() => this.#intake.applier.relax());
  }

  /** Stops pacing: from now on frames apply as fast as they arrive (a takeover catching up). */
  unpace(): void {
    this.#paced = false;
    clearInterval(this.#tickTimer);
    for (const w of this.#tickWaiters.splice(0)) w();
  }

  /** Waits until pacing allows applying `bytes` more (interval batches, bandwidth budget). */
  async #pace(bytes: number, arrivedTick: number): Promise<void> {
    if (!this.#paced) return;
    if (this.#o.apply?.everyMs !== undefined && this.#tick === arrivedTick) {
      await new Promise<void>((r) => this.#tickWaiters.push(r));
    }
    const rate = this.#o.apply?.maxBytesPerSec;
    if (rate === undefined || !this.#paced) return;
    const t = performance.now();
    this.#tokens = Math.min(rate, this.#tokens + ((t - this.#tokensAt) / 1000) * rate);
    this.#tokensAt = t;
    this.#tokens -= bytes;
    if (this.#tokens < 0) await new Promise((r) => setTimeout(r, (-this.#tokens / rate) * 1000));
  }

  /** Number of relays whose connection is up now. */
  get connectedRelays(): number {
    return this.#o.links.filter((l) => l.connected()).length;
  }

  /** Number of relays read. */
  get relayCount(): number {
    return this.#o.links.length;
  }

  /** How far each relay's stream has been applied. */
  lag(): RelayLag[] {
    return this.#o.links.map((l, i) => ({ servers: l.servers, applied: this.#applied[i]! }));
  }

  /**
   * Per-relay lag: messages stored on each relay and not yet applied here (`undefined` for a
   * relay that cannot be reached now).
   */
  async lagReport(): Promise<{ servers: string; applied: number; behind: number | undefined }[]> {
    return Promise.all(
      this.#o.links.map(async (l, i) => {
        const last = l.connected()
          ? await lastStreamSeq(l, this.#o.names.stream).catch(() => undefined)
          : undefined;
        const applied = this.#applied[i]!;
        return {
          servers: l.servers,
          applied,
          behind: last === undefined ? undefined : Math.max(0, last - applied),
        };
      }),
    );
  }

  /**
   * Per-relay lag in frames, bytes and seconds (`checkpoints` is left undefined: only the
   * primary knows its last checkpoint). Bytes are estimated from the stream's average message
   * size; seconds are the time between the newest stored message and the last applied one.
   */
  async lagSamples(): Promise<RelayLagSample[]> {
    return Promise.all(
      this.#o.links.map(async (l, i): Promise<RelayLagSample> => {
        const connected = l.connected();
        const st = connected ? await streamState(l, this.#o.names.stream).catch(() => undefined) : undefined;
        if (!st)
          return {
            servers: l.servers,
            connected,
            frames: undefined,
            bytes: undefined,
            seconds: undefined,
            checkpoints: undefined,
          };
        const frames = Math.max(0, st.lastSeq - this.#applied[i]!);
        const avg = st.messages > 0 ? st.bytes / st.messages : 0;
        const seconds =
          frames === 0
            ? 0
            : Math.max(0, (st.lastTimestampMs - (this.#appliedAt[i]! || st.firstTimestampMs)) / 1000);
        return {
          servers: l.servers,
          connected,
          frames,
          bytes: Math.round(frames * avg),
          seconds,
          checkpoints: undefined,
        };
      }),
    );
  }

  /**
   * Prepares the store and starts applying every relay's frames from its first retained message.
   *
   * 1. The newest intact base on the relays is found (src/history/base.ts).
   * 2. The node's own store is trusted when its meta says it was a standby's (a primary's store
   *    holds unsealed writes), it passes `verify({ quick: true })`, its checkpoint is at or after
   *    the base's, and no fence of the base's epoch history discards it. Then the base's image
   *    (or, without a base, the relays from the first message) brings the image chain up to the
   *    store's checkpoint, without touching the store.
   * 3. Otherwise the store is cleared and loaded from the base (or, without a base, rebuilt from
   *    the relays' first message). A history whose start was purged, with no intact base, is an
   *    error that says so.
   * A fence read later that discards what the store held makes the run rebuild from the base.
   */
  async start(): Promise<void> {
    await this.#prepare(this.#o.resumeOwnStore ?? true);
    this.#started = true;
    await this.#startReaders();
  }

  async #startReaders(): Promise<void> {
    await Promise.all(
      this.#readers.map((reader, relay) =>
        // A relay down since the node started is read once it joins (`joinRelay`).
        isPending(this.#o.links[relay]!)
          ? undefined
          : reader.start(
              1,
              (m) => this.#enqueue(relay, m),
              (err) => this.#fail(err),
              this.#o.names.subject,
            ),
      ),
    );
  }

  /**
   * Relay `relay`, down when the node started, is connected now (its link replaced in place in
   * `links`): read it from where this run stands on it (its first message). Witnesses from it
   * count from then on, so checkpoints it holds become durable here without waiting for a
   * takeover. Nothing once the run stopped.
   */
  async joinRelay(relay: number): Promise<void> {
    // Before start() the relay is read by start() itself; after stop(), not at all.
    if (!this.#started || this.#stopped) return;
    await this.#restartReader(relay);
  }

  async #prepare(trustOwn: boolean): Promise<void> {
    const o = this.#o;
    // The base and the stream bounds read consistently (a purge between them is not a lost base).
    const survey = await surveyHistory({ links: o.links, names: o.names, codec: o.codec, app: o.app });
    const base = survey.base;
    const ownOrWhy = trustOwn
      ? await this.#ownStore(base?.manifest.history ?? [], base?.manifest.checkpoint ?? 0)
      : undefined;
    // Without a base, only an untrimmed history can rebuild the image (or the store): it is
    // trimmed when no connected relay still holds its stream from the first message (one relay
    // that does, such as one a new primary backfilled, is enough to replay from).
    const trimmed = base === undefined && survey.trimmed;
    this.#base = base;
    const bc = base?.manifest.checkpoint;
    const own =
      ownOrWhy !== undefined && typeof ownOrWhy !== 'string' && trimmed
        ? 'the history was trimmed and no intact base was found to rebuild the image from'
        : ownOrWhy;
    if (own && typeof own !== 'string') {
      // Snapshot mode: areas written above the last formed snapshot are not trusted.
      if (o.mode === 'snapshot') await o.adapter.releaseAreas?.();
      if (base) this.#seedImage(base);
      this.#intake.applier.seed(
        base
          ? { epoch: base.manifest.epoch, checkpoint: base.manifest.checkpoint, streamSeq: 0 }
          : { epoch: 0, checkpoint: 0, streamSeq: 0 },
        base?.manifest.history ?? [],
        { epoch: own.epoch, checkpoint: own.checkpoint },
        base?.manifest.sealSeq,
      );
      this.#lastSealSeq = base?.manifest.sealSeq;
      this.#startPath = {
        from: 'own-store',
        base: bc,
        own: own.checkpoint,
        why: 'own store on the current history',
      };
    } else if (base) {
      await o.adapter.clear();
      await this.#loadStore(base);
      this.#seedImage(base);
      this.#intake.applier.seed(
        { epoch: base.manifest.epoch, checkpoint: base.manifest.checkpoint, streamSeq: 0 },
        base.manifest.history,
        undefined,
        base.manifest.sealSeq,
      );
      this.#lastSealSeq = base.manifest.sealSeq;
      this.#startPath = { from: 'base', base: bc, own: undefined, why: own ?? 'own store not used' };
    } else {
      // No intact base: the whole history must still be on the relays.
      if (trimmed) {
        const why = survey.rejected.map((r) => `base ${r.checkpoint}: ${r.why}`).join('; ');
        throw new RestartpointError(
          ErrorCode.Frame,
          `the relays' history was trimmed and no intact base was found (${why || 'no base message on any reachable relay'}): this node cannot rebuild the store; bring back a relay that holds a base, or start from a node whose store is current`,
          true,
        );
      }
      await o.adapter.clear();
      this.#startPath = { from: 'relays', base: undefined, own: undefined, why: own ?? 'own store not used' };
    }
    o.onStartPath?.(this.#startPath);
  }

  /** The own store's position when it may be trusted, or why not. */
  async #ownStore(
    history: readonly EpochCut[],
    baseCheckpoint: number,
  ): Promise<{ epoch: number; checkpoint: number } | string> {
    const o = this.#o;
    const meta = decodeMeta(await o.adapter.readMeta());
    if (!meta || meta.checkpoint <= 0) return 'own store holds no committed checkpoint';
    if (meta.app !== o.app) return `own store belongs to app '${meta.app}'`;
    if (meta.role !== 'standby') return "own store was a primary's (it may hold writes no checkpoint sealed)";
    if (meta.checkpoint < baseCheckpoint)
      return `own store at checkpoint ${meta.checkpoint} is behind the base at ${baseCheckpoint}`;
    const cut = history.find((h) => discards(h, meta.epoch, meta.checkpoint));
    if (cut)
      return `own store's checkpoint ${meta.checkpoint} of epoch ${meta.epoch} was discarded by the fence of epoch ${cut.epoch} (cut at ${cut.cutoff})`;
    const v = await o.adapter
      .verify({ quick: o.verifyOwnStore !== 'full' })
      .catch((err: unknown) => (err as Error).message);
    if (typeof v === 'string') return `own store failed its check: ${v}`;
    if (!v.ok) return `own store failed its check (${v.status}): ${v.detail}`;
    return { epoch: meta.epoch, checkpoint: meta.checkpoint };
  }

  /** Writes the base's entries into the (cleared) store, in batches, the meta last. */
  async #loadStore(base: LoadedBase): Promise<void> {
    const o = this.#o;
    const m = base.manifest;
    const empty = encodeMeta({ app: o.app, epoch: 0, checkpoint: 0, streamSeq: 0, role: 'standby' });
    const batch = 4_096;
    const n = base.entries.length;
    for (let i = 0; i + batch < n; i += batch)
      await o.adapter.commit(base.entries.slice(i, i + batch), empty);
    const rest = base.entries.slice(Math.max(0, Math.floor((n - 1) / batch) * batch));
    await o.adapter.commit(
      rest,
      encodeMeta({ app: o.app, epoch: m.epoch, checkpoint: m.checkpoint, streamSeq: 0, role: 'standby' }),
    );
  }

  #seedImage(base: LoadedBase): void {
    this.#images.check(base.manifest.checkpoint, base.image, base.manifest.epoch);
    this.#images.apply(base.manifest.checkpoint, base.image, base.manifest.epoch);
  }

  /**
   * A fence discarded what this node's store holds: stop reading, clear, load the base (or
   * replay from the first message) and read again.
   */
  async #rebuild(): Promise<void> {
    this.#generation++;
    await this.#readAgain(Promise.resolve());
    // The new readers' messages are taken (#handle drops them while rebuilding); the old ones'
    // are dropped by their generation.
    this.#rebuilding = false;
    await this.#startReaders();
  }

  /**
   * Both rebuilds: stops the readers, waits for `drained`, forgets every relay's position,
   * clears the store and loads the newest base (#prepare). The caller starts the new readers.
   */
  async #readAgain(drained: Promise<unknown>): Promise<void> {
    await Promise.all(this.#readers.map((r) => r.stop()));
    await drained;
    this.#readers = this.#o.links.map((l) => new StreamReader(l, this.#o.names.stream));
    this.#applied.fill(0);
    this.#committedSeq.fill(0);
    this.#appliedAt.fill(0);
    this.#fresh();
    await this.#prepare(false);
  }

  /** Whether the run is rebuilding its store (after a divergence, or behind the purge). */
  get rebuilding(): boolean {
    return this.#rebuilding;
  }

  /** Per relay, the stream seq of the last message whose take committed a checkpoint. */
  get committedSeqs(): readonly number[] {
    return this.#committedSeq;
  }

  /**
   * This standby fell behind the purge point (src/history/watchdog.ts): its next frames are gone
   * from every relay. Stops reading, drops what was queued, clears the store, loads the newest
   * base and reads every relay again from its first message. Resolves once reading again.
   */
  async rebuildBehind(why: string): Promise<void> {
    if (this.#rebuilding || this.#stopped || !this.#started) return;
    // Between two messages: no take is half done when the store is cleared.
    await this.exclusive(async () => {
      this.#rebuilding = true;
      // Messages the old readers queued are dropped (#enqueue compares generations).
      this.#generation++;
    });
    try {
      this.#o.onStartPath?.({ from: 'base', base: undefined, own: undefined, why: `rebuild: ${why}` });
      // Messages queued by the old readers are dropped (generation): wait for them to drain.
      await this.#readAgain(this.#chain);
    } catch (err) {
      this.#fail(err);
      throw err;
    } finally {
      this.#rebuilding = false;
    }
    await this.#startReaders();
  }

  /**
   * Messages of all relays go through one queue: the applier takes one at a time. A reader hands
   * over its next message at once while the queue is short (up to `MAX_QUEUED` messages and
   * `MAX_QUEUED_BYTES`), so that a standby behind its relays has messages queued behind the one
   * it applies and commits their checkpoints in batches; past that, the reader waits.
   */
  #enqueue(relay: number, m: StreamMessage): Promise<void> {
    const arrived = this.#tick;
    const generation = this.#generation;
    const bytes = m.data.byteLength;
    this.#queued++;
    this.#queuedBytes += bytes;
    const run = this.#chain.then(async () => {
      this.#queued--;
      this.#queuedBytes -= bytes;
      // Read before a rebuild: the rebuilt run reads its relays again from the start.
      if (generation !== this.#generation) return;
      // A backlog is applied in turns of the event loop: timers (the lease watch, presence, a
      // lease keeper in the same process) run at least every `TURN_MS`.
      if (performance.now() - this.#turnAt > TURN_MS) {
        await new Promise((r) => setImmediate(r));
        this.#turnAt = performance.now();
      }
      await this.#pace(bytes, arrived);
      await this.#handle(relay, m);
    });
    this.#chain = run.catch(() => undefined);
    if (this.#queued < MAX_QUEUED && this.#queuedBytes < MAX_QUEUED_BYTES) {
      // A failure is recorded by #handle (#fail); the reader learns it from the next wait.
      run.catch(() => undefined);
      return Promise.resolve();
    }
    return run;
  }

  async #handle(relay: number, m: StreamMessage): Promise<void> {
    if (this.#rebuilding || this.#failure !== undefined) return;
    try {
      const before = this.#intake.applier.position.checkpoint;
      await this.#intake.take(relay, m.streamSeq, m.data);
      const pos = this.#intake.applier.position;
      // Batched: the take of a later message (maybe one read past a purged gap) can commit what
      // earlier ones staged, so the committed checkpoint's seal seq bounds it (the purge
      // watchdog asks whether a relay's first message is past what this standby committed from).
      if (pos.checkpoint !== before) this.#committedSeq[relay] = Math.min(m.streamSeq, pos.streamSeq);
      this.#applied[relay] = m.streamSeq;
      this.#appliedAt[relay] = m.timestampMs;
      // The queue ran dry: what waited for a batch is committed now, in slices, with the event
      // loop let run between them (a long backlog must not starve the lease watch).
      const applier = this.#intake.applier;
      while (this.#queued === 0 && applier.deferred) {
        await new Promise((r) => setImmediate(r));
        await applier.recheck();
      }
      // Waiters (a catch-up) are released once what they waited for is committed.
      if (!applier.deferred) this.#release();
    } catch (err) {
      // Only a run that trusted its own store rebuilds (once): one that diverges after a clean
      // start saw a history that contradicts itself, which a rebuild would only repeat.
      if (err instanceof DivergedError && !this.#rebuilding && this.#startPath?.from === 'own-store') {
        // What this node's store held is not on the agreed history: roll back by rebuilding.
        this.#rebuilding = true;
        this.#o.onStartPath?.({
          from: 'base',
          base: undefined,
          own: undefined,
          why: `rebuild: ${err.message}`,
        });
        void this.#rebuild().then(
          () => {
            this.#rebuilding = false;
          },
          (e: unknown) => this.#fail(e),
        );
        return;
      }
      this.#fail(err);
      throw err;
    }
  }

  #rebuilding = false;

  /** Shard figures (FEC): rejected shards by reason, parts rebuilt, rebuilt with parity. */
  get shardCounters(): Intake['shardCounters'] {
    return this.#intake.shardCounters;
  }

  /** The applier this run feeds. */
  get applier(): Applier {
    return this.#intake.applier;
  }

  /**
   * Resolves once, on at least `quorum` relays, everything stored when this call began has been
   * applied. Relays that cannot be reached are skipped and tried again until the quorum is met.
   */
  async catchUp(quorum: number, signal?: AbortSignal): Promise<void> {
    for (;;) {
      if (this.#failure !== undefined) throw this.#failure;
      if (signal?.aborted) return;
      const targets = await this.#streamEnds(quorum);
      const reachable = targets.flatMap((t, relay) => (t === undefined ? [] : [{ relay, seq: t }]));
      if (reachable.length >= quorum) {
        // A quorum of relays caught up is enough: a relay whose reader is still recovering from
        // a restart (its consumer re-created after missed heartbeats) does not hold this up.
        const caughtUp = await Promise.race([
          atLeast(
            quorum,
            reachable.map((t) => this.#waitFor(t.relay, t.seq)),
          ).then(() => true),
          this.failed(),
          new Promise<false>((r) => setTimeout(() => r(false), 3_000).unref()),
        ]);
        if (caughtUp || signal?.aborted) return;
        // No progress for 3 s: a reader whose consumer lived on a server that died may never
        // recover by itself. Re-create the readers still behind, from where they stopped.
        for (const t of reachable) if (this.#applied[t.relay]! < t.seq) await this.#restartReader(t.relay);
        continue;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /**
   * The last stream sequence of each relay (`undefined`: down, or no answer in time). A relay
   * whose connection is down is skipped at once; a silent one (a stopped server whose socket is
   * still open) is not waited for once `quorum` relays answered: the others get a short grace,
   * so a takeover never waits on a relay the policy can do without.
   */
  #streamEnds(quorum: number): Promise<(number | undefined)[]> {
    const links = this.#o.links;
    const ends: (number | undefined)[] = links.map(() => undefined);
    return new Promise((resolve) => {
      let settled = 0;
      let answered = 0;
      let grace: NodeJS.Timeout | undefined;
      const finish = (): void => {
        clearTimeout(grace);
        clearTimeout(limit);
        resolve(ends.slice());
      };
      const limit = setTimeout(finish, 2_000);
      const done = (): void => {
        settled++;
        if (settled === links.length) finish();
        else if (answered >= quorum && grace === undefined) grace = setTimeout(finish, 100);
      };
      links.forEach((l, relay) => {
        if (!l.connected()) return done();
        lastSubjectSeq(l, this.#o.names.stream, this.#o.names.subject).then(
          (seq) => {
            ends[relay] = seq;
            answered++;
            done();
          },
          () => done(),
        );
      });
    });
  }

  /** Replaces relay `relay`'s reader with a new one starting after what was applied from it. */
  async #restartReader(relay: number): Promise<void> {
    await this.#readers[relay]!.stop().catch(() => undefined);
    // What the old reader queued is applied first: the new one starts after it.
    await this.#chain;
    const reader = new StreamReader(this.#o.links[relay]!, this.#o.names.stream);
    this.#readers[relay] = reader;
    await reader
      .start(
        this.#applied[relay]! + 1,
        (m) => this.#enqueue(relay, m),
        (err) => this.#fail(err),
        this.#o.names.subject,
      )
      .catch(() => undefined); // not reachable now: the next round tries again
  }

  #waitFor(relay: number, seq: number): Promise<void> {
    if (this.#applied[relay]! >= seq) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ relay, seq, resolve }));
  }

  /** Resolves never; rejects when applying fails (store or image error). */
  failed(): Promise<never> {
    return new Promise((_, reject) => {
      if (this.#failure !== undefined) reject(this.#failure);
      else this.#onFailure.push(reject);
    });
  }

  /** Stops reading. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.unpace();
    await Promise.all(this.#readers.map((r) => r.stop()));
    await this.#chain;
    await this.images.close();
  }

  #release(): void {
    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      const w = this.#waiters[i]!;
      if (this.#applied[w.relay]! >= w.seq) {
        this.#waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  #fail(err: unknown): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    for (const f of this.#onFailure) f(err);
    this.#onFailure = [];
  }
}

/**
 * The hot standby as a running thing: reads the app's stream on every relay from the
 * beginning, merges what the relays deliver (each frame counted once, a gap on one relay filled
 * by another), feeds the applier, keeps the image chain materialized, and tells the takeover
 * when it has caught up with enough relays to have seen every acknowledged checkpoint.
 */
import { ImageChain } from '../image/chain.js';

/** Keyframes of at least this many raw bytes are decoded off the main thread. */
export const OFF_THREAD_IMAGE_BYTES = 1024 * 1024;
import type { FrameCodec } from '../protocol/codec.js';
import type { AppNames } from '../protocol/subjects.js';
import type { Limits } from '../limits.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { NatsLink } from '../transport/connection.js';
import { StreamReader, lastStreamSeq, streamState, type StreamMessage } from '../transport/consumer.js';
import type { RelayLagSample } from '../observability/observer.js';
import type { Applier, ApplyMode } from './applier.js';
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
  readonly onStoreRetry?: IntakeOptions['onStoreRetry'];
  /**
   * When to apply (seed claim 2: the relays hold the data durably meanwhile): `everyMs` applies
   * what arrived in batches once per interval; `maxBytesPerSec` caps the apply bandwidth.
   * Default: continuously, as fast as frames arrive. A takeover always catches up at full speed.
   */
  readonly apply?: { readonly everyMs?: number; readonly maxBytesPerSec?: number };
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
  readonly intake: Intake;
  readonly images: ImageChain;
  readonly #o: StandbyOptions;
  #readers: StreamReader[];
  readonly #applied: number[];
  /** Per relay: when the relay stored the last message applied from it (wall-clock ms). */
  readonly #appliedAt: number[];
  readonly #waiters: { relay: number; seq: number; resolve: () => void }[] = [];
  #chain: Promise<void> = Promise.resolve();
  #paced: boolean;
  #tick = 0;
  #tickWaiters: (() => void)[] = [];
  #tickTimer: NodeJS.Timeout | undefined;
  #tokens = 0;
  #tokensAt = performance.now();
  #failure: unknown;
  #onFailure: ((err: unknown) => void)[] = [];

  constructor(opts: StandbyOptions) {
    this.#o = opts;
    this.images = new ImageChain({
      maxImageBytes: opts.limits?.maxImageBytes,
      maxDepth: opts.limits?.maxDepth,
      // Large keyframes are decoded in a worker thread: the lease watch and the consumers keep
      // running while a 100 MB image is read (docs/images.md#off-the-main-thread).
      offThreadBytes: OFF_THREAD_IMAGE_BYTES,
    });
    this.intake = new Intake({
      app: opts.app,
      codec: opts.codec,
      relays: opts.links.length,
      need: opts.need,
      adapter: opts.adapter,
      images: this.images,
      mode: opts.mode,
      limits: opts.limits,
      onReject: opts.onReject,
      onCommit: opts.onCommit,
      onFence: opts.onFence,
      onStoreRetry: opts.onStoreRetry,
    });
    this.#readers = opts.links.map((l) => new StreamReader(l, opts.names.stream));
    this.#applied = opts.links.map(() => 0);
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
   * Empties the store and starts applying every relay's stream from its first message. The
   * store is rebuilt from the relays' history, so whatever a crash left in it (a primary's
   * unsealed writes, a checkpoint the new primary's history does not contain) cannot survive.
   */
  async start(): Promise<void> {
    await this.#o.adapter.clear();
    await Promise.all(
      this.#readers.map((reader, relay) =>
        reader.start(
          1,
          (m) => this.#enqueue(relay, m),
          (err) => this.#fail(err),
        ),
      ),
    );
  }

  /** Messages of all relays go through one queue: the applier takes one at a time. */
  #enqueue(relay: number, m: StreamMessage): Promise<void> {
    const arrived = this.#tick;
    const run = this.#chain.then(async () => {
      await this.#pace(m.data.byteLength, arrived);
      await this.#handle(relay, m);
    });
    this.#chain = run.catch(() => undefined);
    return run;
  }

  async #handle(relay: number, m: StreamMessage): Promise<void> {
    try {
      await this.intake.take(relay, m.streamSeq, m.data);
      this.#applied[relay] = m.streamSeq;
      this.#appliedAt[relay] = m.timestampMs;
      this.#release();
    } catch (err) {
      this.#fail(err);
      throw err;
    }
  }

  /** Shard figures (FEC): rejected shards by reason, parts rebuilt, rebuilt with parity. */
  get shardCounters(): Intake['shardCounters'] {
    return this.intake.shardCounters;
  }

  /** The applier this run feeds. */
  get applier(): Applier {
    return this.intake.applier;
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
        lastStreamSeq(l, this.#o.names.stream).then(
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
    const reader = new StreamReader(this.#o.links[relay]!, this.#o.names.stream);
    this.#readers[relay] = reader;
    await reader
      .start(
        this.#applied[relay]! + 1,
        (m) => this.#enqueue(relay, m),
        (err) => this.#fail(err),
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

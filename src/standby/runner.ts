/**
 * The hot standby as a running thing: reads the app's stream on every relay from the
 * beginning, merges what the relays deliver (each frame counted once, a gap on one relay filled
 * by another), feeds the applier, keeps the image chain materialized, and tells the takeover
 * when it has caught up with enough relays to have seen every acknowledged checkpoint.
 */
import { FrameError, FrameRejectReason } from '../errors.js';
import { ImageChain } from '../image/chain.js';
import type { EnvelopeCodec } from '../protocol/envelope.js';
import { decodePart } from '../protocol/frame.js';
import { ShardAssembler } from '../fec/assembler.js';
import { decodeShard } from '../fec/shard.js';
import type { FecSettings } from '../transport/relays.js';
import type { AppNames } from '../protocol/subjects.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { NatsLink } from '../transport/connection.js';
import { StreamReader, lastStreamSeq, streamState, type StreamMessage } from '../transport/consumer.js';
import type { RelayLagSample } from '../observability/observer.js';
import { Applier, type ApplierOptions, type ApplyMode } from './applier.js';

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
  /** FEC in use: messages are shards, rebuilt into parts as soon as any k are in. */
  readonly fec?: FecSettings;
  /**
   * Signed mode: every message is opened (MAC verified, body decrypted) here before any decoder
   * reads it; unsigned, forged and damaged envelopes are rejected and counted.
   */
  readonly envelope?: EnvelopeCodec;
  readonly onReject?: ApplierOptions['onReject'];
  readonly onCommit?: ApplierOptions['onCommit'];
  readonly onFence?: ApplierOptions['onFence'];
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

/** Most frame ids remembered for counting on how many relays a frame was seen. */
const MAX_WITNESS_IDS = 200_000;

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
  readonly applier: Applier;
  readonly images = new ImageChain();
  readonly #o: StandbyOptions;
  #readers: StreamReader[];
  readonly #applied: number[];
  /** Per relay: when the relay stored the last message applied from it (wall-clock ms). */
  readonly #appliedAt: number[];
  readonly #witnesses = new Map<string, Set<number>>();
  readonly #shards: ShardAssembler | undefined;
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
    this.applier = new Applier({
      app: opts.app,
      adapter: opts.adapter,
      images: this.images,
      mode: opts.mode,
      onReject: opts.onReject,
      onCommit: (pos, sealSeq) => {
        this.#forget(pos.epoch, sealSeq);
        opts.onCommit?.(pos, sealSeq);
      },
      onFence: (epoch, nodeId, seq) => {
        this.#shards?.discardBefore(epoch);
        opts.onFence?.(epoch, nodeId, seq);
      },
      sealDurable: (epoch, seq) => (this.#witnesses.get(`${epoch}.${seq}.0`)?.size ?? 0) >= opts.need,
    });
    this.#shards = opts.fec ? new ShardAssembler({ app: opts.app }) : undefined;
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
      try {
        // Signed mode: nothing past this line sees a byte the cluster key did not vouch for.
        const data = this.#o.envelope ? this.#o.envelope.open(m.data) : m.data;
        if (this.#shards) {
          // FEC: a shard; the part is rebuilt as soon as any k valid shards are in.
          const shard = decodeShard(data, this.#o.app);
          this.#witness(`${shard.epoch}.${shard.seq}.${shard.part}`, shard.index);
          const bytes = await this.#shards.add(shard);
          if (bytes) await this.applier.handlePart(decodePart(bytes, this.#o.app), m.streamSeq);
          else await this.applier.recheck();
        } else {
          const part = decodePart(data, this.#o.app);
          const id = `${part.epoch}.${part.seq}.${part.part}`;
          if (this.#witnesses.get(id)?.has(relay)) {
            // The same part twice on one relay: a replay (or a re-send past the dedupe window).
            throw new FrameError(FrameRejectReason.Duplicate, `part ${id} again on relay ${relay}`);
          }
          const first = this.#witness(id, relay);
          if (first) await this.applier.handlePart(part, m.streamSeq);
          else if (this.#o.links.length > 1) await this.applier.recheck();
        }
      } catch (err) {
        if (err instanceof FrameError) this.applier.reject(err, m.streamSeq);
        else throw err;
      }
      this.#applied[relay] = m.streamSeq;
      this.#appliedAt[relay] = m.timestampMs;
      this.#release();
    } catch (err) {
      this.#fail(err);
      throw err;
    }
  }

  /**
   * Forgets witnesses of frames up to a committed seal: only frames not yet committed need them,
   * so the map stays as small as the uncommitted tail (a later copy of a forgotten frame reaches
   * the applier, which counts it as a duplicate).
   */
  #forget(epoch: number, sealSeq: number): void {
    for (const id of this.#witnesses.keys()) {
      const dot = id.indexOf('.');
      const e = Number(id.slice(0, dot));
      const s = Number(id.slice(dot + 1, id.indexOf('.', dot + 1)));
      if (e < epoch || (e === epoch && s <= sealSeq)) this.#witnesses.delete(id);
    }
  }

  /** Notes that `who` (a relay, or a shard index) holds message `id`; true when it is the first. */
  #witness(id: string, who: number): boolean {
    let w = this.#witnesses.get(id);
    if (!w) {
      w = new Set();
      this.#witnesses.set(id, w);
      if (this.#witnesses.size > MAX_WITNESS_IDS)
        this.#witnesses.delete(this.#witnesses.keys().next().value!);
    }
    const first = w.size === 0;
    w.add(who);
    return first;
  }

  /** Shard figures (FEC): rejected shards by reason, parts rebuilt, rebuilt with parity. */
  get shardCounters(): ShardAssembler['counters'] | undefined {
    return this.#shards?.counters;
  }

  /**
   * Resolves once, on at least `quorum` relays, everything stored when this call began has been
   * applied. Relays that cannot be reached are skipped and tried again until the quorum is met.
   */
  async catchUp(quorum: number): Promise<void> {
    for (;;) {
      if (this.#failure !== undefined) throw this.#failure;
      const targets = await Promise.all(
        this.#o.links.map((l) =>
          // A relay whose connection is down is skipped at once, not after a timeout.
          l.connected()
            ? Promise.race([
                lastStreamSeq(l, this.#o.names.stream).catch(() => undefined),
                new Promise<undefined>((r) => setTimeout(() => r(undefined), 2_000).unref()),
              ])
            : undefined,
        ),
      );
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
        if (caughtUp) return;
        // No progress for 3 s: a reader whose consumer lived on a server that died may never
        // recover by itself. Re-create the readers still behind, from where they stopped.
        for (const t of reachable) if (this.#applied[t.relay]! < t.seq) await this.#restartReader(t.relay);
        continue;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
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

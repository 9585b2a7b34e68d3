/**
 * The hot standby as a running thing: reads the app's stream from the beginning into the
 * applier, keeps the image chain materialized, and lets the takeover wait until a given stream
 * position (its own fence) has been applied.
 */
import { ImageChain } from '../image/chain.js';
import type { AppNames } from '../protocol/subjects.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { NatsLink } from '../transport/connection.js';
import { StreamReader } from '../transport/consumer.js';
import { Applier, type ApplierOptions, type ApplyMode } from './applier.js';

/** Options of a standby run. */
export interface StandbyOptions {
  readonly link: NatsLink;
  readonly names: AppNames;
  readonly app: string;
  readonly adapter: StorageAdapter;
  readonly mode: ApplyMode;
  readonly onReject?: ApplierOptions['onReject'];
  readonly onCommit?: ApplierOptions['onCommit'];
  readonly onFence?: ApplierOptions['onFence'];
}

/** One standby run. */
export class StandbyRunner {
  readonly applier: Applier;
  readonly images = new ImageChain();
  readonly #o: StandbyOptions;
  readonly #reader: StreamReader;
  readonly #waiters: { seq: number; resolve: () => void }[] = [];
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
      onCommit: opts.onCommit,
      onFence: opts.onFence,
    });
    this.#reader = new StreamReader(opts.link, opts.names.stream);
  }

  /**
   * Empties the store and starts applying the stream from its first message. The store is
   * rebuilt from the relay's history, so whatever a crash left in it (a primary's unsealed
   * writes, a checkpoint the new primary's history does not contain) cannot survive.
   */
  async start(): Promise<void> {
    await this.#o.adapter.clear();
    await this.#reader.start(
      1,
      async (m) => {
        await this.applier.handle(m.streamSeq, m.data);
        this.#release();
      },
      (err) => this.#fail(err),
    );
  }

  /** Resolves once the message at `seq` has been applied; rejects if the standby failed. */
  waitFor(seq: number): Promise<void> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.applier.lastStreamSeq >= seq) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#waiters.push({ seq, resolve });
      this.#onFailure.push(reject);
    });
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
    await this.#reader.stop();
  }

  #release(): void {
    const at = this.applier.lastStreamSeq;
    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      const w = this.#waiters[i]!;
      if (at >= w.seq) {
        this.#waiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  #fail(err: unknown): void {
    this.#failure = err;
    for (const f of this.#onFailure) f(err);
    this.#onFailure = [];
  }
}

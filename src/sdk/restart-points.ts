/**
 * The SDK's helpers around restart points: output commit (`afterCheckpoint`), automatic
 * checkpoints (`checkpointEveryMs`), and resuming an image of another `stateVersion`.
 */
import { ConfigError, ImageError, type FrameError, type RestartpointError } from '../errors.js';
import type { ImageChain, ImageEncoder } from '../image/chain.js';
import { WireVersionError } from '../protocol/frame.js';
import type { ResolvedOptions } from './options.js';

interface Waiting {
  readonly after: number;
  run(): void;
  fail(err: unknown): void;
}

/**
 * Output commit: callbacks held until a checkpoint numbered at least `after` is acknowledged.
 * A checkpoint's acknowledgement covers every earlier one, so any checkpoint at or past `after`
 * releases the callback; callbacks run in the order they were added.
 */
export class OutputCommits {
  #waiting: Waiting[] = [];
  #failed: RestartpointError | undefined;

  /** Callbacks still waiting. */
  get size(): number {
    return this.#waiting.length;
  }

  /**
   * Runs `fn` once a checkpoint numbered `after` or later is acknowledged; resolves with its
   * result (rejects with what it throws). Rejects at once if `fail` was called.
   */
  add<T>(after: number, fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise<Awaited<T>>((resolve, reject) => {
      this.#waiting.push({
        after,
        run: () => {
          try {
            Promise.resolve(fn()).then(resolve, reject);
          } catch (err) {
            reject(err);
          }
        },
        fail: reject,
      });
    });
  }

  /** Checkpoint `n` was acknowledged: runs every callback waiting for `n` or earlier. */
  acknowledged(n: number): void {
    if (this.#failed || this.#waiting.length === 0) return;
    const due: Waiting[] = [];
    const rest: Waiting[] = [];
    for (const w of this.#waiting) (w.after <= n ? due : rest).push(w);
    this.#waiting = rest;
    for (const w of due) w.run();
  }

  /** No checkpoint will be acknowledged any more: rejects every waiting callback, and later ones. */
  fail(err: RestartpointError): void {
    this.#failed ??= err;
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const w of waiting) w.fail(err);
  }
}

/** Options of the automatic checkpoint loop. */
export interface AutoCheckpointOptions {
  /** Period in ms, start to start. */
  readonly everyMs: number;
  /** Takes one checkpoint; its rejection is reported, never thrown. */
  readonly take: () => Promise<unknown>;
  /** Called with each failure; return true to stop the loop (the node lost its role). */
  readonly onError: (err: unknown) => boolean;
}

/**
 * Automatic restart points (seed claim 25): one checkpoint every `everyMs`, never two at once.
 * The next starts `everyMs` after the previous one started, or as soon as it settles when it
 * took longer than that: a slow checkpoint delays the next, checkpoints never pile up.
 */
export class AutoCheckpoints {
  readonly #o: AutoCheckpointOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #stopped = false;
  /** Checkpoints taken (settled), successful or not. */
  taken = 0;

  constructor(opts: AutoCheckpointOptions) {
    this.#o = opts;
  }

  /** Starts the loop: the first checkpoint comes `everyMs` from now. */
  start(): void {
    if (this.#stopped || this.#timer || this.#running) return;
    this.#schedule(this.#o.everyMs);
  }

  /** Stops the loop and waits for a checkpoint it is taking to settle. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  #schedule(delay: number): void {
    this.#timer = setTimeout(() => this.#run(), delay);
    // The NATS connection keeps a primary's process alive; this timer alone should not.
    this.#timer.unref();
  }

  #run(): void {
    this.#timer = undefined;
    if (this.#stopped) return;
    const started = performance.now();
    let taking: Promise<unknown>;
    try {
      taking = this.#o.take();
    } catch (err) {
      taking = Promise.reject(err);
    }
    this.#running = taking
      .then(
        () => false,
        (err: unknown) => this.#o.onError(err),
      )
      .then((stop) => {
        this.taken++;
        this.#running = undefined;
        if (stop) this.#stopped = true;
        if (!this.#stopped) this.#schedule(Math.max(0, started + this.#o.everyMs - performance.now()));
      });
  }
}

/**
 * Checks, before the node fences anyone, that the image it would resume from can be used: one
 * of this `stateVersion`, or one `migrate` can turn into it. Returns the error to fail `start()`
 * with, or undefined.
 */
export function resumeProblem<S>(
  o: ResolvedOptions<S>,
  images: ImageChain,
  checkpoint: number,
): ConfigError | undefined {
  if (checkpoint === 0 || images.stateVersion === o.stateVersion || o.migrate !== undefined) return undefined;
  return new ConfigError(
    'stateVersion',
    `is ${o.stateVersion}, but the last checkpoint (${checkpoint}) holds an image of stateVersion ${images.stateVersion}: ` +
      `pass migrate: (image, fromVersion) => state to convert it, or run a release with stateVersion ${images.stateVersion}`,
  );
}

/** What a takeover's restore hands the new primary's image encoder (ImageEncoder.resume). */
export interface Resumed {
  image?: Parameters<ImageEncoder['resume']>[0];
}

/**
 * The state a new primary resumes with: `initialState()` on a fresh app, the materialized image
 * otherwise, passed through `migrate` when it was taken with another `stateVersion`.
 *
 * Throws `ImageError` when `migrate` throws or returns nothing.
 */
export async function resumeState<S>(
  o: ResolvedOptions<S>,
  images: ImageChain,
  checkpoint: number,
  resumed?: Resumed,
): Promise<S> {
  if (checkpoint === 0) return o.initialState();
  const from = images.stateVersion;
  if (
    from === o.stateVersion &&
    resumed !== undefined &&
    images.checkpoint === checkpoint &&
    images.epoch > 0
  ) {
    // The standby's tree becomes the new primary's base: its first checkpoint is a delta.
    const taken = images.takeOver()!;
    resumed.image = {
      tree: taken.tree,
      live: taken.live,
      objects: taken.objects,
      checkpoint,
      epoch: images.epoch,
      keyframeBytes: images.keyframeBytes,
    };
    return taken.live as S;
  }
  const image = images.materialize();
  if (from === o.stateVersion) return image as S;
  const problem = resumeProblem(o, images, checkpoint);
  if (problem) throw problem;
  let migrated: S;
  try {
    migrated = await o.migrate!(image, from);
  } catch (cause) {
    throw new ImageError(
      `migrate(image, ${from}) failed for the image of checkpoint ${checkpoint} (to stateVersion ${o.stateVersion}): ${
        cause instanceof Error ? cause.message : String(cause)
      }`,
      { cause },
    );
  }
  if (migrated === undefined) {
    throw new ImageError(
      `migrate(image, ${from}) returned undefined for checkpoint ${checkpoint}: it must return the state of stateVersion ${o.stateVersion}`,
    );
  }
  return migrated;
}

/** What a `ResumeGuard` watches. */
export interface ResumeGuardOptions {
  /** This build's `stateVersion`. */
  readonly stateVersion: number;
  /** The standby's image chain (the last committed checkpoint's image). */
  readonly images: () => ImageChain | undefined;
  /** The last committed checkpoint. */
  readonly checkpoint: () => number;
  readonly log: (e: { level: 'warn'; msg: string; [k: string]: unknown }) => void;
}

/**
 * Mixed versions during a rolling upgrade (docs/upgrades.md): tells whether this node, a standby,
 * could resume from what it holds. It cannot when
 *
 * - the last committed checkpoint's image has a `stateVersion` above this build's: a newer app
 *   build is primary, and `migrate` only converts older images; or
 * - the relays hold a genuine frame (its CRC-32 checks out) of a wire version above the newest
 *   this build reads: a newer restartpoint release is primary, and this node committed nothing
 *   of those frames, so its store stops at what the older release wrote.
 *
 * Such a node must not take over: it would resume the wrong shape, or lose acknowledged
 * checkpoints. The takeover waits while `blocked()` says why (it never claims), presence
 * publishes it, and the reason is logged once.
 */
export class ResumeGuard {
  readonly #o: ResumeGuardOptions;
  #wire: { seen: number; reads: number; streamSeq: number } | undefined;
  #logged: string | undefined;

  constructor(o: ResumeGuardOptions) {
    this.#o = o;
  }

  /** A frame was rejected: a verified part of a newer wire version blocks resuming for good. */
  rejected(err: FrameError, streamSeq: number): void {
    if (!(err instanceof WireVersionError) || !err.newer || !err.verified) return;
    if (this.#wire && this.#wire.seen >= err.seen) return;
    this.#wire = { seen: err.seen, reads: err.reads, streamSeq };
    this.check();
  }

  /** Why this node must not take over, or undefined. */
  blocked(): string | undefined {
    if (this.#wire) {
      const w = this.#wire;
      return (
        `the relays hold frames of wire version ${w.seen} (first at stream seq ${w.streamSeq}), ` +
        `but this restartpoint build reads wire versions up to ${w.reads}: a node of a newer restartpoint release is primary. ` +
        `This node committed nothing of those frames and will not take over; upgrade it to that release (docs/upgrades.md)`
      );
    }
    const images = this.#o.images();
    const checkpoint = this.#o.checkpoint();
    if (images && checkpoint > 0 && images.stateVersion > this.#o.stateVersion) {
      return (
        `the last checkpoint (${checkpoint}) holds an image of stateVersion ${images.stateVersion}, ` +
        `newer than this build's stateVersion ${this.#o.stateVersion} (migrate only converts older images): ` +
        `a newer app build is primary. This node will not take over; restart it on that build (docs/upgrades.md)`
      );
    }
    return undefined;
  }

  /** Logs the reason once when it appears (or changes). */
  check(): void {
    const why = this.blocked();
    if (why === undefined) {
      this.#logged = undefined;
      return;
    }
    const key = this.#wire ? `wire ${this.#wire.seen}` : `state ${this.#o.images()?.stateVersion}`;
    if (key === this.#logged) return;
    this.#logged = key;
    this.#o.log({ level: 'warn', msg: 'cannot resume', reason: why });
  }
}

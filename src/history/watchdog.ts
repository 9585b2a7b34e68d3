/**
 * The purge watchdog of a live standby: a standby that falls behind the purge point (paused,
 * starved, partitioned from every relay for longer than the window) finds its next frames gone
 * from every relay and would wait forever. The watchdog sees it and has the run rebuild from the
 * base in place (`StandbyRunner.rebuildBehind`), as a rebuild after a lost store does.
 *
 * ```text
 * tick (2 s) ─► position unchanged since the last tick?
 *            ─► every connected relay's first message past the last one a commit came from?
 *            ─► a base newer than the position whose window starts past it (findBase, only
 *               when a relay holds a base message newer than at the last such read)?
 *            ─► log `standby behind the purge`, metric, runner.rebuildBehind ─► loads that base
 * ```
 *
 * All three must hold: a standby that is moving, that a relay still serves, or that the newest
 * base's window still covers is left alone (it is slow, not stuck).
 */
import type { FrameCodec } from '../protocol/codec.js';
import type { AppNames } from '../protocol/subjects.js';
import type { NatsLink } from '../transport/connection.js';
import { lastSubjectSeq, streamBounds } from '../transport/consumer.js';
import type { StandbyRunner } from '../standby/runner.js';
import { findBase } from './base.js';

/** What the watchdog saw when it sent a standby to rebuild. */
export interface BehindPurge {
  /** The standby's committed checkpoint, stuck. */
  readonly checkpoint: number;
  /** The newer base it rebuilds from, and the first checkpoint that base's window keeps. */
  readonly base: number;
  readonly retainFrom: number;
  /** Per relay, its first stream seq (`null`: not connected). */
  readonly firstSeq: readonly (number | null)[];
  /** Per relay, the stream seq of the last message a commit of this standby came from. */
  readonly committedSeq: readonly number[];
}

/** Options of a watchdog. */
export interface WatchdogOptions {
  readonly runner: StandbyRunner;
  readonly links: readonly NatsLink[];
  readonly names: AppNames;
  readonly codec: FrameCodec;
  readonly app: string;
  /** How often to look (default 2 000 ms). */
  readonly everyMs?: number;
  /** Told before the rebuild starts (the SDK logs `standby behind the purge` and counts it). */
  readonly onBehind?: (e: BehindPurge) => void;
  /** A rebuild that failed (the run then fails as any standby run does). */
  readonly onError?: (err: unknown) => void;
}

/** Watches one standby run for falling behind the purge point. */
export class PurgeWatchdog {
  readonly #o: WatchdogOptions;
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  #halted = false;
  /** The position at the previous look (`undefined`: no look yet). */
  #last: number | undefined;
  /**
   * Per relay, the last base message's stream seq when `findBase` last found no newer base: the
   * base is read again only once a relay holds a newer base message (an idle standby started from
   * a base, whose relays are purged, does not read the base every look).
   */
  #baseSeen: string | undefined;

  constructor(o: WatchdogOptions) {
    this.#o = o;
  }

  start(): void {
    this.#timer = setInterval(() => {
      if (this.#busy) return;
      this.#busy = true;
      void this.check()
        .catch((err: unknown) => this.#o.onError?.(err))
        .finally(() => {
          this.#busy = false;
        });
    }, this.#o.everyMs ?? 2_000);
    this.#timer.unref();
  }

  /** Stops looking (the node takes over, or the run ends). */
  halt(): void {
    this.#halted = true;
    clearInterval(this.#timer);
  }

  /** One look; resolves with what it saw when it sent the run to rebuild (after the rebuild). */
  async check(): Promise<BehindPurge | undefined> {
    const { runner, links, names } = this.#o;
    if (this.#halted || runner.rebuilding) return undefined;
    const pos = runner.applier.position.checkpoint;
    const last = this.#last;
    this.#last = pos;
    if (last !== pos) return undefined; // moving (or the first look)
    const committed = runner.committedSeqs;
    const firstSeq = await Promise.all(
      links.map((l) =>
        l.connected()
          ? streamBounds(l, names.stream).then(
              (b) => b.firstSeq,
              () => null,
            )
          : Promise.resolve(null),
      ),
    );
    const known = firstSeq.flatMap((f, r) => (f === null ? [] : [{ r, f }]));
    if (known.length === 0 || !known.every(({ r, f }) => f > (committed[r] ?? 0) + 1)) return undefined;
    const baseSeqs = JSON.stringify(
      await Promise.all(
        links.map((l) =>
          l.connected() ? lastSubjectSeq(l, names.stream, names.baseSubject).catch(() => null) : null,
        ),
      ),
    );
    if (baseSeqs === this.#baseSeen) return undefined;
    const survey = await findBase({ links, names, codec: this.#o.codec, app: this.#o.app });
    const m = survey.base?.manifest;
    if (!m || m.checkpoint <= pos || m.retainFrom <= pos + 1) {
      this.#baseSeen = baseSeqs;
      return undefined;
    }
    if (this.#halted || runner.applier.position.checkpoint !== pos) return undefined;
    const ev: BehindPurge = {
      checkpoint: pos,
      base: m.checkpoint,
      retainFrom: m.retainFrom,
      firstSeq,
      committedSeq: [...committed],
    };
    this.#o.onBehind?.(ev);
    await runner.rebuildBehind(
      `behind the purge: committed checkpoint ${pos}, the base at ${m.checkpoint} keeps frames from checkpoint ${m.retainFrom}`,
    );
    this.#last = undefined;
    return ev;
  }
}

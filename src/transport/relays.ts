/**
 * Relays (seed claims 1–4, 31): every frame goes to every relay in parallel, each an
 * independent NATS server or JetStream cluster holding the app's stream; `checkpoint()` counts a
 * frame delivered once the ack policy is met. A relay that is down or slow does not hold up a
 * policy the others meet: what it missed waits in its backlog and is re-sent, in order and with
 * the same dedupe ids, until it has caught up.
 */
import { ConfigError, ReplicationError } from '../errors.js';
import type { Frame } from '../protocol/frame.js';
import type { AppNames } from '../protocol/subjects.js';
import { closeLink, ensureStream, openLink, type NatsLink, type NatsOptions } from './connection.js';
import { FramePublisher } from './publisher.js';

/** One relay: a NATS server or cluster (client options pass through), and its stream's replicas. */
export type RelaySpec = NatsOptions & {
  /** Replicas of the app's stream inside a clustered relay: 1, 3 or 5. Default 1. */
  replicas?: 1 | 3 | 5;
};

/** How many relays must ack a frame: `'all'`, `'quorum'` (a majority) or `{ count: n }`. */
export type AckPolicy = 'all' | 'quorum' | { count: number };

/** Acks a frame needs from `n` relays under `policy`. */
export function acksNeeded(policy: AckPolicy, n: number): number {
  if (policy === 'all') return n;
  if (policy === 'quorum') return Math.floor(n / 2) + 1;
  return policy.count;
}

/** Validates an ack policy against the number of relays; throws `ConfigError`. */
export function checkAckPolicy(policy: unknown, n: number): AckPolicy {
  if (policy === undefined) return 'all';
  if (policy === 'all' || policy === 'quorum') return policy;
  const count = (policy as { count?: unknown } | null)?.count;
  if (typeof count === 'number' && Number.isInteger(count) && count >= 1 && count <= n) return { count };
  throw new ConfigError(
    'ack',
    `must be 'all', 'quorum' or { count: n } with 1 <= n <= ${n} (the number of relays), got ${JSON.stringify(policy)}`,
  );
}

/** Per-relay figures for status and metrics. */
export interface RelayStats {
  readonly servers: string;
  readonly connected: boolean;
  /** Frames waiting to be re-sent to this relay. */
  readonly backlog: number;
}

interface RelayState {
  readonly link: NatsLink;
  readonly publisher: FramePublisher;
  readonly backlog: { frame: Frame; done: (ok: boolean) => void }[];
  draining: boolean;
}

/** Most frames one relay's backlog holds before the oldest are dropped (the relay then has a gap). */
const MAX_BACKLOG = 100_000;

/** The relays of one node, connected, with the app's stream provisioned on each. */
export class RelaySet {
  readonly #relays: RelayState[];
  readonly need: number;
  #closed = false;
  #onError: (msg: string) => void;

  private constructor(relays: RelayState[], need: number, onError: (msg: string) => void) {
    this.#relays = relays;
    this.need = need;
    this.#onError = onError;
  }

  /** Links to each relay, in config order. */
  get links(): NatsLink[] {
    return this.#relays.map((r) => r.link);
  }

  /**
   * Connects to every relay and provisions the stream on each (`replicas` ways). Every relay
   * must be reachable at start; later outages are ridden out.
   */
  static async open(opts: {
    specs: RelaySpec[];
    names: AppNames;
    clientName: string;
    ack: AckPolicy;
    app: string;
    timeoutMs: number;
    /** Reuse this link for the relay at index 0 (the lease connection), if the same servers. */
    shared?: NatsLink;
    onError?: (msg: string) => void;
  }): Promise<RelaySet> {
    const links: NatsLink[] = [];
    try {
      for (const [i, spec] of opts.specs.entries()) {
        const { replicas, ...nats } = spec;
        const link =
          i === 0 && opts.shared ? opts.shared : await openLink(nats, `${opts.clientName}:relay${i}`);
        links.push(link);
        await ensureStream(link, opts.names, replicas ?? 1);
      }
    } catch (err) {
      for (const l of links) if (l !== opts.shared) await closeLink(l);
      throw err;
    }
    const relays = links.map((link) => ({
      link,
      publisher: new FramePublisher(link, {
        app: opts.app,
        subject: opts.names.subject,
        timeoutMs: opts.timeoutMs,
      }),
      backlog: [],
      draining: false,
    }));
    return new RelaySet(relays, acksNeeded(opts.ack, links.length), opts.onError ?? (() => undefined));
  }

  /** Per-relay figures. */
  stats(): RelayStats[] {
    return this.#relays.map((r) => ({
      servers: r.link.servers,
      connected: r.link.connected(),
      backlog: r.backlog.length,
    }));
  }

  /** Resolves when the relays needed for the ack policy have room for more frames. */
  async ready(): Promise<void> {
    const live = this.#relays.filter((r) => r.backlog.length === 0 && r.link.connected());
    if (live.length < this.need) return;
    await Promise.race(live.map((r) => r.publisher.ready()));
  }

  /**
   * Sends `frame` to every relay; resolves once `need` relays acked it, rejects with
   * `ReplicationError` once too many failed for the policy to be met. Relays that failed get the
   * frame again from their backlog, so they catch up without the caller doing anything.
   */
  publish(frame: Frame): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let ok = 0;
      let failed = 0;
      const n = this.#relays.length;
      const done = (success: boolean): void => {
        if (success) ok++;
        else failed++;
        if (success && ok === this.need) resolve();
        if (!success && failed === n - this.need + 1) {
          reject(
            new ReplicationError(
              `frame ${frame.epoch}/${frame.seq} reached ${ok} of the ${this.need} relay(s) the ack policy needs; ${failed} failed (they keep catching up in the background)`,
            ),
          );
        }
      };
      for (const r of this.#relays) {
        if (r.backlog.length > 0 || r.draining || !r.link.connected()) {
          // This relay is behind: keep its frames in order behind what it missed.
          this.#enqueue(r, frame, done);
          continue;
        }
        r.publisher.publish(frame).then(
          () => done(true),
          (err: unknown) => {
            this.#onError(
              `relay ${r.link.servers} missed frame ${frame.epoch}/${frame.seq}: ${(err as Error).message}`,
            );
            this.#enqueue(r, frame, done);
          },
        );
      }
    });
  }

  #enqueue(r: RelayState, frame: Frame, done: (ok: boolean) => void): void {
    let reported = false;
    const once = (success: boolean): void => {
      if (!reported) {
        reported = true;
        done(success);
      }
    };
    // Only the first outcome counts for the checkpoint waiting now; a frame that failed it is
    // sent again (by the replicator, before the next seal) and kept here until this relay has it.
    r.backlog.push({ frame, done: once });
    if (r.backlog.length > MAX_BACKLOG) {
      const dropped = r.backlog.shift()!;
      dropped.done(false);
      this.#onError(
        `relay ${r.link.servers}: backlog full, frame ${dropped.frame.epoch}/${dropped.frame.seq} dropped for it`,
      );
    }
    void this.#drain(r);
  }

  async #drain(r: RelayState): Promise<void> {
    if (r.draining) return;
    r.draining = true;
    try {
      while (r.backlog.length > 0 && !this.#closed) {
        const head = r.backlog[0]!;
        if (!r.link.connected()) {
          // Down: every frame waiting here has failed for the checkpoints waiting on it now.
          for (const b of r.backlog) b.done(false);
          await new Promise((res) => setTimeout(res, 250));
          continue;
        }
        try {
          await r.publisher.publish(head.frame);
          r.backlog.shift();
          head.done(true);
        } catch {
          // still down: count it as failed for the waiting checkpoint, keep it for the catch-up
          head.done(false);
          await new Promise((res) => setTimeout(res, 500));
        }
      }
    } finally {
      r.draining = false;
    }
  }

  /** Closes every link but `keep` (the shared lease link, closed by its owner). */
  async close(keep?: NatsLink): Promise<void> {
    this.#closed = true;
    for (const r of this.#relays) if (r.link !== keep) await closeLink(r.link);
  }
}

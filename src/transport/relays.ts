/**
 * Relays (seed claims 1–4, 31): every frame goes to every relay in parallel, each an
 * independent NATS server or JetStream cluster holding the app's stream; `checkpoint()` counts a
 * frame delivered once the ack policy is met. A relay that is down or slow does not hold up a
 * policy the others meet: what it missed waits in its backlog and is re-sent, in order and with
 * the same dedupe ids, until it has caught up.
 */
import { ConfigError, ReplicationError } from '../errors.js';
import { ackedShardsNeeded, relayLossTolerance } from '../fec/placement.js';
import { BufferPool } from '../fec/pool.js';
import { validateFecScheme, type FecScheme } from '../fec/shard.js';
import { FrameCodec, type OutMessage } from '../protocol/codec.js';
import type { EnvelopeCodec } from '../protocol/envelope.js';
import type { Frame } from '../protocol/frame.js';
import type { AppNames } from '../protocol/subjects.js';
import { closeLink, ensureStream, openLink, type NatsLink, type NatsOptions } from './connection.js';
import { backfill, type BackfillResult } from './backfill.js';
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

/** Resolves `fec` options against `relays` relays; throws `ConfigError` naming the fix. */
export function resolveFec(fec: { scheme: FecScheme; tolerate?: number }, relays: number): FecSettings {
  let shape;
  try {
    shape = validateFecScheme(fec.scheme);
  } catch (err) {
    throw new ConfigError('fec', (err as Error).message, { cause: err });
  }
  const k = 'copies' in fec.scheme ? 1 : shape.data;
  const m = 'copies' in fec.scheme ? fec.scheme.copies - 1 : shape.parity;
  const most = relayLossTolerance(k, m, relays);
  const tolerate = fec.tolerate ?? most;
  if (!Number.isInteger(tolerate) || tolerate < 0 || tolerate > most) {
    throw new ConfigError(
      'fec.tolerate',
      `must be an integer from 0 to ${most}: with ${k}+${m} shards over ${relays} relay(s), losing more relays can take more than ${m} shards of a frame; got ${JSON.stringify(fec.tolerate)}`,
    );
  }
  return { scheme: fec.scheme, tolerate, shardsNeeded: ackedShardsNeeded(k, m, relays, tolerate) };
}

/** Per-relay figures for status and metrics. */
export interface RelayStats {
  readonly servers: string;
  readonly connected: boolean;
  /** Frames waiting to be re-sent to this relay. */
  readonly backlog: number;
  /** Not connected once yet: down since this node started, connecting in the background. */
  readonly pending?: boolean;
  /** Being caught up from the other relays (backfill) now. */
  readonly backfilling?: boolean;
}

/**
 * The stand-in for a relay that was down when the node started: never connected, so every user
 * skips it (`connected()` is false); replaced in place in `RelaySet.links` once it connects.
 */
export function pendingLink(servers: string): NatsLink {
  const down = (): never => {
    throw new ReplicationError(`relay ${servers} is not connected yet (down since this node started)`);
  };
  return {
    get nc() {
      return down();
    },
    get js() {
      return down();
    },
    get jsm() {
      return down();
    },
    maxPayload: Infinity,
    servers,
    connected: () => false,
    pending: true,
  } as NatsLink;
}

/** Whether `link` is the stand-in of a relay that has not connected yet. */
export function isPending(link: NatsLink): boolean {
  return (link as { pending?: boolean }).pending === true;
}

interface Outgoing {
  readonly bytes: Uint8Array;
  readonly msgId: string;
  /**
   * Reports an outcome: the first one counts for the ack policy; for the buffer's lifetime, a
   * failure at any time means the client may still hold the bytes (see `#sendAll`).
   */
  done(ok: boolean): void;
}

interface RelayState {
  link: NatsLink;
  publisher: FramePublisher;
  readonly backlog: Outgoing[];
  draining: boolean;
  backfilling: boolean;
  /** Bytes handed to the client and not yet settled (acked, or failed for good): the window. */
  inFlightBytes: number;
  /** Messages waiting for room in the window, in the order they were published. */
  readonly waiting: { readonly bytes: Uint8Array; readonly send: () => void }[];
}

/** How often a relay that was down at start is tried again. */
const RETRY_MS = 1_000;

function describeSpec(spec: RelaySpec): string {
  return Array.isArray(spec.servers) ? spec.servers.join(',') : spec.servers;
}

/** Most messages one relay's backlog holds before the oldest are dropped (the relay then has a gap). */
const MAX_BACKLOG = 100_000;

/**
 * Most bytes handed to one relay's client and not yet acknowledged (the send window). A large
 * frame (a keyframe of a 100 MB state: ~54 parts of 1 MB) used to go to the client in one tick:
 * each publish packs and writes its part synchronously, which held the event loop for 0.1–1 s,
 * and the lease's renewals, which share relay 0's connection, then queued behind tens of MB in
 * the socket and at the server. With the window, a part is handed over only when the acks of
 * earlier ones made room, so the event loop turns between batches of at most this many bytes,
 * and whatever else uses the connection waits behind at most this much. A message larger than
 * the window goes alone.
 */
export const SEND_WINDOW_BYTES = 4 * 1024 * 1024;

/**
 * A chaos hook for drills and tests: sees every message on its way to a relay and may drop it,
 * delay it or replace its bytes (to corrupt it). Not for production use.
 */
export type FaultHook = (msg: {
  readonly relay: number;
  readonly msgId: string;
  readonly bytes: Uint8Array;
}) => { drop: true } | { delayMs: number } | { bytes: Uint8Array } | undefined;

/** FEC settings resolved against the relay count. */
export interface FecSettings {
  readonly scheme: FecScheme;
  /** Relays whose loss an acknowledged frame survives. */
  readonly tolerate: number;
  /** Shards of a part that must be acked: k + L(tolerate). */
  readonly shardsNeeded: number;
}

/** The relays of one node, connected, with the app's stream provisioned on each. */
export class RelaySet {
  readonly #relays: RelayState[];
  /** Relays that must ack a frame (no FEC), or `shardsNeeded` shards per part (FEC). */
  readonly need: number;
  readonly fec: FecSettings | undefined;
  /** Frames to messages and back: shared with this node's standby, so both sides agree. */
  readonly codec: FrameCodec;
  readonly #faults: FaultHook | undefined;
  #closed = false;
  #onError: (msg: string) => void;
  /** Links in config order; a stand-in (`pendingLink`) is replaced in place when its relay joins. */
  readonly #links: NatsLink[];
  readonly #joinListeners: ((relay: number, link: NatsLink) => void)[] = [];
  /** Relays joined after start, with what to do with the link when the set closes. */
  readonly #connecting: Promise<void>[] = [];
  readonly #stream: string;
  /** Backfill on: every relay that comes back is caught up with parts of epochs from this one. */
  #backfillFrom: number | undefined;
  #onBackfill: (r: BackfillResult | { target: number; error: string }) => void = () => undefined;
  readonly #backfills = new Set<Promise<unknown>>();
  #backfillTail: Promise<unknown> = Promise.resolve();
  readonly #queued = new Set<number>();
  /** Aborted when the set closes or halts: stops backfill runs. */
  readonly #stop = new AbortController();

  private constructor(
    relays: RelayState[],
    o: {
      need: number;
      fec: FecSettings | undefined;
      app: string;
      stream: string;
      faults?: FaultHook;
      envelope?: EnvelopeCodec;
      shardPool?: BufferPool;
      onError: (msg: string) => void;
    },
  ) {
    this.#stream = o.stream;
    this.#relays = relays;
    this.#links = relays.map((r) => r.link);
    this.need = o.need;
    this.fec = o.fec;
    this.#faults = o.faults;
    this.#onError = o.onError;
    this.codec = new FrameCodec({
      app: o.app,
      relays: relays.length,
      // Relays down at start are left out; one that joins with a smaller limit is reported.
      maxPayload: Math.min(...relays.map((r) => r.link.maxPayload)),
      fec: o.fec?.scheme,
      envelope: o.envelope,
      // Pooled shard buffers, except under a fault hook (drills, tests), which may keep or
      // replay the bytes it sees.
      pool: o.fec && !o.faults ? (o.shardPool ?? new BufferPool()) : undefined,
    });
  }

  /**
   * Links to each relay, in config order. The array is live: a relay that was down at start
   * has a stand-in (`isPending`, never connected) that is replaced in place once it connects.
   */
  get links(): NatsLink[] {
    return this.#links;
  }

  /** Calls `fn(relay, link)` each time a relay that was down at start connects and joins. */
  onJoin(fn: (relay: number, link: NatsLink) => void): void {
    this.#joinListeners.push(fn);
  }

  /** The relays (config order) still waiting for their first connection. */
  get pending(): number[] {
    return this.#relays.flatMap((r, i) => (isPending(r.link) ? [i] : []));
  }

  /**
   * How many relays a standby must have read to have seen every acknowledged frame: all but
   * the ones the policy (or the FEC tolerance) lets an acknowledged frame miss.
   */
  get readQuorum(): number {
    const n = this.#relays.length;
    return this.fec ? n - this.fec.tolerate : n - this.need + 1;
  }

  /**
   * Relays that must be reachable at start: enough to meet the ack policy as a primary and to
   * read a read quorum as a standby (the larger of the two). Fewer than `n` when the policy can
   * do without some.
   */
  static relaysNeededAtStart(ack: AckPolicy, n: number, fec?: FecSettings): number {
    if (fec) return n - fec.tolerate;
    const need = acksNeeded(ack, n);
    return Math.max(need, n - need + 1);
  }

  /**
   * Connects to the relays and provisions the stream on each (`replicas` ways). Resolves once
   * the relays the policy needs (`relaysNeededAtStart`) are connected; the others keep being
   * tried in the background and join when they come up (`onJoin`). Rejects with
   * `ReplicationError` naming the unreachable relays when fewer than that answered their first
   * connection attempt (each bounded by the client's connect timeout), and with `ConfigError` for
   * a relay whose existing stream breaks a guarantee.
   */
  static async open(opts: {
    specs: RelaySpec[];
    names: AppNames;
    clientName: string;
    ack: AckPolicy;
    app: string;
    timeoutMs: number;
    fec?: { scheme: FecScheme; tolerate?: number };
    faults?: FaultHook;
    /** Signed mode: every message (part or shard) is sealed in this envelope before it is sent. */
    envelope?: EnvelopeCodec;
    /** Reuse this link for the relay at index 0 (the lease connection), if the same servers. */
    shared?: NatsLink;
    /**
     * FEC: the pool the shard messages' buffers come from (default: one of the set's own). Tests
     * pass one with `poison: true`, so a buffer reused too early is caught.
     */
    shardPool?: BufferPool;
    onError?: (msg: string) => void;
  }): Promise<RelaySet> {
    const fec = opts.fec ? resolveFec(opts.fec, opts.specs.length) : undefined;
    const n = opts.specs.length;
    const required = RelaySet.relaysNeededAtStart(opts.ack, n, fec);
    const connectOne = async (i: number): Promise<NatsLink> => {
      const { replicas, ...nats } = opts.specs[i]!;
      const link =
        i === 0 && opts.shared ? opts.shared : await openLink(nats, `${opts.clientName}:relay${i}`);
      try {
        await ensureStream(link, opts.names, replicas ?? 1);
      } catch (err) {
        if (link !== opts.shared) await closeLink(link);
        throw err;
      }
      return link;
    };
    const first = await Promise.allSettled(opts.specs.map((_, i) => connectOne(i)));
    const links = first.map((r) => (r.status === 'fulfilled' ? r.value : undefined));
    const closeAll = async (): Promise<void> => {
      for (const l of links) if (l && l !== opts.shared) await closeLink(l);
    };
    // A relay that answered but whose stream is wrong (or that lacks JetStream) fails loudly:
    // it is misconfigured, not down, and waiting for it would hide that.
    const config = first.find(
      (r): r is PromiseRejectedResult => r.status === 'rejected' && r.reason instanceof ConfigError,
    );
    if (config) {
      await closeAll();
      throw config.reason;
    }
    const up = links.filter((l) => l !== undefined).length;
    if (up < required) {
      await closeAll();
      const down = first.flatMap((r, i) =>
        r.status === 'rejected'
          ? [`relay ${i} (${describeSpec(opts.specs[i]!)}): ${(r.reason as Error).message}`]
          : [],
      );
      throw new ReplicationError(
        `${up} of ${n} relay(s) reachable at start, the ack policy ${JSON.stringify(opts.ack)}${fec ? ` with fec.tolerate ${fec.tolerate}` : ''} needs ${required} (to acknowledge checkpoints and to read a read quorum). Unreachable: ${down.join('; ')}. Start those relays or fix their addresses in 'relays'`,
        { cause: (first.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined)?.reason },
      );
    }
    const publisherOf = (link: NatsLink): FramePublisher =>
      new FramePublisher(link, { app: opts.app, subject: opts.names.subject, timeoutMs: opts.timeoutMs });
    const relays: RelayState[] = links.map((l, i) => {
      const link = l ?? pendingLink(describeSpec(opts.specs[i]!));
      return {
        link,
        publisher: publisherOf(link),
        backlog: [],
        draining: false,
        backfilling: false,
        inFlightBytes: 0,
        waiting: [],
      };
    });
    const set = new RelaySet(relays, {
      need: fec ? fec.shardsNeeded : acksNeeded(opts.ack, n),
      fec,
      app: opts.app,
      stream: opts.names.stream,
      faults: opts.faults,
      envelope: opts.envelope,
      shardPool: opts.shardPool,
      onError: opts.onError ?? (() => undefined),
    });
    for (const [i, l] of links.entries()) {
      if (l !== undefined) {
        set.#watchReconnects(i, l);
        continue;
      }
      set.#onError(
        `relay ${i} (${relays[i]!.link.servers}) unreachable at start: ${((first[i] as PromiseRejectedResult).reason as Error).message}; the policy can do without it, it is tried every ${RETRY_MS} ms and joins when it comes up`,
      );
      const firstError = ((first[i] as PromiseRejectedResult).reason as Error).message;
      set.#connecting.push(set.#connectLater(i, () => connectOne(i), publisherOf, firstError));
    }
    return set;
  }

  /** Tries relay `i` until it connects (or the set closes), then puts it in place of its stand-in. */
  async #connectLater(
    i: number,
    connect: () => Promise<NatsLink>,
    publisherOf: (link: NatsLink) => FramePublisher,
    firstError: string,
  ): Promise<void> {
    let reported = firstError;
    while (!this.#closed) {
      await new Promise((res) => setTimeout(res, RETRY_MS).unref());
      if (this.#closed) return;
      let link: NatsLink;
      try {
        link = await connect();
      } catch (err) {
        const msg = (err as Error).message;
        // Each new reason is reported once (a relay that stays down repeats the same one; one
        // that answers without JetStream, or with a misconfigured stream, says so).
        if (msg !== reported)
          this.#onError(`relay ${i} (${this.#relays[i]!.link.servers}) still not joined: ${msg}`);
        reported = msg;
        continue;
      }
      if (this.#closed) {
        await closeLink(link);
        return;
      }
      const r = this.#relays[i]!;
      if (link.maxPayload < this.codec.maxPayload) {
        this.#onError(
          `relay ${i} (${link.servers}) accepts messages of at most ${link.maxPayload} bytes, fewer than the ${this.codec.maxPayload} this node cuts parts to: larger messages fail on it (give every relay the same max_payload)`,
        );
      }
      r.link = link;
      r.publisher = publisherOf(link);
      this.#links[i] = link;
      this.#watchReconnects(i, link);
      for (const fn of this.#joinListeners) fn(i, link);
      this.#backfillLater(i);
      // Whatever the primary sent meanwhile waits in its backlog.
      if (r.backlog.length > 0) void this.#drain(r);
      return;
    }
  }

  /** Backfills relay `i` each time its client reconnects (the relay was down, or unreachable). */
  #watchReconnects(i: number, link: NatsLink): void {
    void (async () => {
      try {
        for await (const st of link.nc.status()) {
          if (this.#closed) return;
          if (st.type === 'reconnect') this.#backfillLater(i);
        }
      } catch {
        // the connection closed
      }
    })();
  }

  /**
   * Turns backfill on (a primary, after its takeover): every connected relay is caught up now
   * from the others with the parts of epochs from `fromEpoch` on that it lacks, and any relay
   * again each time it comes back. `onResult` sees each run's figures (or its failure).
   */
  enableBackfill(
    fromEpoch: number,
    onResult: (r: BackfillResult | { target: number; error: string }) => void = () => undefined,
  ): void {
    this.#backfillFrom = fromEpoch;
    this.#onBackfill = onResult;
    for (const [i, r] of this.#relays.entries()) if (r.link.connected()) this.#backfillLater(i);
  }

  #backfillLater(i: number): void {
    if (this.#backfillFrom === undefined || this.#closed) return;
    const from = this.#backfillFrom;
    // One run at a time (each reads every relay's stream): runs queue behind each other, and a
    // relay already queued is not queued twice.
    if (this.#queued.has(i)) return;
    this.#queued.add(i);
    const run = this.#backfillTail.then(() => {
      this.#queued.delete(i);
      if (this.#closed) return;
      return this.backfill(i, from).then(
        (res) => res && this.#onBackfill(res),
        (err: unknown) => this.#onBackfill({ target: i, error: (err as Error).message }),
      );
    });
    this.#backfillTail = run;
    this.#backfills.add(run);
    void run.finally(() => this.#backfills.delete(run));
  }

  /**
   * Catches relay `target` up from the other relays with the parts of epochs from `fromEpoch` on
   * that it lacks (see backfill.ts). `undefined` when it is not connected, already running, or
   * no other relay is connected to copy from (a single relay: reading its own stream would find
   * nothing to copy, and that read, tens of MB with a large state, came over the connection the
   * lease shares and delayed a new primary's renewals until it was demoted).
   */
  async backfill(target: number, fromEpoch: number): Promise<BackfillResult | undefined> {
    const r = this.#relays[target]!;
    if (r.backfilling || !r.link.connected() || this.#closed) return undefined;
    if (!this.#relays.some((s, i) => i !== target && s.link.connected())) return undefined;
    r.backfilling = true;
    try {
      return await backfill({
        codec: this.codec,
        stream: this.#stream,
        links: this.#links,
        target,
        fromEpoch,
        signal: this.#stop.signal,
        send: (bytes, msgId) => {
          if (this.#closed) return Promise.reject(new ReplicationError('relay set closed'));
          return r.publisher.send(bytes, msgId);
        },
      });
    } finally {
      r.backfilling = false;
    }
  }

  /** Per-relay figures. */
  stats(): RelayStats[] {
    return this.#relays.map((r) => ({
      servers: r.link.servers,
      connected: r.link.connected(),
      backlog: r.backlog.length,
      pending: isPending(r.link),
      backfilling: r.backfilling,
    }));
  }

  /** Resolves when enough relays for the ack policy have room for more messages. */
  async ready(): Promise<void> {
    const live = this.#relays.filter((r) => r.backlog.length === 0 && r.link.connected());
    if (live.length < (this.fec ? this.#relays.length - this.fec.tolerate : this.need)) return;
    await Promise.race(live.map((r) => r.publisher.ready()));
  }

  /**
   * Sends `frame`: each part to every relay, or (FEC) each part as k + m shards, shard i to
   * relay i mod N. Resolves once every part is durable under the policy (`need` relays, or
   * `shardsNeeded` shards); rejects with `ReplicationError` once too many failed for that.
   * Relays that failed get their messages again from their backlog, so they catch up.
   */
  async publish(frame: Frame): Promise<void> {
    const parts = await this.codec.encode(frame);
    await Promise.all(
      parts.map((p) => this.#sendAll(`${p.key.epoch}/${p.key.seq}.${p.key.part}`, p.messages, p.release)),
    );
  }

  /**
   * Sends one part's messages. `release` (pooled FEC shards) is called once every message was
   * acked without a single failure on the way: an ack proves the client packed and wrote the
   * bytes, while after a failed publish the client may still hold them and send them on
   * reconnect, and a message in a backlog is read again by its re-send. So a part with any
   * failure (or one dropped from a full backlog, or halted) is never released: its buffer is
   * left to the garbage collector. The policy's resolve comes earlier (`need` acks) and does
   * not wait for this.
   */
  #sendAll(what: string, messages: readonly OutMessage[], release?: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let ok = 0;
      let failed = 0;
      const total = messages.length;
      const need = this.need;
      const unit = this.fec ? 'shard' : 'relay';
      let unsettled = total;
      let tainted = false;
      for (const m of messages) {
        let reported = false;
        let settled = false;
        // The message's first outcome for its buffer: a failure taints the whole part.
        const settle = (clean: boolean): void => {
          if (settled) return;
          settled = true;
          if (!clean) tainted = true;
          if (--unsettled === 0 && !tainted) release?.();
        };
        const done = (success: boolean): void => {
          settle(success);
          if (reported) return;
          reported = true;
          if (success) ok++;
          else failed++;
          if (success && ok === need) resolve();
          if (!success && failed === total - need + 1) {
            reject(
              new ReplicationError(
                `frame part ${what}: ${ok} ${unit} ack(s) of the ${need} the policy needs, ${failed} failed (relays that missed it catch up in the background)`,
              ),
            );
          }
        };
        const r = this.#relays[m.relay]!;
        let bytes = m.bytes;
        const fault = this.#faults?.({ relay: m.relay, msgId: m.msgId, bytes });
        if (fault && 'drop' in fault) {
          done(false);
          continue;
        }
        if (fault && 'bytes' in fault) bytes = fault.bytes;
        const out: Outgoing = { bytes, msgId: m.msgId, done };
        const send = (): void => {
          if (this.#closed) {
            done(false);
            return;
          }
          if (r.backlog.length > 0 || r.draining || !r.link.connected()) {
            // This relay is behind or down: keep its messages in order behind what it missed.
            this.#enqueue(r, out);
            return;
          }
          r.inFlightBytes += bytes.byteLength;
          const room = (): void => {
            r.inFlightBytes -= bytes.byteLength;
            this.#pump(r);
          };
          r.publisher.send(bytes, m.msgId).then(
            () => {
              room();
              done(true);
            },
            (err: unknown) => {
              room();
              this.#onError(`relay ${r.link.servers} missed ${m.msgId}: ${(err as Error).message}`);
              settle(false);
              this.#enqueue(r, out);
            },
          );
        };
        // In publish order behind what waits for the window (see SEND_WINDOW_BYTES).
        const go = (): void => {
          r.waiting.push({ bytes, send });
          this.#pump(r);
        };
        if (fault && 'delayMs' in fault) setTimeout(go, fault.delayMs);
        else go();
      }
    });
  }

  /**
   * Hands relay `r`'s waiting messages to its client, in order, while the window has room (one
   * at a time when the head alone is larger than the window). Called when a message is published
   * and when one in flight settles, so the event loop turns between batches.
   */
  #pump(r: RelayState): void {
    while (r.waiting.length > 0) {
      const head = r.waiting[0]!;
      if (r.inFlightBytes > 0 && r.inFlightBytes + head.bytes.byteLength > SEND_WINDOW_BYTES) return;
      r.waiting.shift();
      head.send();
    }
  }

  #enqueue(r: RelayState, out: Outgoing): void {
    r.backlog.push(out);
    if (r.backlog.length > MAX_BACKLOG) {
      const dropped = r.backlog.shift()!;
      dropped.done(false);
      this.#onError(`relay ${r.link.servers}: backlog full, ${dropped.msgId} dropped for it`);
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
          // Down: every message waiting here has failed for the checkpoints waiting on it now.
          for (const b of r.backlog) b.done(false);
          await new Promise((res) => setTimeout(res, 250));
          continue;
        }
        try {
          await r.publisher.send(head.bytes, head.msgId);
          r.backlog.shift();
          head.done(true);
        } catch {
          head.done(false);
          await new Promise((res) => setTimeout(res, 500));
        }
      }
    } finally {
      r.draining = false;
    }
  }

  /**
   * Sends nothing more: what waits in the backlogs fails (its checkpoints were not acknowledged,
   * or already were by other relays). For a demoted primary, whose old-epoch frames must not
   * keep reaching relays after its successor's fence.
   */
  halt(): void {
    this.#closed = true;
    this.#stop.abort();
    // What waits for the window was never handed to a client: it fails now (send sees closed).
    for (const r of this.#relays) for (const w of r.waiting.splice(0)) w.send();
    for (const r of this.#relays) for (const out of r.backlog.splice(0)) out.done(false);
  }

  /** Closes every link but `keep` (the shared lease link, closed by its owner). */
  async close(keep?: NatsLink): Promise<void> {
    this.#closed = true;
    this.#stop.abort();
    for (const r of this.#relays) for (const w of r.waiting.splice(0)) w.send();
    await Promise.all(this.#connecting);
    await Promise.allSettled([...this.#backfills]);
    for (const r of this.#relays) if (r.link !== keep && !isPending(r.link)) await closeLink(r.link);
  }
}

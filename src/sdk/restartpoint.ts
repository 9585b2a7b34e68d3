/**
 * The SDK: a thin facade that wires the moving parts (DESIGN.md) for one node.
 *
 * ```text
 * start() ─► connect ─► standby (stream ─► applier ─► store, image chain) ─► lease vacant?
 *                                                                             │ claim (CAS, epoch+1)
 *            primary ◄─ restore image ◄─ catch up to own fence ◄─ publish fence ┘
 *            rp.store.put ─► local store + write frames ─► relay
 *            rp.checkpoint(state) ─► image + seal frames ─► acks ─► resolved
 * ```
 */
import { EventEmitter } from 'node:events';
import { ClosedError, FencedError, type RestartpointError } from '../errors.js';
import { ImageEncoder } from '../image/chain.js';
import { Replicator, type CheckpointAck, type CheckpointStats } from '../primary/replicator.js';
import { FrameKind } from '../protocol/frame.js';
import { encodeFence } from '../protocol/records.js';
import { appNames } from '../protocol/subjects.js';
import { claimWhenVacant, LeaseKeeper, now, type Claim } from '../failover/lease.js';
import { encodeMeta, type AppliedPosition } from '../standby/applier.js';
import { StandbyRunner } from '../standby/runner.js';
import { assertValidKey, assertValidValue } from '../storage/adapter.js';
import {
  closeLink,
  ensureStream,
  openLeaseBucket,
  openLink,
  type NatsLink,
} from '../transport/connection.js';
import { lastStreamSeq } from '../transport/consumer.js';
import { LeaseStore } from '../transport/lease-store.js';
import { FramePublisher } from '../transport/publisher.js';
import { resolveOptions, type ResolvedOptions, type StartOptions } from './options.js';

/** Where a resumed app came from. */
export interface ResumedFrom {
  readonly epoch: number;
  readonly checkpoint: number;
}

/** How the takeover that made this node primary went (milliseconds). */
export interface TakeoverStats {
  /** From the lease going quiet (last renewal seen) to the claim. */
  readonly detectMs: number;
  /** From the claim to the fence applied (catch-up of the stream). */
  readonly catchUpMs: number;
  /** Turning the materialized image into the live state. */
  readonly restoreMs: number;
  /** The previous primary, if any. */
  readonly previous: string | undefined;
}

/** The store as the app sees it: this node's store, with writes replicated. */
export interface ReplicatedStore {
  /** Writes `key`. Resolves once the local store has it; replication is pipelined. */
  put(key: string, value: string | Uint8Array): Promise<void>;
  /** This node's value of `key`, or `undefined`. */
  get(key: string): Promise<Uint8Array | undefined>;
  /** Deletes `key`. Deleting a missing key is not an error. */
  delete(key: string): Promise<void>;
}

interface Events {
  demoted: [err: FencedError];
}

/** A node of a restartpoint app. Create with `Restartpoint.start()`. */
export class Restartpoint<S = unknown> extends EventEmitter<Events> {
  /** The state to run from: `initialState()` on a fresh app, the restored image after a takeover. */
  readonly state: S;
  /** The checkpoint the state was restored from, or `undefined` on a fresh app. */
  readonly resumedFrom: ResumedFrom | undefined;
  /** This node's fencing epoch: a positive integer, +1 at every takeover. */
  readonly epoch: number;
  /** This node's id. */
  readonly nodeId: string;
  /** The store, replicated. */
  readonly store: ReplicatedStore;
  /** How the takeover went. */
  readonly takeover: TakeoverStats;

  readonly #o: ResolvedOptions<S>;
  readonly #link: NatsLink;
  readonly #keeper: LeaseKeeper;
  readonly #replicator: Replicator;
  #fenced: FencedError | undefined;
  #closed = false;

  private constructor(init: {
    o: ResolvedOptions<S>;
    link: NatsLink;
    keeper: LeaseKeeper;
    replicator: Replicator;
    state: S;
    resumedFrom: ResumedFrom | undefined;
    epoch: number;
    takeover: TakeoverStats;
  }) {
    super();
    this.#o = init.o;
    this.#link = init.link;
    this.#keeper = init.keeper;
    this.#replicator = init.replicator;
    this.state = init.state;
    this.resumedFrom = init.resumedFrom;
    this.epoch = init.epoch;
    this.nodeId = init.o.nodeId;
    this.takeover = init.takeover;
    const rep = this.#replicator;
    this.store = {
      put: (key, value) => {
        try {
          assertValidKey(key);
          if (typeof value === 'string') {
            const bytes = Buffer.from(value, 'utf8');
            assertValidValue(bytes);
            return this.#guard() ?? rep.write({ op: 'put', key, value: bytes });
          }
          assertValidValue(value);
          // Copy: the app may reuse its buffer before the batch is encoded.
          return (
            this.#guard() ?? rep.write({ op: 'put', key, value: Uint8Array.prototype.slice.call(value) })
          );
        } catch (err) {
          return Promise.reject(err);
        }
      },
      get: (key) => {
        try {
          assertValidKey(key);
        } catch (err) {
          return Promise.reject(err);
        }
        return init.o.storage.get(key);
      },
      delete: (key) => {
        try {
          assertValidKey(key);
        } catch (err) {
          return Promise.reject(err);
        }
        return this.#guard() ?? rep.write({ op: 'delete', key });
      },
    };
  }

  #guard(): Promise<never> | undefined {
    if (this.#closed) return Promise.reject(new ClosedError());
    if (this.#fenced) return Promise.reject(this.#fenced);
    return undefined;
  }

  /**
   * Starts a node and resolves once it is the primary: at once on a fresh app, or when it takes
   * over from a primary whose lease ran out. Until then the node is a hot standby that applies
   * the primary's checkpoints to its own store.
   *
   * Rejects with `ConfigError` for a bad option, `NatsUnavailableError` when NATS or JetStream
   * cannot be reached.
   */
  static async start<S>(options: StartOptions<S>): Promise<Restartpoint<S>> {
    const o = resolveOptions(options);
    const names = appNames(o.app);
    const link = await openLink(o.nats, `restartpoint:${o.app}:${o.nodeId}`);
    try {
      await ensureStream(link, names);
      const leaseStore = new LeaseStore(await openLeaseBucket(link, names), names.leaseKey);
      await o.storage.open();
      const standby = new StandbyRunner({
        link,
        names,
        app: o.app,
        adapter: o.storage,
        mode: o.mode,
        onReject: (err, seq) =>
          o.log({
            level: 'warn',
            msg: 'frame rejected',
            reason: err.reason,
            streamSeq: seq,
            error: err.message,
          }),
        onFence: (epoch, nodeId, seq) =>
          o.log({ level: 'info', msg: 'fence applied', epoch, nodeId, streamSeq: seq }),
      });
      await standby.start();
      o.log({ level: 'info', msg: 'standby', nodeId: o.nodeId });

      const stop = new AbortController();
      let claim: Claim;
      try {
        claim = await Promise.race([
          claimWhenVacant({
            store: leaseStore,
            holder: o.nodeId,
            ttlMs: o.leaseTtlMs,
            knownEpoch: () => standby.applier.fenceEpoch,
            beforeClaim: async () => {
              const last = await lastStreamSeq(link, names.stream);
              await Promise.race([standby.waitFor(last), standby.failed()]);
            },
            signal: stop.signal,
            onError: (err) => o.log({ level: 'warn', msg: 'lease read failed', error: String(err) }),
          }),
          standby.failed(),
        ]);
      } finally {
        stop.abort();
      }
      const claimedAt = now();
      o.log({ level: 'info', msg: 'lease claimed', epoch: claim.epoch, previous: claim.previous });

      let lost: FencedError | undefined;
      const holder: { rp?: Restartpoint<S> } = {};
      const keeper = new LeaseKeeper(leaseStore, claim, o.leaseTtlMs, (err) => {
        lost = err;
        holder.rp?.demote(err);
      });
      const publisher = new FramePublisher(link, {
        app: o.app,
        subject: names.subject,
        timeoutMs: o.checkpointTimeoutMs,
      });
      // The fence marks the cut: frames of older epochs after it are a deposed primary's.
      const { streamSeq: fenceSeq } = await publisher.publish({
        kind: FrameKind.Fence,
        epoch: claim.epoch,
        seq: 1,
        checkpoint: 0,
        body: encodeFence({ nodeId: o.nodeId }),
      });
      await Promise.race([standby.waitFor(fenceSeq), standby.failed()]);
      await standby.stop();
      const caughtUpAt = now();
      const pos: AppliedPosition = standby.applier.position;
      const image = pos.checkpoint > 0 ? (standby.images.materialize() as S) : o.initialState();
      const restoredAt = now();
      await o.storage.commit(
        [],
        encodeMeta({
          app: o.app,
          epoch: claim.epoch,
          checkpoint: pos.checkpoint,
          streamSeq: fenceSeq,
          role: 'primary',
        }),
      );
      if (lost) throw lost;
      const replicator = new Replicator({
        epoch: claim.epoch,
        firstCheckpoint: pos.checkpoint + 1,
        firstSeq: 2,
        adapter: o.storage,
        publisher,
        images: new ImageEncoder({ keyframeEvery: o.keyframeEvery, maxChainShare: 0.5 }),
        batchBytes: Math.min(o.batchBytes, Math.max(1024, link.maxPayload - 4096)),
        leaseValid: () => keeper.isValid(),
        fencedError: () => lost ?? new FencedError(`node '${o.nodeId}' is no longer primary`),
      });
      const self = new Restartpoint<S>({
        o,
        link,
        keeper,
        replicator,
        state: image,
        resumedFrom: pos.checkpoint > 0 ? { epoch: pos.epoch, checkpoint: pos.checkpoint } : undefined,
        epoch: claim.epoch,
        takeover: {
          detectMs: Math.max(0, claimedAt - claim.vacantSince),
          catchUpMs: caughtUpAt - claimedAt,
          restoreMs: restoredAt - caughtUpAt,
          previous: claim.previous,
        },
      });
      holder.rp = self;
      o.log({ level: 'info', msg: 'primary', epoch: claim.epoch, resumedFrom: pos.checkpoint });
      return self;
    } catch (err) {
      await closeLink(link);
      throw err;
    }
  }

  /**
   * Declares a restart point: the standby can restart the app exactly here.
   *
   * The image is taken from `state` synchronously, at the call; later mutations of `state` do
   * not change it. The checkpoint seals every `rp.store` write called before it.
   *
   * Failure semantics:
   * - **Resolved** `{ epoch, checkpoint }`: the image and every write before the call are
   *   durable on the relay, and the lease was held when the relay acknowledged them. After any
   *   failover the app resumes from this checkpoint or a later acknowledged one, never earlier.
   * - **Rejected with `SerializationError`** (`path` names the value): nothing was sent and no
   *   number was used; fix the state and call again. The app keeps running.
   * - **Rejected with `ReplicationError`** (`retryable`): the relay did not acknowledge in time.
   *   The checkpoint may or may not survive a failover; the next `checkpoint()` re-sends what
   *   is missing and, once resolved, covers this one too.
   * - **Rejected with `FencedError`**: this node lost the lease (see the `demoted` event); the
   *   checkpoint may be discarded by the new primary. Stop work.
   * - Numbers are positive integers that grow by one across the whole life of the app, across
   *   takeovers. A checkpoint that was never acknowledged may be resumed from all the same.
   */
  checkpoint(state: S): Promise<CheckpointAck> {
    return this.#guard() ?? this.#replicator.checkpoint(state);
  }

  /** Figures of the last acknowledged checkpoint. */
  get lastCheckpoint(): CheckpointStats | undefined {
    return this.#replicator.lastStats;
  }

  /** Whether this node still holds the lease. */
  get isPrimary(): boolean {
    return !this.#closed && !this.#fenced && this.#keeper.isValid();
  }

  /** @internal Called by the lease keeper when the lease is lost. */
  private demote(err: FencedError): void {
    if (this.#fenced || this.#closed) return;
    this.#fenced = err;
    this.#replicator.stop(err);
    this.#o.log({ level: 'warn', msg: 'demoted', error: err.message });
    this.emit('demoted', err);
  }

  /**
   * Stops this node. A primary first waits until every checkpoint already called has been
   * acknowledged or has failed, then releases its lease so a standby takes over at once (from
   * the last sealed checkpoint: writes after it are rolled back). Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#replicator.drain();
    const err: RestartpointError = new ClosedError();
    this.#replicator.stop(err);
    // Release only while the lease is still ours: a lease that ran out may already be another's.
    await this.#keeper.stop(!this.#fenced && this.#keeper.isValid());
    await closeLink(this.#link);
    await this.#o.storage.close();
  }
}

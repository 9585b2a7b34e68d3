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
import {
  ClosedError,
  FencedError,
  InvalidArgumentError,
  StoreLostError,
  type RestartpointError,
  type StorageError,
} from '../errors.js';
import { ImageEncoder } from '../image/chain.js';
import { track, trackerOf, type StateTracker } from '../image/tracked.js';
import { Replicator, type CheckpointAck, type CheckpointStats } from '../primary/replicator.js';
import { appNames } from '../protocol/subjects.js';
import { takeOver, type Promotion } from '../failover/takeover.js';
import { StandbyRunner, type StandbyOptions } from '../standby/runner.js';
import { StoreRebuilder } from '../standby/rebuild.js';
import { serveVerify, verifyAnswer } from '../transport/control.js';
import { refuseLiveNodeId } from '../transport/node-id.js';
import { assertValidKey, assertValidValue } from '../storage/adapter.js';
import { limitError, type Limits } from '../limits.js';
import { closeLink, openLeaseBucket, openLink } from '../transport/connection.js';
import { LeaseStore } from '../transport/lease-store.js';
import { RelaySet } from '../transport/relays.js';
import type { RelayStateSample } from '../transport/presence.js';
import { EnvelopeCodec } from '../protocol/envelope.js';
import { resolveOptions, type ResolvedOptions, type StartOptions } from './options.js';
import { NodeReporter } from './reporting.js';
import {
  SidecarClient,
  sidecarFromEnv,
  type PrimaryEngine,
  type RoleHolder,
  type SidecarAddress,
} from './sidecar-client.js';
import {
  PRESENCE_STALE_MS,
  answerCompact,
  baseBuilder,
  clearSwitchover,
  readCompact,
  readPresence,
  readSwitchover,
  type SwitchoverRequest,
} from '../transport/presence.js';
import { BaseKeeper } from '../history/keeper.js';
import { PurgeWatchdog } from '../history/watchdog.js';
import { LagBudget, defaultLagBudget } from '../primary/lag-budget.js';
import {
  AutoCheckpoints,
  OutputCommits,
  ResumeGuard,
  resumeProblem,
  resumeState,
  type Resumed,
} from './restart-points.js';
import { WRITE_VERSION } from '../protocol/frame.js';
import { checkResumeFromEnv, resumeInSandbox } from './check-resume.js';
import type { ResumedFrom, TakeoverStats } from '../types.js';

export type { ResumedFrom, TakeoverStats } from '../types.js';

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
  /** The write path: the replicator, or the sidecar's API (sidecar mode). */
  readonly #replicator: PrimaryEngine;
  /** What keeps this node primary: the lease keeper, or the sidecar. */
  readonly #keeper: RoleHolder;
  /** Reads of this node's store. */
  readonly #get: (key: string) => Promise<Uint8Array | undefined>;
  /** Closes connections and the store, after the role was given up. */
  readonly #shutdown: () => Promise<void>;
  readonly #commits = new OutputCommits();
  readonly #auto: AutoCheckpoints | undefined;
  /** Checkpoints called and not settled: `close()` lets their `afterCheckpoint` callbacks run. */
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #reporter: Pick<NodeReporter, 'transition' | 'stop'>;
  /** A switchover was requested: the next checkpoint hands the primary role over. */
  #handover: SwitchoverRequest | undefined;
  /** The checkpoint that hands over, while it is in flight: writes and checkpoints wait for it. */
  #handingOver: Promise<unknown> | undefined;
  #fenced: FencedError | undefined;
  #closed = false;
  readonly #adoptTracker: ((tracker: StateTracker) => boolean | undefined) | undefined;
  readonly #lagBudget: LagBudget | undefined;

  private constructor(init: {
    o: ResolvedOptions<S>;
    keeper: RoleHolder;
    replicator: PrimaryEngine;
    get: (key: string) => Promise<Uint8Array | undefined>;
    shutdown: () => Promise<void>;
    state: S;
    resumedFrom: ResumedFrom | undefined;
    epoch: number;
    takeover: TakeoverStats;
    reporter: Pick<NodeReporter, 'transition' | 'stop'>;
    /** The encoder's hook for `track()` of the resumed state (see ImageEncoder.adoptTracker). */
    adoptTracker?: (tracker: StateTracker) => boolean | undefined;
    /** Back-pressure from the slowest standby (`maxStandbyLag`). */
    lagBudget?: LagBudget;
  }) {
    super();
    this.#lagBudget = init.lagBudget;
    this.#reporter = init.reporter;
    this.#adoptTracker = init.adoptTracker;
    this.#o = init.o;
    this.#keeper = init.keeper;
    this.#replicator = init.replicator;
    this.#get = init.get;
    this.#shutdown = init.shutdown;
    this.state = init.state;
    this.resumedFrom = init.resumedFrom;
    this.epoch = init.epoch;
    this.nodeId = init.o.nodeId;
    this.takeover = init.takeover;
    const { checkpointEveryMs, getState } = init.o;
    if (checkpointEveryMs !== undefined && getState !== undefined) {
      this.#auto = new AutoCheckpoints({
        everyMs: checkpointEveryMs,
        take: () => this.checkpoint(getState()),
        onError: (err) => {
          const lost = err instanceof FencedError || err instanceof ClosedError;
          init.o.log({
            level: lost ? 'warn' : 'error',
            msg: 'automatic checkpoint failed',
            code: (err as { code?: unknown }).code,
            error: err instanceof Error ? err.message : String(err),
          });
          return lost;
        },
      });
    }
    const rep = this.#replicator;
    const limits = init.o.limits;
    this.store = {
      put: (key, value) => {
        try {
          assertValidKey(key);
          checkKeyLimit(key, limits);
          if (typeof value === 'string') {
            const bytes = Buffer.from(value, 'utf8');
            assertValidValue(bytes);
            checkValueLimit(bytes, limits);
            return this.#guard() ?? this.#gated(() => rep.write({ op: 'put', key, value: bytes }));
          }
          assertValidValue(value);
          checkValueLimit(value, limits);
          const refused = this.#guard();
          if (refused) return refused;
          // The app may reuse its buffer once `put` returns. The replicator copies the value into
          // its write frame before `write` returns; a write held back by a handover, or an engine
          // that does not copy (the sidecar's), gets its own copy here.
          if (rep.copiesValues === true && !this.#handingOver) return rep.write({ op: 'put', key, value });
          const own = Uint8Array.prototype.slice.call(value);
          return this.#gated(() => rep.write({ op: 'put', key, value: own }));
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
        return this.#get(key);
      },
      delete: (key) => {
        try {
          assertValidKey(key);
        } catch (err) {
          return Promise.reject(err);
        }
        try {
          checkKeyLimit(key, limits);
        } catch (err) {
          return Promise.reject(err);
        }
        return this.#guard() ?? this.#gated(() => rep.write({ op: 'delete', key }));
      },
    };
  }

  /**
   * Runs `fn` now, or, while the checkpoint that hands the role over is in flight, once it
   * settled: after it was acknowledged this node is no longer primary (`FencedError`); if it
   * failed, the handover waits for the next checkpoint and `fn` runs.
   */
  #gated<T>(fn: () => Promise<T>): Promise<T> {
    const h = this.#handingOver;
    if (!h) return fn();
    return h.then(
      () => this.#guard() ?? fn(),
      () => this.#guard() ?? fn(),
    );
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
    // Under `restartpoint sidecar`, the sidecar is the node: this app talks to its local API.
    const sidecar = o.sidecar ? sidecarFromEnv(process.env) : undefined;
    if (sidecar) return Restartpoint.#attach(o, sidecar);
    // `restartpoint check-resume`: resume in a read-only sandbox instead of joining the app.
    const check = checkResumeFromEnv(process.env, o.app);
    if (check) return Restartpoint.#sandbox(o, check.report);
    const names = appNames(o.app);
    // The lease lives where `nats` points; frames go to every relay (by default that same server).
    const link = await openLink(o.nats, `restartpoint:${o.app}:${o.nodeId}`);
    let relays: RelaySet | undefined;
    let reporter: NodeReporter | undefined;
    let bases: BaseKeeper | undefined;
    let watchdog: PurgeWatchdog | undefined;
    const envelope = o.clusterKey
      ? new EnvelopeCodec({ app: o.app, keys: o.clusterKey, encrypt: o.encrypt })
      : undefined;
    try {
      relays = await RelaySet.open({
        specs: o.relays ?? [o.nats],
        shared: o.relays ? undefined : link,
        names,
        clientName: `restartpoint:${o.app}:${o.nodeId}`,
        ack: o.ack,
        app: o.app,
        timeoutMs: o.checkpointTimeoutMs,
        fec: o.fec,
        faults: o.faults,
        envelope,
        onError: (msg) => o.log({ level: 'warn', msg: 'relay', error: msg }),
      });
      const relaySet = relays;
      const kv = await openLeaseBucket(link, names);
      // Two processes under one node id corrupt presence, status and switchover: refuse.
      await refuseLiveNodeId(kv, o.app, o.nodeId, { reuse: o.reuseNodeId });
      const leaseStore = new LeaseStore(kv, names.leaseKey);
      // Mixed versions (a rolling upgrade): whether this standby could resume what it holds.
      const standbyRef: { s?: StandbyRunner } = {};
      const guard = new ResumeGuard({
        stateVersion: o.stateVersion,
        images: () => standbyRef.s?.images,
        checkpoint: () => standbyRef.s?.applier.position.checkpoint ?? 0,
        log: o.log,
      });
      reporter = new NodeReporter({
        app: o.app,
        nodeId: o.nodeId,
        log: o.log,
        observer: o.observer,
        kv,
        leaseKey: names.leaseKey,
        buildsBases: o.base?.build !== false,
        versions: {
          stateVersion: o.stateVersion,
          protocolVersion: WRITE_VERSION,
          resumeProblem: () => {
            const s = standbyRef.s;
            return (
              guard.blocked() ??
              (s ? resumeProblem(o, s.images, s.applier.position.checkpoint)?.message : undefined)
            );
          },
        },
      });
      const rpt = reporter;
      rpt.transition('starting');
      await o.storage.open({ nodeId: o.nodeId });
      // `restartpoint verify --app`: operators ask this node to check its own store.
      serveVerify(
        link.nc,
        o.app,
        (req) => verifyAnswer(o.storage, o.nodeId, rpt.state ?? 'starting', req),
        (msg) => o.log({ level: 'warn', msg: 'control', error: msg }),
      );
      const relayStates = (): RelayStateSample[] =>
        relaySet.stats().map((x) => ({
          servers: x.servers,
          connected: x.connected,
          pending: x.pending === true,
          backfilling: x.backfilling === true,
          backlog: x.backlog,
        }));
      // A relay down at start is read once it comes up (the policy could do without it), by
      // whichever standby run is current (a rebuild replaces it).
      relaySet.onJoin((relay, l) => {
        o.log({ level: 'info', msg: 'relay joined', relay, servers: l.servers });
        void standbyRef.s?.joinRelay(relay);
      });
      // Bases and retention (docs/history.md): the live standby with the smallest id builds.
      const startBases = (run: StandbyRunner): void => {
        bases?.halt();
        // Every standby: rebuild from the base in place when it falls behind the purge point.
        watchdog?.halt();
        watchdog = new PurgeWatchdog({
          runner: run,
          links: relaySet.links,
          names,
          codec: relaySet.codec,
          app: o.app,
          onBehind: (e) => {
            o.log({ level: 'warn', msg: 'standby behind the purge', ...e });
            rpt.observe('behindPurge', { checkpoint: e.checkpoint, base: e.base, retainFrom: e.retainFrom });
          },
          onError: (err) =>
            o.log({ level: 'warn', msg: 'purge watchdog', error: (err as Error)?.message ?? String(err) }),
        });
        watchdog.start();
        bases =
          o.base?.build === false
            ? undefined
            : new BaseKeeper({
                runner: run,
                links: relaySet.links,
                names,
                codec: relaySet.codec,
                need: relaySet.need,
                adapter: o.storage,
                app: o.app,
                nodeId: o.nodeId,
                everyCheckpoints: o.base?.everyCheckpoints,
                everyBytes: o.base?.everyBytes,
                retain: o.retain,
                timeoutMs: o.checkpointTimeoutMs,
                isBuilder: async () => baseBuilder(await readPresence(kv), Date.now()) === o.nodeId,
                compactRequest: async () => (await readCompact(kv))?.id,
                compactDone: (id, checkpoint, purgedBelow) =>
                  answerCompact(kv, { id, checkpoint, builder: o.nodeId, doneAt: Date.now(), purgedBelow }),
                log: o.log,
                onBase: (ev) =>
                  rpt.observe('base', {
                    checkpoint: ev.checkpoint,
                    bytes: ev.bytes,
                    keys: ev.keys,
                    buildMs: ev.buildMs,
                    retainFrom: ev.retainFrom,
                    relays: relaySet.links.map((l, i) => ({
                      servers: l.servers,
                      purgedBelow: ev.purgedBelow[i] ?? null,
                    })),
                  }),
              });
        bases?.start();
      };
      const runStandby = async (): Promise<StandbyRunner> => {
        const run = new StandbyRunner({
          links: relaySet.links,
          names,
          app: o.app,
          adapter: o.storage,
          mode: o.mode,
          need: relaySet.need,
          codec: relaySet.codec,
          limits: o.limits,
          apply: o.apply,
          onStartPath: (path) => o.log({ level: 'info', msg: 'start path', ...path }),
          verifyOwnStore: o.verifyStore === 'full' ? 'full' : 'quick',
          ...standbyReports(o, rpt, guard),
        });
        standbyRef.s = run;
        await run.start();
        o.log({ level: 'info', msg: 'standby', nodeId: o.nodeId, start: run.startPath });
        rpt.transition('standby');
        rpt.present({ sample: () => run.lagSamples(), relayStates });
        startBases(run);
        return run;
      };
      let standby = await runStandby();
      // A store found lost (at takeover, or while applying) is rebuilt from the relays in place.
      const rebuilder = new StoreRebuilder({
        storage: o.storage,
        log: o.log,
        transition: (reason) => rpt.transition('starting', reason),
      });

      // The operator's view of a standby: per-relay lag, every 5 s, until it takes over.
      const lagTimer = setInterval(() => {
        void standby.lagReport().then((relays) => o.log({ level: 'info', msg: 'standby lag', relays }));
      }, 5_000);
      lagTimer.unref();
      const stop = new AbortController();
      const onAbort = (): void => stop.abort(new ClosedError('start() was aborted (options.signal)'));
      o.signal?.addEventListener('abort', onAbort, { once: true });
      if (o.signal?.aborted) onAbort();
      const holder: { rp?: Restartpoint<S> } = {};
      const resumed: Resumed = {};
      let promotion: Promotion<S>;
      try {
        for (;;) {
          try {
            promotion = await takeOver<S>({
              app: o.app,
              nodeId: o.nodeId,
              leaseTtlMs: o.leaseTtlMs,
              verifyStore: o.verifyStore,
              storeTimeoutMs: o.storeTimeoutMs,
              mode: o.mode,
              storage: o.storage,
              standby,
              readQuorum: relaySet.readQuorum,
              publish: (frame) => relaySet.publish(frame),
              lease: leaseStore,
              kv,
              resumeProblem: (checkpoint) => resumeProblem(o, standby.images, checkpoint),
              resumeBlocked: () => guard.blocked(),
              restore: (checkpoint) => resumeState(o, standby.images, checkpoint, resumed),
              transition: (to, reason) => rpt.transition(to, reason),
              log: o.log,
              signal: stop.signal,
              onClaimed: (claim) => {
                bases?.halt();
                watchdog?.halt();
                clearInterval(lagTimer);
                o.log({ level: 'info', msg: 'lease claimed', epoch: claim.epoch, previous: claim.previous });
                rpt.epoch = claim.epoch;
                rpt.present({});
              },
              onLost: (err) => holder.rp?.demote(err),
            });
            break;
          } catch (err) {
            bases?.halt();
            watchdog?.halt();
            await standby.stop().catch(() => undefined);
            if (!(await rebuilder.recover(err))) throw err;
            standby = await runStandby();
          }
        }
      } finally {
        o.signal?.removeEventListener('abort', onAbort);
        clearInterval(lagTimer);
        bases?.halt();
        watchdog?.halt();
      }
      const { claim, keeper, position: pos, state: image } = promotion;
      rpt.checkpoint = pos.checkpoint;
      const encoder = new ImageEncoder({
        maxDepth: o.limits.maxDepth,
        maxImageBytes: o.limits.maxImageBytes,
        maxFrameBytes: o.limits.maxFrameBytes,
        keyframeEvery: o.keyframeEvery,
        maxChainShare: o.maxChainShare,
        stateVersion: o.stateVersion,
        immutable: o.immutableState,
      });
      // Back-pressure from the slowest live standby (docs/failover.md, "The lag budget").
      const lagBudget =
        o.maxStandbyLag === false
          ? undefined
          : new LagBudget({
              budget: { ...defaultLagBudget(o.leaseTtlMs), ...stripUndefined(o.maxStandbyLag ?? {}) },
              read: async () =>
                (await readPresence(kv)).filter(
                  (p) =>
                    p.state === 'standby' &&
                    p.nodeId !== o.nodeId &&
                    Date.now() - p.updatedAt < PRESENCE_STALE_MS,
                ),
              onOverrun: (lag, waitedMs) => {
                const seen = {
                  nodeId: lag.nodeId,
                  behindCheckpoints: lag.checkpoints,
                  behindMs: Math.round(lag.ms),
                  behindBytes: lag.bytes,
                  waitedMs: Math.round(waitedMs),
                };
                o.log({ level: 'warn', msg: 'standby lag over budget', ...seen });
                rpt.observe('lagOverrun', seen);
              },
            });
      // The first checkpoint of this epoch: a delta against the image the standbys hold.
      if (resumed.image !== undefined && resumed.image.checkpoint === pos.checkpoint) {
        encoder.resume(resumed.image);
      }
      if (pos.checkpoint > 0) {
        // Which image the epoch starts with: an operator's (and the drill's) clue to resume time.
        o.log({
          level: 'info',
          msg: 'first image of the epoch',
          kind: encoder.resumed ? 'delta' : 'keyframe',
          base: pos.checkpoint,
          baseEpoch: resumed.image?.epoch ?? null,
          shared: resumed.image !== undefined && resumed.image.objects === undefined,
        });
      }
      const replicator = new Replicator({
        epoch: claim.epoch,
        firstCheckpoint: pos.checkpoint + 1,
        firstSeq: 2,
        adapter: o.storage,
        publisher: relaySet,
        images: encoder,
        batchBytes: Math.min(
          o.batchBytes,
          Math.max(1024, Math.min(...relaySet.links.map((l) => l.maxPayload)) - 4096),
        ),
        limits: o.limits,
        leaseValid: () => keeper.isValid(),
        onAck: (stats) => {
          lagBudget?.acknowledged(stats.checkpoint, stats.imageBytes + stats.writeBytes);
          rpt.checkpoint = Math.max(rpt.checkpoint, stats.checkpoint);
          rpt.observe('checkpoint', { ...stats, epoch: claim.epoch });
        },
        fencedError: () => keeper.lostError ?? new FencedError(`node '${o.nodeId}' is no longer primary`),
        onStoreFailure: (err) => {
          if (holder.rp) holder.rp.#stepDown(err);
        },
      });
      const self = new Restartpoint<S>({
        o,
        keeper,
        replicator,
        get: (key) =>
          o.storage.get(key).catch((err: unknown) => {
            // A read that finds the store's identity gone: its data is not what was written.
            if (err instanceof StoreLostError && holder.rp) holder.rp.#stepDown(err);
            throw err;
          }),
        shutdown: async () => {
          await relaySet.close(link);
          await closeLink(link);
          await o.storage.close();
        },
        state: image,
        resumedFrom: pos.checkpoint > 0 ? { epoch: pos.epoch, checkpoint: pos.checkpoint } : undefined,
        epoch: claim.epoch,
        reporter: rpt,
        takeover: promotion.stats,
        adoptTracker: (tracker) => encoder.adoptTracker(tracker),
        lagBudget,
      });
      holder.rp = self;
      rpt.observe('takeover', { epoch: claim.epoch, resumedFrom: pos.checkpoint, ...self.takeover });
      rpt.transition(
        'primary',
        pos.checkpoint > 0 ? `resumed from checkpoint ${pos.checkpoint}` : 'fresh app',
      );
      rpt.present({ onSwitchover: (req) => self.#requestHandover(req) });
      // A switchover that made this node primary is complete: withdraw the request.
      void readSwitchover(kv)
        .then((req) => (req && req.epoch < claim.epoch ? clearSwitchover(kv) : undefined))
        .catch(() => undefined);
      // Anti-entropy: relays that missed acknowledged frames (down while the predecessor ran, or
      // down now and back later) are caught up from the others (src/transport/backfill.ts).
      relaySet.enableBackfill(pos.epoch, (res) =>
        'error' in res
          ? o.log({ level: 'warn', msg: 'relay backfill failed', relay: res.target, error: res.error })
          : o.log({
              level: res.copied > 0 || res.unrecoverable > 0 ? 'info' : 'debug',
              msg: 'relay backfilled',
              relay: res.target,
              fromEpoch: pos.epoch,
              missingParts: res.missingParts,
              copied: res.copied,
              unrecoverable: res.unrecoverable,
            }),
      );
      self.#auto?.start();
      o.log({ level: 'info', msg: 'primary', epoch: claim.epoch, resumedFrom: pos.checkpoint });
      return self;
    } catch (err) {
      bases?.halt();
      watchdog?.halt();
      reporter?.transition('closed', (err as Error)?.message);
      await reporter?.stop(true);
      await relays?.close(link);
      await closeLink(link);
      throw err;
    }
  }

  /** Check-resume mode (src/sdk/check-resume.ts): the resume path, read only; nothing is written. */
  static async #sandbox<S>(o: ResolvedOptions<S>, report: string | undefined): Promise<Restartpoint<S>> {
    const box = await resumeInSandbox(o, report);
    const pos = box.position;
    return new Restartpoint<S>({
      o,
      keeper: { isValid: () => false, stop: () => Promise.resolve() },
      replicator: box.engine,
      get: (key) => o.storage.get(key),
      shutdown: box.shutdown,
      state: box.state,
      resumedFrom: pos.checkpoint > 0 ? { epoch: pos.epoch, checkpoint: pos.checkpoint } : undefined,
      epoch: pos.epoch,
      takeover: { detectMs: 0, catchUpMs: 0, rollbackMs: 0, fenceMs: 0, restoreMs: 0, previous: undefined },
      reporter: {
        transition: (to, reason) =>
          o.log({ level: 'info', msg: 'state transition', to, reason, sandbox: true }),
        stop: () => Promise.resolve(),
      },
    });
  }

  /** Sidecar mode: the sidecar already holds the role; state, store and checkpoints go through its API. */
  static async #attach<S>(o: ResolvedOptions<S>, where: SidecarAddress): Promise<Restartpoint<S>> {
    const client = await SidecarClient.connect(where);
    const { state, epoch, resumedFrom } = await client.restoredState();
    const log = o.log;
    o.log({ level: 'info', msg: 'attached to sidecar', url: where.url, epoch, resumedFrom });
    return new Restartpoint<S>({
      o,
      // The sidecar owns the lease: stopping the app just stops talking to it.
      keeper: { isValid: () => client.isValid(), stop: () => client.drain() },
      replicator: client,
      get: (key) => client.get(key),
      shutdown: () => client.close(),
      state: (resumedFrom > 0 ? state : o.initialState()) as S,
      resumedFrom:
        resumedFrom > 0 ? { epoch: client.resumedEpoch ?? epoch, checkpoint: resumedFrom } : undefined,
      epoch,
      takeover: client.takeover,
      reporter: {
        transition: (to, reason) => log({ level: 'info', msg: 'state transition', to, epoch, reason }),
        stop: () => Promise.resolve(),
      },
    });
  }

  /**
   * Declares a restart point: the standby can restart the app exactly here.
   *
   * The image is taken from `state` synchronously, at the call; later mutations of `state` do
   * not change it. The checkpoint seals every `rp.store` write called before it.
   *
   * What a checkpoint costs depends on how the app changes its state (docs/images.md):
   * - **In place, through `rp.track(state)`**: pass the proxy `track` returned. Only the entries
   *   changed since the last checkpoint are encoded: O(changed entries).
   * - **Immutably, with `immutableState: true`** (spread copies, Immer, Redux). The contract:
   *   an object reachable from a state passed to `checkpoint()` is never changed afterwards;
   *   to change it, make a new one (and new containers on the path from the root to it). A
   *   reference equal to last time's is then skipped in O(1); only new objects are compared,
   *   entry by entry, with the ones they replace. Changing an object in place after a
   *   checkpoint breaks the contract: that change may be missing from the standby's image
   *   until the next keyframe.
   * - **Otherwise**: the whole state is encoded and diffed (exact, but O(state size)).
   * A state that shares an object between two places, or has a cycle, is always diffed whole
   * (exact) until the sharing ends.
   *
   * Failure semantics:
   * - **Resolved** `{ epoch, checkpoint }`: the image and every write before the call are
   *   durable on the relay, and the lease was held when the relay acknowledged them. After any
   *   failover the app resumes from this checkpoint or a later acknowledged one, never earlier.
   *   `afterCheckpoint` callbacks added before the call run now.
   * - **Rejected with `SerializationError`** (`path` names the value): nothing was sent and no
   *   number was used; fix the state and call again. The app keeps running. The next image is
   *   a whole one (keyframe).
   * - **Rejected with `ReplicationError`** (`retryable`): the relay did not acknowledge in time.
   *   The checkpoint may or may not survive a failover; the next `checkpoint()` re-sends what
   *   is missing and, once resolved, covers this one too.
   * - **Rejected with `FencedError`**: this node lost the lease (see the `demoted` event); the
   *   checkpoint may be discarded by the new primary. Stop work.
   * - Numbers are positive integers that grow by one across the whole life of the app, across
   *   takeovers. A checkpoint that was never acknowledged may be resumed from all the same.
   */
  checkpoint(state: S): Promise<CheckpointAck> {
    const guard = this.#guard();
    if (guard) return guard;
    if (this.#handingOver) {
      // The handover checkpoint is in flight: this one runs if it fails, else it is refused.
      return this.#gated(() => this.checkpoint(state));
    }
    const acked = this.#replicator.checkpoint(state);
    const budget = this.#lagBudget;
    // Durable already; its resolution waits while the slowest standby is over the lag budget.
    const done =
      budget === undefined
        ? acked
        : acked.then(async (ack) => {
            await budget.wait(() => this.#closed || this.#fenced !== undefined);
            // The wait can outlast the lease (a paused process wakes up after its successor
            // took over): resolve only while this node still holds it, as the ack itself did.
            if (this.#fenced) throw this.#fenced;
            if (!this.#keeper.isValid()) {
              throw new FencedError(
                `checkpoint ${ack.checkpoint} is durable, but node '${this.nodeId}' cannot be sure it still holds the lease after waiting for its standby (maxStandbyLag): a new primary may have taken over`,
              );
            }
            return ack;
          });
    if (this.#handover) this.#handOverAt(done);
    const settled = done.then(
      (ack) => this.#commits.acknowledged(ack.checkpoint),
      () => undefined,
    );
    this.#inFlight.add(settled);
    void settled.finally(() => this.#inFlight.delete(settled));
    return done;
  }

  /**
   * Wraps `state` (a plain object, array, Map or Set) in a proxy that records what the app
   * changes, so that `checkpoint(proxy)` encodes only the changed entries. Use the proxy (and
   * the proxies its reads return) for every change from now on; the raw object must not be
   * changed directly any more. Tracking the same state twice returns the same proxy.
   *
   * Plain objects, arrays, Maps and Sets are tracked. Dates, typed arrays, Buffers, class
   * instances and other objects are values: replace them to change them, or assign them again
   * after changing them in place (`rec.buf = rec.buf`). A value stored through the proxy that
   * holds proxies (a filtered array of proxied records) has them replaced by their targets.
   *
   * Throws `InvalidArgumentError` when `state` cannot be tracked.
   */
  track<T extends object>(state: T): T {
    const proxy = track(state);
    // The resumed state, tracked before it changed: adopt the objects the restore found, so
    // the first checkpoint of this epoch is a delta of what changed (images.md).
    const tracker = (state as unknown) === this.state ? trackerOf(proxy) : undefined;
    if (tracker !== undefined && this.#adoptTracker?.(tracker) === false) {
      this.#o.log({
        level: 'info',
        msg: 'resumed state tracked without its restore objects',
        reason: 'the state shares objects, or it changed before track()',
      });
    }
    return proxy;
  }

  /**
   * Output commit: runs `fn` once the next checkpoint is durable, so that what `fn` reveals (a
   * reply to a client, a message to another system) can no longer be rolled back by a failover.
   * "The next checkpoint" is the first `checkpoint()` called after this call (automatic ones
   * included); `fn` runs when that checkpoint, or any later one, resolves. Resolves with what
   * `fn` returns; rejects with what it throws. Callbacks run in the order they were added.
   *
   * Failure semantics:
   * - The checkpoint is rejected with `ReplicationError` or `SerializationError`: `fn` waits
   *   for the next checkpoint that resolves (it covers the state `fn` depends on too).
   * - The node is fenced (`demoted`) or closed before a covering checkpoint resolved: `fn` never
   *   runs, and the promise rejects with that `FencedError` or `ClosedError`. The state `fn` would
   *   have revealed may be rolled back; do not reveal it (the client retries against the new
   *   primary).
   * - The process dies first: `fn` never runs. It never runs twice, and never on another node.
   * - Nothing checkpoints: `fn` waits. Call `checkpoint()`, or set `checkpointEveryMs`.
   */
  afterCheckpoint<T>(fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
    const guard = this.#guard();
    if (guard) return guard;
    if (typeof fn !== 'function') {
      return Promise.reject(new InvalidArgumentError(`afterCheckpoint() needs a function, got ${typeof fn}`));
    }
    return this.#commits.add(this.#replicator.nextCheckpoint, fn);
  }

  /** Figures of the last acknowledged checkpoint. */
  get lastCheckpoint(): CheckpointStats | undefined {
    return this.#replicator.lastStats;
  }

  /** Whether this node still holds the lease. */
  get isPrimary(): boolean {
    return !this.#closed && !this.#fenced && this.#keeper.isValid();
  }

  /** A switchover request for this node's epoch arrived: the next checkpoint hands over. */
  #requestHandover(req: SwitchoverRequest): void {
    if (this.#handover || this.#fenced || this.#closed) return;
    this.#handover = req;
    this.#reporter.transition('handing-over', 'switchover requested');
  }

  /**
   * `done` is the checkpoint that hands the role over. Until it settles, writes and checkpoints
   * wait. Acknowledged: this node stops being primary (no write after it was accepted, so no
   * acknowledged work is lost) and releases the lease so a standby claims it at once. Failed:
   * the next checkpoint tries again.
   */
  #handOverAt(done: Promise<CheckpointAck>): void {
    const settled = done.then(
      async (ack) => {
        const err = new FencedError(
          `switchover: node '${this.nodeId}' handed the primary role over at checkpoint ${ack.checkpoint}; a standby resumes from it`,
        );
        this.demote(err, 'switchover');
        await this.#keeper.stop(true);
      },
      (err: unknown) => {
        this.#o.log({
          level: 'warn',
          msg: 'switchover checkpoint failed; the next checkpoint hands over',
          error: (err as Error)?.message,
        });
        throw err;
      },
    );
    this.#handingOver = settled;
    void settled.then(
      () => undefined,
      () => {
        if (this.#handingOver === settled) this.#handingOver = undefined;
      },
    );
  }

  /**
   * This node's own store failed under it (lost its data, timed out, unreachable): stop
   * acknowledging, demote with the reason, and release the lease at once so a standby, whose
   * store is intact, takes over now rather than after a TTL.
   */
  #stepDown(err: StorageError): void {
    if (this.#fenced || this.#closed) return;
    this.demote(
      new FencedError(
        `node '${this.nodeId}' stepped down: its own ${this.#o.storage.kind} store failed (${err.code}: ${err.message}); a standby takes over`,
        { cause: err },
      ),
      'store failed',
    );
    void this.#keeper.stop(true);
  }

  /** @internal Called by the lease keeper when the lease is lost. */
  private demote(err: FencedError, reason = 'lease lost'): void {
    if (this.#fenced || this.#closed) return;
    this.#fenced = err;
    this.#replicator.stop(err);
    this.#commits.fail(err);
    void this.#auto?.stop();
    this.#o.log({ level: 'warn', msg: 'demoted', error: err.message });
    this.#reporter.transition('demoted', reason);
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
    await this.#auto?.stop();
    await this.#replicator.drain();
    // Checkpoints that resolve while draining still release their afterCheckpoint callbacks.
    await Promise.all([...this.#inFlight]);
    const err: RestartpointError = new ClosedError();
    this.#replicator.stop(err);
    this.#commits.fail(err);
    // Release only while the lease is still ours: a lease that ran out may already be another's.
    await this.#keeper.stop(!this.#fenced && this.#keeper.isValid());
    this.#reporter.transition('closed', this.#fenced ? 'closed after demotion' : 'closed');
    await this.#reporter.stop(true);
    await this.#shutdown();
  }
}

/** Throws `LimitError` when `key` is longer than `limits.maxKeyBytes` (below the adapter contract's 1 KiB). */
function checkKeyLimit(key: string, limits: Limits): void {
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > limits.maxKeyBytes)
    throw limitError('maxKeyBytes', 'store key (UTF-8 bytes)', bytes, limits.maxKeyBytes);
}

/** Throws `LimitError` when `value` is larger than `limits.maxValueBytes`. */
function checkValueLimit(value: Uint8Array, limits: Limits): void {
  if (value.byteLength > limits.maxValueBytes) {
    throw limitError('maxValueBytes', 'store value (bytes)', value.byteLength, limits.maxValueBytes);
  }
}

/** What a standby reports as it applies: rejections, commits and fences, to the log and the observer. */
function standbyReports(
  o: ResolvedOptions<unknown>,
  rpt: NodeReporter,
  guard: ResumeGuard,
): Pick<StandbyOptions, 'onReject' | 'onCommit' | 'onFence' | 'onRollback' | 'onLateCopy'> {
  return {
    onReject: (err, seq) => {
      rpt.observe('rejected', err.reason);
      o.log({ level: 'warn', msg: 'frame rejected', reason: err.reason, streamSeq: seq, error: err.message });
      guard.rejected(err, seq);
    },
    onCommit: (pos) => {
      rpt.checkpoint = pos.checkpoint;
      rpt.epoch = Math.max(rpt.epoch, pos.epoch);
      rpt.observe('applied', { epoch: pos.epoch, checkpoint: pos.checkpoint });
      guard.check();
      o.log({ level: 'debug', msg: 'checkpoint applied', ...pos });
    },
    onFence: (epoch, nodeId, seq) =>
      o.log({ level: 'info', msg: 'fence applied', epoch, nodeId, streamSeq: seq }),
    // A deposed primary's frames after the cut that were read before the fence: dropped with it.
    onRollback: (r) =>
      o.log({
        level: 'info',
        msg: 'fence rolled back',
        epoch: r.epoch,
        cutoff: r.cutoff,
        frames: r.frames,
        checkpoints: r.checkpoints.join(','),
        epochs: r.epochs.join(','),
      }),
    // Another relay's copy of a committed frame: expected with several relays, not a rejection.
    onLateCopy: (key, relay, seq) =>
      o.log({
        level: 'debug',
        msg: 'late copy',
        relay,
        streamSeq: seq,
        frame: `${key.epoch}/${key.seq}.${key.part}`,
      }),
  };
}

/** `o` without its undefined fields (so they do not override defaults in a spread). */
function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

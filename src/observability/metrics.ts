/**
 * Prometheus metrics of a node (prom-client), fed by the SDK's `Observer` hook:
 *
 * ```ts
 * import { RestartpointMetrics } from 'restartpoint/metrics';
 * const m = new RestartpointMetrics();
 * await Restartpoint.start({ ..., observer: m.observer });
 * // in an HTTP handler: res.setHeader('content-type', m.registry.contentType); res.end(await m.registry.metrics());
 * ```
 *
 * The metric names and labels are a public contract, listed in docs/observability.md: add, never
 * rename. Every series carries `app` and `node` (taken from the node's transitions, or given in
 * `labels`) plus any constant `labels` of the caller.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, exponentialBuckets } from 'prom-client';
import { ConfigError } from '../errors.js';
import {
  NodeStates,
  type CheckpointObservation,
  type NodeState,
  type Observer,
  type RelayLagSample,
  type TakeoverObservation,
  type BaseObservation,
  type Transition,
} from './observer.js';

/** Options of `RestartpointMetrics`. */
export interface MetricsOptions {
  /** Registry to register into. Default: a new one (never prom-client's global registry). */
  registry?: Registry;
  /** Prefix of every metric name. Default `restartpoint_`. */
  prefix?: string;
  /**
   * Constant labels added to every series (e.g. `{ region: 'eu-1' }`). `app` and `node` may be
   * given here to fix them; otherwise they are taken from the node's first transition.
   */
  labels?: Record<string, string>;
  /** Also collect prom-client's default process metrics (`process_*`, `nodejs_*`, unprefixed). */
  collectDefault?: boolean;
}

/** Buckets of `checkpoint_duration_seconds`: 0.2 ms … 10 s. */
export const CHECKPOINT_DURATION_BUCKETS: readonly number[] = [
  0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
/** Buckets of the byte histograms: 64 B … 64 MiB, ×4. */
export const BYTE_BUCKETS: readonly number[] = exponentialBuckets(64, 4, 11);
/** Phases of `takeover_duration_seconds`, in the order a takeover runs them. */
export const TAKEOVER_PHASES = ['detect', 'catch_up', 'rollback', 'fence', 'restore'] as const;

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** Label names the metrics use themselves; constant labels may not take them. */
const RESERVED_LABELS = new Set(['path', 'relay', 'state', 'phase', 'reason', 'le', 'quantile']);

type AnyMetric = Counter<string> | Gauge<string> | Histogram<string>;

/**
 * The metrics of one node. Give `observer` to `Restartpoint.start({ observer })` and serve
 * `await registry.metrics()` (content type `registry.contentType`). Several instances (one per
 * node of a process) may share one registry: they share the metrics and differ by `node`.
 */
export class RestartpointMetrics {
  /** The registry the metrics live in. */
  readonly registry: Registry;
  /** The hook to pass as `StartOptions.observer`. */
  readonly observer: Observer;

  readonly #prefix: string;
  readonly #constLabels: Record<string, string>;
  readonly #extraNames: string[];
  #app: string;
  #node: string;
  #fixedApp: boolean;
  #fixedNode: boolean;

  readonly #checkpointDuration: Histogram<string>;
  readonly #imageBytes: Histogram<string>;
  readonly #writeBytes: Histogram<string>;
  readonly #checkpoints: Counter<string>;
  readonly #lagFrames: Gauge<string>;
  readonly #lagBytes: Gauge<string>;
  readonly #lagSeconds: Gauge<string>;
  readonly #lagCheckpoints: Gauge<string>;
  readonly #relayConnected: Gauge<string>;
  readonly #lastSealed: Gauge<string>;
  readonly #epoch: Gauge<string>;
  readonly #role: Gauge<string>;
  readonly #transitions: Counter<string>;
  readonly #takeovers: Counter<string>;
  readonly #takeoverDuration: Gauge<string>;
  readonly #rejected: Counter<string>;
  readonly #baseCheckpoint: Gauge<string>;
  readonly #baseBytes: Gauge<string>;
  readonly #baseBuild: Gauge<string>;
  readonly #retainFrom: Gauge<string>;
  readonly #purgedBelow: Gauge<string>;
  readonly #lagOverruns: Counter<string>;
  readonly #behindPurge: Counter<string>;
  /** Relays that got a lag sample, to drop series of relays that went away. */
  #relays = new Set<string>();

  constructor(opts: MetricsOptions = {}) {
    if (opts === null || typeof opts !== 'object') {
      throw new ConfigError(
        'metrics',
        `options must be an object, got ${opts === null ? 'null' : typeof opts}`,
      );
    }
    const prefix = opts.prefix ?? 'restartpoint_';
    if (typeof prefix !== 'string' || (prefix !== '' && !METRIC_NAME.test(prefix))) {
      throw new ConfigError(
        'metrics.prefix',
        `must match ${METRIC_NAME.source} (letters, digits, '_' and ':'), got ${JSON.stringify(prefix)}`,
      );
    }
    if (opts.registry !== undefined && !(opts.registry instanceof Registry)) {
      throw new ConfigError(
        'metrics.registry',
        "must be a prom-client Registry (import { Registry } from 'prom-client')",
      );
    }
    const labels = opts.labels ?? {};
    if (labels === null || typeof labels !== 'object' || Array.isArray(labels)) {
      throw new ConfigError('metrics.labels', 'must be an object of label name → string value');
    }
    for (const [k, v] of Object.entries(labels)) {
      if (!LABEL_NAME.test(k) || k.startsWith('__')) {
        throw new ConfigError(
          `metrics.labels.${k}`,
          `is not a valid Prometheus label name (${LABEL_NAME.source}, no '__' prefix)`,
        );
      }
      if (RESERVED_LABELS.has(k)) {
        throw new ConfigError(
          `metrics.labels.${k}`,
          `is a label the metrics set themselves; pick another name`,
        );
      }
      if (typeof v !== 'string') {
        throw new ConfigError(`metrics.labels.${k}`, `must be a string, got ${typeof v}`);
      }
    }
    this.#prefix = prefix;
    this.registry = opts.registry ?? new Registry();
    const { app, node, ...rest } = labels;
    this.#app = app ?? '';
    this.#node = node ?? '';
    this.#fixedApp = app !== undefined;
    this.#fixedNode = node !== undefined;
    this.#constLabels = rest;
    this.#extraNames = Object.keys(rest).sort();

    const base = ['app', 'node', ...this.#extraNames];
    this.#checkpointDuration = this.#histogram(
      'checkpoint_duration_seconds',
      'Time from checkpoint() to its acknowledgement on the relays, per acknowledged checkpoint (primary).',
      base,
      CHECKPOINT_DURATION_BUCKETS,
    );
    this.#imageBytes = this.#histogram(
      'checkpoint_image_bytes',
      'Image bytes shipped per acknowledged checkpoint (keyframe or delta, after compression).',
      base,
      BYTE_BUCKETS,
    );
    this.#writeBytes = this.#histogram(
      'checkpoint_write_bytes',
      'Store write bytes (keys + values as encoded) sealed per acknowledged checkpoint.',
      base,
      BYTE_BUCKETS,
    );
    this.#checkpoints = this.#counter(
      'checkpoints_total',
      'Acknowledged checkpoints, by how the image was found (path: keyframe, tracked, identity, diff).',
      [...base, 'path'],
    );
    const relay = [...base, 'relay'];
    this.#lagFrames = this.#gauge(
      'replication_lag_frames',
      'Relay stream messages this standby has not applied yet (absent while the relay is unreachable).',
      relay,
    );
    this.#lagBytes = this.#gauge(
      'replication_lag_bytes',
      'Bytes of the relay stream messages this standby has not applied yet.',
      relay,
    );
    this.#lagSeconds = this.#gauge(
      'replication_lag_seconds',
      'Age of the oldest relay message this standby has not applied (0 when caught up).',
      relay,
    );
    this.#lagCheckpoints = this.#gauge(
      'replication_lag_checkpoints',
      'Checkpoints the primary sealed that this standby has not committed.',
      relay,
    );
    this.#relayConnected = this.#gauge(
      'relay_connected',
      "1 while this standby's connection to the relay is up, 0 otherwise.",
      relay,
    );
    this.#lastSealed = this.#gauge(
      'last_sealed_checkpoint',
      'Last checkpoint acknowledged (primary) or committed to the store (standby).',
      base,
    );
    this.#epoch = this.#gauge(
      'epoch',
      'Epoch this node holds (primary) or has seen last (standby); 0 before any.',
      base,
    );
    this.#role = this.#gauge(
      'role',
      "1 for the node's current failover state (label state), 0 for every other state.",
      [...base, 'state'],
    );
    this.#transitions = this.#counter(
      'state_transitions_total',
      'State changes of the failover controller, by the state entered.',
      [...base, 'state'],
    );
    this.#takeovers = this.#counter('takeovers_total', 'Times this node became primary.', base);
    this.#takeoverDuration = this.#gauge(
      'takeover_duration_seconds',
      'Duration of each phase (detect, catch_up, rollback, fence, restore) of the last takeover by this node.',
      [...base, 'phase'],
    );
    this.#rejected = this.#counter(
      'frames_rejected_total',
      'Frames this standby refused, by reason (truncated, checksum, stale, forged, ...).',
      [...base, 'reason'],
    );

    this.#baseCheckpoint = this.#gauge(
      'base_checkpoint',
      'Checkpoint of the last base snapshot this node made durable (docs/history.md).',
      base,
    );
    this.#baseBytes = this.#gauge('base_bytes', 'Bytes of the last base snapshot this node made.', base);
    this.#baseBuild = this.#gauge(
      'base_build_seconds',
      'From reading the store to the last base being durable under the ack policy.',
      base,
    );
    this.#retainFrom = this.#gauge(
      'retained_from_checkpoint',
      'Oldest checkpoint whose frames every relay keeps after the last purge (the window start).',
      base,
    );
    this.#purgedBelow = this.#gauge(
      'relay_purged_below_seq',
      'Per relay, the first stream sequence kept after the last purge by this node.',
      [...base, 'relay'],
    );
    this.#lagOverruns = this.#counter(
      'standby_lag_overruns_total',
      'Checkpoints of this primary that waited out maxStandbyLag.waitMs with a standby still over the lag budget.',
      base,
    );
    this.#behindPurge = this.#counter(
      'standby_behind_purge_rebuilds_total',
      'Times this standby fell behind the purge point and rebuilt from the base in place (docs/history.md).',
      base,
    );

    if (opts.collectDefault === true && !this.registry.getSingleMetric('process_cpu_user_seconds_total')) {
      collectDefaultMetrics({ register: this.registry });
    }
    if (this.#fixedApp && this.#fixedNode) this.#setRole(undefined);

    // Observer methods never throw into the node (the SDK catches too, this keeps logs quiet).
    const guard =
      <A extends unknown[]>(f: (...a: A) => void) =>
      (...a: A): void => {
        try {
          f(...a);
        } catch {
          // a metric that cannot be recorded is not worth disturbing the node for
        }
      };
    this.observer = {
      transition: guard((t: Transition) => this.#onTransition(t)),
      checkpoint: guard((c: CheckpointObservation) => this.#onCheckpoint(c)),
      applied: guard((p: { readonly epoch: number; readonly checkpoint: number }) => this.#onApplied(p)),
      rejected: guard((reason: string) => this.#rejected.inc({ ...this.#labels(), reason: String(reason) })),
      lag: guard((relays: readonly RelayLagSample[]) => this.#onLag(relays)),
      takeover: guard((t: TakeoverObservation) => this.#onTakeover(t)),
      base: guard((b: BaseObservation) => {
        const l = this.#labels();
        this.#baseCheckpoint.set(l, b.checkpoint);
        this.#baseBytes.set(l, b.bytes);
        this.#baseBuild.set(l, b.buildMs / 1000);
        this.#retainFrom.set(l, b.retainFrom);
        for (const r of b.relays)
          if (r.purgedBelow !== null) this.#purgedBelow.set({ ...l, relay: r.servers }, r.purgedBelow);
      }),
      lagOverrun: guard(() => this.#lagOverruns.inc(this.#labels())),
      behindPurge: guard(() => this.#behindPurge.inc(this.#labels())),
    };
  }

  /** The `app` and `node` label values in use ('' until the first transition names them). */
  get identity(): { app: string; node: string } {
    return { app: this.#app, node: this.#node };
  }

  #labels(): Record<string, string> {
    return { app: this.#app, node: this.#node, ...this.#constLabels };
  }

  #existing<T extends AnyMetric>(
    name: string,
    kind: new (...a: never[]) => T,
    labelNames: string[],
  ): T | undefined {
    const m = this.registry.getSingleMetric(name);
    if (!m) return undefined;
    const have = (m as unknown as { labelNames?: string[] }).labelNames ?? [];
    if (!(m instanceof kind) || have.join(',') !== labelNames.join(',')) {
      throw new ConfigError(
        'metrics.registry',
        `already holds a metric '${name}' of another type or labels (${have.join(',')}); ` +
          'give each RestartpointMetrics with other constant labels its own registry or prefix',
      );
    }
    return m;
  }

  #histogram(
    name: string,
    help: string,
    labelNames: string[],
    buckets: readonly number[],
  ): Histogram<string> {
    const full = this.#prefix + name;
    return (
      this.#existing(full, Histogram, labelNames) ??
      new Histogram({ name: full, help, labelNames, buckets: [...buckets], registers: [this.registry] })
    );
  }

  #counter(name: string, help: string, labelNames: string[]): Counter<string> {
    const full = this.#prefix + name;
    return (
      this.#existing(full, Counter, labelNames) ??
      new Counter({ name: full, help, labelNames, registers: [this.registry] })
    );
  }

  #gauge(name: string, help: string, labelNames: string[]): Gauge<string> {
    const full = this.#prefix + name;
    return (
      this.#existing(full, Gauge, labelNames) ??
      new Gauge({ name: full, help, labelNames, registers: [this.registry] })
    );
  }

  #setRole(current: NodeState | undefined): void {
    const l = this.#labels();
    for (const s of NodeStates) this.#role.set({ ...l, state: s }, s === current ? 1 : 0);
  }

  #onTransition(t: Transition): void {
    const app = this.#fixedApp ? this.#app : String(t.app);
    const node = this.#fixedNode ? this.#node : String(t.nodeId);
    if (app !== this.#app || node !== this.#node) {
      // First transition (or a node that renamed itself): drop the series of the old identity.
      this.#forget();
      this.#app = app;
      this.#node = node;
    }
    this.#setRole(t.to);
    this.#transitions.inc({ ...this.#labels(), state: t.to });
    if (Number.isFinite(t.epoch)) this.#epoch.set(this.#labels(), t.epoch);
  }

  #onCheckpoint(c: CheckpointObservation): void {
    const l = this.#labels();
    this.#checkpointDuration.observe(l, c.ms / 1000);
    this.#imageBytes.observe(l, c.imageBytes);
    this.#writeBytes.observe(l, c.writeBytes);
    this.#checkpoints.inc({ ...l, path: c.imagePath });
    this.#lastSealed.set(l, c.checkpoint);
    this.#epoch.set(l, c.epoch);
  }

  #onApplied(p: { readonly epoch: number; readonly checkpoint: number }): void {
    const l = this.#labels();
    this.#lastSealed.set(l, p.checkpoint);
    this.#epoch.set(l, p.epoch);
  }

  #onLag(relays: readonly RelayLagSample[]): void {
    const l = this.#labels();
    const seen = new Set<string>();
    for (const r of relays) {
      const rl = { ...l, relay: r.servers };
      seen.add(r.servers);
      this.#relayConnected.set(rl, r.connected ? 1 : 0);
      const pairs: [Gauge<string>, number | undefined][] = [
        [this.#lagFrames, r.frames],
        [this.#lagBytes, r.bytes],
        [this.#lagSeconds, r.seconds],
        [this.#lagCheckpoints, r.checkpoints],
      ];
      for (const [g, v] of pairs) {
        // Unknown (relay unreachable): no series rather than a made-up number.
        if (typeof v === 'number' && Number.isFinite(v)) g.set(rl, v);
        else g.remove(rl);
      }
    }
    for (const old of this.#relays) if (!seen.has(old)) this.#forgetRelay(old);
    this.#relays = seen;
  }

  #onTakeover(t: TakeoverObservation): void {
    const l = this.#labels();
    this.#takeovers.inc(l);
    const ms: Record<(typeof TAKEOVER_PHASES)[number], number> = {
      detect: t.detectMs,
      catch_up: t.catchUpMs,
      rollback: t.rollbackMs,
      fence: t.fenceMs,
      restore: t.restoreMs,
    };
    for (const phase of TAKEOVER_PHASES) this.#takeoverDuration.set({ ...l, phase }, ms[phase] / 1000);
    this.#epoch.set(l, t.epoch);
    this.#lastSealed.set(l, t.resumedFrom);
    // A primary has no replication lag of its own.
    for (const old of this.#relays) this.#forgetRelay(old);
    this.#relays = new Set();
  }

  #forgetRelay(servers: string): void {
    const rl = { ...this.#labels(), relay: servers };
    for (const g of [
      this.#lagFrames,
      this.#lagBytes,
      this.#lagSeconds,
      this.#lagCheckpoints,
      this.#relayConnected,
    ]) {
      g.remove(rl);
    }
  }

  /** Drops this node's series under its current identity (before the identity changes). */
  #forget(): void {
    const l = this.#labels();
    for (const s of NodeStates) this.#role.remove({ ...l, state: s });
    this.#epoch.remove(l);
    this.#lastSealed.remove(l);
    for (const old of this.#relays) this.#forgetRelay(old);
  }
}

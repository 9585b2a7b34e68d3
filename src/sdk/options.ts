/**
 * Options of `Restartpoint.start()` and their validation: every option is checked once, up
 * front, and a bad one gets a `ConfigError` naming it, the value, and the fix.
 */
import { hostname } from 'node:os';
import { ConfigError } from '../errors.js';
import { APP_NAME_PATTERN } from '../protocol/subjects.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { NatsOptions } from '../transport/connection.js';
import {
  checkAckPolicy,
  resolveFec,
  type AckPolicy,
  type FaultHook,
  type RelaySpec,
} from '../transport/relays.js';
import type { FecScheme } from '../fec/shard.js';
import { resolveLimits, type Limits } from '../limits.js';
import { parseClusterKey, type ClusterKeyOption, type ClusterKeys } from '../protocol/envelope.js';
import type { Observer } from '../observability/observer.js';
import type { LogEvent } from '../types.js';

export type { LogEvent } from '../types.js';

/**
 * Standby modes. `delay-write`: the standby stages writes and commits each checkpoint at its
 * seal (its store never holds unsealed data). `snapshot`: the standby writes as frames arrive
 * into version areas and the seal forms a snapshot (needs an adapter with `capabilities.snapshot`).
 */
export const Mode = { DelayWrite: 'delay-write', Snapshot: 'snapshot' } as const;
export type Mode = (typeof Mode)[keyof typeof Mode];

/** Options of `Restartpoint.start()`. */
export interface StartOptions<S> {
  /** Names every stream, subject and bucket of this app: 1–64 of `[A-Za-z0-9_-]`. */
  app: string;
  /** Unique per node. Default: `hostname-pid`. */
  nodeId?: string;
  /** The NATS server (with JetStream) that is the relay, plus any client options (auth, TLS). */
  nats: NatsOptions;
  /** This node's store. */
  storage: StorageAdapter;
  /** Standby mode. Default `'delay-write'`. */
  mode?: Mode;
  /** The state of a fresh app (no checkpoint yet). Default: `() => ({})`. */
  initialState?: () => S;
  /** Lease time-to-live in ms: a standby takes over after this long without renewal. Default 2000. */
  leaseTtlMs?: number;
  /** How long a frame may wait for the relay's ack before `checkpoint()` rejects. Default 10000. */
  checkpointTimeoutMs?: number;
  /** Flush the write batch into a frame at this many bytes. Default 262144. */
  batchBytes?: number;
  /** A keyframe (whole image) at least every this many checkpoints. Default 32. */
  keyframeEvery?: number;
  /**
   * A keyframe as soon as the deltas since the last one add up to more than this share of its
   * size (uncompressed bytes), so that restoring never replays more than that. Default 0.5.
   */
  maxChainShare?: number;
  /**
   * The app never changes an object after passing it to `checkpoint()`: it updates by copying
   * (spread, Immer, Redux). Deltas then skip unchanged references in O(1). Default false. See
   * `checkpoint()` for the contract and `rp.track()` for apps that change state in place.
   */
  immutableState?: boolean;
  /**
   * Take a checkpoint of `getState()` every this many milliseconds (automatic restart points).
   * Never two at once: a slow checkpoint delays the next. Needs `getState`.
   */
  checkpointEveryMs?: number;
  /** The state automatic checkpoints take (with `checkpointEveryMs`). */
  getState?: () => S;
  /** The version of the state's shape, carried in every image: an integer >= 1. Default 1. */
  stateVersion?: number;
  /**
   * Turns a resumed image taken with another `stateVersion` into this version's state. Without
   * it, `start()` refuses such an image with a `ConfigError` naming `stateVersion`.
   */
  migrate?: (image: unknown, fromVersion: number) => S | Promise<S>;
  /**
   * The relays frames go to, each a NATS server or JetStream cluster (client options pass
   * through; `replicas` is the stream's replication inside a clustered relay). Default: the
   * `nats` server alone. The lease always lives on `nats`.
   */
  relays?: RelaySpec[];
  /** How many relays must ack a frame: `'all'` (default), `'quorum'` or `{ count: n }`. */
  ack?: AckPolicy;
  /**
   * When a standby applies (seed claim 2): `{ everyMs }` in batches once per interval,
   * `{ maxBytesPerSec }` under a bandwidth budget. Default: continuously. The relays hold the
   * frames durably meanwhile; a takeover always catches up at full speed.
   */
  apply?: { everyMs?: number; maxBytesPerSec?: number };
  /**
   * Forward error correction: each frame part becomes `data` + `parity` Reed-Solomon shards
   * (or `copies` plain copies), shard i published to relay i mod N; the standby rebuilds from any
   * `data` shards. `tolerate` is how many relays an acknowledged frame survives losing (default:
   * the most this layout allows); a frame is acknowledged once k + L(tolerate) shards are.
   */
  fec?: { data: number; parity: number; tolerate?: number } | { copies: number; tolerate?: number };
  /** Chaos hook for drills and tests: drop, delay or corrupt messages to relays. Not for production. */
  faults?: FaultHook;
  /**
   * Signed mode (docs/security.md): every message on the relays carries an HMAC-SHA256 under this
   * key, and a standby rejects (and counts) unsigned or wrongly signed ones before decoding
   * anything. At least 32 bytes: a Buffer, 64+ hex digits, base64, or 32+ bytes of text. During
   * a key rotation, `{ keys: [{ id, key }, …], current: id }`: all verify, `current` signs. Every
   * node of the app needs the same key(s).
   */
  clusterKey?: ClusterKeyOption;
  /** With `clusterKey`: encrypt message bodies with AES-256-GCM (a key derived from it). Default false. */
  encrypt?: boolean;
  /** Receives one line per internal event (role changes, takeovers, rejected frames). */
  log?: (event: LogEvent) => void;
  /**
   * Receives the node's figures: state transitions, checkpoints, lag, takeovers, rejected frames
   * (src/observability/observer.ts). `new RestartpointMetrics().observer` from
   * `restartpoint/metrics` turns them into Prometheus metrics. A throwing observer is logged, never
   * fatal.
   */
  observer?: Observer;
  /**
   * Under `restartpoint sidecar` (the environment has `RESTARTPOINT_SIDECAR_URL`), `start()`
   * attaches to the sidecar's API instead of joining NATS itself: the sidecar holds the role and
   * replicates (docs/sidecar.md). `false` ignores the sidecar. Default true.
   */
  sidecar?: boolean;
  /**
   * Aborts a `start()` that has not resolved yet (a standby being shut down): it rejects with
   * `ClosedError`, and a lease it had already claimed is released so another node takes over at
   * once. No effect once `start()` resolved (use `close()`).
   */
  signal?: AbortSignal;
  /**
   * The most this node accepts of each thing that costs memory (image, frame, key and value
   * sizes, writes per checkpoint, bytes a standby stages); see src/limits.ts for the defaults.
   * Give every node of the app the same limits.
   */
  limits?: Partial<Limits>;
}

/** Options after validation and defaults. */
export interface ResolvedOptions<S> {
  readonly app: string;
  readonly nodeId: string;
  readonly nats: NatsOptions;
  readonly storage: StorageAdapter;
  readonly mode: Mode;
  readonly initialState: () => S;
  readonly leaseTtlMs: number;
  readonly checkpointTimeoutMs: number;
  readonly batchBytes: number;
  readonly keyframeEvery: number;
  readonly maxChainShare: number;
  readonly immutableState: boolean;
  readonly checkpointEveryMs: number | undefined;
  readonly getState: (() => S) | undefined;
  readonly stateVersion: number;
  readonly migrate: ((image: unknown, fromVersion: number) => S | Promise<S>) | undefined;
  readonly log: (event: LogEvent) => void;
  readonly observer: Observer | undefined;
  readonly sidecar: boolean;
  readonly signal: AbortSignal | undefined;
  readonly relays: RelaySpec[] | undefined;
  readonly ack: AckPolicy;
  readonly apply: { everyMs?: number; maxBytesPerSec?: number } | undefined;
  readonly fec: { scheme: FecScheme; tolerate?: number } | undefined;
  readonly faults: FaultHook | undefined;
  readonly limits: Limits;
  readonly clusterKey: ClusterKeys | undefined;
  readonly encrypt: boolean;
}

const ADAPTER_METHODS = [
  'open',
  'get',
  'put',
  'delete',
  'keys',
  'commit',
  'readMeta',
  'clear',
  'close',
] as const;

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'function') return 'a function';
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

function int(name: string, v: unknown, dflt: number, min: number, max: number, unit: string): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(name, `must be an integer from ${min} to ${max} ${unit}, got ${show(v)}`);
  }
  return v;
}

/** Validates `opts` and applies defaults. Throws `ConfigError` on the first bad option. */
export function resolveOptions<S>(opts: StartOptions<S>): ResolvedOptions<S> {
  if (opts === null || typeof opts !== 'object') {
    throw new ConfigError('options', `must be an object like { app, nats, storage }, got ${show(opts)}`);
  }
  const known = new Set([
    'app',
    'nodeId',
    'nats',
    'storage',
    'mode',
    'initialState',
    'leaseTtlMs',
    'checkpointTimeoutMs',
    'batchBytes',
    'keyframeEvery',
    'maxChainShare',
    'immutableState',
    'checkpointEveryMs',
    'getState',
    'stateVersion',
    'migrate',
    'log',
    'relays',
    'ack',
    'apply',
    'fec',
    'faults',
    'limits',
    'clusterKey',
    'encrypt',
    'observer',
    'sidecar',
    'signal',
  ]);
  for (const k of Object.keys(opts)) {
    if (!known.has(k))
      throw new ConfigError(k, `is not an option of Restartpoint.start(); known: ${[...known].join(', ')}`);
  }
  if (typeof opts.app !== 'string' || !APP_NAME_PATTERN.test(opts.app)) {
    throw new ConfigError(
      'app',
      `must be 1-64 characters of [A-Za-z0-9_-] (it names streams and buckets), got ${show(opts.app)}`,
    );
  }
  const nodeId = opts.nodeId ?? `${hostname()}-${process.pid}`;
  if (typeof nodeId !== 'string' || nodeId.length === 0 || Buffer.byteLength(nodeId) > 128) {
    throw new ConfigError(
      'nodeId',
      `must be a non-empty string of at most 128 bytes, unique per node, got ${show(opts.nodeId)}`,
    );
  }
  const nats = opts.nats;
  if (nats === null || typeof nats !== 'object') {
    throw new ConfigError(
      'nats',
      `must be an object like { servers: 'nats://127.0.0.1:4222' }, got ${show(nats)}`,
    );
  }
  const servers = nats.servers;
  const list = Array.isArray(servers) ? servers : [servers];
  if (list.length === 0 || !list.every((s) => typeof s === 'string' && s.length > 0)) {
    throw new ConfigError(
      'nats.servers',
      `must be a URL or a non-empty list of URLs like 'nats://127.0.0.1:4222', got ${show(servers)}`,
    );
  }
  const storage = opts.storage;
  if (storage === null || typeof storage !== 'object') {
    throw new ConfigError(
      'storage',
      `must be a storage adapter such as fileAdapter({ dir }) or memoryAdapter(), got ${show(storage)}`,
    );
  }
  for (const m of ADAPTER_METHODS) {
    if (typeof (storage as unknown as Record<string, unknown>)[m] !== 'function') {
      throw new ConfigError(
        'storage',
        `is not a storage adapter: it has no ${m}() method (use fileAdapter({ dir }) or memoryAdapter())`,
      );
    }
  }
  const mode = opts.mode ?? Mode.DelayWrite;
  if (mode !== Mode.DelayWrite && mode !== Mode.Snapshot) {
    throw new ConfigError('mode', `must be 'delay-write' or 'snapshot', got ${show(mode)}`);
  }
  if (mode === Mode.Snapshot) {
    const missing = (['writeArea', 'formSnapshot', 'releaseAreas'] as const).filter(
      (m) => typeof storage[m] !== 'function',
    );
    if (!storage.capabilities?.snapshot || missing.length > 0) {
      throw new ConfigError(
        'mode',
        `'snapshot' needs an adapter with the snapshot capability; the ${storage.kind} adapter has none${missing.length ? ` (no ${missing.join(', ')})` : ''}: use mode 'delay-write'`,
      );
    }
  }
  const initialState = opts.initialState ?? ((() => ({})) as () => S);
  if (typeof initialState !== 'function') {
    throw new ConfigError(
      'initialState',
      `must be a function returning the state of a fresh app, got ${show(initialState)}`,
    );
  }
  if (opts.log !== undefined && typeof opts.log !== 'function') {
    throw new ConfigError('log', `must be a function receiving log events, got ${show(opts.log)}`);
  }
  if (
    opts.signal !== undefined &&
    (opts.signal === null || typeof (opts.signal as { aborted?: unknown }).aborted !== 'boolean')
  ) {
    throw new ConfigError(
      'signal',
      `must be an AbortSignal (new AbortController().signal), got ${show(opts.signal)}`,
    );
  }
  if (opts.sidecar !== undefined && typeof opts.sidecar !== 'boolean') {
    throw new ConfigError('sidecar', `must be true or false, got ${show(opts.sidecar)}`);
  }
  if (opts.observer !== undefined) {
    const ob = opts.observer as unknown as Record<string, unknown> | null;
    const methods = ['transition', 'checkpoint', 'applied', 'rejected', 'lag', 'takeover'];
    if (ob === null || typeof ob !== 'object') {
      throw new ConfigError(
        'observer',
        `must be an object with any of ${methods.join(', ')} as methods (e.g. new RestartpointMetrics().observer), got ${show(ob)}`,
      );
    }
    for (const m of methods) {
      if (ob[m] !== undefined && typeof ob[m] !== 'function') {
        throw new ConfigError(`observer.${m}`, `must be a function, got ${show(ob[m])}`);
      }
    }
  }
  let relays: RelaySpec[] | undefined;
  if (opts.relays !== undefined) {
    if (!Array.isArray(opts.relays) || opts.relays.length === 0 || opts.relays.length > 16) {
      throw new ConfigError(
        'relays',
        `must be a list of 1 to 16 relays like [{ servers: 'nats://host:4222' }], got ${show(opts.relays)}`,
      );
    }
    relays = opts.relays.map((r, i) => {
      const list = r && (Array.isArray(r.servers) ? r.servers : [r.servers]);
      if (
        !r ||
        typeof r !== 'object' ||
        !list!.length ||
        !list!.every((x) => typeof x === 'string' && x.length > 0)
      ) {
        throw new ConfigError(
          `relays[${i}].servers`,
          `must be a URL or a non-empty list of URLs, got ${show(r?.servers)}`,
        );
      }
      if (r.replicas !== undefined && ![1, 3, 5].includes(r.replicas)) {
        throw new ConfigError(
          `relays[${i}].replicas`,
          `must be 1, 3 or 5 (the stream's copies inside a clustered relay), got ${show(r.replicas)}`,
        );
      }
      return r;
    });
  }
  const ack = checkAckPolicy(opts.ack, relays?.length ?? 1);
  let apply: ResolvedOptions<S>['apply'];
  if (opts.apply !== undefined) {
    if (opts.apply === null || typeof opts.apply !== 'object') {
      throw new ConfigError(
        'apply',
        `must be an object like { everyMs: 1000 } or { maxBytesPerSec: 10485760 }, got ${show(opts.apply)}`,
      );
    }
    apply = {
      everyMs:
        opts.apply.everyMs === undefined
          ? undefined
          : int('apply.everyMs', opts.apply.everyMs, 0, 1, 3_600_000, 'milliseconds'),
      maxBytesPerSec:
        opts.apply.maxBytesPerSec === undefined
          ? undefined
          : int('apply.maxBytesPerSec', opts.apply.maxBytesPerSec, 0, 1024, 1e12, 'bytes per second'),
    };
  }
  let fec: ResolvedOptions<S>['fec'];
  if (opts.fec !== undefined) {
    if (opts.fec === null || typeof opts.fec !== 'object') {
      throw new ConfigError(
        'fec',
        `must be { data: k, parity: m, tolerate?: f } or { copies: n }, got ${show(opts.fec)}`,
      );
    }
    const { tolerate, ...scheme } = opts.fec as { tolerate?: number } & FecScheme;
    fec = { scheme, tolerate };
    resolveFec(fec, relays?.length ?? 1); // validates now, with a message naming the option
  }
  if (opts.faults !== undefined && typeof opts.faults !== 'function') {
    throw new ConfigError(
      'faults',
      `must be a function (a chaos hook for drills and tests), got ${show(opts.faults)}`,
    );
  }
  const clusterKey = opts.clusterKey === undefined ? undefined : parseClusterKey(opts.clusterKey);
  if (opts.encrypt !== undefined && typeof opts.encrypt !== 'boolean') {
    throw new ConfigError('encrypt', `must be true or false, got ${show(opts.encrypt)}`);
  }
  if (opts.encrypt && !clusterKey) {
    throw new ConfigError('encrypt', 'needs clusterKey: the encryption key is derived from the cluster key');
  }
  return {
    limits: resolveLimits(opts.limits),
    fec,
    faults: opts.faults,
    clusterKey,
    encrypt: opts.encrypt ?? false,
    apply,
    relays,
    ack,
    app: opts.app,
    nodeId,
    nats,
    storage,
    mode,
    initialState,
    leaseTtlMs: int('leaseTtlMs', opts.leaseTtlMs, 2000, 100, 600_000, 'milliseconds'),
    checkpointTimeoutMs: int(
      'checkpointTimeoutMs',
      opts.checkpointTimeoutMs,
      10_000,
      100,
      3_600_000,
      'milliseconds',
    ),
    batchBytes: int('batchBytes', opts.batchBytes, 256 * 1024, 1, 64 * 1024 * 1024, 'bytes'),
    keyframeEvery: int('keyframeEvery', opts.keyframeEvery, 32, 1, 1_000_000, 'checkpoints'),
    ...resolveImageOptions(opts),
    log: opts.log ?? (() => undefined),
    observer: opts.observer,
    sidecar: opts.sidecar ?? true,
    signal: opts.signal,
  };
}

/** The options about images, automatic checkpoints and state versions. */
function resolveImageOptions<S>(
  opts: StartOptions<S>,
): Pick<
  ResolvedOptions<S>,
  'maxChainShare' | 'immutableState' | 'checkpointEveryMs' | 'getState' | 'stateVersion' | 'migrate'
> {
  const share = opts.maxChainShare ?? 0.5;
  if (typeof share !== 'number' || !Number.isFinite(share) || share <= 0 || share > 1000) {
    throw new ConfigError(
      'maxChainShare',
      `must be a number above 0 and at most 1000 (0.5: a keyframe once the deltas since the last one reach half its size), got ${show(opts.maxChainShare)}`,
    );
  }
  if (opts.immutableState !== undefined && typeof opts.immutableState !== 'boolean') {
    throw new ConfigError('immutableState', `must be true or false, got ${show(opts.immutableState)}`);
  }
  const every =
    opts.checkpointEveryMs === undefined
      ? undefined
      : int('checkpointEveryMs', opts.checkpointEveryMs, 0, 10, 86_400_000, 'milliseconds');
  if (opts.getState !== undefined && typeof opts.getState !== 'function') {
    throw new ConfigError(
      'getState',
      `must be a function returning the state automatic checkpoints take, got ${show(opts.getState)}`,
    );
  }
  if (every !== undefined && opts.getState === undefined) {
    throw new ConfigError(
      'getState',
      'is required with checkpointEveryMs: pass getState: () => state, the state each automatic checkpoint takes',
    );
  }
  if (every === undefined && opts.getState !== undefined) {
    throw new ConfigError(
      'checkpointEveryMs',
      'must be set when getState is given: getState only serves automatic checkpoints (for example checkpointEveryMs: 1000)',
    );
  }
  if (opts.migrate !== undefined && typeof opts.migrate !== 'function') {
    throw new ConfigError(
      'migrate',
      `must be a function (image, fromVersion) => state of this stateVersion, got ${show(opts.migrate)}`,
    );
  }
  return {
    maxChainShare: share,
    immutableState: opts.immutableState ?? false,
    checkpointEveryMs: every,
    getState: opts.getState,
    stateVersion: int(
      'stateVersion',
      opts.stateVersion,
      1,
      1,
      0xffffffff,
      '(the version of your state shape)',
    ),
    migrate: opts.migrate,
  };
}

/**
 * Options of `Restartpoint.start()` and their validation: every option is checked once, up
 * front, and a bad one gets a `ConfigError` naming it, the value, and the fix. The data options
 * (numbers, names, relays, limits…) are validated by the one schema in option-schema.ts; the
 * functions, the adapter and the rules between options are checked here.
 */
import { hostname } from 'node:os';
import { ConfigError } from '../errors.js';
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
import { OPTION_FIELDS, parseOptionsData, showValue, type OptionsData } from './option-schema.js';
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
  /**
   * Start even when a live node (a fresh presence record) already uses `nodeId`. Default `false`:
   * `start()` refuses with `ConfigError`, since two processes under one id corrupt presence,
   * status and switchover. Set it only to replace a node you know is gone.
   */
  reuseNodeId?: boolean;
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
  /**
   * How a node checks its own store before it resumes from it at a takeover: `'quick'` (default:
   * the store's identity token and key count, O(1)), `'full'` (every key and value against the
   * digest of what was committed, O(store): about 3–4 s per 100 000 keys of 1 KiB here) or
   * `'off'`. A store that lost or changed data refuses the takeover with `StorageError`.
   */
  verifyStore?: 'quick' | 'full' | 'off';
  /**
   * Deadline in ms of each store step of a takeover (verify, rollback, the final commit, restore).
   * A step past it releases the lease and rejects with a retryable `StorageError`. Default 15000.
   */
  storeTimeoutMs?: number;
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
   * What the relays keep below the latest base snapshot (docs/history.md): the frames of the last
   * `checkpoints` checkpoints (default 1 000), at most `bytes` per relay (default 64 MiB) and
   * `ms` of age (default one hour), whichever keeps less. A node whose own store is older than
   * the window starts from the base.
   */
  retain?: { checkpoints?: number; bytes?: number; ms?: number };
  /**
   * Base snapshots (docs/history.md): a standby builds one every `everyCheckpoints` checkpoints
   * (default 1 000), once the frames after the last base take `everyBytes` stream bytes on some
   * relay (default 256 MiB), or on `restartpoint compact`; `build: false` keeps this node from
   * building.
   */
  base?: { everyCheckpoints?: number; everyBytes?: number; build?: boolean };
  /**
   * The lag budget: when the slowest live standby is further behind than this (by any of `ms`,
   * `checkpoints`, `bytes`), `checkpoint()` holds its resolution back, up to `waitMs`, so that
   * the catch-up a takeover has to do stays bounded; past `waitMs` it resolves all the same and
   * logs `standby lag over budget`. Lag is read from the standbys' presence records (once a
   * second). Default: on, `{ ms: leaseTtlMs, waitMs: 2 × leaseTtlMs }`. `false` turns it off.
   * See docs/failover.md, "The lag budget".
   */
  maxStandbyLag?: false | { ms?: number; checkpoints?: number; bytes?: number; waitMs?: number };
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

/**
 * The data options that the schema resolves completely (type, range, default) and that pass on
 * as they are: a new plain option in `OPTION_FIELDS` lands here by itself.
 */
type PlainOptions = Omit<
  OptionsData,
  | 'app'
  | 'nodeId'
  | 'nats'
  | 'relays'
  | 'ack'
  | 'apply'
  | 'fec'
  | 'clusterKey'
  | 'limits'
  | 'checkpointEveryMs'
>;

/**
 * Options after validation and defaults: the plain data options (`mode`, `leaseTtlMs`,
 * `checkpointTimeoutMs`, `batchBytes`, `keyframeEvery`, `maxChainShare`, `immutableState`,
 * `stateVersion`, `encrypt`, `sidecar`, …) as the schema resolved them, and the rest below.
 */
export interface ResolvedOptions<S> extends Readonly<PlainOptions> {
  readonly app: string;
  readonly nodeId: string;
  readonly nats: NatsOptions;
  readonly storage: StorageAdapter;
  readonly initialState: () => S;
  readonly checkpointEveryMs: number | undefined;
  readonly getState: (() => S) | undefined;
  readonly migrate: ((image: unknown, fromVersion: number) => S | Promise<S>) | undefined;
  readonly log: (event: LogEvent) => void;
  readonly observer: Observer | undefined;
  readonly signal: AbortSignal | undefined;
  readonly relays: RelaySpec[] | undefined;
  readonly ack: AckPolicy;
  readonly apply: { everyMs?: number; maxBytesPerSec?: number } | undefined;
  readonly fec: { scheme: FecScheme; tolerate?: number } | undefined;
  readonly faults: FaultHook | undefined;
  readonly limits: Limits;
  readonly clusterKey: ClusterKeys | undefined;
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

/** The options that are not data (functions, the adapter, the signal): checked by hand below. */
const CODE_OPTIONS = [
  'storage',
  'initialState',
  'getState',
  'migrate',
  'log',
  'faults',
  'observer',
  'signal',
] as const;

/** Every option `start()` knows: the data fields of the schema and the code options. */
const KNOWN_OPTIONS: readonly string[] = [...Object.keys(OPTION_FIELDS), ...CODE_OPTIONS];

const show = showValue;

/**
 * The rules between data options that no field schema sees: ack and fec against the number of
 * relays, the cluster key's strength, encryption without a key. Shared by `resolveOptions` and
 * the sidecar's config loader. Throws `ConfigError` naming the option.
 */
export function resolveOptionRules(
  data: Partial<Pick<OptionsData, 'relays' | 'ack' | 'fec' | 'clusterKey' | 'encrypt'>>,
): {
  ack: AckPolicy;
  fec: { scheme: FecScheme; tolerate?: number } | undefined;
  clusterKey: ClusterKeys | undefined;
} {
  const relayCount = data.relays?.length ?? 1;
  const ack = checkAckPolicy(data.ack, relayCount);
  let fec: { scheme: FecScheme; tolerate?: number } | undefined;
  if (data.fec !== undefined) {
    const { tolerate, ...scheme } = data.fec as { tolerate?: number } & FecScheme;
    fec = { scheme, tolerate };
    resolveFec(fec, relayCount); // validates now, with a message naming the option
  }
  const clusterKey =
    data.clusterKey === undefined ? undefined : parseClusterKey(data.clusterKey as ClusterKeyOption);
  if (data.encrypt && !clusterKey) {
    throw new ConfigError('encrypt', 'needs clusterKey: the encryption key is derived from the cluster key');
  }
  return { ack, fec, clusterKey };
}

/** Validates `opts` and applies defaults. Throws `ConfigError` on the first bad option. */
export function resolveOptions<S>(opts: StartOptions<S>): ResolvedOptions<S> {
  if (opts === null || typeof opts !== 'object') {
    throw new ConfigError('options', `must be an object like { app, nats, storage }, got ${show(opts)}`);
  }
  for (const k of Object.keys(opts)) {
    if (!KNOWN_OPTIONS.includes(k))
      throw new ConfigError(
        k,
        `is not an option of Restartpoint.start(); known: ${KNOWN_OPTIONS.join(', ')}`,
      );
  }
  // Every data option, through the one schema (src/sdk/option-schema.ts).
  const data = parseOptionsData(opts as unknown as Record<string, unknown>);
  const nodeId = data.nodeId ?? `${hostname()}-${process.pid}`;
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
  const mode = data.mode;
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
  if (opts.observer !== undefined) {
    const ob = opts.observer as unknown as Record<string, unknown> | null;
    const methods = [
      'transition',
      'checkpoint',
      'applied',
      'rejected',
      'lag',
      'takeover',
      'base',
      'lagOverrun',
      'behindPurge',
    ];
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
  const { ack, fec, clusterKey } = resolveOptionRules(data);
  const {
    app: _app,
    nodeId: _nodeId,
    nats: _nats,
    relays: _relays,
    ack: _ack,
    apply: _apply,
    fec: _fec,
    clusterKey: _clusterKey,
    limits: _limits,
    checkpointEveryMs: _every,
    ...plain
  } = data;
  if (opts.faults !== undefined && typeof opts.faults !== 'function') {
    throw new ConfigError(
      'faults',
      `must be a function (a chaos hook for drills and tests), got ${show(opts.faults)}`,
    );
  }
  return {
    ...plain,
    limits: resolveLimits(opts.limits),
    fec,
    faults: opts.faults,
    clusterKey,
    apply: data.apply && { everyMs: data.apply.everyMs, maxBytesPerSec: data.apply.maxBytesPerSec },
    // The caller's objects, client options and all (the schema checked servers and replicas).
    relays: opts.relays,
    ack,
    app: data.app,
    nodeId,
    nats: opts.nats,
    storage,
    initialState,
    ...resolveImageOptions(opts, data),
    log: opts.log ?? (() => undefined),
    observer: opts.observer,
    signal: opts.signal,
  };
}

/** The code options of automatic checkpoints and state versions, checked against the data. */
function resolveImageOptions<S>(
  opts: StartOptions<S>,
  data: OptionsData,
): Pick<ResolvedOptions<S>, 'checkpointEveryMs' | 'getState' | 'migrate'> {
  const every = data.checkpointEveryMs;
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
  return { checkpointEveryMs: every, getState: opts.getState, migrate: opts.migrate };
}

/**
 * Options of `Restartpoint.start()` and their validation: every option is checked once, up
 * front, and a bad one gets a `ConfigError` naming it, the value, and the fix.
 */
import { hostname } from 'node:os';
import { ConfigError } from '../errors.js';
import { APP_NAME_PATTERN } from '../protocol/subjects.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { NatsOptions } from '../transport/connection.js';

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
  /** Receives one line per internal event (role changes, takeovers, rejected frames). */
  log?: (event: LogEvent) => void;
}

/** A structured log event. */
export interface LogEvent {
  readonly level: 'debug' | 'info' | 'warn' | 'error';
  readonly msg: string;
  readonly [field: string]: unknown;
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
  readonly log: (event: LogEvent) => void;
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
    'log',
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
  return {
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
    log: opts.log ?? (() => undefined),
  };
}

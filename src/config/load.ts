/**
 * Loading the sidecar's config: read the file (YAML or JSON), apply the `RESTARTPOINT_*`
 * environment overrides, validate with zod, then check what zod cannot see (fields that belong
 * to another storage kind, the SDK's own cross-field rules). Every problem is collected and
 * reported at once, each naming the field (and the variable, for an override), the value and
 * the fix.
 */
import { readFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import { resolveOptions, type StartOptions } from '../sdk/options.js';
import type { StorageAdapter } from '../storage/adapter.js';
import { ConfigSchema, FIELD_DOCS, type ParsedConfig } from './schema.js';

/** One thing wrong with a config. */
export interface ConfigProblem {
  /** The field, dotted with indexes (`relays[1].servers`); empty for the whole file. */
  readonly path: string;
  /** The environment variable the value came from, when it came from one. */
  readonly env?: string;
  /** What is wrong and how to fix it. */
  readonly message: string;
}

/** A config with problems: `problems` lists them all; the message has one line per problem. */
export class ConfigFileError extends ConfigError {
  /** Every problem found. */
  readonly problems: readonly ConfigProblem[];
  /** The file (or `<env>`) the config came from. */
  readonly source: string;
  constructor(source: string, problems: readonly ConfigProblem[]) {
    super(problems[0]?.path || 'config', 'is invalid');
    this.source = source;
    this.problems = problems;
    const lines = problems.map(formatProblem);
    this.message =
      lines.length === 1
        ? `config ${source}: ${lines[0]}`
        : `config ${source} has ${lines.length} problems:\n${lines.map((l) => `  - ${l}`).join('\n')}`;
  }
}

function formatProblem(p: ConfigProblem): string {
  const where = p.path === '' ? '' : `${p.path}${p.env ? ` (from ${p.env})` : ''}: `;
  return `${where}${p.message}`;
}

/** The validated config of a sidecar, with defaults and derived values filled in. */
export type SidecarConfig = Omit<ParsedConfig, 'nodeId' | 'api' | 'clusterKeyFile'> & {
  /** The node id (default `hostname-pid`). */
  readonly nodeId: string;
  readonly api: ParsedConfig['api'] & {
    /** Where the token is written (default `<dataDir or tmpdir>/restartpoint-<app>-<nodeId>.token`). */
    readonly tokenFile: string;
  };
  /** The file the config was read from (`<env>` when none). */
  readonly source: string;
};

/** One `RESTARTPOINT_*` variable and the field it overrides. */
export interface EnvOverride {
  readonly name: string;
  /** Dotted field path. `storage.url` means `storage.connectionString` for kind postgres. */
  readonly path: string;
  readonly type: 'string' | 'int' | 'list' | 'bool';
}

/** Every environment override, in the order docs/config.md lists them. Env wins over the file. */
export const ENV_OVERRIDES: readonly EnvOverride[] = [
  { name: 'RESTARTPOINT_APP', path: 'app', type: 'string' },
  { name: 'RESTARTPOINT_NODE_ID', path: 'nodeId', type: 'string' },
  { name: 'RESTARTPOINT_REUSE_NODE_ID', path: 'reuseNodeId', type: 'bool' },
  { name: 'RESTARTPOINT_DATA_DIR', path: 'dataDir', type: 'string' },
  { name: 'RESTARTPOINT_NATS_SERVERS', path: 'nats.servers', type: 'list' },
  { name: 'RESTARTPOINT_NATS_USER', path: 'nats.user', type: 'string' },
  { name: 'RESTARTPOINT_NATS_PASS', path: 'nats.pass', type: 'string' },
  { name: 'RESTARTPOINT_NATS_TOKEN', path: 'nats.token', type: 'string' },
  { name: 'RESTARTPOINT_STORAGE_KIND', path: 'storage.kind', type: 'string' },
  { name: 'RESTARTPOINT_STORAGE_DIR', path: 'storage.dir', type: 'string' },
  { name: 'RESTARTPOINT_STORAGE_URL', path: 'storage.url', type: 'string' },
  { name: 'RESTARTPOINT_STORAGE_PREFIX', path: 'storage.prefix', type: 'string' },
  { name: 'RESTARTPOINT_STORAGE_TABLE', path: 'storage.table', type: 'string' },
  { name: 'RESTARTPOINT_MODE', path: 'mode', type: 'string' },
  { name: 'RESTARTPOINT_LEASE_TTL_MS', path: 'leaseTtlMs', type: 'int' },
  { name: 'RESTARTPOINT_CHECKPOINT_TIMEOUT_MS', path: 'checkpointTimeoutMs', type: 'int' },
  { name: 'RESTARTPOINT_CLUSTER_KEY', path: 'clusterKey', type: 'string' },
  { name: 'RESTARTPOINT_CLUSTER_KEY_FILE', path: 'clusterKeyFile', type: 'string' },
  { name: 'RESTARTPOINT_ENCRYPT', path: 'encrypt', type: 'bool' },
  { name: 'RESTARTPOINT_API_PORT', path: 'api.port', type: 'int' },
  { name: 'RESTARTPOINT_API_TOKEN', path: 'api.token', type: 'string' },
  { name: 'RESTARTPOINT_API_TOKEN_FILE', path: 'api.tokenFile', type: 'string' },
  { name: 'RESTARTPOINT_API_PORT_FILE', path: 'api.portFile', type: 'string' },
  { name: 'RESTARTPOINT_LOG_LEVEL', path: 'log.level', type: 'string' },
  { name: 'RESTARTPOINT_METRICS_ENABLED', path: 'metrics.enabled', type: 'bool' },
];

const SECRET = /(^|\.)(token|pass|clusterKey|key)$/;

function show(path: string, v: unknown): string {
  if (v === undefined) return 'nothing';
  if (SECRET.test(path.replace(/\[\d+\]/g, '')) && typeof v === 'string') {
    return `a secret of ${v.length} characters`;
  }
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = String(v);
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function pathString(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? String(seg) : `.${String(seg)}`;
  }
  return out;
}

function docFor(path: string): { must: string; example: string } | undefined {
  return FIELD_DOCS[path.replace(/\[\d+\]/g, '[]')];
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = root;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg];
  }
  return v;
}

/** The fields an object at `path` may have, read off the schema. */
function knownKeys(path: readonly PropertyKey[]): string[] {
  let s: unknown = ConfigSchema;
  const unwrap = (x: unknown): unknown => {
    for (;;) {
      const def = (x as { def?: { type?: string; innerType?: unknown } }).def;
      if (def && (def.type === 'optional' || def.type === 'default' || def.type === 'nullable')) {
        x = def.innerType;
      } else return x;
    }
  };
  const objectsOf = (x: unknown): { shape: Record<string, unknown> }[] => {
    x = unwrap(x);
    const def = (x as { def?: { type?: string; options?: unknown[] } }).def;
    if (def?.type === 'object') return [x as { shape: Record<string, unknown> }];
    if (def?.type === 'union') return (def.options ?? []).flatMap(objectsOf);
    return [];
  };
  for (const seg of path) {
    s = unwrap(s);
    const def = (s as { def?: { type?: string; element?: unknown } }).def;
    if (typeof seg === 'number') {
      if (def?.type !== 'array') return [];
      s = def.element;
      continue;
    }
    const holder = objectsOf(s).find((o) => String(seg) in o.shape);
    if (!holder) return [];
    s = holder.shape[String(seg)];
  }
  return [...new Set(objectsOf(s).flatMap((o) => Object.keys(o.shape)))];
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(
        d[i - 1]![j]! + 1,
        d[i]![j - 1]! + 1,
        d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
      // A swap of two neighbours (`prot` for `port`) is one typo.
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
      }
    }
  }
  return d[a.length]![b.length]!;
}

/** The known field closest to `name`, when it is close enough to be a typo. */
export function didYouMean(name: string, known: readonly string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[_-]/g, '');
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = norm(k) === norm(name) ? 0 : distance(name.toLowerCase(), k.toLowerCase());
    if (d < bestD) {
      best = k;
      bestD = d;
    }
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(Math.min(name.length, best.length) / 3))
    ? best
    : undefined;
}

function issueProblems(
  issue: z.core.$ZodIssue,
  raw: unknown,
  origin: ReadonlyMap<string, string>,
): ConfigProblem[] {
  const path = pathString(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeys(issue.path);
    const parent = path === '' ? 'the config' : path;
    return issue.keys.map((key) => {
      const guess = didYouMean(key, known);
      const full = path === '' ? key : `${path}.${key}`;
      return {
        path: full,
        message: `is not a field of ${parent}${guess ? ` — did you mean '${guess}'?` : ''} (known: ${known.join(', ')}); remove it or fix its name`,
      };
    });
  }
  const value = valueAt(raw, issue.path);
  const env = origin.get(path);
  const doc = docFor(path);
  if (value === undefined) {
    return [
      {
        path,
        env,
        message: doc
          ? `is required: ${doc.must} — for example ${doc.example}`
          : `is required (${issue.message})`,
      },
    ];
  }
  return [
    {
      path,
      env,
      message: doc
        ? `must be ${doc.must}, got ${show(path, value)} — set it to e.g. ${doc.example}`
        : `${issue.message}, got ${show(path, value)}`,
    },
  ];
}

function setPath(root: Record<string, unknown>, path: string, value: unknown): void {
  const segs = path.split('.');
  let o = root;
  for (const seg of segs.slice(0, -1)) {
    const next = o[seg];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) o[seg] = {};
    o = o[seg] as Record<string, unknown>;
  }
  o[segs[segs.length - 1]!] = value;
}

/**
 * Applies the `RESTARTPOINT_*` overrides to `raw` (in place) and returns which field came from
 * which variable. Values that do not parse are kept as strings, so validation names them.
 */
function applyEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): Map<string, string> {
  const origin = new Map<string, string>();
  for (const o of ENV_OVERRIDES) {
    const text = env[o.name];
    if (text === undefined || text === '') continue;
    let value: unknown = text;
    if (o.type === 'int' && /^-?\d+$/.test(text.trim())) value = Number(text.trim());
    else if (o.type === 'list')
      value = text
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0);
    else if (o.type === 'bool' && /^(true|false|1|0)$/i.test(text.trim()))
      value = /^(true|1)$/i.test(text.trim());
    let path = o.path;
    if (path === 'storage.url') {
      const kind = env.RESTARTPOINT_STORAGE_KIND || (raw.storage as { kind?: unknown } | undefined)?.kind;
      if (kind === 'postgres') path = 'storage.connectionString';
    }
    setPath(raw, path, value);
    origin.set(path, o.name);
  }
  return origin;
}

const KIND_FIELDS: Record<string, readonly string[]> = {
  memory: [],
  file: ['dir', 'fsync'],
  redis: ['url', 'prefix'],
  postgres: ['connectionString', 'table'],
};
const KIND_REQUIRED: Record<string, readonly string[]> = {
  memory: [],
  file: ['dir'],
  redis: ['prefix'],
  postgres: ['connectionString'],
};

/**
 * What zod cannot see: storage fields of another kind, the fec shape, two sources of the cluster
 * key. Runs on the raw input (types unchecked) so its problems join zod's in one report.
 */
function crossChecks(c: Record<string, unknown>, origin: ReadonlyMap<string, string>): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const s = c.storage;
  const kind = s !== null && typeof s === 'object' ? (s as Record<string, unknown>).kind : undefined;
  if (typeof kind === 'string' && KIND_FIELDS[kind]) {
    const fields = s as Record<string, unknown>;
    for (const f of ['dir', 'fsync', 'url', 'prefix', 'connectionString', 'table']) {
      if (fields[f] !== undefined && !KIND_FIELDS[kind].includes(f)) {
        const owner = Object.keys(KIND_FIELDS).find((k) => KIND_FIELDS[k]!.includes(f));
        problems.push({
          path: `storage.${f}`,
          env: origin.get(`storage.${f}`),
          message: `is not used by storage kind '${kind}' (it belongs to kind '${owner}'): remove it or set storage.kind: ${owner}`,
        });
      }
    }
    for (const f of KIND_REQUIRED[kind]!) {
      if (fields[f] === undefined) {
        const doc = docFor(`storage.${f}`)!;
        problems.push({
          path: `storage.${f}`,
          message: `is required for storage kind '${kind}': ${doc.must} — for example ${doc.example}`,
        });
      }
    }
  }
  const fec = c.fec;
  if (fec !== null && typeof fec === 'object' && !Array.isArray(fec)) {
    const { data, parity, copies } = fec as Record<string, unknown>;
    const rs = data !== undefined || parity !== undefined;
    if (rs && copies !== undefined) {
      problems.push({
        path: 'fec',
        message: 'has both data/parity and copies: use { data: k, parity: m } or { copies: n }, not both',
      });
    } else if (rs && (data === undefined || parity === undefined)) {
      problems.push({
        path: data === undefined ? 'fec.data' : 'fec.parity',
        message: 'is required with Reed-Solomon FEC: set both data and parity, e.g. { data: 4, parity: 2 }',
      });
    } else if (!rs && copies === undefined) {
      problems.push({ path: 'fec', message: 'must be { data: k, parity: m } or { copies: n }, got neither' });
    }
  }
  if (c.clusterKey !== undefined && c.clusterKeyFile !== undefined) {
    problems.push({
      path: 'clusterKeyFile',
      env: origin.get('clusterKeyFile'),
      message: 'is set together with clusterKey: give the key one way only (remove one of them)',
    });
  }
  return problems;
}

/** Throws `ConfigFileError` when `problems` is not empty. */
function check(source: string, problems: ConfigProblem[]): void {
  if (problems.length > 0) throw new ConfigFileError(source, problems);
}

/**
 * Validates `raw` (the parsed file, or `{}`) with the overrides of `env` applied, and fills in
 * defaults. `source` names the file in messages. Throws `ConfigFileError` listing every problem.
 */
export function parseConfig(
  raw: unknown,
  source: string,
  env: NodeJS.ProcessEnv = process.env,
): SidecarConfig {
  if (raw === null || raw === undefined) raw = {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigFileError(source, [
      {
        path: '',
        message: `must be a mapping of fields (app: …, nats: …, storage: …), got ${show('', raw)}`,
      },
    ]);
  }
  const copy = structuredClone(raw) as Record<string, unknown>;
  const origin = applyEnv(copy, env);
  const parsed = ConfigSchema.safeParse(copy);
  const problems = parsed.success ? [] : parsed.error.issues.flatMap((i) => issueProblems(i, copy, origin));
  for (const p of crossChecks(copy, origin)) {
    if (!problems.some((q) => q.path === p.path)) problems.push(p);
  }
  check(source, problems);
  const c = parsed.data!;
  let clusterKey = c.clusterKey;
  if (c.clusterKeyFile !== undefined) {
    try {
      clusterKey = readFileSync(c.clusterKeyFile, 'utf8').trim();
    } catch (err) {
      check(source, [
        {
          path: 'clusterKeyFile',
          env: origin.get('clusterKeyFile'),
          message: `cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): ${c.clusterKeyFile} must be a readable file holding the key`,
        },
      ]);
    }
  }
  const nodeId = c.nodeId ?? `${hostname()}-${process.pid}`;
  const { clusterKeyFile: _file, ...rest } = c;
  const config: SidecarConfig = {
    ...rest,
    clusterKey,
    nodeId,
    source,
    api: {
      ...c.api,
      tokenFile:
        c.api.tokenFile ??
        join(c.dataDir ?? tmpdir(), `restartpoint-${c.app}-${nodeId.replace(/[^A-Za-z0-9_.-]/g, '_')}.token`),
    },
  };
  // The SDK's own rules (relays vs fec vs ack, key strength, limit ranges), checked now so a bad
  // config fails at load time with the field named, not at takeover.
  try {
    resolveOptions({ ...toStartOptions(config), storage: stubAdapter });
  } catch (err) {
    if (err instanceof ConfigError) {
      const prefix = `'${err.option}' `;
      const message = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
      check(source, [{ path: err.option, env: origin.get(err.option), message }]);
    }
    throw err;
  }
  return config;
}

/**
 * Reads and validates the config file at `path` (YAML or JSON), with the `RESTARTPOINT_*`
 * overrides of `env` (env wins over the file). Throws `ConfigFileError` (a `ConfigError`)
 * listing every problem, each naming the field, the value and the fix.
 */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): SidecarConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigFileError(path, [
      {
        path: '',
        message:
          code === 'ENOENT'
            ? 'file not found: check the --config path (see docs/config.md for an example file)'
            : `cannot be read (${code ?? (err as Error).message}): check its permissions`,
      },
    ]);
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigFileError(
      path,
      doc.errors.map((e) => ({
        path: '',
        message: `is not valid YAML/JSON: ${e.message.split('\n')[0]!.replace(/:\s*$/, '')} — fix the syntax there`,
      })),
    );
  }
  return parseConfig(doc.toJS() as unknown, path, env);
}

/**
 * The `Restartpoint.start()` options a config stands for, without `storage`, `log` and
 * `observer` (the sidecar adds those).
 */
export function toStartOptions(c: SidecarConfig): Omit<StartOptions<unknown>, 'storage'> {
  const { servers, ...client } = c.nats;
  const opts: Omit<StartOptions<unknown>, 'storage'> = {
    app: c.app,
    nodeId: c.nodeId,
    nats: { servers, ...client },
  };
  if (c.mode !== undefined) opts.mode = c.mode;
  if (c.leaseTtlMs !== undefined) opts.leaseTtlMs = c.leaseTtlMs;
  if (c.checkpointTimeoutMs !== undefined) opts.checkpointTimeoutMs = c.checkpointTimeoutMs;
  if (c.batchBytes !== undefined) opts.batchBytes = c.batchBytes;
  if (c.keyframeEvery !== undefined) opts.keyframeEvery = c.keyframeEvery;
  if (c.maxChainShare !== undefined) opts.maxChainShare = c.maxChainShare;
  if (c.stateVersion !== undefined) opts.stateVersion = c.stateVersion;
  if (c.initialState !== undefined) {
    const initial = c.initialState;
    opts.initialState = () => structuredClone(initial);
  }
  if (c.relays !== undefined) opts.relays = c.relays;
  if (c.ack !== undefined) opts.ack = c.ack;
  if (c.apply !== undefined) opts.apply = c.apply;
  if (c.fec !== undefined) {
    const { data, parity, copies, tolerate } = c.fec;
    const t = tolerate === undefined ? {} : { tolerate };
    opts.fec = copies !== undefined ? { copies, ...t } : { data: data!, parity: parity!, ...t };
  }
  if (c.clusterKey !== undefined) opts.clusterKey = c.clusterKey;
  if (c.encrypt !== undefined) opts.encrypt = c.encrypt;
  if (c.limits !== undefined) opts.limits = c.limits;
  return opts;
}

/** A do-nothing adapter: lets `parseConfig` run the SDK's option checks without opening a store. */
const stubAdapter: StorageAdapter = {
  kind: 'config-check',
  capabilities: { durable: false, snapshot: true },
  open: () => Promise.resolve(),
  get: () => Promise.resolve(undefined),
  put: () => Promise.resolve(),
  delete: () => Promise.resolve(),
  keys: () => Promise.resolve([]),
  commit: () => Promise.resolve(),
  readMeta: () => Promise.resolve(undefined),
  clear: () => Promise.resolve(),
  close: () => Promise.resolve(),
  writeArea: () => Promise.resolve(),
  formSnapshot: () => Promise.resolve(),
  releaseAreas: () => Promise.resolve(),
} as unknown as StorageAdapter;

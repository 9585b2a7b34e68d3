/**
 * The sidecar's config file: its zod schema, and one line of documentation per field (what the
 * field must be and an example) that error messages quote. docs/config.md is the reference.
 *
 * The schema is the start options' schema (src/sdk/option-schema.ts: every data option a file
 * can carry, with the same ranges and docs) plus what only a sidecar has: `dataDir`, `storage`
 * (a kind instead of an adapter), `initialState` as JSON, `clusterKeyFile`, `api`, `process`,
 * `log` and `metrics`. `nats` and `relays` allow only the known client fields. Every object is
 * strict: an unknown field is an error. The supervised process is `process` (`app` is the app's
 * name).
 */
import { z } from 'zod';
import {
  OPTION_FIELDS,
  collectDocs,
  documented,
  intField,
  strictNats,
  strictRelays,
  withoutDefaults,
  type FieldDoc,
} from '../sdk/option-schema.js';

export type { FieldDoc } from '../sdk/option-schema.js';

const MiB = 1024 * 1024;

/** Log levels of the sidecar's pino logger. */
export const LogLevels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LogLevels)[number];

/** Storage kinds: one per adapter in adapters/. */
export const StorageKinds = ['memory', 'file', 'redis', 'postgres'] as const;
export type StorageKind = (typeof StorageKinds)[number];

/** Restart policies of the supervised process. */
export const RestartPolicies = ['never', 'on-failure'] as const;
export type RestartPolicy = (typeof RestartPolicies)[number];

const path = (must: string, example: string, env = false) =>
  documented(z.string().min(1), { must, example, ...(env ? { env } : {}) });
const pattern = (re: RegExp, must: string, example: string, env = false) =>
  documented(z.string().regex(re), { must, example, ...(env ? { env } : {}) });
const bool = (must: string, example: string, env = false) =>
  documented(z.boolean(), { must, example, ...(env ? { env } : {}) });

const storage = documented(
  z.strictObject({
    kind: documented(z.enum(StorageKinds), {
      must: "one of 'memory', 'file', 'redis', 'postgres'",
      example: 'file',
      env: true,
    }),
    dir: path(
      'a directory path (kind file), only this node uses it',
      '/var/lib/orders/store',
      true,
    ).optional(),
    fsync: bool('true or false (kind file)', 'true').optional(),
    url: pattern(
      /^rediss?:\/\//,
      'a redis:// or rediss:// URL (kind redis)',
      "'redis://127.0.0.1:6379'",
      true,
    ).optional(),
    prefix: pattern(
      /^[^{}]+$/,
      'a non-empty string without { or } (kind redis), one per node',
      'orders-a',
      true,
    ).optional(),
    connectionString: pattern(
      /^postgres(ql)?:\/\//,
      'a postgres:// URL (kind postgres)',
      "'postgres://postgres@127.0.0.1:5432/test'",
    ).optional(),
    table: pattern(
      /^[a-z_][a-z0-9_]{0,40}$/,
      'a table name [a-z_][a-z0-9_]{0,40} (kind postgres), one per node',
      'orders_a',
      true,
    ).optional(),
  }),
  {
    must: 'a mapping with kind (memory, file, redis or postgres) and its fields',
    example: '{ kind: file, dir: /var/lib/orders/store }',
  },
);

const api = documented(
  z.strictObject({
    port: intField(0, 65_535, '0: any free port', 7878, { env: true }).default(0),
    token: documented(z.string().min(16).regex(/^\S+$/), {
      must: 'at least 16 characters without whitespace',
      example: 'the output of `openssl rand -hex 32`',
      env: true,
    }).optional(),
    tokenFile: path('a file path', '/run/restartpoint/orders.token', true).optional(),
    portFile: path('a file path', '/run/restartpoint/orders.port', true).optional(),
    maxBodyBytes: intField(1024, 1024 * MiB, 'bytes', 64 * MiB).default(64 * MiB),
    socket: path('a file path (a Unix-domain socket)', '/run/restartpoint/orders.sock').optional(),
  }),
  {
    must: 'a mapping with port, token, tokenFile, portFile, maxBodyBytes, socket (all optional)',
    example: '{ port: 7878 }',
  },
).default({ port: 0, maxBodyBytes: 64 * MiB });

const processField = documented(
  z.strictObject({
    restart: documented(z.enum(RestartPolicies), {
      must: "'never' or 'on-failure'",
      example: 'on-failure',
    }).default('never'),
    maxRestarts: intField(0, 1000, '', 3).default(3),
    stopTimeoutMs: intField(0, 600_000, 'milliseconds', 5000).default(5000),
    cwd: path('a directory path', '/srv/orders').optional(),
    env: documented(z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()), {
      must: 'a mapping of variable names to strings',
      example: '{ LOG_FORMAT: json }',
    }).optional(),
  }),
  {
    must: 'a mapping with restart, maxRestarts, stopTimeoutMs, cwd, env (all optional)',
    example: '{ restart: on-failure }',
  },
).default({ restart: 'never', maxRestarts: 3, stopTimeoutMs: 5000 });

const log = documented(
  z.strictObject({
    level: documented(z.enum(LogLevels), {
      must: `one of ${LogLevels.join(', ')}`,
      example: 'info',
      env: true,
    }).default('info'),
  }),
  { must: 'a mapping with level', example: '{ level: info }' },
).default({ level: 'info' });

const metrics = documented(z.strictObject({ enabled: bool('true or false', 'true', true).default(true) }), {
  must: 'a mapping with enabled',
  example: '{ enabled: true }',
}).default({ enabled: true });

/**
 * The start options a config file carries, without the SDK's defaults (the SDK applies them).
 * `nats` and `relays` come in their strict form; the rest are SDK-only (they go with a function,
 * or only make sense inside a JS process): name a new SDK-only option here.
 */
const {
  app,
  nodeId,
  nats: _sdkNats,
  relays: _sdkRelays,
  immutableState: _i,
  checkpointEveryMs: _c,
  sidecar: _s,
  ...options
} = withoutDefaults(OPTION_FIELDS);

/** The config's fields: the start options, each config-only field next to the option it goes with. */
const configShape = {
  app,
  nodeId,
  dataDir: path(
    'a directory path for the sidecar own files (the token file)',
    '/var/lib/restartpoint',
    true,
  ).optional(),
  nats: strictNats(),
  storage,
  ...options,
  relays: strictRelays().optional(),
  initialState: documented(z.json(), {
    must: 'any JSON value (the state of a fresh app)',
    example: '{ count: 0 }',
  }).optional(),
  clusterKeyFile: path(
    'the path of a file holding the cluster key',
    '/etc/restartpoint/cluster.key',
    true,
  ).optional(),
  api,
  process: processField,
  log,
  metrics,
};

/** The zod schema of the config file (after environment overrides). */
export const ConfigSchema = documented(z.strictObject(configShape), {
  must: 'a mapping of fields (YAML or JSON object) with at least app, nats and storage',
  example: 'app: orders',
});

/**
 * Field documentation by path (`[]` stands for any array index), read off `ConfigSchema`. Error
 * messages quote `must` and `example`; docs/config.md says the same in prose.
 */
export const FIELD_DOCS: Readonly<Record<string, FieldDoc>> = collectDocs(ConfigSchema);

/** The config as parsed, before `loadConfig` resolves `nodeId`, the token file and the cluster key file. */
export type ParsedConfig = z.output<typeof ConfigSchema>;

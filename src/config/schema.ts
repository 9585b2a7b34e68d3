/**
 * The sidecar's config file: its zod schema, and one line of documentation per field (what the
 * field must be and an example) that error messages quote. docs/config.md is the reference.
 *
 * Field names mirror `StartOptions` where they exist. The supervised process is `process`
 * (`app` is the app's name). Every object is strict: an unknown field is an error.
 */
import { z } from 'zod';
import { APP_NAME_PATTERN } from '../protocol/subjects.js';

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

/** What a field must be and an example value, quoted by error messages. */
export interface FieldDoc {
  readonly must: string;
  readonly example: string;
}

/**
 * Field documentation by path (`[]` stands for any array index). Error messages quote `must` and
 * `example`; docs/config.md says the same in prose.
 */
export const FIELD_DOCS: Readonly<Record<string, FieldDoc>> = {
  '': {
    must: 'a mapping of fields (YAML or JSON object) with at least app, nats and storage',
    example: 'app: orders',
  },
  app: {
    must: '1-64 characters of [A-Za-z0-9_-] (it names streams and buckets)',
    example: 'orders',
  },
  nodeId: { must: 'a non-empty string of at most 128 bytes, unique per node', example: 'node-a' },
  dataDir: {
    must: 'a directory path for the sidecar own files (the token file)',
    example: '/var/lib/restartpoint',
  },
  nats: {
    must: 'a mapping with servers (and optional user, pass, token, tls)',
    example: "{ servers: 'nats://127.0.0.1:4222' }",
  },
  'nats.servers': {
    must: 'a NATS URL or a non-empty list of URLs',
    example: "'nats://127.0.0.1:4222'",
  },
  'nats.user': { must: 'a string (NATS user name)', example: 'app' },
  'nats.pass': { must: 'a string (NATS password)', example: 's3cret' },
  'nats.token': { must: 'a string (NATS auth token)', example: 's3cret-token' },
  'nats.name': { must: 'a string (client name shown by the server)', example: 'orders-sidecar' },
  'nats.tls': {
    must: 'a mapping with caFile, certFile, keyFile (all optional) and handshakeFirst',
    example: '{ caFile: /etc/nats/ca.pem }',
  },
  'nats.tls.caFile': { must: 'a file path', example: '/etc/nats/ca.pem' },
  'nats.tls.certFile': { must: 'a file path', example: '/etc/nats/client.pem' },
  'nats.tls.keyFile': { must: 'a file path', example: '/etc/nats/client-key.pem' },
  'nats.tls.handshakeFirst': { must: 'true or false', example: 'false' },
  storage: {
    must: 'a mapping with kind (memory, file, redis or postgres) and its fields',
    example: '{ kind: file, dir: /var/lib/orders/store }',
  },
  'storage.kind': { must: "one of 'memory', 'file', 'redis', 'postgres'", example: 'file' },
  'storage.dir': {
    must: 'a directory path (kind file), only this node uses it',
    example: '/var/lib/orders/store',
  },
  'storage.fsync': { must: 'true or false (kind file)', example: 'true' },
  'storage.url': { must: 'a redis:// or rediss:// URL (kind redis)', example: "'redis://127.0.0.1:6379'" },
  'storage.prefix': {
    must: 'a non-empty string without { or } (kind redis), one per node',
    example: 'orders-a',
  },
  'storage.connectionString': {
    must: 'a postgres:// URL (kind postgres)',
    example: "'postgres://postgres@127.0.0.1:5432/test'",
  },
  'storage.table': {
    must: 'a table name [a-z_][a-z0-9_]{0,40} (kind postgres), one per node',
    example: 'orders_a',
  },
  mode: { must: "'delay-write' or 'snapshot'", example: 'delay-write' },
  leaseTtlMs: { must: 'an integer from 100 to 600000 (milliseconds)', example: '2000' },
  checkpointTimeoutMs: { must: 'an integer from 100 to 3600000 (milliseconds)', example: '10000' },
  batchBytes: { must: 'an integer from 1 to 67108864 (bytes)', example: '262144' },
  keyframeEvery: { must: 'an integer from 1 to 1000000 (checkpoints)', example: '32' },
  maxChainShare: { must: 'a number above 0 and at most 1000', example: '0.5' },
  stateVersion: { must: 'an integer from 1 to 4294967295 (the version of your state shape)', example: '1' },
  initialState: { must: 'any JSON value (the state of a fresh app)', example: '{ count: 0 }' },
  relays: {
    must: 'a list of 1 to 16 relays, each a mapping with servers',
    example: "[{ servers: 'nats://10.0.1.5:4222' }]",
  },
  'relays[]': {
    must: 'a mapping with servers (and optional user, pass, token, tls, replicas)',
    example: "{ servers: 'nats://10.0.1.5:4222' }",
  },
  'relays[].servers': { must: 'a NATS URL or a non-empty list of URLs', example: "'nats://10.0.1.5:4222'" },
  'relays[].replicas': { must: '1, 3 or 5 (copies of the stream inside a clustered relay)', example: '1' },
  'relays[].user': { must: 'a string', example: 'app' },
  'relays[].pass': { must: 'a string', example: 's3cret' },
  'relays[].token': { must: 'a string', example: 's3cret-token' },
  'relays[].name': { must: 'a string', example: 'orders-relay-1' },
  'relays[].tls': {
    must: 'a mapping with caFile, certFile, keyFile and handshakeFirst',
    example: '{ caFile: /etc/nats/ca.pem }',
  },
  ack: { must: "'all', 'quorum' or { count: n }", example: 'quorum' },
  'ack.count': { must: 'an integer from 1 to 16 (relays that must ack)', example: '2' },
  apply: { must: 'a mapping with everyMs and/or maxBytesPerSec', example: '{ everyMs: 1000 }' },
  'apply.everyMs': { must: 'an integer from 1 to 3600000 (milliseconds)', example: '1000' },
  'apply.maxBytesPerSec': { must: 'an integer from 1024 (bytes per second)', example: '10485760' },
  fec: {
    must: '{ data: k, parity: m, tolerate?: f } or { copies: n, tolerate?: f }',
    example: '{ data: 4, parity: 2 }',
  },
  'fec.data': { must: 'an integer >= 1 (data shards)', example: '4' },
  'fec.parity': { must: 'an integer >= 0 (parity shards)', example: '2' },
  'fec.copies': { must: 'an integer >= 1 (plain copies)', example: '2' },
  'fec.tolerate': { must: 'an integer >= 0 (relays an acknowledged frame survives losing)', example: '1' },
  clusterKey: {
    must: 'a key of at least 32 bytes (64 hex digits, base64, or 32+ characters), or { keys: [{ id, key }], current }',
    example: 'the output of `openssl rand -hex 32`',
  },
  'clusterKey.keys': {
    must: 'a non-empty list of { id, key }',
    example: '[{ id: 1, key: <64 hex digits> }]',
  },
  'clusterKey.keys[].id': { must: 'an integer from 0 to 255', example: '1' },
  'clusterKey.keys[].key': {
    must: 'a key of at least 32 bytes',
    example: 'the output of `openssl rand -hex 32`',
  },
  'clusterKey.current': { must: 'the id of the key that signs', example: '1' },
  clusterKeyFile: {
    must: 'the path of a file holding the cluster key',
    example: '/etc/restartpoint/cluster.key',
  },
  encrypt: { must: 'true or false (needs clusterKey)', example: 'false' },
  limits: { must: 'a mapping of limits (see src/limits.ts)', example: '{ maxImageBytes: 268435456 }' },
  'limits.maxImageBytes': { must: 'an integer (bytes)', example: '268435456' },
  'limits.maxFrameBytes': { must: 'an integer (bytes)', example: '335544320' },
  'limits.maxKeyBytes': { must: 'an integer from 1 to 1024 (bytes)', example: '1024' },
  'limits.maxValueBytes': { must: 'an integer from 1 to 67108864 (bytes)', example: '67108864' },
  'limits.maxWritesPerCheckpoint': { must: 'an integer (write ops)', example: '1000000' },
  'limits.maxStagedBytes': { must: 'an integer (bytes)', example: '536870912' },
  api: {
    must: 'a mapping with port, token, tokenFile, portFile, maxBodyBytes, socket (all optional)',
    example: '{ port: 7878 }',
  },
  'api.port': { must: 'an integer from 0 to 65535 (0: any free port)', example: '7878' },
  'api.token': {
    must: 'at least 16 characters without whitespace',
    example: 'the output of `openssl rand -hex 32`',
  },
  'api.tokenFile': { must: 'a file path', example: '/run/restartpoint/orders.token' },
  'api.portFile': { must: 'a file path', example: '/run/restartpoint/orders.port' },
  'api.maxBodyBytes': { must: 'an integer from 1024 to 1073741824 (bytes)', example: '67108864' },
  'api.socket': { must: 'a file path (a Unix-domain socket)', example: '/run/restartpoint/orders.sock' },
  process: {
    must: 'a mapping with restart, maxRestarts, stopTimeoutMs, cwd, env (all optional)',
    example: '{ restart: on-failure }',
  },
  'process.restart': { must: "'never' or 'on-failure'", example: 'on-failure' },
  'process.maxRestarts': { must: 'an integer from 0 to 1000', example: '3' },
  'process.stopTimeoutMs': { must: 'an integer from 0 to 600000 (milliseconds)', example: '5000' },
  'process.cwd': { must: 'a directory path', example: '/srv/orders' },
  'process.env': { must: 'a mapping of variable names to strings', example: '{ LOG_FORMAT: json }' },
  log: { must: 'a mapping with level', example: '{ level: info }' },
  'log.level': { must: `one of ${LogLevels.join(', ')}`, example: 'info' },
  metrics: { must: 'a mapping with enabled', example: '{ enabled: true }' },
  'metrics.enabled': { must: 'true or false', example: 'true' },
};

const nonEmpty = z.string().min(1);
const int = (min: number, max: number) => z.int().min(min).max(max);
const servers = z.union([nonEmpty, z.array(nonEmpty).min(1)]);
const tls = z.strictObject({
  caFile: nonEmpty.optional(),
  certFile: nonEmpty.optional(),
  keyFile: nonEmpty.optional(),
  handshakeFirst: z.boolean().optional(),
});
const natsClient = {
  servers,
  user: z.string().optional(),
  pass: z.string().optional(),
  token: z.string().optional(),
  name: z.string().optional(),
  tls: tls.optional(),
};

const storage = z.strictObject({
  kind: z.enum(StorageKinds),
  dir: nonEmpty.optional(),
  fsync: z.boolean().optional(),
  url: z
    .string()
    .regex(/^rediss?:\/\//)
    .optional(),
  prefix: z
    .string()
    .regex(/^[^{}]+$/)
    .optional(),
  connectionString: z
    .string()
    .regex(/^postgres(ql)?:\/\//)
    .optional(),
  table: z
    .string()
    .regex(/^[a-z_][a-z0-9_]{0,40}$/)
    .optional(),
});

const keyMaterial = z.string().min(1);

/** The zod schema of the config file (after environment overrides). */
export const ConfigSchema = z.strictObject({
  app: z.string().regex(APP_NAME_PATTERN),
  nodeId: z
    .string()
    .min(1)
    .refine((s) => Buffer.byteLength(s) <= 128)
    .optional(),
  dataDir: nonEmpty.optional(),
  nats: z.strictObject(natsClient),
  storage,
  mode: z.enum(['delay-write', 'snapshot']).optional(),
  leaseTtlMs: int(100, 600_000).optional(),
  checkpointTimeoutMs: int(100, 3_600_000).optional(),
  batchBytes: int(1, 64 * MiB).optional(),
  keyframeEvery: int(1, 1_000_000).optional(),
  maxChainShare: z.number().gt(0).max(1000).optional(),
  stateVersion: int(1, 0xffffffff).optional(),
  initialState: z.json().optional(),
  relays: z
    .array(
      z.strictObject({
        ...natsClient,
        replicas: z.union([z.literal(1), z.literal(3), z.literal(5)]).optional(),
      }),
    )
    .min(1)
    .max(16)
    .optional(),
  ack: z.union([z.literal('all'), z.literal('quorum'), z.strictObject({ count: int(1, 16) })]).optional(),
  apply: z
    .strictObject({ everyMs: int(1, 3_600_000).optional(), maxBytesPerSec: int(1024, 1e12).optional() })
    .optional(),
  fec: z
    .strictObject({
      data: int(1, 255).optional(),
      parity: int(0, 255).optional(),
      copies: int(1, 255).optional(),
      tolerate: int(0, 255).optional(),
    })
    .optional(),
  clusterKey: z
    .union([
      keyMaterial,
      z.strictObject({
        keys: z.array(z.strictObject({ id: int(0, 255), key: keyMaterial })).min(1),
        current: int(0, 255),
      }),
    ])
    .optional(),
  clusterKeyFile: nonEmpty.optional(),
  encrypt: z.boolean().optional(),
  limits: z
    .strictObject({
      maxImageBytes: z.int().optional(),
      maxFrameBytes: z.int().optional(),
      maxKeyBytes: z.int().optional(),
      maxValueBytes: z.int().optional(),
      maxWritesPerCheckpoint: z.int().optional(),
      maxStagedBytes: z.int().optional(),
    })
    .optional(),
  api: z
    .strictObject({
      port: int(0, 65_535).default(0),
      token: z.string().min(16).regex(/^\S+$/).optional(),
      tokenFile: nonEmpty.optional(),
      portFile: nonEmpty.optional(),
      maxBodyBytes: int(1024, 1024 * MiB).default(64 * MiB),
      socket: nonEmpty.optional(),
    })
    .default({ port: 0, maxBodyBytes: 64 * MiB }),
  process: z
    .strictObject({
      restart: z.enum(RestartPolicies).default('never'),
      maxRestarts: int(0, 1000).default(3),
      stopTimeoutMs: int(0, 600_000).default(5000),
      cwd: nonEmpty.optional(),
      env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).optional(),
    })
    .default({ restart: 'never', maxRestarts: 3, stopTimeoutMs: 5000 }),
  log: z.strictObject({ level: z.enum(LogLevels).default('info') }).default({ level: 'info' }),
  metrics: z.strictObject({ enabled: z.boolean().default(true) }).default({ enabled: true }),
});

/** The config as parsed, before `loadConfig` resolves `nodeId`, the token file and the cluster key file. */
export type ParsedConfig = z.output<typeof ConfigSchema>;

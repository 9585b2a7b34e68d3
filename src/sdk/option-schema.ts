/**
 * The one schema of the data options of `Restartpoint.start()`: each field's type, range,
 * default and documentation (what it must be, an example, whether a `RESTARTPOINT_*` variable
 * overrides it in a sidecar config). Everything else is derived from it:
 *
 * - `resolveOptions` (src/sdk/options.ts) validates the data options through it and takes the
 *   defaults from it;
 * - the sidecar's config schema (src/config/schema.ts) is these fields plus `storage`,
 *   `dataDir`, `clusterKeyFile`, `api`, `process`, `log` and `metrics`;
 * - `FIELD_DOCS` (what error messages quote) and `ENV_OVERRIDES` are read off the config schema.
 *
 * Adding an option: one field in `OPTION_FIELDS` below (plus `config: false` in its doc if a
 * config file cannot carry it), and its line in the `StartOptions` interface. See
 * docs/architecture.md, "Adding a start option".
 */
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { APP_NAME_PATTERN } from '../protocol/subjects.js';
import { DEFAULT_LIMITS, LIMIT_RANGES, type Limits } from '../limits.js';

/** What a field must be and an example value, quoted by error messages. */
export interface FieldDoc {
  readonly must: string;
  readonly example: string;
  /**
   * A `RESTARTPOINT_*` variable overrides the field in a sidecar config. Its name is the field's
   * path in upper snake case (`api.tokenFile` → `RESTARTPOINT_API_TOKEN_FILE`).
   */
  readonly env?: boolean;
}

/** Where the docs of every field schema are kept (zod metadata). */
export const fieldDocs = z.registry<FieldDoc>();

/** `schema`, documented. Each call must get a fresh schema (a schema has one doc). */
export function documented<T extends z.ZodType>(schema: T, doc: FieldDoc): T {
  fieldDocs.add(schema, doc);
  return schema;
}

/** An integer field in [min, max]; `unit` ends up in the message: `… from 1 to 9 (unit)`. */
export function intField(
  min: number,
  max: number,
  unit: string,
  example: number,
  more: Omit<FieldDoc, 'must' | 'example'> = {},
): z.ZodInt {
  return documented(z.int().min(min).max(max), {
    must: `an integer from ${min} to ${max}${unit ? ` (${unit})` : ''}`,
    example: String(example),
    ...more,
  });
}

const text = (must: string, example: string, env = false) =>
  documented(z.string(), { must, example, ...(env ? { env } : {}) });
const path = (must: string, example: string, env = false) =>
  documented(z.string().min(1), { must, example, ...(env ? { env } : {}) });

/** A server list: one URL or a non-empty list. */
export const serversField = (env = false) =>
  documented(z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]), {
    must: 'a NATS URL or a non-empty list of URLs',
    example: "'nats://127.0.0.1:4222'",
    ...(env ? { env } : {}),
  });

const tls = () =>
  documented(
    z.strictObject({
      caFile: path('a file path', '/etc/nats/ca.pem').optional(),
      certFile: path('a file path', '/etc/nats/client.pem').optional(),
      keyFile: path('a file path', '/etc/nats/client-key.pem').optional(),
      handshakeFirst: documented(z.boolean(), { must: 'true or false', example: 'false' }).optional(),
    }),
    {
      must: 'a mapping with caFile, certFile, keyFile (all optional) and handshakeFirst',
      example: '{ caFile: /etc/nats/ca.pem }',
    },
  );

/** The client fields a config file may give a NATS connection (the SDK passes any through). */
export const natsClientFields = (env: boolean) => ({
  servers: serversField(env),
  user: text('a string (NATS user name)', 'app', env).optional(),
  pass: text('a string (NATS password)', 's3cret', env).optional(),
  token: text('a string (NATS auth token)', 's3cret-token', env).optional(),
  name: text('a string (client name shown by the server)', 'orders-sidecar').optional(),
  tls: tls().optional(),
});

const NATS_DOC: FieldDoc = {
  must: 'a mapping with servers (and optional user, pass, token, tls)',
  example: "{ servers: 'nats://127.0.0.1:4222' }",
};
const RELAYS_DOC: FieldDoc = {
  must: 'a list of 1 to 16 relays, each a mapping with servers',
  example: "[{ servers: 'nats://10.0.1.5:4222' }]",
};
const RELAY_DOC: FieldDoc = {
  must: 'a mapping with servers (and optional user, pass, token, tls, replicas)',
  example: "{ servers: 'nats://10.0.1.5:4222' }",
};
const replicas = () =>
  documented(z.union([z.literal(1), z.literal(3), z.literal(5)]), {
    must: '1, 3 or 5 (copies of the stream inside a clustered relay)',
    example: '1',
  });

/** `nats` and `relays` as a config file writes them: only the known client fields. */
export const strictNats = () => documented(z.strictObject(natsClientFields(true)), NATS_DOC);
export const strictRelays = () =>
  documented(
    z
      .array(
        documented(
          z.strictObject({ ...natsClientFields(false), replicas: replicas().optional() }),
          RELAY_DOC,
        ),
      )
      .min(1)
      .max(16),
    RELAYS_DOC,
  );

const keyMaterial = () =>
  documented(z.union([z.string().min(1), z.instanceof(Uint8Array)]), {
    must: 'a key of at least 32 bytes',
    example: 'the output of `openssl rand -hex 32`',
  });

/** The limits, one field per entry of `LIMIT_RANGES` (src/limits.ts is their home). */
const limitsField = () =>
  documented(
    z.strictObject(
      Object.fromEntries(
        Object.entries(LIMIT_RANGES).map(([name, [min, max, unit]]) => [
          name,
          documented(z.int().min(min).max(max), {
            must: `an integer from ${min} to ${max} ${unit}`,
            example: String(DEFAULT_LIMITS[name as keyof Limits]),
          }).optional(),
        ]),
      ) as Record<keyof Limits, z.ZodOptional<z.ZodInt>>,
    ),
    { must: 'a mapping of limits (see src/limits.ts)', example: '{ maxImageBytes: 268435456 }' },
  );

/**
 * The data options of `Restartpoint.start()`, in the order the docs list them. Each is optional
 * here unless required; a `.default()` is the option's default.
 */
export const OPTION_FIELDS = {
  app: documented(z.string().regex(APP_NAME_PATTERN), {
    must: '1-64 characters of [A-Za-z0-9_-] (it names streams and buckets)',
    example: 'orders',
    env: true,
  }),
  nodeId: documented(
    z
      .string()
      .min(1)
      .refine((s) => Buffer.byteLength(s) <= 128),
    { must: 'a non-empty string of at most 128 bytes, unique per node', example: 'node-a', env: true },
  ).optional(),
  reuseNodeId: documented(z.boolean(), {
    must: 'true or false: start even when a live node uses this nodeId (default false: refuse)',
    example: 'false',
    env: true,
  }).default(false),
  /** The SDK passes every client option through; a config file allows the known ones (`strictNats`). */
  nats: documented(z.looseObject({ servers: serversField() }), NATS_DOC),
  mode: documented(z.enum(['delay-write', 'snapshot']), {
    must: "'delay-write' or 'snapshot'",
    example: 'delay-write',
    env: true,
  }).default('delay-write'),
  leaseTtlMs: intField(100, 600_000, 'milliseconds', 2000, { env: true }).default(2000),
  verifyStore: documented(z.enum(['quick', 'full', 'off']), {
    must: "'quick' (identity and key count), 'full' (every key and value against the committed digest) or 'off'",
    example: 'quick',
    env: true,
  }).default('quick'),
  storeTimeoutMs: intField(100, 3_600_000, 'milliseconds', 15_000, { env: true }).default(15_000),
  checkpointTimeoutMs: intField(100, 3_600_000, 'milliseconds', 10_000, { env: true }).default(10_000),
  batchBytes: intField(1, 64 * 1024 * 1024, 'bytes', 262_144).default(256 * 1024),
  keyframeEvery: intField(1, 1_000_000, 'checkpoints', 32).default(32),
  maxChainShare: documented(z.number().gt(0).max(1000), {
    must: 'a number above 0 and at most 1000 (0.5: a keyframe once the deltas since the last one reach half its size)',
    example: '0.5',
  }).default(0.5),
  immutableState: documented(z.boolean(), { must: 'true or false', example: 'false' }).default(false),
  checkpointEveryMs: intField(10, 86_400_000, 'milliseconds', 1000).optional(),
  stateVersion: intField(1, 0xffffffff, 'the version of your state shape', 1).default(1),
  /** The SDK passes every client option through; a config file allows the known ones (`strictRelays`). */
  relays: documented(
    z
      .array(
        documented(z.looseObject({ servers: serversField(), replicas: replicas().optional() }), RELAY_DOC),
      )
      .min(1)
      .max(16),
    RELAYS_DOC,
  ).optional(),
  ack: documented(
    z.union([
      z.literal('all'),
      z.literal('quorum'),
      z.strictObject({ count: intField(1, 16, 'relays that must ack', 2) }),
    ]),
    { must: "'all', 'quorum' or { count: n }", example: 'quorum' },
  ).optional(),
  apply: documented(
    z.strictObject({
      everyMs: intField(1, 3_600_000, 'milliseconds', 1000).optional(),
      maxBytesPerSec: intField(1024, 1e12, 'bytes per second', 10_485_760).optional(),
    }),
    { must: 'a mapping with everyMs and/or maxBytesPerSec', example: '{ everyMs: 1000 }' },
  ).optional(),
  retain: documented(
    z.strictObject({
      checkpoints: intField(0, 1e9, 'checkpoints kept below the latest base', 1000).optional(),
      bytes: intField(0, 1e15, 'stream bytes kept below the latest base, per relay', 67_108_864).optional(),
      ms: intField(0, 1e12, 'milliseconds of history kept below the latest base', 3_600_000).optional(),
    }),
    {
      must: 'a mapping with checkpoints, bytes and/or ms (the window kept below the latest base)',
      example: '{ checkpoints: 1000 }',
    },
  ).optional(),
  base: documented(
    z.strictObject({
      everyCheckpoints: intField(1, 1e9, 'checkpoints between two bases', 1000).optional(),
      everyBytes: intField(1024, 1e15, 'stream bytes of frames after the last base', 268_435_456).optional(),
      build: documented(z.boolean(), { must: 'true or false', example: 'true' }).optional(),
    }),
    {
      must: 'a mapping with everyCheckpoints, everyBytes and/or build (whether this node may build bases)',
      example: '{ everyCheckpoints: 1000 }',
    },
  ).optional(),
  maxStandbyLag: documented(
    z.union([
      z.literal(false),
      z.strictObject({
        ms: intField(1, 3_600_000, 'milliseconds', 1000).optional(),
        checkpoints: intField(1, 1e12, 'checkpoints', 100).optional(),
        bytes: intField(1024, 1e15, 'bytes', 67_108_864).optional(),
        waitMs: intField(0, 3_600_000, 'milliseconds', 2000).optional(),
      }),
    ]),
    {
      must: 'false, or a mapping with ms, checkpoints, bytes and/or waitMs',
      example: '{ ms: 1000, waitMs: 2000 }',
    },
  ).optional(),
  fec: documented(
    z.strictObject({
      data: intField(1, 255, 'data shards', 4).optional(),
      parity: intField(0, 255, 'parity shards', 2).optional(),
      copies: intField(1, 255, 'plain copies', 2).optional(),
      tolerate: intField(0, 255, 'relays an acknowledged frame survives losing', 1).optional(),
    }),
    {
      must: '{ data: k, parity: m, tolerate?: f } or { copies: n, tolerate?: f }',
      example: '{ data: 4, parity: 2 }',
    },
  ).optional(),
  clusterKey: documented(
    z.union([
      keyMaterial(),
      z.strictObject({
        keys: documented(
          z.array(z.strictObject({ id: intField(0, 255, '', 1), key: keyMaterial() })).min(1),
          { must: 'a non-empty list of { id, key }', example: '[{ id: 1, key: <64 hex digits> }]' },
        ),
        current: documented(z.int().min(0).max(255), { must: 'the id of the key that signs', example: '1' }),
      }),
    ]),
    {
      must: 'a key of at least 32 bytes (64 hex digits, base64, or 32+ characters), or { keys: [{ id, key }], current }',
      example: 'the output of `openssl rand -hex 32`',
      env: true,
    },
  ).optional(),
  encrypt: documented(z.boolean(), {
    must: 'true or false (needs clusterKey)',
    example: 'false',
    env: true,
  }).default(false),
  limits: limitsField().optional(),
  sidecar: documented(z.boolean(), { must: 'true or false', example: 'true' }).default(true),
};

/** A field as a config file takes it: optional, without the SDK's default (the SDK applies it). */
type WithoutDefault<T> = T extends z.ZodDefault<infer I> ? z.ZodOptional<I> : T;

/** `shape` with each default removed (see `WithoutDefault`). */
export function withoutDefaults<S extends Record<string, z.ZodType>>(
  shape: S,
): { [K in keyof S]: WithoutDefault<S[K]> } {
  const out: Record<string, z.ZodType> = {};
  for (const [k, f] of Object.entries(shape)) {
    out[k] = f instanceof z.ZodDefault ? (f.unwrap() as z.ZodType).optional() : f;
  }
  return out as { [K in keyof S]: WithoutDefault<S[K]> };
}

/** The data options of `Restartpoint.start()` (the functions and the adapter are checked by hand). */
export const OptionsSchema = z.object(OPTION_FIELDS);
/** The data options after defaults. */
export type OptionsData = z.output<typeof OptionsSchema>;

/** A schema without its `optional`/`default`/`nullable` wrappers. */
export function unwrap(s: z.ZodType): z.ZodType {
  for (;;) {
    const def = (s as unknown as { def: { type: string; innerType?: z.ZodType } }).def;
    if ((def.type === 'optional' || def.type === 'default' || def.type === 'nullable') && def.innerType) {
      s = def.innerType;
    } else return s;
  }
}

/** One field of a schema: its path (`[]` for any array index), schema and doc. */
export interface SchemaField {
  readonly path: string;
  readonly schema: z.ZodType;
  readonly doc: FieldDoc | undefined;
}

/** Every field under `schema`, depth first in shape order (union options merged by path). */
export function collectFields(schema: z.ZodType, at = '', out: SchemaField[] = []): SchemaField[] {
  const doc = fieldDocs.get(schema) ?? fieldDocs.get(unwrap(schema));
  if (!out.some((f) => f.path === at)) out.push({ path: at, schema, doc });
  else if (doc && !out.find((f) => f.path === at)!.doc) {
    out[out.findIndex((f) => f.path === at)] = { path: at, schema, doc };
  }
  const s = unwrap(schema);
  const def = (s as unknown as { def: { type: string; element?: z.ZodType; options?: z.ZodType[] } }).def;
  if (def.type === 'object') {
    for (const [k, v] of Object.entries((s as z.ZodObject).shape)) {
      collectFields(v as z.ZodType, at === '' ? k : `${at}.${k}`, out);
    }
  } else if (def.type === 'array' && def.element) {
    collectFields(def.element, `${at}[]`, out);
  } else if (def.type === 'union' && def.options) {
    for (const o of def.options) collectFields(o, at, out);
  }
  return out;
}

/** The documented fields under `schema`, by path: the docs error messages quote. */
export function collectDocs(schema: z.ZodType): Record<string, FieldDoc> {
  const out: Record<string, FieldDoc> = {};
  for (const f of collectFields(schema)) if (f.doc) out[f.path] = f.doc;
  return out;
}

/** The fields an object at `path` under `root` may have, read off the schema. */
export function knownKeysAt(root: z.ZodType, path: readonly PropertyKey[]): string[] {
  const objectsOf = (x: z.ZodType): z.ZodObject[] => {
    const u = unwrap(x);
    const def = (u as unknown as { def: { type: string; options?: z.ZodType[] } }).def;
    if (def.type === 'object') return [u as z.ZodObject];
    if (def.type === 'union') return (def.options ?? []).flatMap(objectsOf);
    return [];
  };
  let s: z.ZodType = root;
  for (const seg of path) {
    const u = unwrap(s);
    const def = (u as unknown as { def: { type: string; element?: z.ZodType } }).def;
    if (typeof seg === 'number') {
      if (def.type !== 'array' || !def.element) return [];
      s = def.element;
      continue;
    }
    const holder = objectsOf(s).find((o) => String(seg) in o.shape);
    if (!holder) return [];
    s = holder.shape[String(seg)] as z.ZodType;
  }
  return [...new Set(objectsOf(s).flatMap((o) => Object.keys(o.shape)))];
}

/** The docs of the SDK's data options, by path. */
export const OPTION_DOCS: Readonly<Record<string, FieldDoc>> = collectDocs(OptionsSchema);

/** A value for a message: strings quoted, functions named, the rest as JSON. */
export function showValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'function') return 'a function';
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

function pathString(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? String(seg) : `.${String(seg)}`;
  }
  return out;
}

/**
 * Validates the data options of `opts` and applies their defaults. Throws `ConfigError` naming
 * the first bad field, with what it must be, the value, and an example.
 */
export function parseOptionsData(opts: Record<string, unknown>): OptionsData {
  const data: Record<string, unknown> = {};
  for (const k of Object.keys(OPTION_FIELDS)) if (opts[k] !== undefined) data[k] = opts[k];
  const r = OptionsSchema.safeParse(data);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  let value: unknown = data;
  for (const seg of issue.path) value = (value as Record<PropertyKey, unknown> | undefined)?.[seg];
  const at = pathString(issue.path);
  const doc = OPTION_DOCS[at.replace(/\[\d+\]/g, '[]')];
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeysAt(OptionsSchema, issue.path);
    throw new ConfigError(
      `${at}.${issue.keys[0]}`,
      `is not a field of ${at} (known: ${known.join(', ')}): remove it or fix its name`,
    );
  }
  if (!doc) throw new ConfigError(at, `${issue.message}, got ${showValue(value)}`);
  throw new ConfigError(
    at,
    value === undefined
      ? `is required: ${doc.must} — for example ${doc.example}`
      : `must be ${doc.must}, got ${showValue(value)} — for example ${doc.example}`,
  );
}

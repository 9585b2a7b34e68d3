/**
 * A storage adapter on Redis (7.x, standalone; Cluster works through the hash tag below), over
 * the `ioredis` client, which is loaded only when the store is first used.
 *
 * ```text
 * {<prefix>}:format     string  "restartpoint-redis 1": marks the prefix as a store of this layout
 * {<prefix>}:data       hash    store key → value (the visible store)
 * {<prefix>}:meta       string  the meta of the last commit / formed snapshot
 * {<prefix>}:areas      set     ids of the version areas written and not yet formed or released
 * {<prefix>}:a:<area>   hash    snapshot mode: key → value put in checkpoint <area>'s area
 * {<prefix>}:t:<area>   set     snapshot mode: keys deleted in that area (tombstones)
 * ```
 *
 * Every name carries the hash tag `{<prefix>}`, so all of one store lives in one Redis Cluster
 * slot: a MULTI or a Lua script touching several of them is legal there (and atomic), at the
 * price of the store never spreading over several cluster nodes.
 *
 * A commit is one MULTI/EXEC sent as one pipeline: Redis runs a transaction only once it has
 * read its EXEC, and then runs all of it before any other client's command, so a client killed
 * before EXEC leaves nothing and a reader sees all of the batch or none of it. Snapshot mode
 * writes areas with MULTI/EXEC too and forms a snapshot with one Lua script (merge the area into
 * the data hash, set the meta, drop the area), which Redis also runs whole. docs/adapters-redis.md
 * has the layout, the atomicity argument and the durability caveats in full.
 */
import {
  ClosedError,
  ConfigError,
  InvalidArgumentError,
  RestartpointError,
  StorageError,
} from '../../src/errors.js';
import {
  assertValidKey,
  assertValidOps,
  assertValidValue,
  type SnapshotStore,
  type StorageAdapter,
  type WriteOp,
} from '../../src/storage/adapter.js';

/** Options of `redisAdapter`. */
export interface RedisAdapterOptions {
  /**
   * Server to connect to, `redis://[user:password@]host[:port][/db]` or `rediss://…` for TLS
   * (default `redis://127.0.0.1:6379`). Not allowed together with `client`.
   */
  readonly url?: string;
  /**
   * Names this node's store: every Redis key the adapter touches starts with `{<prefix>}:`.
   * Give each node (primary and standby alike) its own. A non-empty string without `{` or `}`.
   */
  readonly prefix: string;
  /**
   * The `ioredis` module (or its `Redis` class) to create the client with, instead of
   * `import('ioredis')`. For bundlers, or to pin a version.
   */
  readonly lib?: unknown;
  /**
   * An existing ioredis client (`Redis`, or a `Cluster`) to use instead of creating one. The
   * adapter never closes it; `close()` leaves it connected. It must not be in subscriber mode.
   */
  readonly client?: unknown;
}

/**
 * Creates a store kept in Redis under `{<prefix>}:`. Throws `ConfigError` for a bad option. No
 * connection is made until `open()` (or the first call); a missing `ioredis` package rejects
 * then, with a `ConfigError` saying what to install, and an unreachable server with a retryable
 * `StorageError` naming the address.
 *
 * Contract, beyond `StorageAdapter` and `SnapshotStore`:
 * - `capabilities` is `{ durable: true, snapshot: true }`, and **durable means as durable as the
 *   server's persistence**: a resolved `commit` / `formSnapshot` / `clear` is in Redis's memory
 *   and, with `appendonly yes` + `appendfsync always`, on its disk; with `everysec` the last
 *   second can be lost in a server crash, and a server keeping no AOF or RDB keeps nothing.
 * - `commit`, `formSnapshot`, `releaseAreas` and `clear` are atomic: a SIGKILL of this process at
 *   any instant leaves the store before or after, and readers see all of it or none of it.
 * - Calls are sent on one connection in call order, so writes issued without awaiting apply in
 *   call order. `put` copies its value; buffers passed to `commit` / `writeArea` must not
 *   change until the call settles.
 * - `open()` marks the prefix with a format key and rejects (StorageError) when the prefix holds
 *   a store of another layout. `clear()` deletes every key under the prefix, that marker
 *   included (the next `open()` sets it again).
 * - `close()` quits the connection the adapter made, after the replies to calls already made.
 */
export function redisAdapter(opts: RedisAdapterOptions): StorageAdapter & SnapshotStore {
  const o = checkOptions(opts);
  const k = keyNames(o.prefix);
  const where = `{${o.prefix}} on ${o.client === undefined ? o.displayUrl : 'the client passed as storage.client'}`;

  let client: Client | undefined;
  let connecting: Promise<Client> | undefined;
  // Calls that were made before the connection was up, still waiting for it. While any wait,
  // later calls queue behind them, so commands reach Redis in call order.
  let waiting = 0;
  let closed = false;

  function assertOpen(): void {
    if (closed) throw new ClosedError(`the redis store ${where} is closed`);
  }

  function connect(): Promise<Client> {
    connecting ??= openClient(o, k, where, () => closed).then(
      (c) => {
        client = c;
        return c;
      },
      (err: unknown) => {
        // The next call tries again: the server may come up later.
        connecting = undefined;
        throw err;
      },
    );
    return connecting;
  }

  /**
   * Runs `send` with the client. `send` must issue its commands synchronously (before its first
   * await): that, plus the queue behind a pending connection, keeps Redis's order the call order.
   */
  function run<T>(send: (c: Client) => Promise<T>): Promise<T> {
    const go = (c: Client): Promise<T> => {
      assertOpen();
      return send(c);
    };
    let result: Promise<T>;
    if (client !== undefined && waiting === 0) {
      try {
        result = go(client);
      } catch (err) {
        result = Promise.reject(err);
      }
    } else {
      waiting++;
      result = connect().then(
        (c) => {
          waiting--;
          return go(c);
        },
        (err: unknown) => {
          waiting--;
          throw err;
        },
      );
    }
    return result.catch((err: unknown) => {
      throw storageError(where, err);
    });
  }

  /** MULTI … EXEC of what `fill` queues; rejects if any command in it failed. */
  function transaction(fill: (m: Multi) => void): Promise<void> {
    return run(async (c) => {
      const m = c.multi();
      fill(m);
      const replies = await m.exec();
      if (replies === null) throw new StorageError(`redis store ${where}: a transaction was aborted`);
      const failed = replies.find(([err]) => err !== null)?.[0];
      if (failed) {
        // Only a key of the wrong type under our prefix gets here (Redis checks everything else
        // while queueing and then refuses the whole EXEC): someone else wrote into the store.
        throw new StorageError(
          `redis store ${where}: part of a transaction failed (${failed.message}); a key under the prefix was written by something else`,
          { cause: failed },
        );
      }
    });
  }

  return {
    kind: 'redis',
    capabilities: { durable: true, snapshot: true },

    async open() {
      assertOpen();
      await run(async () => undefined);
    },

    async get(key) {
      assertOpen();
      assertValidKey(key);
      const value = await run((c) => c.hgetBuffer(k.data, key));
      return value === null ? undefined : copyOut(value);
    },

    async put(key, value) {
      assertOpen();
      assertValidKey(key);
      assertValidValue(value);
      // Buffer.from(Uint8Array) copies: the caller may reuse its buffer at once.
      const copy = Buffer.from(value);
      await run((c) => c.hset(k.data, key, copy));
    },

    async delete(key) {
      assertOpen();
      assertValidKey(key);
      await run((c) => c.hdel(k.data, key));
    },

    async apply(ops) {
      assertOpen();
      assertValidOps(ops);
      // One round trip for a group of primary writes, in order (MULTI: atomic as a bonus). A run
      // of puts is one HSET with many fields (a repeated field: the later value wins, as in
      // call order), which keeps the client's per-command cost out of the hot path.
      await transaction((m) => {
        let run: (string | Buffer)[] = [];
        for (const op of ops) {
          if (op.op === 'put') {
            run.push(op.key, Buffer.from(op.value));
            continue;
          }
          if (run.length > 0) m.hset(k.data, ...run);
          run = [];
          m.hdel(k.data, op.key);
        }
        if (run.length > 0) m.hset(k.data, ...run);
      });
    },

    async keys() {
      assertOpen();
      const keys = await run((c) => c.hkeys(k.data));
      // Redis orders by bytes; the contract's order is UTF-16 code units: the default sort.
      return keys.sort();
    },

    async commit(ops, meta) {
      assertOpen();
      assertValidOps(ops);
      assertValidValue(meta);
      const { puts, deletes } = lastOpPerKey(ops);
      await transaction((m) => {
        for (const args of fieldValueChunks(puts)) m.hset(k.data, ...args);
        for (const fields of chunks(deletes)) m.hdel(k.data, ...fields);
        m.set(k.meta, view(meta));
      });
    },

    async readMeta() {
      assertOpen();
      const meta = await run((c) => c.getBuffer(k.meta));
      return meta === null ? undefined : copyOut(meta);
    },

    async clear() {
      assertOpen();
      await run((c) => c.eval(CLEAR, 4, k.areas, k.data, k.meta, k.format));
    },

    async close() {
      if (closed) return;
      closed = true;
      const c = client ?? (await connecting?.catch(() => undefined));
      if (c === undefined || o.client !== undefined) return;
      // QUIT is answered after every command sent before it: calls not awaited still complete.
      if (c.status === 'ready') await c.quit().catch(() => c.disconnect());
      else c.disconnect();
    },

    async writeArea(area, ops) {
      assertOpen();
      assertValidArea(area);
      assertValidOps(ops);
      if (ops.length === 0) return;
      const { puts, deletes } = lastOpPerKey(ops);
      const [putsKey, tombsKey] = [k.areaPuts(area), k.areaTombs(area)];
      await transaction((m) => {
        m.sadd(k.areas, String(area));
        // A put cancels an earlier tombstone of the same area and a delete an earlier put, so
        // the area holds each key at most once: its last op.
        for (const args of fieldValueChunks(puts)) m.hset(putsKey, ...args);
        for (const fields of chunks([...puts.keys()])) m.srem(tombsKey, ...fields);
        for (const fields of chunks(deletes)) {
          m.hdel(putsKey, ...fields);
          m.sadd(tombsKey, ...fields);
        }
      });
    },

    async formSnapshot(area, meta) {
      assertOpen();
      assertValidArea(area);
      assertValidValue(meta);
      await run((c) =>
        c.eval(
          FORM_SNAPSHOT,
          5,
          k.data,
          k.meta,
          k.areas,
          k.areaPuts(area),
          k.areaTombs(area),
          String(area),
          view(meta),
        ),
      );
    },

    async releaseAreas() {
      assertOpen();
      await run((c) => c.eval(RELEASE_AREAS, 1, k.areas));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Options and names

/** Content of `{<prefix>}:format`; the number changes when the layout changes incompatibly. */
const REDIS_STORE_FORMAT = 'restartpoint-redis 1';
const DEFAULT_URL = 'redis://127.0.0.1:6379';
/** Most fields one HSET / HDEL / SADD in a transaction carries. */
const MAX_FIELDS_PER_COMMAND = 1000;
/** Most value bytes one HSET carries (a larger single value goes alone). */
const MAX_BYTES_PER_COMMAND = 8 * 1024 * 1024;

interface Options {
  readonly prefix: string;
  readonly url: string;
  /** `url` without its password, for messages. */
  readonly displayUrl: string;
  readonly lib: unknown;
  readonly client: Client | undefined;
}

function checkOptions(opts: RedisAdapterOptions): Options {
  if (typeof opts !== 'object' || opts === null) {
    throw new ConfigError('storage', 'must be an object like redisAdapter({ prefix: "node-a" })');
  }
  const prefix: unknown = opts.prefix;
  if (typeof prefix !== 'string' || prefix.length === 0) {
    throw new ConfigError(
      'storage.prefix',
      `must be a non-empty string naming this node's store, e.g. redisAdapter({ prefix: "orders-a" }); got ${describe(prefix)}`,
    );
  }
  if (/[{}]/.test(prefix)) {
    throw new ConfigError(
      'storage.prefix',
      `must not contain '{' or '}' (the adapter wraps it in a Redis Cluster hash tag); got ${JSON.stringify(prefix)}`,
    );
  }
  const url: unknown = opts.url;
  const client: unknown = opts.client;
  if (url !== undefined && client !== undefined) {
    throw new ConfigError(
      'storage.url',
      'cannot be combined with storage.client: the client is already connected somewhere',
    );
  }
  if (url !== undefined && (typeof url !== 'string' || !/^(rediss?:\/\/|\/)/.test(url))) {
    throw new ConfigError(
      'storage.url',
      `must be a redis:// or rediss:// URL (or a Unix socket path), like "redis://127.0.0.1:6379"; got ${typeof url === 'string' ? JSON.stringify(redact(url)) : describe(url)}`,
    );
  }
  if (client !== undefined && !isClient(client)) {
    throw new ConfigError(
      'storage.client',
      `must be an ioredis client (new Redis(...) or new Cluster(...)); got ${describe(client)}`,
    );
  }
  const lib: unknown = opts.lib;
  if (lib !== undefined && redisClassOf(lib) === undefined) {
    throw new ConfigError(
      'storage.lib',
      `must be the ioredis module (import * as ioredis from 'ioredis') or its Redis class; got ${describe(lib)}`,
    );
  }
  const u = typeof url === 'string' ? url : DEFAULT_URL;
  return { prefix, url: u, displayUrl: redact(u), lib, client };
}

interface KeyNames {
  readonly format: string;
  readonly data: string;
  readonly meta: string;
  readonly areas: string;
  areaPuts(area: number): string;
  areaTombs(area: number): string;
}

/**
 * The Redis keys of one store. The Lua scripts rebuild area names from `areas` (minus its
 * ":areas" suffix, so an ioredis `keyPrefix` is honoured): keep the two in step.
 */
function keyNames(prefix: string): KeyNames {
  const base = `{${prefix}}`;
  return {
    format: `${base}:format`,
    data: `${base}:data`,
    meta: `${base}:meta`,
    areas: `${base}:areas`,
    areaPuts: (area) => `${base}:a:${area}`,
    areaTombs: (area) => `${base}:t:${area}`,
  };
}

function assertValidArea(area: unknown): asserts area is number {
  if (typeof area !== 'number' || !Number.isSafeInteger(area) || area < 0) {
    throw new InvalidArgumentError(
      `snapshot area must be a non-negative safe integer, got ${describe(area)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Scripts. Each runs whole or not at all, like a transaction. Keys not passed in KEYS are built
// from KEYS[1]'s hash tag, so they are in the same cluster slot as the declared ones.

/** Drops the areas listed in KEYS[1] (the areas set), and the set. */
const RELEASE_AREAS_BODY = `
local base = string.sub(KEYS[1], 1, #KEYS[1] - #':areas')
local ids = redis.call('SMEMBERS', KEYS[1])
for i = 1, #ids do
  redis.call('UNLINK', base .. ':a:' .. ids[i], base .. ':t:' .. ids[i])
end
redis.call('UNLINK', KEYS[1])
`;

/** KEYS: areas set. Returns the number of areas dropped. */
const RELEASE_AREAS = `${RELEASE_AREAS_BODY}
return #ids
`;

/** KEYS: areas set, data hash, meta, format marker. */
const CLEAR = `${RELEASE_AREAS_BODY}
redis.call('UNLINK', KEYS[2], KEYS[3], KEYS[4])
return #ids
`;

/**
 * KEYS: data hash, meta, areas set, the area's puts hash, the area's tombstone set.
 * ARGV: area id, meta. Applies the area to the data, sets the meta, drops the area (and any
 * area below it: those checkpoints were formed, so what is left of them is garbage).
 */
const FORM_SNAPSHOT = `
local fields = redis.call('HKEYS', KEYS[4])
for i = 1, #fields do
  redis.call('HSET', KEYS[1], fields[i], redis.call('HGET', KEYS[4], fields[i]))
end
local gone = redis.call('SMEMBERS', KEYS[5])
for i = 1, #gone do
  redis.call('HDEL', KEYS[1], gone[i])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('UNLINK', KEYS[4], KEYS[5])
redis.call('SREM', KEYS[3], ARGV[1])
local base = string.sub(KEYS[3], 1, #KEYS[3] - #':areas')
local area = tonumber(ARGV[1])
local ids = redis.call('SMEMBERS', KEYS[3])
for i = 1, #ids do
  if tonumber(ids[i]) < area then
    redis.call('UNLINK', base .. ':a:' .. ids[i], base .. ':t:' .. ids[i])
    redis.call('SREM', KEYS[3], ids[i])
  end
end
return #fields + #gone
`;

/** KEYS: format key. ARGV: this version's format. Sets it when missing; returns what is there. */
const CLAIM_FORMAT = `
local found = redis.call('GET', KEYS[1])
if found then return found end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`;

// ---------------------------------------------------------------------------------------------
// Batches

/** The effect of `ops` per key: its last op wins. Puts and deletes come out disjoint. */
function lastOpPerKey(ops: readonly WriteOp[]): { puts: Map<string, Uint8Array>; deletes: string[] } {
  const last = new Map<string, Uint8Array | null>();
  for (const op of ops) {
    // Re-inserting moves nothing in a Map; order does not matter once keys are distinct.
    last.set(op.key, op.op === 'put' ? op.value : null);
  }
  const puts = new Map<string, Uint8Array>();
  const deletes: string[] = [];
  for (const [key, value] of last) {
    if (value === null) deletes.push(key);
    else puts.set(key, value);
  }
  return { puts, deletes };
}

/** `field, value, field, value, …` argument lists, bounded in fields and bytes. */
function* fieldValueChunks(puts: ReadonlyMap<string, Uint8Array>): Generator<(string | Buffer)[]> {
  let args: (string | Buffer)[] = [];
  let bytes = 0;
  for (const [key, value] of puts) {
    if (
      args.length > 0 &&
      (args.length >= 2 * MAX_FIELDS_PER_COMMAND || bytes + value.byteLength > MAX_BYTES_PER_COMMAND)
    ) {
      yield args;
      args = [];
      bytes = 0;
    }
    args.push(key, view(value));
    bytes += value.byteLength;
  }
  if (args.length > 0) yield args;
}

function* chunks(fields: readonly string[]): Generator<string[]> {
  for (let i = 0; i < fields.length; i += MAX_FIELDS_PER_COMMAND)
    yield fields.slice(i, i + MAX_FIELDS_PER_COMMAND);
}

/** A Buffer over the same bytes (ioredis sends Buffers as bytes, other objects as strings). */
function view(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** A plain Uint8Array the caller owns (replies can be views into the client's read buffer). */
function copyOut(b: Buffer): Uint8Array {
  return new Uint8Array(b);
}

// ---------------------------------------------------------------------------------------------
// The client

/** The part of the ioredis client API this adapter uses (ioredis 5 and 6 both have it). */
interface Client {
  readonly status: string;
  connect(): Promise<void>;
  quit(): Promise<unknown>;
  disconnect(): void;
  on(event: 'error', listener: (err: Error) => void): unknown;
  hgetBuffer(key: string, field: string): Promise<Buffer | null>;
  hset(key: string, ...fieldsAndValues: (string | Buffer)[]): Promise<number>;
  hdel(key: string, ...fields: string[]): Promise<number>;
  hkeys(key: string): Promise<string[]>;
  getBuffer(key: string): Promise<Buffer | null>;
  eval(script: string, numKeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
  multi(): Multi;
}

interface Multi {
  hset(key: string, ...fieldsAndValues: (string | Buffer)[]): Multi;
  hdel(key: string, ...fields: string[]): Multi;
  set(key: string, value: Buffer): Multi;
  sadd(key: string, ...members: string[]): Multi;
  srem(key: string, ...members: string[]): Multi;
  exec(): Promise<[Error | null, unknown][] | null>;
}

type RedisClass = new (url: string, options: Record<string, unknown>) => Client;

function isClient(c: unknown): c is Client {
  if (typeof c !== 'object' || c === null) return false;
  const methods = ['multi', 'hgetBuffer', 'getBuffer', 'hkeys', 'eval', 'connect'] as const;
  return methods.every((m) => typeof (c as Record<string, unknown>)[m] === 'function');
}

/** The Redis class of an ioredis module, or the class itself; `undefined` if neither. */
function redisClassOf(lib: unknown): RedisClass | undefined {
  if (typeof lib === 'function') return lib as RedisClass;
  if (typeof lib !== 'object' || lib === null) return undefined;
  const candidates = [(lib as { Redis?: unknown }).Redis, (lib as { default?: unknown }).default];
  return candidates.find((c): c is RedisClass => typeof c === 'function');
}

async function loadRedisClass(lib: unknown): Promise<RedisClass> {
  if (lib !== undefined) return redisClassOf(lib)!;
  let mod: unknown;
  try {
    mod = await import('ioredis');
  } catch (err) {
    throw new ConfigError(
      'storage',
      `is a redis adapter, which needs the 'ioredis' package: npm install ioredis (loading it failed: ${(err as Error).message})`,
      { cause: err },
    );
  }
  const cls = redisClassOf(mod);
  if (cls === undefined)
    throw new ConfigError(
      'storage',
      "is a redis adapter, but the installed 'ioredis' exports no Redis class",
    );
  return cls;
}

/** Connects (or takes the given client), checks the store's format marker, resolves the client. */
async function openClient(o: Options, k: KeyNames, where: string, isClosed: () => boolean): Promise<Client> {
  let c: Client;
  const own = o.client === undefined;
  if (o.client !== undefined) {
    c = o.client;
    if (c.status === 'wait') await c.connect();
    else if (c.status === 'end') {
      throw new StorageError(`redis store ${where}: the client passed as storage.client was closed`);
    }
  } else {
    const Redis = await loadRedisClass(o.lib);
    // lazyConnect: connect() below then rejects on failure instead of retrying out of sight.
    c = new Redis(o.url, { lazyConnect: true });
    let lastError: Error | undefined;
    // Without a listener ioredis prints every reconnect error; failures reach callers as rejections.
    c.on('error', (err) => {
      lastError = err;
    });
    try {
      await c.connect();
    } catch (err) {
      c.disconnect();
      const reason = lastError?.message ?? (err as Error).message;
      throw new StorageError(
        `redis store ${where}: cannot connect (${reason}); is redis-server running there?`,
        {
          cause: lastError ?? err,
          retryable: true,
        },
      );
    }
  }
  try {
    const found = await c.eval(CLAIM_FORMAT, 1, k.format, REDIS_STORE_FORMAT);
    const format = Buffer.isBuffer(found) ? found.toString('utf8') : String(found);
    if (format !== REDIS_STORE_FORMAT) {
      throw new StorageError(
        `redis store ${where}: ${k.format} holds ${JSON.stringify(format)}; this version reads ${JSON.stringify(REDIS_STORE_FORMAT)} (use another prefix)`,
      );
    }
    if (isClosed()) throw new ClosedError(`the redis store ${where} is closed`);
    return c;
  } catch (err) {
    if (own) c.disconnect();
    throw storageError(where, err);
  }
}

/** Reply errors that retrying unchanged will not fix; everything else (connection, LOADING, OOM…) may pass. */
const PERMANENT_REPLY = /^(ERR|WRONGTYPE|NOSCRIPT|NOPERM|WRONGPASS|NOAUTH|EXECABORT)\b/;

/** Our own errors pass through; client and server errors become `StorageError`s naming the store. */
function storageError(where: string, err: unknown): Error {
  if (err instanceof RestartpointError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new StorageError(`redis store ${where}: ${message}`, {
    cause: err,
    retryable: !PERMANENT_REPLY.test(message),
  });
}

/** `url` with its password replaced by `***`. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/\/\/[^@/]*@/, '//***@');
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return `${typeof v} ${String(v)}`;
}

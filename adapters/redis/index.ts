/**
 * A storage adapter on Redis (7.x, standalone; Cluster works through the hash tag below), over
 * the `ioredis` client, which is loaded only when the store is first used.
 *
 * ```text
 * {<prefix>}:format     string  "restartpoint-redis 1": marks the prefix as a store of this layout
 * {<prefix>}:ident      string  the identity token (JSON: storeId, nodeId, format), checked by every call
 * {<prefix>}:digest     string  "<keys> <32 hex>": count and digest of the visible data as committed
 *                               (src/storage/digest.ts); absent after direct writes (unrecorded)
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
 * Every call is one Lua script (EVALSHA; the scripts are loaded at connect). Redis runs a script
 * whole before any other client's command, and only once it has read all of it, so a client
 * killed mid-send leaves nothing and a reader sees all of a batch or none of it. Each script
 * first compares the identity token with the one this instance opened with, so nothing is read
 * from or written into a flushed, restarted-empty or different store. A commit applies the
 * collapsed ops, keeping the digest from the old values it reads, and sets the meta; forming a
 * snapshot merges the area into the data hash the same way. docs/adapters-redis.md has the
 * layout, the atomicity argument and the durability caveats in full.
 */
import { createHash } from 'node:crypto';
import {
  ClosedError,
  ConfigError,
  RestartpointError,
  StorageError,
  StoreLostError,
} from '../../src/errors.js';
import {
  assertValidArea,
  assertValidKey,
  assertValidOps,
  assertValidValue,
  type SnapshotStore,
  type StorageAdapter,
  type StoreIdentity,
  type VerifyResult,
  type WriteOp,
} from '../../src/storage/adapter.js';
import { addEntry, decodeDigest, emptyDigest, entryLanes } from '../../src/storage/digest.js';
import {
  decodeIdentity,
  encodeIdentity,
  foreignAtOpen,
  newIdentity,
  storeLost,
  verifyResult,
} from '../../src/storage/identity.js';

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
   * Create it with `autoResendUnfulfilledCommands: false`, so that a command cut off by a lost
   * connection is reported rather than resent to whatever server answers next (the identity
   * check inside every script refuses an emptied server either way). `commandTimeout` and
   * `connectTimeout` below do not apply to it: set them on the client.
   */
  readonly client?: unknown;
  /**
   * Milliseconds a command may take before it rejects with a retryable `StorageError` (default
   * 10 000). The connection is then dropped and the next call reconnects and checks the store's
   * identity. A timed-out commit may or may not have run (each is one script: all or nothing);
   * committing the same batch again is safe. Must cover the largest commit (about 10 µs per key
   * on Redis's side with the digest kept).
   */
  readonly commandTimeout?: number;
  /** Milliseconds a connection attempt may take (default 5 000). */
  readonly connectTimeout?: number;
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
 * - Every call is one Lua script, run whole by Redis, that first compares `{<prefix>}:ident`
 *   with the token this instance opened with: a flushed, restarted-empty or different server
 *   makes that call, and every later one, reject with `StoreLostError`; nothing is written
 *   into it. `commit`, `formSnapshot`, `releaseAreas` and `clear` are atomic: a SIGKILL of this
 *   process at any instant leaves the store before or after, and readers see all or none.
 * - The adapter's own client never reconnects behind the caller's back: a lost connection
 *   rejects the calls in flight (retryable), and the next call connects anew.
 * - Calls are sent on one connection in call order, so writes issued without awaiting apply in
 *   call order. `put` copies its value; buffers passed to `commit` / `writeArea` must not
 *   change until the call settles.
 * - `open()` marks the prefix with a format key and rejects (StorageError) when the prefix holds
 *   a store of another layout. `clear()` deletes the data, meta and areas, and keeps the
 *   format, the identity token and an (empty) digest.
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
  /** The token this instance opened with (set by the first connection). */
  let identity: StoreIdentity | undefined;
  let token = '';
  let nodeId: string | undefined;
  /** Set once the store was found lost: every later call rejects with it. */
  let lost: StoreLostError | undefined;

  function assertOpen(): void {
    if (closed) throw new ClosedError(`the redis store ${where} is closed`);
    if (lost !== undefined) throw lost;
  }

  function connect(): Promise<Client> {
    connecting ??= openClient(o, k, where, () => closed, identity, nodeId).then(
      ({ c, id }) => {
        if (identity === undefined) {
          identity = id;
          token = encodeIdentity(id);
        }
        client = c;
        // A connection that ends is never reused: the next call connects (and checks) anew.
        if (o.client === undefined) {
          c.on('end', () => {
            if (client === c) {
              client = undefined;
              connecting = undefined;
            }
          });
        }
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

  /** Maps a failure, marking the store lost, or dropping a connection that timed out. */
  function fail(err: unknown, c: Client | undefined): Error {
    const e = storageError(where, err);
    if (e instanceof StoreLostError) lost ??= e;
    else if (isNoScript(err) || isTimeout(err)) {
      // A timed-out connection may be dead or late; a server without our scripts was restarted
      // (or flushed its script cache): reconnect, load and check before the next command.
      if (c !== undefined && client === c) {
        client = undefined;
        connecting = undefined;
        if (o.client === undefined) c.disconnect();
      }
    }
    return e;
  }

  /**
   * Runs `send` with the client. `send` must issue its commands synchronously (before its first
   * await): that, plus the queue behind a pending connection, keeps Redis's order the call order.
   */
  function run<T>(send: (c: Client) => Promise<T>): Promise<T> {
    let used: Client | undefined;
    const go = (c: Client): Promise<T> => {
      assertOpen();
      used = c;
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
      throw fail(err, used);
    });
  }

  /** Runs one of the scripts by its SHA (loaded at connect), with the identity token as ARGV[1]. */
  function script(s: Script, keys: readonly string[], args: readonly (string | Buffer)[]): Promise<unknown> {
    return run((c) => c.evalsha(s.sha, keys.length, ...keys, token, ...args));
  }

  function scriptBuffer(
    s: Script,
    keys: readonly string[],
    args: readonly (string | Buffer)[],
  ): Promise<unknown> {
    return run((c) => c.evalshaBuffer(s.sha, keys.length, ...keys, token, ...args));
  }

  /** The keys every script gets first: identity, data, digest, meta, areas. */
  const base = [k.ident, k.data, k.digest, k.meta, k.areas] as const;

  async function verify(quick: boolean): Promise<VerifyResult> {
    for (let attempt = 1; ; attempt++) {
      const before = (await script(SCRIPTS.state, base, [])) as [number, string | null, string | null];
      const recorded = before[1] === null ? undefined : decodeDigest(before[1]);
      const found = emptyDigest();
      if (quick) {
        found.keys = Number(before[0]);
        return verifyResult(identity!, found, recorded, true);
      }
      // HSCAN may return a field twice (while the hash is rehashed): count each once.
      const seen = new Set<string>();
      let cursor = '0';
      do {
        const [next, entries] = (await run((c) => c.hscanBuffer(k.data, cursor, 'COUNT', 1000))) as [
          Buffer | string,
          Buffer[],
        ];
        cursor = next.toString();
        for (let i = 0; i + 1 < entries.length; i += 2) {
          const key = entries[i]!.toString('utf8');
          if (seen.has(key)) continue;
          seen.add(key);
          addEntry(found, entryLanes('sha1', entries[i]!, entries[i + 1]!));
        }
      } while (cursor !== '0');
      const after = (await script(SCRIPTS.state, base, [])) as [number, string | null, string | null];
      // Every commit and form changes the digest (or the meta): unchanged means one snapshot.
      if (after[1] === before[1] && after[2] === before[2] && Number(after[0]) === Number(before[0])) {
        return verifyResult(identity!, found, recorded, false);
      }
      if (attempt >= 5) {
        throw new StorageError(
          `redis store ${where}: verify: the store changed during each of ${attempt} scans; retry when commits pause`,
          { retryable: true },
        );
      }
    }
  }

  return {
    kind: 'redis',
    capabilities: { durable: true, snapshot: true },

    async open(openOpts) {
      assertOpen();
      nodeId ??= openOpts?.nodeId;
      await run(async () => undefined);
    },

    async verify(verifyOpts) {
      assertOpen();
      return verify(verifyOpts?.quick === true);
    },

    async reclaim() {
      if (closed) throw new ClosedError(`the redis store ${where} is closed`);
      if (lost === undefined) return;
      // Forget the token and the connection: the next connect claims the store as a first open.
      const was = lost;
      lost = undefined;
      identity = undefined;
      token = '';
      const c = client;
      client = undefined;
      connecting = undefined;
      if (c !== undefined && o.client === undefined) c.disconnect();
      try {
        await run(async () => undefined);
      } catch (err) {
        if (lost === undefined && !(err instanceof StoreLostError)) lost = was;
        throw err;
      }
    },

    async get(key) {
      assertOpen();
      assertValidKey(key);
      const value = (await scriptBuffer(SCRIPTS.get, base, [key])) as Buffer | null;
      return value === null ? undefined : copyOut(value);
    },

    async put(key, value) {
      assertOpen();
      assertValidKey(key);
      assertValidValue(value);
      // Buffer.from(Uint8Array) copies: the caller may reuse its buffer at once.
      const copy = Buffer.from(value);
      await script(SCRIPTS.apply, base, ['p', key, copy]);
    },

    async delete(key) {
      assertOpen();
      assertValidKey(key);
      await script(SCRIPTS.apply, base, ['d', key]);
    },

    async apply(ops) {
      assertOpen();
      assertValidOps(ops);
      // One round trip for a group of primary writes, in order (one script: atomic as a bonus).
      const args: (string | Buffer)[] = [];
      for (const op of ops) {
        if (op.op === 'put') args.push('p', op.key, Buffer.from(op.value));
        else args.push('d', op.key);
      }
      await script(SCRIPTS.apply, base, args);
    },

    async keys() {
      assertOpen();
      const keys = (await script(SCRIPTS.keys, base, [])) as string[];
      // Redis orders by bytes; the contract's order is UTF-16 code units: the default sort.
      return keys.sort();
    },

    async commit(ops, meta) {
      assertOpen();
      assertValidOps(ops);
      assertValidValue(meta);
      const { puts, deletes } = lastOpPerKey(ops);
      const args: (string | Buffer)[] = [view(meta), String(puts.size)];
      // Each put's entry hash is computed here (Node's SHA-1 is several times faster than Lua's,
      // and off the server's single thread); the script keeps it beside the value.
      for (const [key, value] of puts) args.push(key, view(value), entryHex(key, value));
      for (const key of deletes) args.push(key);
      await script(SCRIPTS.commit, base, args);
    },

    async readMeta() {
      assertOpen();
      const meta = (await scriptBuffer(SCRIPTS.readMeta, base, [])) as Buffer | null;
      return meta === null ? undefined : copyOut(meta);
    },

    async clear() {
      assertOpen();
      await script(SCRIPTS.clear, base, []);
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
      // A put cancels an earlier tombstone of the same area and a delete an earlier put, so
      // the area holds each key at most once: its last op.
      const args: (string | Buffer)[] = [String(area), String(puts.size)];
      for (const [key, value] of puts) args.push(key, view(value));
      for (const key of deletes) args.push(key);
      await script(SCRIPTS.writeArea, [...base, k.areaPuts(area), k.areaTombs(area)], args);
    },

    async formSnapshot(area, meta) {
      assertOpen();
      assertValidArea(area);
      assertValidValue(meta);
      await script(
        SCRIPTS.formSnapshot,
        [...base, k.areaPuts(area), k.areaTombs(area)],
        [String(area), view(meta)],
      );
    },

    async releaseAreas() {
      assertOpen();
      await script(SCRIPTS.releaseAreas, base, []);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Options and names

/** Content of `{<prefix>}:format`; the number changes when the layout changes incompatibly. */
const REDIS_STORE_FORMAT = 'restartpoint-redis 1';
const DEFAULT_URL = 'redis://127.0.0.1:6379';

interface Options {
  readonly prefix: string;
  readonly url: string;
  /** `url` without its password, for messages. */
  readonly displayUrl: string;
  readonly lib: unknown;
  readonly client: Client | undefined;
  readonly commandTimeout: number;
  readonly connectTimeout: number;
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
  const ms = (name: 'commandTimeout' | 'connectTimeout', dflt: number): number => {
    const v: unknown = opts[name];
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new ConfigError(
        `storage.${name}`,
        `must be a positive whole number of milliseconds, got ${describe(v)}`,
      );
    }
    return v;
  };
  return {
    prefix,
    url: u,
    displayUrl: redact(u),
    lib,
    client,
    commandTimeout: ms('commandTimeout', 10_000),
    connectTimeout: ms('connectTimeout', 5_000),
  };
}

interface KeyNames {
  readonly format: string;
  readonly ident: string;
  readonly digest: string;
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
    ident: `${base}:ident`,
    digest: `${base}:digest`,
    data: `${base}:data`,
    meta: `${base}:meta`,
    areas: `${base}:areas`,
    areaPuts: (area) => `${base}:a:${area}`,
    areaTombs: (area) => `${base}:t:${area}`,
  };
}

// ---------------------------------------------------------------------------------------------
// Scripts. Each runs whole, like a transaction, and starts by checking the identity token.
// Every script gets KEYS = ident, data, digest, meta, areas (then its own), ARGV[1] = the token
// this instance opened with. Keys not passed in KEYS are built from KEYS[5]'s hash tag, so they
// are in the same cluster slot as the declared ones. The digest arithmetic is the one of
// src/storage/digest.ts: four 32-bit lanes of SHA-1("<key bytes>:" key value), summed mod 2^32.

const PRELUDE = `
local tok = redis.call('GET', KEYS[1])
if tok ~= ARGV[1] then
  return redis.error_reply('RPLOST ' .. (tok and 'foreign' or 'gone'))
end
local M = 4294967296
local function lanes(h)
  return tonumber(string.sub(h, 1, 8), 16), tonumber(string.sub(h, 9, 16), 16),
    tonumber(string.sub(h, 17, 24), 16), tonumber(string.sub(h, 25, 32), 16)
end
local function dread()
  local s = redis.call('GET', KEYS[3])
  if not s then return nil end
  local n, h = string.match(s, '^(%d+) (%x+)$')
  if not n or #h ~= 32 then return nil end
  local a, b, c, d = lanes(h)
  return { tonumber(n), a, b, c, d }
end
local HK = string.sub(KEYS[5], 1, #KEYS[5] - #':areas') .. ':h'
local function dadd(dg, h, sign)
  local a, b, c, d = lanes(h)
  dg[2] = (dg[2] + sign * a) % M
  dg[3] = (dg[3] + sign * b) % M
  dg[4] = (dg[4] + sign * c) % M
  dg[5] = (dg[5] + sign * d) % M
  dg[1] = dg[1] + sign
end
local function dwrite(dg)
  redis.call('SET', KEYS[3], string.format('%d %08x%08x%08x%08x', dg[1], dg[2], dg[3], dg[4], dg[5]))
end
local function hashOrNone(key)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'hash' and t ~= 'none' then
    return redis.error_reply('ERR ' .. key .. ' is a ' .. t .. ', not a hash: something else wrote under the prefix')
  end
end
`;

/**
 * Sets (v) or deletes (v == false) a visible key, keeping the digest `dg` when there is one.
 * The entry hash of every visible key is kept beside it (the hash HK): the old entry is
 * subtracted from its kept hash (no old value read, nothing hashed), the new one added from `h`
 * (computed by the client, 32 hex digits) or, when `h` is nil, hashed here.
 */
const SET_VISIBLE = `
local function setVisible(dg, f, v, h)
  if dg then
    local old = redis.call('HGET', HK, f)
    if old then dadd(dg, old, -1) end
    if v then
      h = h or string.sub(redis.sha1hex(#f .. ':' .. f .. v), 1, 32)
      dadd(dg, h, 1)
      redis.call('HSET', HK, f, h)
    elseif old then
      redis.call('HDEL', HK, f)
    end
  end
  if v then redis.call('HSET', KEYS[2], f, v) else redis.call('HDEL', KEYS[2], f) end
end
`;

/** Drops the areas listed in KEYS[5] (the areas set), and the set. */
const RELEASE_AREAS_BODY = `
local base = string.sub(KEYS[5], 1, #KEYS[5] - #':areas')
local ids = redis.call('SMEMBERS', KEYS[5])
for i = 1, #ids do
  redis.call('UNLINK', base .. ':a:' .. ids[i], base .. ':t:' .. ids[i])
end
redis.call('UNLINK', KEYS[5])
`;

const EMPTY_DIGEST = '0 00000000000000000000000000000000';

interface Script {
  readonly lua: string;
  readonly sha: string;
}

function defineScript(body: string): Script {
  const lua = PRELUDE + body;
  return { lua, sha: createHash('sha1').update(lua).digest('hex') };
}

const SCRIPTS = {
  /** → value or nil. ARGV[2] = field. */
  get: defineScript(`return redis.call('HGET', KEYS[2], ARGV[2])`),
  /** → every field. */
  keys: defineScript(`return redis.call('HKEYS', KEYS[2])`),
  /** → meta or nil. */
  readMeta: defineScript(`return redis.call('GET', KEYS[4])`),
  /** → { visible key count, digest record or nil, meta or nil }. */
  state: defineScript(
    `return { redis.call('HLEN', KEYS[2]), redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4]) }`,
  ),
  /**
   * Direct writes. ARGV[2..]: 'p', field, value | 'd', field, in call order. They make the
   * digest unrecorded (the primary's writes are checked against the relay, not the store).
   */
  apply: defineScript(`
local bad = hashOrNone(KEYS[2]) if bad then return bad end
redis.call('DEL', KEYS[3])
redis.call('UNLINK', HK)
local i = 2
while i <= #ARGV do
  if ARGV[i] == 'p' then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
    i = i + 2
  end
end
return 0`),
  /**
   * ARGV[2] = meta, ARGV[3] = number of puts, then field, value, entry hash (32 hex digits,
   * src/storage/digest.ts) per put, then deleted fields.
   */
  commit: defineScript(`${SET_VISIBLE}
local bad = hashOrNone(KEYS[2]) if bad then return bad end
local dg = dread()
local n = tonumber(ARGV[3])
-- Puts in chunks: one HMGET of the kept hashes, one HSET of them, one HSET of the values.
local j = 1
while j <= n do
  local last = math.min(n, j + 499)
  local fs, kv, hv = {}, {}, {}
  for q = j, last do
    local i = 4 + (q - 1) * 3
    fs[#fs + 1] = ARGV[i]
    kv[#kv + 1] = ARGV[i]
    kv[#kv + 1] = ARGV[i + 1]
    hv[#hv + 1] = ARGV[i]
    hv[#hv + 1] = ARGV[i + 2]
  end
  if dg then
    local olds = redis.call('HMGET', HK, unpack(fs))
    for q = 1, #fs do
      if olds[q] then dadd(dg, olds[q], -1) end
      dadd(dg, hv[2 * q], 1)
    end
    redis.call('HSET', HK, unpack(hv))
  end
  redis.call('HSET', KEYS[2], unpack(kv))
  j = last + 1
end
for q = 4 + n * 3, #ARGV do setVisible(dg, ARGV[q], false, nil) end
redis.call('SET', KEYS[4], ARGV[2])
if dg then dwrite(dg) end
return 0`),
  /** KEYS[6], KEYS[7]: the area's puts and tombstones. ARGV[2] = area, ARGV[3] = number of puts, puts, deletes. */
  writeArea: defineScript(`
local bad = hashOrNone(KEYS[6]) if bad then return bad end
redis.call('SADD', KEYS[5], ARGV[2])
local i = 4
for j = 1, tonumber(ARGV[3]) do
  redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1])
  redis.call('SREM', KEYS[7], ARGV[i])
  i = i + 2
end
for j = i, #ARGV do
  redis.call('HDEL', KEYS[6], ARGV[j])
  redis.call('SADD', KEYS[7], ARGV[j])
end
return 0`),
  /**
   * KEYS[6], KEYS[7]: the area's puts and tombstones. ARGV[2] = area, ARGV[3] = meta. Applies
   * the area to the data (digest kept), sets the meta, drops the area and any area below it
   * (those checkpoints were formed, so what is left of them is garbage).
   */
  formSnapshot: defineScript(`${SET_VISIBLE}
local bad = hashOrNone(KEYS[2]) if bad then return bad end
local dg = dread()
local fields = redis.call('HKEYS', KEYS[6])
for i = 1, #fields do
  setVisible(dg, fields[i], redis.call('HGET', KEYS[6], fields[i]), nil)
end
local gone = redis.call('SMEMBERS', KEYS[7])
for i = 1, #gone do setVisible(dg, gone[i], false, nil) end
redis.call('SET', KEYS[4], ARGV[3])
if dg then dwrite(dg) end
redis.call('UNLINK', KEYS[6], KEYS[7])
redis.call('SREM', KEYS[5], ARGV[2])
local base = string.sub(KEYS[5], 1, #KEYS[5] - #':areas')
local area = tonumber(ARGV[2])
local ids = redis.call('SMEMBERS', KEYS[5])
for i = 1, #ids do
  if tonumber(ids[i]) < area then
    redis.call('UNLINK', base .. ':a:' .. ids[i], base .. ':t:' .. ids[i])
    redis.call('SREM', KEYS[5], ids[i])
  end
end
return #fields + #gone`),
  /** → the number of areas dropped. */
  releaseAreas: defineScript(`${RELEASE_AREAS_BODY}
return #ids`),
  /** Drops data, meta and areas; the digest becomes the empty store's; format and token stay. */
  clear: defineScript(`${RELEASE_AREAS_BODY}
redis.call('UNLINK', KEYS[2], KEYS[4], HK)
redis.call('SET', KEYS[3], '${EMPTY_DIGEST}')
return #ids`),
};

/** KEYS: format key. ARGV: this version's format. Sets it when missing; returns what is there. */
const CLAIM_FORMAT = `
local found = redis.call('GET', KEYS[1])
if found then return found end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`;

/**
 * KEYS: ident, data, digest, meta, areas. ARGV: a new token. Returns { how, token }: the token
 * found ('found'), or the new one, set on an empty store with an empty digest ('new') or on a
 * store with content but no token, an older version's, with no digest ('adopted').
 */
const CLAIM_IDENT = `
local HK = string.sub(KEYS[5], 1, #KEYS[5] - #':areas') .. ':h'
local tok = redis.call('GET', KEYS[1])
if tok then
  -- A store of an earlier build kept no entry hashes beside its data: its digest cannot be
  -- kept from here on, so it becomes unrecorded (until the next clear()).
  if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('HLEN', KEYS[2]) > 0 and redis.call('EXISTS', HK) == 0 then
    redis.call('DEL', KEYS[3])
  end
  return { 'found', tok }
end
redis.call('SET', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2], KEYS[4], KEYS[5]) == 0 then
  redis.call('SET', KEYS[3], '${EMPTY_DIGEST}')
  return { 'new', ARGV[1] }
end
redis.call('DEL', KEYS[3])
redis.call('UNLINK', HK)
return { 'adopted', ARGV[1] }
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

/** The entry hash of `key` holding `value` (src/storage/digest.ts, SHA-1), as the script keeps it: 32 hex digits. */
function entryHex(key: string, value: Uint8Array): string {
  const k = Buffer.from(key, 'utf8');
  return createHash('sha1').update(`${k.length}:`).update(k).update(value).digest('hex').slice(0, 32);
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
  on(event: 'end', listener: () => void): unknown;
  eval(script: string, numKeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
  evalsha(sha: string, numKeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
  evalshaBuffer(sha: string, numKeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
  hscanBuffer(key: string, cursor: string, ...args: (string | number)[]): Promise<unknown>;
  script(subcommand: 'LOAD', script: string): Promise<unknown>;
}

type RedisClass = new (url: string, options: Record<string, unknown>) => Client;

function isClient(c: unknown): c is Client {
  if (typeof c !== 'object' || c === null) return false;
  const methods = ['evalsha', 'evalshaBuffer', 'hscanBuffer', 'eval', 'script', 'connect'] as const;
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

/**
 * Connects (or takes the given client), checks the store's format marker, loads the scripts,
 * and claims the identity token: the first time (`expected` undefined) it takes the token found
 * or sets a new one; on a reconnect it requires the one this instance opened with.
 */
async function openClient(
  o: Options,
  k: KeyNames,
  where: string,
  isClosed: () => boolean,
  expected: StoreIdentity | undefined,
  nodeId: string | undefined,
): Promise<{ c: Client; id: StoreIdentity }> {
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
    c = new Redis(o.url, {
      // connect() below then rejects on failure instead of retrying out of sight.
      lazyConnect: true,
      // Never reconnect behind the caller's back, never queue while disconnected, never resend
      // a command cut off by a lost connection to whatever server answers next: the calls in
      // flight reject (retryable), the next call connects anew and checks the identity token.
      retryStrategy: () => null,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      commandTimeout: o.commandTimeout,
      connectTimeout: o.connectTimeout,
    });
    let lastError: Error | undefined;
    // Without a listener ioredis prints every connection error; failures reach callers as rejections.
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
    for (const s of Object.values(SCRIPTS)) await c.script('LOAD', s.lua);
    let id: StoreIdentity;
    if (expected !== undefined) {
      // A reconnect: the scripts check the token on every call; check it once now too, so an
      // emptied server is reported by the call that reconnected.
      await c.evalsha(
        SCRIPTS.state.sha,
        5,
        k.ident,
        k.data,
        k.digest,
        k.meta,
        k.areas,
        encodeIdentity(expected),
      );
      id = expected;
    } else {
      const fresh = newIdentity(REDIS_STORE_FORMAT, nodeId);
      const [, tok] = (await c.eval(
        CLAIM_IDENT,
        5,
        k.ident,
        k.data,
        k.digest,
        k.meta,
        k.areas,
        encodeIdentity(fresh),
      )) as [string, string];
      const decoded = decodeIdentity(tok);
      if (decoded === undefined) throw storeLost(`redis ${where}`, `${k.ident} holds no identity token`);
      const foreign = foreignAtOpen(decoded, REDIS_STORE_FORMAT, nodeId);
      if (foreign !== undefined) throw storeLost(`redis ${where}`, foreign);
      // Compared as stored text from now on: re-encode only what this build wrote the same way.
      if (encodeIdentity(decoded) !== tok)
        throw storeLost(`redis ${where}`, `${k.ident} holds a token this build does not write`);
      id = decoded;
    }
    if (isClosed()) throw new ClosedError(`the redis store ${where} is closed`);
    return { c, id };
  } catch (err) {
    if (own) c.disconnect();
    throw storageError(where, err, expected);
  }
}

/** Reply errors that retrying unchanged will not fix; everything else (connection, LOADING, OOM…) may pass. */
const PERMANENT_REPLY = /^(ERR|WRONGTYPE|NOPERM|WRONGPASS|NOAUTH|EXECABORT)\b/;

function isNoScript(err: unknown): boolean {
  return err instanceof Error && /^NOSCRIPT\b/.test(err.message);
}

function isTimeout(err: unknown): boolean {
  return err instanceof Error && /timed out/i.test(err.message);
}

/**
 * Our own errors pass through; a script's `RPLOST` is a `StoreLostError`; other client and
 * server errors become `StorageError`s naming the store.
 */
function storageError(where: string, err: unknown, expected?: StoreIdentity): Error {
  if (err instanceof RestartpointError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const rplost = /^RPLOST (\w+)/.exec(message);
  if (rplost !== null) {
    const why =
      rplost[1] === 'gone'
        ? `its identity token is gone: the server was flushed or restarted empty, or the prefix was deleted underneath the adapter`
        : `its identity token changed${expected === undefined ? '' : ` (this adapter opened store ${expected.storeId})`}: the adapter now reaches another store`;
    return storeLost(`redis ${where}`, why, err);
  }
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

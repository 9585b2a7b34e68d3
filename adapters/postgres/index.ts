/**
 * A durable storage adapter on PostgreSQL, through the `pg` client (loaded when the adapter is
 * opened, so that `pg` stays an optional peer dependency). Implements snapshot mode.
 *
 * Each node has its own table (`opts.table`, default `restartpoint_store`) and two small
 * companions, `<table>_meta` and `<table>_schema`, all created on first use. The schema and the
 * statements are in ./sql.ts; docs/adapters-postgres.md has the layout, the atomicity argument
 * and performance notes.
 *
 * - `commit` is one transaction: it locks and rewrites the meta row first, then writes the
 *   collapsed ops in multi-row statements, then commits. Postgres makes it all-or-nothing: a
 *   client killed mid-commit leaves an open transaction that the server rolls back when the
 *   connection drops. Readers (each read is one statement) see the old or the new store.
 * - Snapshot mode is redirect-on-write in the same table: rows carry an `area`; areas above the
 *   last formed snapshot are invisible. `formSnapshot` is one transaction that moves the
 *   `formed` mark and deletes the versions the new snapshot supersedes; no value is copied.
 *   `releaseAreas` deletes everything above the mark.
 * - Mutations run one at a time, in call order (one queue per adapter instance); direct
 *   `put`/`delete` calls queued behind a running one are applied together as one batch. Reads
 *   run at once, on the pool.
 */
import type { Pool, PoolClient } from 'pg';
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
  type StorageAdapter,
  type WriteOp,
} from '../../src/storage/adapter.js';
import {
  chunkRows,
  ensureSchema,
  NAME_RE,
  names,
  writeArea,
  writeVisible,
  type Names,
  type Queryable,
  type Row,
} from './sql.js';

/** Options of `postgresAdapter`. */
export interface PostgresAdapterOptions {
  /**
   * Where the database is: `postgres://user:password@host:5432/db` (or `postgresql://`; a Unix
   * socket as `postgres:///db?host=/var/run/postgresql`). Required unless `pool` is given.
   */
  readonly connectionString?: string;
  /**
   * Name of this node's table (default `restartpoint_store`): `[a-z_][a-z0-9_]{0,40}`. Every
   * node needs its own. The adapter also uses `<table>_meta`, `<table>_schema` and the index
   * `<table>_area_idx`; it refuses a name whose table exists but is not a restartpoint store.
   */
  readonly table?: string;
  /** The `pg` module to use instead of `import('pg')` (any object with a `Pool` class). */
  readonly lib?: unknown;
  /**
   * An existing `pg.Pool` to run on instead of creating one. The adapter never ends it (its
   * owner does), and `connectionString` and `lib` are then not needed.
   */
  readonly pool?: unknown;
}

/** Default of `PostgresAdapterOptions.table`. */
export const DEFAULT_POSTGRES_TABLE = 'restartpoint_store';

/**
 * Creates a store in the PostgreSQL table `opts.table`. Throws `ConfigError` naming the option
 * for a missing or malformed one; `open()` (or the first call) connects, creates the tables if
 * needed, and rejects with `ConfigError` when `pg` cannot be loaded and `StorageError` when the
 * database cannot be reached or holds a newer schema.
 *
 * Contract, beyond `StorageAdapter`: `capabilities` is `{ durable: true, snapshot: true }`;
 * `commit`, `formSnapshot`, `releaseAreas` and `clear` are each one transaction, atomic against
 * a crash of this process at any instant (and durable as the server's `synchronous_commit`
 * makes them: on by default); reads running beside them see all of it or none. Mutating calls
 * run one at a time in call order; reads run at once. `put` copies its value before returning;
 * buffers passed to `commit`, `apply` and `writeArea` must not change until the call settles. One
 * adapter instance (in any process) per table at a time. Errors from the database are
 * `StorageError`s, `retryable` when the connection failed (then a `commit` may or may not have
 * happened; committing the same batch again is safe).
 */
export function postgresAdapter(opts: PostgresAdapterOptions): StorageAdapter {
  const o = checkOptions(opts);
  const n = names(o.table);
  let pool: Pool | undefined;
  let opening: Promise<Pool> | undefined;
  let closed = false;
  let tail: Promise<unknown> = Promise.resolve();
  // Direct writes waiting in the queue; later ones join it until it starts.
  let batch: DirectBatch | undefined;

  function assertOpen(): void {
    if (closed) throw new ClosedError(`the postgres store ${o.where} is closed`);
  }

  /** Connects and checks the schema once; a failure is not cached, the next call tries again. */
  function ready(): Promise<Pool> {
    assertOpen();
    return connected();
  }

  /** `ready()` without the closed check: mutations queued before `close()` still run. */
  function connected(): Promise<Pool> {
    if (pool !== undefined) return Promise.resolve(pool);
    opening ??= (async () => {
      const p = o.pool ?? (await createPool(o));
      try {
        await inTransaction(p, (c) => ensureSchema(c, n, o.where));
      } catch (err) {
        if (o.pool === undefined) await p.end().catch(() => undefined);
        throw err;
      }
      pool = p;
      return p;
    })().finally(() => {
      opening = undefined;
    });
    return opening.catch((err: unknown) => {
      throw storageError(o.where, err);
    });
  }

  /** Runs `fn` after every earlier mutation. */
  function mutate<T>(fn: (p: Pool) => Promise<T>): Promise<T> {
    batch = undefined; // a direct write after this call must not overtake it
    const run = tail.then(async () => fn(await connected()));
    tail = run.catch(() => undefined);
    return run.catch((err: unknown) => {
      throw storageError(o.where, err);
    });
  }

  async function formedNow(p: Pool): Promise<number> {
    return formedOf((await p.query(`SELECT formed FROM ${n.meta} WHERE id = 1`)).rows, o.where);
  }

  /** Queues a direct write, joining the batch still waiting at the end of the queue if any. */
  function direct(key: string, value: Buffer | null): Promise<void> {
    if (batch === undefined || batch.ops.size >= BATCH_OPS || batch.bytes >= BATCH_BYTES) {
      const b: DirectBatch = { ops: new Map(), bytes: 0, done: Promise.resolve() };
      b.done = mutate(async (p) => {
        if (batch === b) batch = undefined; // started: later writes form a new batch
        await applyDirect(
          p,
          n,
          o.where,
          [...b.ops].map(([key, value]) => [Buffer.from(key, 'utf8'), value]),
        );
      });
      batch = b;
    }
    const b = batch;
    // Map order is first-insertion order, fine: a batch's keys are distinct, so order is moot.
    b.ops.set(key, value);
    b.bytes += key.length + (value?.length ?? 0);
    return b.done;
  }

  return {
    kind: 'postgres',
    capabilities: { durable: true, snapshot: true },

    async open() {
      await ready();
    },

    async get(key) {
      assertOpen();
      assertValidKey(key);
      const p = await ready();
      const r = await run(o.where, () =>
        p.query(
          `SELECT value FROM ${n.data} WHERE key = $1 AND area <= (SELECT formed FROM ${n.meta} WHERE id = 1)
           ORDER BY area DESC LIMIT 1`,
          [Buffer.from(key, 'utf8')],
        ),
      );
      const value = r.rows[0]?.value as Buffer | null | undefined;
      return value === null || value === undefined ? undefined : owned(value);
    },

    async put(key, value) {
      assertOpen();
      assertValidKey(key);
      assertValidValue(value);
      // Copied now: the caller may reuse its buffer as soon as this returns, and a batch waits.
      await direct(key, Buffer.from(value));
    },

    async delete(key) {
      assertOpen();
      assertValidKey(key);
      await direct(key, null);
    },

    async apply(ops) {
      assertOpen();
      assertValidOps(ops);
      // Collapsed now, sent while this call runs: the values need no copy.
      const rows = collapse(ops);
      await mutate((p) => applyDirect(p, n, o.where, rows));
    },

    async keys() {
      assertOpen();
      const p = await ready();
      const r = await run(o.where, () =>
        p.query(
          `SELECT key FROM ${n.data}
           WHERE area <= (SELECT formed FROM ${n.meta} WHERE id = 1) AND value IS NOT NULL`,
        ),
      );
      // By UTF-16 code unit, as the contract says: not the database's collation, not byte order.
      return r.rows.map((row: { key: Buffer }) => row.key.toString('utf8')).sort();
    },

    async commit(ops, meta) {
      assertOpen();
      // Everything is checked before the first statement: a bad batch leaves no trace.
      assertValidOps(ops);
      assertValidValue(meta);
      const rows = collapse(ops);
      await mutate((p) =>
        inTransaction(p, async (c) => {
          // Locks the meta row first: it serializes this with every other transactional write.
          const r = await c.query(`UPDATE ${n.meta} SET meta = $1 WHERE id = 1 RETURNING formed`, [
            view(meta),
          ]);
          await writeVisible(c, n, rows, formedOf(r.rows, o.where));
        }),
      );
    },

    async readMeta() {
      assertOpen();
      const p = await ready();
      const r = await run(o.where, () => p.query(`SELECT meta FROM ${n.meta} WHERE id = 1`));
      const meta = r.rows[0]?.meta as Buffer | null | undefined;
      return meta === null || meta === undefined ? undefined : owned(meta);
    },

    async clear() {
      assertOpen();
      await mutate((p) =>
        inTransaction(p, async (c) => {
          await c.query(`TRUNCATE ${n.data}`);
          await c.query(`UPDATE ${n.meta} SET formed = 0, meta = NULL WHERE id = 1`);
        }),
      );
    },

    async close() {
      if (closed) return;
      closed = true;
      // Let queued mutations finish: a caller that did not await a put still expects it done.
      await tail;
      await opening?.catch(() => undefined);
      if (pool !== undefined && o.pool === undefined) await pool.end();
      pool = undefined;
    },

    async writeArea(area, ops) {
      assertOpen();
      assertArea('writeArea', area);
      assertValidOps(ops);
      const rows = collapse(ops);
      await mutate(async (p) => {
        let written: boolean;
        if (rows.length === 0) written = (await formedNow(p)) < area;
        else if (chunkRows(rows).length === 1) written = await writeArea(p, n, area, rows);
        else {
          // Several statements: one transaction, so that a refused area leaves no partial write.
          written = await inTransaction(p, async (c) => {
            if (!(await writeArea(c, n, area, rows))) throw new AreaRefused();
            return true;
          }).catch((err: unknown) => {
            if (err instanceof AreaRefused) return false;
            throw err;
          });
        }
        if (!written) {
          throw new InvalidArgumentError(
            `writeArea(${area}): the area must be above the last formed snapshot, which is ${await formedNow(p)}`,
          );
        }
      });
    },

    async formSnapshot(area, meta) {
      assertOpen();
      assertArea('formSnapshot', area);
      assertValidValue(meta);
      await mutate((p) =>
        inTransaction(p, async (c) => {
          const r = await c.query(`SELECT formed FROM ${n.meta} WHERE id = 1 FOR UPDATE`);
          const formed = formedOf(r.rows, o.where);
          if (area <= formed) {
            throw new InvalidArgumentError(
              `formSnapshot(${area}): the area must be above the last formed snapshot, which is ${formed}`,
            );
          }
          const skipped = await c.query(
            `SELECT min(area) AS area FROM ${n.data} WHERE area > 0 AND area > ${formed} AND area < ${area}`,
          );
          const below: unknown = skipped.rows[0]?.area;
          if (below !== null && below !== undefined) {
            throw new InvalidArgumentError(
              `formSnapshot(${area}): area ${String(below)} below it holds writes and was never formed; form it first or releaseAreas()`,
            );
          }
          await c.query(`UPDATE ${n.meta} SET formed = ${area}, meta = $1 WHERE id = 1`, [view(meta)]);
          // Reclaim: the versions the new snapshot supersedes, then its tombstones (which now
          // shadow nothing). What stays is one visible row per key: the invariant of ./sql.ts.
          await c.query(
            `DELETE FROM ${n.data} AS old USING ${n.data} AS new
             WHERE new.area = ${area} AND new.area > 0 AND old.key = new.key AND old.area < ${area}`,
          );
          await c.query(`DELETE FROM ${n.data} WHERE area = ${area} AND area > 0 AND value IS NULL`);
        }),
      );
    },

    async releaseAreas() {
      assertOpen();
      await mutate(async (p) => {
        // One statement: atomic on its own, and the formed mark is read in its snapshot.
        await p.query(
          `DELETE FROM ${n.data} WHERE area > 0 AND area > (SELECT formed FROM ${n.meta} WHERE id = 1)`,
        );
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Options and loading

interface Options {
  readonly table: string;
  readonly connectionString: string | undefined;
  readonly lib: unknown;
  readonly pool: Pool | undefined;
  /** The store, for messages: table and database, password left out. */
  readonly where: string;
}

function checkOptions(opts: PostgresAdapterOptions): Options {
  if (typeof opts !== 'object' || opts === null) {
    throw new ConfigError(
      'storage',
      'must be an object like postgresAdapter({ connectionString: "postgres://..." })',
    );
  }
  const table: unknown = opts.table ?? DEFAULT_POSTGRES_TABLE;
  if (typeof table !== 'string' || !NAME_RE.test(table)) {
    throw new ConfigError(
      'storage.table',
      `must match ${String(NAME_RE)} (lower-case letters, digits and _, at most 41 characters, not starting with a digit), got ${show(table)}`,
    );
  }
  const pool: unknown = opts.pool;
  if (pool !== undefined && !isPoolLike(pool)) {
    throw new ConfigError(
      'storage.pool',
      `must be a pg.Pool (an object with query() and connect()), got ${show(pool)}`,
    );
  }
  const cs: unknown = opts.connectionString;
  if (pool === undefined || cs !== undefined) {
    if (typeof cs !== 'string' || !/^postgres(ql)?:\/\//i.test(cs)) {
      throw new ConfigError(
        'storage.connectionString',
        `must be a URL like "postgres://user@127.0.0.1:5432/db" (or pass 'storage.pool'), got ${show(cs === undefined ? cs : redact(String(cs)))}`,
      );
    }
  }
  const lib: unknown = opts.lib;
  if (lib !== undefined && pgPool(lib) === undefined) {
    throw new ConfigError(
      'storage.lib',
      `must be the 'pg' module (an object with a Pool class), got ${show(lib)}`,
    );
  }
  const connectionString = typeof cs === 'string' ? cs : undefined;
  const at = connectionString === undefined ? 'a caller-provided pool' : redact(connectionString);
  return { table, connectionString, lib, pool: pool as Pool | undefined, where: `"${table}" at ${at}` };
}

function isPoolLike(v: unknown): boolean {
  const p = v as { query?: unknown; connect?: unknown } | null;
  return (
    typeof p === 'object' && p !== null && typeof p.query === 'function' && typeof p.connect === 'function'
  );
}

type PoolClass = new (config: Record<string, unknown>) => Pool;

/** The `Pool` class of a `pg` module, given as its namespace or as its default export. */
function pgPool(lib: unknown): PoolClass | undefined {
  const m = lib as { Pool?: unknown; default?: { Pool?: unknown } } | null;
  if (typeof m !== 'object' || m === null) return undefined;
  const Pool = m.Pool ?? m.default?.Pool;
  return typeof Pool === 'function' ? (Pool as PoolClass) : undefined;
}

async function createPool(o: Options): Promise<Pool> {
  let lib = o.lib;
  if (lib === undefined) {
    try {
      lib = await import('pg');
    } catch (err) {
      throw new ConfigError(
        'storage.lib',
        `is not set and 'pg' cannot be imported: the postgres adapter needs the 'pg' package: npm install pg`,
        { cause: err },
      );
    }
  }
  const PoolClass = pgPool(lib);
  if (PoolClass === undefined) {
    throw new ConfigError(
      'storage.lib',
      `the imported 'pg' module has no Pool class; the postgres adapter needs pg 8: npm install pg`,
    );
  }
  const pool = new PoolClass({
    connectionString: o.connectionString,
    application_name: 'restartpoint',
    keepAlive: true,
    // A client that dies inside a transaction (its host gone, not just its process) would keep
    // the meta row locked until TCP gave up, hours later, stalling the node that replaces it.
    // Our transactions never wait on the client between statements for anything like this long.
    idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_MS,
  });
  // An idle connection that dies (server restart) is reported here; without a listener Node
  // would crash the process. The next query opens a new connection and reports its own failure.
  pool.on('error', () => undefined);
  return pool;
}

// ---------------------------------------------------------------------------------------------
// Writing

/** The server ends a session of ours idle inside a transaction for this long (see createPool). */
const IDLE_IN_TRANSACTION_MS = 60_000;

/** Direct writes applied as one batch: key → value (`null`: delete). */
interface DirectBatch {
  readonly ops: Map<string, Buffer | null>;
  bytes: number;
  done: Promise<void>;
}

/** A batch of direct writes waiting in the queue takes at most this many keys / bytes. */
const BATCH_OPS = 10_000;
const BATCH_BYTES = 32 * 1024 * 1024;

/** Writes `rows` (distinct keys) as visible data: one statement for one row, else one transaction. */
async function applyDirect(p: Pool, n: Names, where: string, rows: readonly Row[]): Promise<void> {
  if (rows.length === 1) {
    // The common case, one round trip: a single statement reads the formed mark in its own
    // snapshot, drops older visible versions and writes the key at the mark (or drops it).
    const [key, value] = rows[0]!;
    if (value === null) {
      await p.query(
        `DELETE FROM ${n.data} WHERE key = $1 AND area <= (SELECT formed FROM ${n.meta} WHERE id = 1)`,
        [key],
      );
    } else {
      await p.query(
        `WITH f AS (SELECT formed FROM ${n.meta} WHERE id = 1),
              older AS (DELETE FROM ${n.data} AS d USING f WHERE d.key = $1::bytea AND d.area < f.formed)
         INSERT INTO ${n.data} (key, area, value) SELECT $1::bytea, f.formed, $2::bytea FROM f
         ON CONFLICT (key, area) DO UPDATE SET value = EXCLUDED.value`,
        [key, value],
      );
    }
    return;
  }
  if (rows.length === 0) return;
  await inTransaction(p, async (c) => {
    // FOR SHARE keeps the mark still until this commits (each statement of a READ COMMITTED
    // transaction takes a new snapshot); it does not block readers.
    const r = await c.query(`SELECT formed FROM ${n.meta} WHERE id = 1 FOR SHARE`);
    await writeVisible(c, n, rows, formedOf(r.rows, where));
  });
}

/** The net effect of `ops` per key, in first-seen key order: the last op on a key wins. */
function collapse(ops: readonly WriteOp[]): Row[] {
  const last = new Map<string, Uint8Array | null>();
  for (const op of ops) {
    // Deleting and re-adding moves nothing: Map keeps a key's first position, order is moot.
    last.set(op.key, op.op === 'put' ? op.value : null);
  }
  return [...last].map(([key, value]) => [Buffer.from(key, 'utf8'), value === null ? null : view(value)]);
}

/** Runs `fn` in a transaction on one pooled connection; rolls back if it throws. */
async function inTransaction<T>(p: Pool, fn: (c: PoolClient & Queryable) => Promise<T>): Promise<T> {
  const c = await p.connect();
  let broken: Error | undefined;
  try {
    await c.query('BEGIN');
    const out = await fn(c as PoolClient & Queryable);
    await c.query('COMMIT');
    return out;
  } catch (err) {
    // A connection that cannot roll back is broken: the pool must not hand it out again (the
    // server rolls the transaction back when it goes).
    await c.query('ROLLBACK').catch((e: unknown) => {
      broken = e instanceof Error ? e : new Error(String(e));
    });
    throw err;
  } finally {
    c.release(broken);
  }
}

function formedOf(rows: any[], where: string): number {
  const formed: unknown = rows[0]?.formed;
  // bigint arrives as a string; areas are checkpoint numbers, far below 2^53.
  const value = typeof formed === 'string' || typeof formed === 'number' ? Number(formed) : NaN;
  if (!Number.isSafeInteger(value))
    throw new StorageError(`postgres store ${where}: the meta row is missing or damaged`);
  return value;
}

function assertArea(what: string, area: unknown): asserts area is number {
  if (typeof area !== 'number' || !Number.isSafeInteger(area) || area < 1) {
    throw new InvalidArgumentError(
      `${what}: the area must be a positive integer (a checkpoint number), got ${show(area)}`,
    );
  }
}

/** Thrown inside a transaction to roll it back when the area check fails. */
class AreaRefused extends Error {}

// ---------------------------------------------------------------------------------------------
// Helpers

/** A Buffer over the same memory (no copy), as `pg` sends Buffers as binary parameters. */
function view(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** A plain Uint8Array the caller owns: no copy when `b` alone spans its memory. */
function owned(b: Buffer): Uint8Array {
  if (b.byteOffset === 0 && b.buffer.byteLength === b.length) return new Uint8Array(b.buffer, 0, b.length);
  return new Uint8Array(b);
}

async function run<T>(where: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw storageError(where, err);
  }
}

/** SQLSTATE classes and codes after which the same call may succeed later, unchanged. */
const RETRYABLE_SQLSTATE = /^(08|53|57P0[123]|40001|40P01|55P03)/;
const RETRYABLE_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
]);

/** Our own errors pass through; driver and server errors become `StorageError`s naming the store. */
function storageError(where: string, err: unknown): Error {
  if (err instanceof RestartpointError) return err;
  const code = (err as { code?: unknown } | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  const retryable =
    (typeof code === 'string' && (RETRYABLE_SQLSTATE.test(code) || RETRYABLE_ERRNO.has(code))) ||
    /connection terminated|terminating connection|timeout/i.test(message);
  return new StorageError(
    `postgres store ${where}: ${message}${typeof code === 'string' ? ` (${code})` : ''}`,
    {
      cause: err,
      retryable,
    },
  );
}

/** The connection string without its password. */
function redact(cs: string): string {
  try {
    const u = new URL(cs);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '<unparsable connection string>';
  }
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v);
  if (typeof v === 'object' && v !== null) return v.constructor?.name ?? 'object';
  return String(v);
}

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
 * - Mutations run one at a time, in call order, on one **writer session** that holds a
 *   session-level advisory lock on the table name (the owner lock). A new instance waits for
 *   that lock, so the session of a killed predecessor has ended on the server, and nothing it
 *   sent (a COMMIT already on the wire, say) can still land, before `open()` resolves. It also
 *   keeps two processes from writing one table. Direct `put`/`delete` calls queued behind a
 *   running mutation are applied together as one batch. Reads run at once, on other pooled
 *   connections.
 */
import type { Pool, PoolClient } from 'pg';
import {
  ClosedError,
  ConfigError,
  InvalidArgumentError,
  RestartpointError,
  StorageError,
  StoreLostError,
} from '../../src/errors.js';
import {
  assertValidArea,
  assertValidKey,
  assertValidOps,
  assertValidValue,
  type StorageAdapter,
  type StoreIdentity,
  type VerifyResult,
  type WriteOp,
} from '../../src/storage/adapter.js';
import {
  addEntry,
  combineDigest,
  decodeDigest,
  digestFromTotals,
  emptyDigest,
  encodeDigest,
  lanesOf,
  removeEntry,
  type Digest,
} from '../../src/storage/digest.js';
import {
  decodeIdentity,
  encodeIdentity,
  foreignAtOpen,
  newIdentity,
  storeLost,
  tokenProblem,
  verifyResult,
} from '../../src/storage/identity.js';
import {
  chunkRows,
  digestTotalsSql,
  ensureSchema,
  entryHash,
  NAME_RE,
  names,
  writeArea,
  writeVisible,
  writeVisibleOnce,
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
  /**
   * Milliseconds a statement of the writer session may run before the server cancels it
   * (`statement_timeout`, SQLSTATE 57014; default 30 000). The transaction is rolled back: no
   * partial commit. The call rejects with a retryable `StorageError`.
   */
  readonly statementTimeout?: number;
  /**
   * Milliseconds the client waits for any query's reply before giving up on it (`pg`'s
   * `query_timeout`; default `statementTimeout` + 5 000): the bound on a server or network that
   * stopped answering. The connection is then dropped (the server rolls back an open
   * transaction) and the call rejects with a retryable `StorageError`. Only for the pool the
   * adapter creates; a passed `pool` keeps its own.
   */
  readonly queryTimeout?: number;
  /** Milliseconds a new connection may take (`connectionTimeoutMillis`; default 5 000). Adapter-made pool only. */
  readonly connectionTimeout?: number;
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
 * buffers passed to `commit`, `apply` and `writeArea` must not change until the call settles.
 * One adapter instance (in any process) per table at a time: a second one's `open()` waits up
 * to 60 s for the first to close (or its process to die), then rejects with a retryable
 * `StorageError`. A passed `pool` must allow at least 2 connections (one is the writer
 * session). Errors from the database are `StorageError`s, `retryable` when the connection
 * failed (then a `commit` may or may not have happened: the next call reconnects, waiting
 * until the server has settled it, and committing the same batch again is safe).
 */
export function postgresAdapter(opts: PostgresAdapterOptions): StorageAdapter {
  const o = checkOptions(opts);
  const n = names(o.table);
  let pool: Pool | undefined;
  let poolMade: Promise<Pool> | undefined;
  let writer: Writer | undefined;
  let connecting: Promise<Writer> | undefined;
  /** Set once the store was first reached and checked; reads wait for nothing else. */
  let opened: Promise<Pool> | undefined;
  let closed = false;
  /** The token this instance opened with (set by the first writer session). */
  let identity: StoreIdentity | undefined;
  let token = '';
  let nodeId: string | undefined;
  /** Set once the store was found lost: every later call rejects with it. */
  let lost: StoreLostError | undefined;
  /** `reclaim()` runs: the next writer session may put back a meta row that was deleted. */
  let reclaiming = false;
  let tail: Promise<unknown> = Promise.resolve();
  // Direct writes waiting in the queue; later ones join it until it starts.
  let batch: DirectBatch | undefined;

  function assertOpen(): void {
    if (closed) throw new ClosedError(`the postgres store ${o.where} is closed`);
    if (lost !== undefined) throw lost;
  }

  /** `err` as the caller sees it; a `StoreLostError` also marks the adapter lost. */
  function fail(err: unknown): Error {
    const e = storageError(o.where, err);
    if (e instanceof StoreLostError) lost ??= e;
    return e;
  }

  /** A read on a pooled connection. */
  async function read<T>(fn: (p: Pool) => Promise<T>): Promise<T> {
    const p = await ready();
    try {
      return await fn(p);
    } catch (err) {
      throw fail(err);
    }
  }

  /** Throws `StoreLostError` unless `found` (the meta row's ident) is this instance's token. */
  function checkToken(found: unknown, metaRowMissing = false): void {
    if (identity === undefined) return;
    const problem = metaRowMissing
      ? `its meta row (${n.meta}) is gone: the store was wiped underneath the adapter`
      : tokenProblem(typeof found === 'string' ? found : undefined, identity);
    if (problem !== undefined) throw storeLost(`postgres ${o.where}`, problem);
  }

  /** After a write found no meta row holding our token: the `StoreLostError` saying why. */
  async function lostNow(c: Queryable): Promise<StoreLostError> {
    const r = await c.query(`SELECT ident FROM ${n.meta} WHERE id = 1`);
    try {
      checkToken(r.rows[0]?.ident, r.rows.length === 0);
    } catch (err) {
      return err as StoreLostError;
    }
    return storeLost(`postgres ${o.where}`, 'its identity token changed while the write ran');
  }

  function getPool(): Promise<Pool> {
    poolMade ??= (async () => o.pool ?? (await createPool(o)))().catch((err: unknown) => {
      poolMade = undefined;
      throw err;
    });
    return poolMade.then((p) => (pool = p));
  }

  /**
   * The writer session, (re)connected when missing or broken: it takes the store's owner lock,
   * which waits until every earlier writer session of this table (a killed process, our own
   * dropped connection) has ended on the server, so nothing they sent can still land; then it
   * creates or checks the schema.
   */
  function getWriter(): Promise<Writer> {
    if (writer !== undefined && !writer.broken) return Promise.resolve(writer);
    if (writer !== undefined) {
      writer.c.release(true);
      writer = undefined;
    }
    connecting ??= (async () => {
      const p = await getPool();
      const c = await p.connect();
      const w: Writer = { c, broken: false, durableCommit: 'on' };
      // A connection error between statements arrives as an event; without a listener Node
      // would crash the process. The next mutation sees `broken` and reconnects.
      c.on('error', () => {
        w.broken = true;
      });
      try {
        // The writer session only (SET, not startup parameters: poolers in session mode refuse
        // those). A client whose host vanishes inside a transaction would otherwise keep its
        // locks until TCP gave up, hours later, stalling the process that replaces it: the
        // server drops a session idle in a transaction after a minute (ours never idle there),
        // and probes an idle one every few seconds.
        await c.query(
          `SET idle_in_transaction_session_timeout = ${IDLE_IN_TRANSACTION_MS};
           SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3`,
        );
        // Direct writes and area writes need not be durable (the relay is), so they skip the
        // WAL flush; the transactions that must be durable restore the server's own setting.
        // WAL is one sequence: flushing a durable commit flushes every write before it too.
        const sc = (await c.query('SHOW synchronous_commit')).rows[0]?.synchronous_commit as unknown;
        if (typeof sc === 'string' && SYNCHRONOUS_COMMIT.test(sc)) w.durableCommit = sc;
        await c.query(`SET synchronous_commit = off; SET statement_timeout = ${o.statementTimeout}`);
        await takeOwnerLock(c, n, o.where);
        // Every writer session, the first and each reconnect, checks the identity token (the
        // first creates or adopts it) before any write.
        const id = await inTransaction(
          w,
          async (q) => {
            if (reclaiming) await restoreMetaRow(q, n);
            await ensureSchema(q, n, o.where);
            return claimIdentity(q, n, o.where, identity, nodeId);
          },
          true,
        );
        if (identity === undefined) {
          identity = id;
          token = encodeIdentity(id);
        }
      } catch (err) {
        c.release(true);
        throw err;
      }
      writer = w;
      return w;
    })().finally(() => {
      connecting = undefined;
    });
    return connecting;
  }

  /** The pool for reads, once the store was reached and checked a first time. */
  function ready(): Promise<Pool> {
    assertOpen();
    opened ??= getWriter()
      .then(() => pool!)
      .catch((err: unknown) => {
        opened = undefined;
        throw fail(err);
      });
    return opened;
  }

  /** Runs `fn` on the writer session after every earlier mutation. */
  function mutate<T>(fn: (w: Writer) => Promise<T>): Promise<T> {
    batch = undefined; // a direct write after this call must not overtake it
    const run = tail.then(async () => {
      const w = await getWriter();
      try {
        return await fn(w);
      } catch (err) {
        if (isConnectionError(err)) w.broken = true;
        throw err;
      }
    });
    tail = run.catch(() => undefined);
    return run.catch((err: unknown) => {
      throw fail(err);
    });
  }

  async function formedNow(w: Writer): Promise<number> {
    const r = await w.c.query(`SELECT formed, ident FROM ${n.meta} WHERE id = 1`);
    checkToken(r.rows[0]?.ident, r.rows.length === 0);
    return formedOf(r.rows, o.where);
  }

  /** The recorded digest, the visible content's digest (or count), and the token, in one snapshot. */
  async function verify(quick: boolean): Promise<VerifyResult> {
    const found = await read((p) =>
      p.query(
        quick
          ? `SELECT m.ident, m.digest, t.n FROM ${n.meta} AS m, LATERAL (
               SELECT count(*)::int AS n FROM ${n.data} AS d WHERE d.area <= m.formed AND d.value IS NOT NULL) AS t
             WHERE m.id = 1`
          : `SELECT m.ident, m.digest, t.* FROM ${n.meta} AS m, LATERAL (
               ${digestTotalsSql(`FROM ${n.data} AS d WHERE d.area <= m.formed AND d.value IS NOT NULL`)}) AS t
             WHERE m.id = 1`,
      ),
    );
    const row = found.rows[0] as
      | {
          ident: string | null;
          digest: string | null;
          n: number;
          l0?: string;
          l1?: string;
          l2?: string;
          l3?: string;
        }
      | undefined;
    try {
      checkToken(row?.ident, row === undefined);
    } catch (err) {
      throw fail(err);
    }
    const content = quick
      ? { ...emptyDigest(), keys: row!.n }
      : digestFromTotals(row!.n, [row!.l0!, row!.l1!, row!.l2!, row!.l3!]);
    const recorded = row!.digest === null ? undefined : decodeDigest(row!.digest);
    return verifyResult(identity!, content, recorded, quick);
  }

  /** The count and lane totals of the visible rows `from` selects (alias `d`). */
  async function totals(c: Queryable, from: string, values: unknown[]): Promise<Digest> {
    const r = await c.query(digestTotalsSql(from), values);
    const row = r.rows[0] as { n: number; l0: string; l1: string; l2: string; l3: string };
    return digestFromTotals(row.n, [row.l0, row.l1, row.l2, row.l3]);
  }

  /** Queues a direct write, joining the batch still waiting at the end of the queue if any. */
  function direct(key: string, value: Buffer | null): Promise<void> {
    if (batch === undefined || batch.ops.size >= BATCH_OPS || batch.bytes >= BATCH_BYTES) {
      const b: DirectBatch = { ops: new Map(), bytes: 0, done: Promise.resolve() };
      b.done = mutate(async (w) => {
        if (batch === b) batch = undefined; // started: later writes form a new batch
        const rows: Row[] = [...b.ops].map(([k, v]) => [Buffer.from(k, 'utf8'), v]);
        await applyDirect(w, n, o.where, rows, token, lostNow);
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

    async open(openOpts) {
      assertOpen();
      nodeId ??= openOpts?.nodeId;
      await ready();
    },

    async verify(verifyOpts) {
      assertOpen();
      return verify(verifyOpts?.quick === true);
    },

    async reclaim() {
      if (closed) throw new ClosedError(`the postgres store ${o.where} is closed`);
      if (lost === undefined) return;
      await tail;
      const was = lost;
      // A new writer session claims the store as a first open (a foreign token is still refused).
      lost = undefined;
      identity = undefined;
      token = '';
      opened = undefined;
      if (writer !== undefined) writer.broken = true;
      reclaiming = true;
      try {
        await ready();
      } catch (err) {
        if (lost === undefined && !(err instanceof StoreLostError)) lost = was;
        throw err;
      } finally {
        reclaiming = false;
      }
    },

    async get(key) {
      assertOpen();
      assertValidKey(key);
      // One statement, one snapshot: the value and the token it was read under.
      const r = await read((p) =>
        p.query(
          `SELECT (SELECT ident FROM ${n.meta} WHERE id = 1) AS ident,
             (SELECT value FROM ${n.data} WHERE key = $1 AND area <= (SELECT formed FROM ${n.meta} WHERE id = 1)
              ORDER BY area DESC LIMIT 1) AS value`,
          [Buffer.from(key, 'utf8')],
        ),
      );
      try {
        checkToken(r.rows[0]?.ident);
      } catch (err) {
        throw fail(err);
      }
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
      const rows = collapse(ops);
      await mutate((w) => applyDirect(w, n, o.where, rows, token, lostNow));
    },

    async keys() {
      assertOpen();
      // The token is checked right after the listing: a listing of a store that was lost by
      // then is refused (one lost before it began is caught either way).
      const r = await read((p) =>
        p.query(
          `SELECT key FROM ${n.data}
           WHERE area <= (SELECT formed FROM ${n.meta} WHERE id = 1) AND value IS NOT NULL`,
        ),
      );
      const m = await read((p) => p.query(`SELECT ident FROM ${n.meta} WHERE id = 1`));
      try {
        checkToken(m.rows[0]?.ident, m.rows.length === 0);
      } catch (err) {
        throw fail(err);
      }
      // By UTF-16 code unit, as the contract says: not the database's collation, not byte order.
      return r.rows.map((row: { key: Buffer }) => row.key.toString('utf8')).sort();
    },

    async commit(ops, meta) {
      assertOpen();
      // Everything is checked before the first statement: a bad batch leaves no trace.
      assertValidOps(ops);
      assertValidValue(meta);
      const rows = collapse(ops);
      await mutate((w) =>
        inTransaction(
          w,
          async (c) => {
            // The meta row first: its lock orders this against every other transactional write.
            // It must hold our token: a wiped or foreign store gets nothing.
            const r = await c.query(
              `UPDATE ${n.meta} SET meta = $1 WHERE id = 1 AND ident = $2 RETURNING formed, digest`,
              [view(meta), token],
            );
            if (r.rows.length === 0) throw await lostNow(c);
            const formed = formedOf(r.rows, o.where);
            // The digest: minus the old entries of the keys written (their hashes kept in `h`),
            // plus the new ones (hashed here, and written into `h` with the rows).
            const recorded = r.rows[0].digest === null ? undefined : decodeDigest(r.rows[0].digest as string);
            const keys = rows.map((row) => row[0]);
            if (recorded !== undefined && keys.length > 0) {
              const old = await c.query(
                `SELECT d.h FROM ${n.data} AS d WHERE d.key = ANY($1::bytea[]) AND d.area <= ${formed} AND d.value IS NOT NULL`,
                [keys],
              );
              if (old.rows.some((row: { h: Buffer | null }) => row.h === null)) {
                // Rows without a kept hash (not expected once recorded): hash them here.
                const touched = `FROM ${n.data} AS d WHERE d.key = ANY($1::bytea[]) AND d.area <= ${formed} AND d.value IS NOT NULL`;
                combineDigest(recorded, await totals(c, touched, [keys]), -1);
              } else {
                for (const row of old.rows as { h: Buffer }[]) removeEntry(recorded, lanesOf(row.h));
              }
              for (const [key, value] of rows)
                if (value !== null) addEntry(recorded, lanesOf(entryHash(key, value)));
            }
            await writeVisible(c, n, rows, formed);
            if (recorded !== undefined && keys.length > 0) {
              await c.query(`UPDATE ${n.meta} SET digest = $1 WHERE id = 1`, [encodeDigest(recorded)]);
            }
          },
          true,
        ),
      );
    },

    async readMeta() {
      assertOpen();
      const r = await read((p) => p.query(`SELECT meta, ident FROM ${n.meta} WHERE id = 1`));
      try {
        checkToken(r.rows[0]?.ident, r.rows.length === 0);
      } catch (err) {
        throw fail(err);
      }
      const meta = r.rows[0]?.meta as Buffer | null | undefined;
      return meta === null || meta === undefined ? undefined : owned(meta);
    },

    async clear() {
      assertOpen();
      await mutate((w) =>
        inTransaction(
          w,
          async (c) => {
            const r = await c.query(
              `UPDATE ${n.meta} SET formed = 0, meta = NULL, digest = $2 WHERE id = 1 AND ident = $1 RETURNING 1`,
              [token, encodeDigest(emptyDigest())],
            );
            if (r.rows.length === 0) throw await lostNow(c);
            await c.query(`TRUNCATE ${n.data}`);
          },
          true,
        ),
      );
    },

    async close() {
      if (closed) return;
      closed = true;
      // Let queued mutations finish: a caller that did not await a put still expects it done.
      await tail;
      await connecting?.catch(() => undefined);
      // Destroyed, not returned to the pool: ending the session releases the owner lock.
      writer?.c.release(true);
      writer = undefined;
      const p = await poolMade?.catch(() => undefined);
      if (p !== undefined && o.pool === undefined) await p.end();
    },

    async writeArea(area, ops) {
      assertOpen();
      assertPositiveArea('writeArea', area);
      assertValidOps(ops);
      const rows = collapse(ops);
      await mutate(async (w) => {
        let written: boolean;
        if (rows.length === 0) written = (await formedNow(w)) < area;
        else if (chunkRows(rows).length === 1) written = await writeArea(w.c, n, area, rows, token);
        else {
          // Several statements: one transaction, so that a refused area leaves no partial write.
          written = await inTransaction(w, async (c) => {
            if (!(await writeArea(c, n, area, rows, token))) throw new AreaRefused();
            return true;
          }).catch((err: unknown) => {
            if (err instanceof AreaRefused) return false;
            throw err;
          });
        }
        if (!written) {
          throw new InvalidArgumentError(
            `writeArea(${area}): the area must be above the last formed snapshot, which is ${await formedNow(w)}`,
          );
        }
      });
    },

    async formSnapshot(area, meta) {
      assertOpen();
      assertPositiveArea('formSnapshot', area);
      assertValidValue(meta);
      await mutate((w) =>
        inTransaction(
          w,
          async (c) => {
            const r = await c.query(
              `SELECT formed, digest FROM ${n.meta} WHERE id = 1 AND ident = $1 FOR UPDATE`,
              [token],
            );
            if (r.rows.length === 0) throw await lostNow(c);
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
            // The digest: minus the visible entries of the area's keys, plus the area's values.
            const recorded = r.rows[0].digest === null ? undefined : decodeDigest(r.rows[0].digest as string);
            if (recorded !== undefined) {
              // From the kept hashes: the area's rows and the visible rows they replace, joined
              // by the primary key; nothing is hashed again.
              const pairs = await c.query(
                `SELECT nw.h AS nh, nw.value IS NULL AS tomb, od.h AS oh, od.key IS NOT NULL AS had
                 FROM ${n.data} AS nw LEFT JOIN ${n.data} AS od
                   ON od.key = nw.key AND od.area <= ${formed} AND od.value IS NOT NULL
                 WHERE nw.area = ${area}`,
              );
              type Pair = { nh: Buffer | null; tomb: boolean; oh: Buffer | null; had: boolean };
              const rowsOf = pairs.rows as Pair[];
              if (rowsOf.some((p) => (p.had && p.oh === null) || (!p.tomb && p.nh === null))) {
                // Rows without a kept hash (not expected once recorded): hash them here.
                const old = `FROM ${n.data} AS d WHERE d.area <= ${formed} AND d.value IS NOT NULL
                  AND d.key IN (SELECT key FROM ${n.data} WHERE area = ${area})`;
                combineDigest(recorded, await totals(c, old, []), -1);
                const neu = `FROM ${n.data} AS d WHERE d.area = ${area} AND d.value IS NOT NULL`;
                combineDigest(recorded, await totals(c, neu, []), 1);
              } else {
                for (const p of rowsOf) {
                  if (p.had) removeEntry(recorded, lanesOf(p.oh!));
                  if (!p.tomb) addEntry(recorded, lanesOf(p.nh!));
                }
              }
            }
            await c.query(`UPDATE ${n.meta} SET formed = ${area}, meta = $1, digest = $2 WHERE id = 1`, [
              view(meta),
              recorded === undefined ? null : encodeDigest(recorded),
            ]);
            // Reclaim: the versions the new snapshot supersedes, then its tombstones (which now
            // shadow nothing). What stays is one visible row per key: the invariant of ./sql.ts.
            await c.query(
              `DELETE FROM ${n.data} AS old USING ${n.data} AS new
             WHERE new.area = ${area} AND new.area > 0 AND old.key = new.key AND old.area < ${area}`,
            );
            await c.query(`DELETE FROM ${n.data} WHERE area = ${area} AND area > 0 AND value IS NULL`);
          },
          true,
        ),
      );
    },

    async releaseAreas() {
      assertOpen();
      await mutate((w) =>
        // Durable: areas that came back after a server crash would be formed with the next ones.
        inTransaction(
          w,
          async (c) => {
            const r = await c.query(`SELECT formed FROM ${n.meta} WHERE id = 1 AND ident = $1 FOR UPDATE`, [
              token,
            ]);
            if (r.rows.length === 0) throw await lostNow(c);
            await c.query(`DELETE FROM ${n.data} WHERE area > 0 AND area > ${formedOf(r.rows, o.where)}`);
          },
          true,
        ),
      );
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
  readonly statementTimeout: number;
  readonly queryTimeout: number;
  readonly connectionTimeout: number;
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
  const max: unknown = (pool as { options?: { max?: unknown } } | undefined)?.options?.max;
  if (typeof max === 'number' && max < 2) {
    throw new ConfigError(
      'storage.pool',
      `has max ${max} connections; the adapter keeps one for its writes and reads on others: use max >= 2`,
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
  const ms = (name: 'statementTimeout' | 'queryTimeout' | 'connectionTimeout', dflt: number): number => {
    const v: unknown = opts[name];
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new ConfigError(
        `storage.${name}`,
        `must be a positive whole number of milliseconds, got ${show(v)}`,
      );
    }
    return v;
  };
  const statementTimeout = ms('statementTimeout', 30_000);
  return {
    table,
    connectionString,
    lib,
    pool: pool as Pool | undefined,
    where: `"${table}" at ${at}`,
    statementTimeout,
    queryTimeout: ms('queryTimeout', statementTimeout + 5_000),
    connectionTimeout: ms('connectionTimeout', 5_000),
  };
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
    query_timeout: o.queryTimeout,
    connectionTimeoutMillis: o.connectionTimeout,
  });
  // An idle connection that dies (server restart) is reported here; without a listener Node
  // would crash the process. The next query opens a new connection and reports its own failure.
  pool.on('error', () => undefined);
  return pool;
}

// ---------------------------------------------------------------------------------------------
// Writing

/** The server ends our writer session when idle inside a transaction this long (see getWriter). */
const IDLE_IN_TRANSACTION_MS = 60_000;
/** First key of the session-level advisory lock held by a store's writer session ("RPOW"). */
const OWNER_LOCK_CLASS = 0x52504f57;
/** How long opening waits for an earlier writer session of the same table to end. */
const OWNER_WAIT_MS = 60_000;

/** The one session a store's mutations run on; it holds the owner lock while it lives. */
interface Writer {
  readonly c: PoolClient;
  /** The connection failed: destroy it and connect again before the next mutation. */
  broken: boolean;
  /** The server's `synchronous_commit` for this session, restored by durable transactions. */
  durableCommit: string;
}

/** Values of `synchronous_commit` that may be written back into a SET. */
const SYNCHRONOUS_COMMIT = /^(on|off|local|remote_write|remote_apply)$/;

/** Direct writes applied as one batch: key → value (`null`: delete). */
interface DirectBatch {
  readonly ops: Map<string, Buffer | null>;
  bytes: number;
  done: Promise<void>;
}

/** A batch of direct writes waiting in the queue takes at most this many keys / bytes. */
const BATCH_OPS = 10_000;
const BATCH_BYTES = 32 * 1024 * 1024;

/**
 * Writes `rows` (distinct keys) as visible data: one statement for one row, else one
 * transaction. Both check the identity token and make the digest unrecorded; a store without
 * our token gets nothing, and `lostNow` says why.
 */
async function applyDirect(
  w: Writer,
  n: Names,
  where: string,
  rows: readonly Row[],
  token: string,
  lostNow: (c: Queryable) => Promise<Error>,
): Promise<void> {
  if (rows.length === 0) return;
  // The common case, one round trip: a single statement reads the formed mark in its own
  // snapshot, drops older visible versions and writes the keys at the mark (or drops them).
  const once = await writeVisibleOnce(w.c, n, rows, token);
  if (once === 'done') return;
  if (once === 'lost') throw await lostNow(w.c);
  await inTransaction(w, async (c) => {
    // The lock keeps the mark still until this commits (each statement of a READ COMMITTED
    // transaction takes a new snapshot); it does not block readers.
    const r = await c.query(
      `UPDATE ${n.meta} SET digest = NULL WHERE id = 1 AND ident = $1 RETURNING formed`,
      [token],
    );
    if (r.rows.length === 0) throw await lostNow(c);
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

/**
 * Runs `fn` in a transaction on the writer session; rolls back if it throws. A `durable` one
 * commits with the server's own `synchronous_commit` (waits for the WAL flush), others without.
 */
async function inTransaction<T>(w: Writer, fn: (c: Queryable) => Promise<T>, durable = false): Promise<T> {
  const c = w.c as PoolClient & Queryable;
  await c.query(durable ? `BEGIN; SET LOCAL synchronous_commit = ${w.durableCommit}` : 'BEGIN');
  try {
    const out = await fn(c);
    await c.query('COMMIT');
    return out;
  } catch (err) {
    // A session that cannot roll back is unusable: reconnect before the next mutation (the
    // server rolls the transaction back when the session ends).
    await c.query('ROLLBACK').catch(() => {
      w.broken = true;
    });
    throw err;
  }
}

/**
 * Takes the session-level advisory lock that makes this session the store's only writer,
 * waiting up to OWNER_WAIT_MS for a previous holder's session to end. Throws a retryable
 * `StorageError` naming the holder when it does not.
 */
async function takeOwnerLock(c: Queryable, n: Names, where: string): Promise<void> {
  const deadline = Date.now() + OWNER_WAIT_MS;
  for (let delay = 10; ; delay = Math.min(delay * 2, 250)) {
    const r = await c.query('SELECT pg_try_advisory_lock($1, hashtext($2)) AS ok', [
      OWNER_LOCK_CLASS,
      n.table,
    ]);
    if (r.rows[0]?.ok === true) return;
    if (Date.now() >= deadline) break;
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
  let holder = '';
  try {
    const h = await c.query(
      `SELECT a.pid, a.application_name AS app, coalesce(host(a.client_addr), 'local') AS addr
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
       WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int::oid
         AND l.objid = hashtext($2)::oid AND l.objsubid = 2`,
      [OWNER_LOCK_CLASS, n.table],
    );
    const row = h.rows[0] as { pid: number; app: string; addr: string } | undefined;
    if (row !== undefined) holder = ` (server pid ${row.pid}, application "${row.app}", client ${row.addr})`;
  } catch {
    // Only for the message.
  }
  throw new StorageError(
    `postgres store ${where}: another session${holder} still holds the table after ${OWNER_WAIT_MS / 1000} s. ` +
      `Only one adapter instance may use a table at a time: give each node its own 'storage.table'. ` +
      `If that process is gone, PostgreSQL ends its session once it notices (TCP keepalive).`,
    { retryable: true },
  );
}

/** The store format named in identity tokens. */
const POSTGRES_STORE_FORMAT = 'restartpoint-postgres 2';

/**
 * Inside the schema transaction of a new writer session: the first time (`expected` undefined)
 * takes the token found, or sets a new one (digest: the empty store's when the store is empty,
 * unrecorded when it holds an older version's data); on a reconnect requires `expected`.
 */
/**
 * `reclaim()`: a store whose meta row was deleted (a truncated meta table) gets an empty one
 * back, with no token: the claim that follows writes a new one and `clear()` empties the data.
 */
async function restoreMetaRow(c: Queryable, n: Names): Promise<void> {
  const r = await c.query('SELECT to_regclass($1) IS NOT NULL AS meta', [n.meta]);
  if (r.rows[0]?.meta !== true) return;
  await c.query(`INSERT INTO ${n.meta} (id) VALUES (1) ON CONFLICT (id) DO NOTHING`);
}

async function claimIdentity(
  c: Queryable,
  n: Names,
  where: string,
  expected: StoreIdentity | undefined,
  nodeId: string | undefined,
): Promise<StoreIdentity> {
  const r = await c.query(
    `SELECT ident, meta IS NULL AND formed = 0 AS bare FROM ${n.meta} WHERE id = 1 FOR UPDATE`,
  );
  const row = r.rows[0] as { ident: string | null; bare: boolean } | undefined;
  if (row === undefined) throw storeLost(`postgres ${where}`, `its meta row (${n.meta}) is gone`);
  if (expected !== undefined) {
    const problem = tokenProblem(row.ident, expected);
    if (problem !== undefined) throw storeLost(`postgres ${where}`, problem);
    return expected;
  }
  if (row.ident !== null) {
    const found = decodeIdentity(row.ident);
    if (found === undefined || encodeIdentity(found) !== row.ident) {
      throw storeLost(`postgres ${where}`, `${n.meta} holds an identity token this build does not write`);
    }
    const foreign = foreignAtOpen(found, POSTGRES_STORE_FORMAT, nodeId);
    if (foreign !== undefined) throw storeLost(`postgres ${where}`, foreign);
    return found;
  }
  const fresh = newIdentity(POSTGRES_STORE_FORMAT, nodeId);
  const empty =
    row.bare &&
    (await c.query(`SELECT NOT EXISTS (SELECT 1 FROM ${n.data}) AS empty`)).rows[0]?.empty === true;
  await c.query(`UPDATE ${n.meta} SET ident = $1, digest = $2 WHERE id = 1`, [
    encodeIdentity(fresh),
    empty ? encodeDigest(emptyDigest()) : null,
  ]);
  return fresh;
}

function formedOf(rows: any[], where: string): number {
  const formed: unknown = rows[0]?.formed;
  // bigint arrives as a string; areas are checkpoint numbers, far below 2^53.
  const value = typeof formed === 'string' || typeof formed === 'number' ? Number(formed) : NaN;
  if (!Number.isSafeInteger(value))
    throw new StorageError(`postgres store ${where}: the meta row is missing or damaged`);
  return value;
}

/** `assertValidArea`, and not 0: area 0 holds the visible rows of a store without snapshots. */
function assertPositiveArea(what: string, area: unknown): asserts area is number {
  assertValidArea(area, what);
  if (area < 1) {
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

/** Whether `err` means the session is gone (a dropped connection, the server shutting down). */
function isConnectionError(err: unknown): boolean {
  if (err instanceof RestartpointError) return false;
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string') return /^(08|57P0[123])/.test(code) || RETRYABLE_ERRNO.has(code);
  // The driver's own "Connection terminated", "Client was closed", … carry no code.
  return true;
}

/** SQLSTATE classes and codes after which the same call may succeed later, unchanged. */
const RETRYABLE_SQLSTATE = /^(08|53|57P0[123]|57014|40001|40P01|55P03)/;
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
    // The driver's messages for a session that died (pg_terminate_backend, a server restart):
    // the next call reconnects, so the same call may succeed then.
    /connection terminated|terminating connection|timeout|not queryable|connection error/i.test(message);
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

/**
 * The SQL of the postgres adapter: the schema (version 1), its creation and version check, and
 * the statements that write rows in bounded chunks. ./index.ts decides when each one runs;
 * docs/adapters-postgres.md explains the layout and why each write is atomic.
 *
 * ```text
 * <table>          key bytea, area bigint, value bytea NULL    PRIMARY KEY (key, area)
 *                  area = 0 or a formed snapshot: visible; area above the formed snapshot: an
 *                  unformed version area (invisible); value NULL = a tombstone (unformed areas only)
 * <table>_area_idx (area) WHERE area > 0: finds the rows of one area without a full scan
 * <table>_meta     one row: formed bigint (last formed snapshot, 0 = none), meta bytea NULL,
 *                  ident text NULL (the identity token), digest text NULL ("<keys> <32 hex>":
 *                  count and digest of the visible data as committed; NULL = unrecorded)
 * <table>_schema   one row: version integer (2); read first, never changes shape
 * ```
 *
 * Invariant kept by every write (each in one transaction or one statement): every key has at
 * most one row with `area <= formed`, and that row is not a tombstone. So `get` is one index
 * probe and `keys` one scan, and neither has to resolve versions.
 */
import { createHash } from 'node:crypto';
import { ConfigError, StorageError } from '../../src/errors.js';

/**
 * The schema version this build creates and reads. A newer one is refused, an older one migrated.
 * Version 2 added `ident` and `digest` to the meta table (issue 12): an older build, which would
 * commit without keeping the digest, refuses it. Version 3 added `h` to the data table: each
 * row's entry hash (MD5, src/storage/digest.ts), written with the row, so that commits and
 * snapshot forming keep the digest from stored hashes instead of hashing old values again.
 */
export const SCHEMA_VERSION = 3;

/** First key of the transaction-level advisory lock taken around schema creation ("RPST"). */
const SCHEMA_LOCK_CLASS = 0x52505354;

/** At most this many rows go into one statement (two parameters each; Postgres allows 65 535). */
export const CHUNK_ROWS = 4000;
/** At most this many value bytes go into one statement; a single larger value goes alone. */
export const CHUNK_BYTES = 16 * 1024 * 1024;
/** At most this many keys go into one `DELETE ... = ANY($1)`. */
export const CHUNK_KEYS = 10_000;

/** The part of a `pg` client or pool the adapter uses. */
export interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: any[]; rowCount: number | null }>;
}

/** One row to write: the key's UTF-8 bytes and its value (`null`: delete, or a tombstone). */
export type Row = readonly [key: Buffer, value: Buffer | null];

/** Quoted identifiers of one store's relations. The table name was checked against NAME_RE. */
export interface Names {
  readonly table: string;
  readonly data: string;
  readonly meta: string;
  readonly schema: string;
  readonly areaIndex: string;
}

/** Table names the adapter accepts: lower-case, unquoted-safe, short enough for the suffixes. */
export const NAME_RE = /^[a-z_][a-z0-9_]{0,40}$/;

/** The quoted names of the relations of the store in `table` (already checked against NAME_RE). */
export function names(table: string): Names {
  const q = (s: string): string => `"${s}"`;
  return {
    table,
    data: q(table),
    meta: q(`${table}_meta`),
    schema: q(`${table}_schema`),
    areaIndex: q(`${table}_area_idx`),
  };
}

/**
 * Creates the store's tables if they are missing, or checks the version of existing ones.
 * Runs inside a transaction holding an advisory lock on the table name, so two processes opening
 * the same new store at once create it once (a bare `CREATE TABLE IF NOT EXISTS` can still fail
 * on a race in the catalog). Throws `StorageError` for a newer or damaged schema and
 * `ConfigError` when the name belongs to a table that is not a restartpoint store.
 */
export async function ensureSchema(c: Queryable, n: Names, where: string): Promise<void> {
  await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [SCHEMA_LOCK_CLASS, n.table]);
  const found = await c.query(
    'SELECT to_regclass($1) IS NOT NULL AS schema, to_regclass($2) IS NOT NULL AS data, to_regclass($3) IS NOT NULL AS meta',
    [n.schema, n.data, n.meta],
  );
  const has = found.rows[0] as { schema: boolean; data: boolean; meta: boolean };
  if (has.schema) {
    const v = await c.query(`SELECT version FROM ${n.schema} WHERE id = 1`);
    const version: unknown = v.rows[0]?.version;
    if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) {
      throw new StorageError(
        `postgres store ${where}: ${n.schema} holds no valid schema version (${String(version)}); the store is damaged`,
      );
    }
    if (version > SCHEMA_VERSION) {
      throw new StorageError(
        `postgres store ${where}: the store has schema version ${version}, newer than this restartpoint build reads (${SCHEMA_VERSION}); ` +
          `upgrade restartpoint, or point 'storage.table' at another table`,
      );
    }
    if (!has.data || !has.meta) {
      throw new StorageError(
        `postgres store ${where}: ${n.schema} exists but ${!has.data ? n.data : n.meta} is missing; the store is damaged`,
      );
    }
    // Migrations, in this same locked transaction. 1 → 2: the identity token and the digest
    // (NULL: the store adopts a token at this open, and its digest is unrecorded).
    if (version < 2) {
      await c.query(`ALTER TABLE ${n.meta} ADD COLUMN ident text, ADD COLUMN digest text`);
      await c.query(`UPDATE ${n.schema} SET version = 2 WHERE id = 1`);
    }
    // 2 → 3: the rows' entry hashes. Existing rows have none, so the digest becomes unrecorded
    // (until the next clear(), which every standby run starts with).
    if (version < 3) {
      await c.query(`ALTER TABLE ${n.data} ADD COLUMN h bytea`);
      await c.query(`UPDATE ${n.meta} SET digest = NULL WHERE id = 1`);
      await c.query(`UPDATE ${n.schema} SET version = 3 WHERE id = 1`);
    }
    // Without its row every read would see an empty store: refuse instead.
    const meta = await c.query(`SELECT formed FROM ${n.meta} WHERE id = 1`);
    if (meta.rows.length !== 1)
      throw new StorageError(`postgres store ${where}: ${n.meta} has no row; the store is damaged`);
    return;
  }
  if (has.data || has.meta) {
    throw new ConfigError(
      'storage.table',
      `is "${n.table}", and ${has.data ? n.data : n.meta} already exists without ${n.schema}: it is not a restartpoint store (clear() would destroy it); choose another table name`,
    );
  }
  for (const statement of createStatements(n)) await c.query(statement);
}

function createStatements(n: Names): string[] {
  return [
    // Keys are bytea (their UTF-8), not text: text cannot hold U+0000, depends on the database
    // encoding, and sorts by collation. Order is done in JavaScript, by UTF-16 code unit.
    `CREATE TABLE ${n.data} (
       key   bytea  NOT NULL,
       area  bigint NOT NULL CHECK (area >= 0),
       value bytea,
       h     bytea,
       PRIMARY KEY (key, area)
     )`,
    // Partial: a delay-write store (everything in area 0) pays nothing for it.
    `CREATE INDEX ${n.areaIndex} ON ${n.data} (area) WHERE area > 0`,
    `CREATE TABLE ${n.meta} (
       id     smallint PRIMARY KEY CHECK (id = 1),
       formed bigint   NOT NULL DEFAULT 0 CHECK (formed >= 0),
       meta   bytea,
       ident  text,
       digest text
     )`,
    `INSERT INTO ${n.meta} (id) VALUES (1)`,
    `CREATE TABLE ${n.schema} (
       id      smallint PRIMARY KEY CHECK (id = 1),
       version integer  NOT NULL
     )`,
    `INSERT INTO ${n.schema} (id, version) VALUES (1, ${SCHEMA_VERSION})`,
  ];
}

/** Splits `rows` into statements of at most CHUNK_ROWS rows and about CHUNK_BYTES value bytes. */
export function chunkRows(rows: readonly Row[]): Row[][] {
  const out: Row[][] = [];
  let current: Row[] = [];
  let bytes = 0;
  for (const row of rows) {
    const size = row[0].length + (row[1]?.length ?? 0);
    if (current.length > 0 && (current.length >= CHUNK_ROWS || bytes + size > CHUNK_BYTES)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(row);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

function chunkKeys(keys: readonly Buffer[]): Buffer[][] {
  const out: Buffer[][] = [];
  for (let i = 0; i < keys.length; i += CHUNK_KEYS) out.push(keys.slice(i, i + CHUNK_KEYS));
  return out;
}

/**
 * Writes `rows` as visible data over a store whose last formed snapshot is `formed`: puts land
 * at area `formed` (replacing older visible versions), deletes remove every visible version.
 * Unformed areas (above `formed`) are untouched. The caller holds the meta row locked, in the
 * transaction these statements run in, so `formed` cannot change under them. Keys are distinct.
 */
export async function writeVisible(
  c: Queryable,
  n: Names,
  rows: readonly Row[],
  formed: number,
): Promise<void> {
  const puts: Row[] = [];
  const deletes: Buffer[] = [];
  for (const row of rows) {
    if (row[1] === null) deletes.push(row[0]);
    else puts.push(row);
  }
  for (const chunk of chunkRows(puts)) {
    const values: unknown[] = [];
    const tuples: string[] = [];
    const keyParams: string[] = [];
    for (const [key, value] of chunk) {
      values.push(key, value, entryHash(key, value!));
      tuples.push(
        `($${values.length - 2}::bytea, ${formed}, $${values.length - 1}::bytea, $${values.length}::bytea)`,
      );
      keyParams.push(`$${values.length - 2}::bytea`);
    }
    // In a data-modifying CTE both parts see the same snapshot; they touch disjoint rows (areas
    // below `formed` / at `formed`), so the order between them does not matter.
    const reclaim =
      formed > 0
        ? `WITH older AS (DELETE FROM ${n.data} WHERE key IN (${keyParams.join(', ')}) AND area < ${formed}) `
        : '';
    await c.query(
      `${reclaim}INSERT INTO ${n.data} (key, area, value, h) VALUES ${tuples.join(', ')}
       ON CONFLICT (key, area) DO UPDATE SET value = EXCLUDED.value, h = EXCLUDED.h`,
      values,
    );
  }
  for (const chunk of chunkKeys(deletes)) {
    await c.query(`DELETE FROM ${n.data} WHERE key = ANY($1::bytea[]) AND area <= ${formed}`, [chunk]);
  }
}

/**
 * Writes `rows` as visible data in ONE statement (atomic on its own, one round trip), reading
 * the formed mark in the statement's own snapshot: puts land at the mark replacing older
 * visible versions, deletes remove every visible version. Resolves `false`, having done
 * nothing, when `rows` do not fit one statement (then use `writeVisible` in a transaction).
 * Keys are distinct.
 */
export async function writeVisibleOnce(
  c: Queryable,
  n: Names,
  rows: readonly Row[],
  token: string,
): Promise<'done' | 'too-large' | 'lost'> {
  const puts = rows.filter((r) => r[1] !== null);
  const deletes = rows.filter((r) => r[1] === null).map((r) => r[0]);
  if (chunkRows(puts).length > 1 || deletes.length > CHUNK_KEYS) return 'too-large';
  const values: unknown[] = [token];
  const tuples: string[] = [];
  const keyParams: string[] = [];
  for (const [key, value] of puts) {
    values.push(key, value);
    tuples.push(`($${values.length - 1}::bytea, $${values.length}::bytea)`);
    keyParams.push(`$${values.length - 1}::bytea`);
  }
  // f is empty when the meta row is gone or holds another token: then nothing is written, and
  // the count of f (or of the rows written) says so. A direct write makes the digest unrecorded.
  const parts = [
    `f AS (SELECT formed FROM ${n.meta} WHERE id = 1 AND ident = $1)`,
    `inv AS (UPDATE ${n.meta} SET digest = NULL WHERE id = 1 AND ident = $1 AND digest IS NOT NULL)`,
  ];
  if (deletes.length > 0) {
    values.push(deletes);
    parts.push(
      `gone AS (DELETE FROM ${n.data} AS d USING f WHERE d.key = ANY($${values.length}::bytea[]) AND d.area <= f.formed)`,
    );
  }
  if (puts.length === 0) {
    const r = await c.query(`WITH ${parts.join(', ')} SELECT count(*)::int AS n FROM f`, values);
    return r.rows[0]?.n === 1 ? 'done' : 'lost';
  }
  // All parts see one snapshot and touch disjoint rows: other keys, or areas below the mark.
  parts.push(
    `older AS (DELETE FROM ${n.data} AS d USING f WHERE d.key IN (${keyParams.join(', ')}) AND d.area < f.formed)`,
  );
  const r = await c.query(
    `WITH ${parts.join(', ')}
     INSERT INTO ${n.data} (key, area, value) SELECT v.key, f.formed, v.value FROM (VALUES ${tuples.join(', ')}) AS v (key, value), f
     ON CONFLICT (key, area) DO UPDATE SET value = EXCLUDED.value`,
    values,
  );
  // Every put is one row inserted or updated, unless f was empty.
  return r.rowCount === puts.length ? 'done' : 'lost';
}

/**
 * The entry hash of a row (src/storage/digest.ts, MD5): SQL over columns `key` and `value` of
 * the alias `d`.
 */
/** A row's entry hash as kept in `h`: MD5 of the key's byte length, ':', the key and the value (src/storage/digest.ts). */
export function entryHash(key: Buffer, value: Buffer): Buffer {
  return createHash('md5').update(`${key.length}:`).update(key).update(value).digest();
}

const ENTRY_MD5 = `md5(convert_to(length(d.key)::text || ':', 'UTF8') || d.key || d.value)`;

/** `count, a, b, c, d`: the count and the four unreduced lane totals of the rows `d` selected by `from`. */
export function digestTotalsSql(from: string): string {
  const lane = (i: number): string =>
    `coalesce(sum(('x' || substr(h, ${8 * i + 1}, 8))::bit(32)::bigint), 0)::text`;
  return `SELECT count(*)::int AS n, ${[0, 1, 2, 3].map((i) => `${lane(i)} AS l${i}`).join(', ')}
          FROM (SELECT ${ENTRY_MD5} AS h ${from}) AS e`;
}

/**
 * Writes `rows` (deletes as tombstones) into version area `area`, provided `area` is above the
 * formed snapshot: each statement checks that itself, so a one-chunk write needs no
 * transaction. Resolves `false` (having written nothing) when it is not, or when the meta row
 * does not hold `token` (the caller then finds out which).
 */
export async function writeArea(
  c: Queryable,
  n: Names,
  area: number,
  rows: readonly Row[],
  token: string,
): Promise<boolean> {
  for (const chunk of chunkRows(rows)) {
    const values: unknown[] = [token];
    const tuples: string[] = [];
    for (const [key, value] of chunk) {
      values.push(key, value, value === null ? null : entryHash(key, value));
      tuples.push(`($${values.length - 2}::bytea, $${values.length - 1}::bytea, $${values.length}::bytea)`);
    }
    const r = await c.query(
      `INSERT INTO ${n.data} (key, area, value, h)
       SELECT v.key, ${area}, v.value, v.h FROM (VALUES ${tuples.join(', ')}) AS v (key, value, h)
       WHERE ${area} > (SELECT formed FROM ${n.meta} WHERE id = 1 AND ident = $1)
       ON CONFLICT (key, area) DO UPDATE SET value = EXCLUDED.value, h = EXCLUDED.h`,
      values,
    );
    if (r.rowCount === 0) return false;
  }
  return true;
}

import { createHash, randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { postgresAdapter } from '../../adapters/postgres/index.js';
import { ConfigError, InvalidArgumentError, StorageError } from '../../src/errors.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';
import { testCrashDuringCommit } from './crash.js';
import { startProxy } from './faults.js';
import { testAdapter } from './suite.js';

// A real PostgreSQL, never a stand-in. Each case gets a fresh table, dropped afterwards.
const url = process.env.RESTARTPOINT_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';

let reachable: Promise<void> | undefined;

/** Fails (never skips) with how to start PostgreSQL when it is not there. */
function needPostgres(): Promise<void> {
  reachable ??= sql('SELECT 1').catch((err: unknown) => {
    throw new Error(
      `PostgreSQL is not reachable at ${url} (${(err as Error).message}). The postgres adapter tests need a ` +
        `real server: run \`npm run services\` (scripts/ensure-services.sh starts PostgreSQL and creates the ` +
        `database "test"; by hand: pg_ctlcluster 15 main start && createdb -h 127.0.0.1 -U postgres test), or ` +
        `point RESTARTPOINT_TEST_POSTGRES at one (postgres://user@host:port/db).`,
      { cause: err },
    );
  });
  return reachable;
}

async function sql(text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

async function newTable(): Promise<string> {
  await needPostgres();
  return `rp_test_${randomBytes(6).toString('hex')}`;
}

const drop = (table: string) => () =>
  sql(`DROP TABLE IF EXISTS "${table}", "${table}_meta", "${table}_schema"`);

// The suite reaches PostgreSQL through a TCP proxy that its fault cases can black-hole.
const target = new URL(url);
const proxy = await startProxy(Number(target.port || 5432));
afterAll(() => proxy.close());
const viaProxy = Object.assign(new URL(url), { port: String(proxy.port) }).toString();

/** Ends every server session of the adapter on `table`: its writer (by its lock) and its readers. */
async function terminateSessions(table: string): Promise<void> {
  await rows(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
     WHERE pid <> pg_backend_pid() AND (query LIKE '%"${table}%' OR pid IN (
       SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.objid = hashtext('${table}')::oid AND l.objsubid = 2))`,
  );
}

testAdapter('postgres', async () => {
  const table = await newTable();
  const options = {
    connectionString: viaProxy,
    table,
    statementTimeout: 4000,
    queryTimeout: 4000,
    connectionTimeout: 2000,
  };
  return {
    adapter: postgresAdapter(options),
    reopen: async () => postgresAdapter(options),
    cleanup: drop(table),
    faults: {
      wipe: () => rows(`TRUNCATE "${table}"`).then(() => undefined),
      deleteSome: (keys) =>
        rows(
          `DELETE FROM "${table}" WHERE key IN (${keys.map((k) => `convert_to('${k.replace(/'/g, "''")}', 'UTF8')`).join(', ')})`,
        ).then(() => undefined),
      // pg_terminate_backend of every session of the adapter: the server (and the data) stay.
      restart: async () => {
        await terminateSessions(table);
        return 'kept';
      },
      // Mid-commit: wait (up to 3 s) until a session of the store is running a statement.
      killConnections: async () => {
        for (let i = 0; i < 300; i++) {
          const active = await rows(
            `SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%"${table}%'`,
          );
          if (active.length > 0) break;
          await new Promise((r) => setTimeout(r, 10));
        }
        await terminateSessions(table);
      },
      cutOff: async () => {
        proxy.blackhole();
        return async () => proxy.restore();
      },
    },
  };
});

testCrashDuringCommit('postgres', async () => {
  const table = await newTable();
  return {
    adapter: 'postgres',
    options: { connectionString: url, table },
    open: async () => postgresAdapter({ connectionString: url, table }),
    cleanup: drop(table),
  };
});

async function rows(text: string): Promise<Record<string, unknown>[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return (await client.query(text)).rows as Record<string, unknown>[];
  } finally {
    await client.end();
  }
}

/** Runs `fn` on an opened adapter over a fresh table, then closes it and drops the table. */
async function withStore(fn: (a: StorageAdapter, table: string) => Promise<void>): Promise<void> {
  const table = await newTable();
  const a = postgresAdapter({ connectionString: url, table });
  try {
    await a.open();
    await fn(a, table);
  } finally {
    await a.close();
    await drop(table)();
  }
}

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const put = (key: string, value: string): WriteOp => ({ op: 'put', key, value: enc(value) });
const del = (key: string): WriteOp => ({ op: 'delete', key });

async function dump(a: StorageAdapter): Promise<{ data: Record<string, string>; meta: string | undefined }> {
  const data: Record<string, string> = {};
  for (const key of await a.keys()) data[key] = Buffer.from((await a.get(key))!).toString();
  const meta = await a.readMeta();
  return { data, meta: meta && Buffer.from(meta).toString() };
}

describe('postgres adapter: options, schema, pool', () => {
  it('rejects bad options with a ConfigError naming the option', () => {
    const cases: [unknown, string][] = [
      [{}, 'storage.connectionString'],
      [{ connectionString: 'http://127.0.0.1/x' }, 'storage.connectionString'],
      [{ connectionString: url, table: 'Upper' }, 'storage.table'],
      [{ connectionString: url, table: 'has-dash' }, 'storage.table'],
      [{ connectionString: url, table: '1st' }, 'storage.table'],
      [{ connectionString: url, table: 'x'.repeat(42) }, 'storage.table'],
      [{ connectionString: url, lib: {} }, 'storage.lib'],
      [{ pool: {} }, 'storage.pool'],
      [{ pool: new pg.Pool({ max: 1 }) }, 'storage.pool'],
    ];
    for (const [opts, option] of cases) {
      let thrown: unknown;
      try {
        postgresAdapter(opts as Parameters<typeof postgresAdapter>[0]);
      } catch (err) {
        thrown = err;
      }
      expect(thrown, JSON.stringify(opts)).toBeInstanceOf(ConfigError);
      expect((thrown as ConfigError).option).toBe(option);
    }
  });

  it('an unreachable server rejects open() with a retryable StorageError, password left out', async () => {
    const a = postgresAdapter({ connectionString: 'postgres://u:secret@127.0.0.1:1/test' });
    const err = (await a.open().catch((e: unknown) => e)) as StorageError;
    expect(err).toBeInstanceOf(StorageError);
    expect(err.retryable).toBe(true);
    expect(err.message).toMatch(/127\.0\.0\.1:1.*ECONNREFUSED/);
    expect(err.message).not.toContain('secret');
    await a.close();
  });

  it('one writer per table: a second instance waits until the first one is gone', async () => {
    const table = await newTable();
    const first = postgresAdapter({ connectionString: url, table });
    const second = postgresAdapter({ connectionString: url, table });
    try {
      await first.open();
      expect(await rows(`SELECT id, version FROM "${table}_schema"`)).toEqual([{ id: 1, version: 3 }]);
      let opened = false;
      const opening = second.open().then(() => {
        opened = true;
      });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(opened).toBe(false);
      await first.commit([put('k', 'first')], enc('m1'));
      await first.close();
      await opening;
      await second.commit([put('k', 'second')], enc('m2'));
      expect(await dump(second)).toEqual({ data: { k: 'second' }, meta: 'm2' });
    } finally {
      await first.close();
      await second.close();
      await drop(table)();
    }
  });

  it('a writer session killed by the server is replaced: retryable error at most once, then on', () =>
    withStore(async (a, table) => {
      await a.commit([put('k', '1')], enc('m1'));
      const killed = await rows(
        `SELECT pg_terminate_backend(l.pid) AS ok FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objid = hashtext('${table}')::oid AND l.objsubid = 2`,
      );
      expect(killed).toEqual([{ ok: true }]);
      await new Promise((resolve) => setTimeout(resolve, 100));
      const first = await a.commit([put('k', '2')], enc('m2')).catch((err: unknown) => err);
      if (first !== undefined) {
        expect(first).toBeInstanceOf(StorageError);
        expect((first as StorageError).retryable).toBe(true);
        await a.commit([put('k', '2')], enc('m2'));
      }
      expect(await dump(a)).toEqual({ data: { k: '2' }, meta: 'm2' });
    }));

  it("keeps each row's entry hash (h) with it; a version-2 store is migrated and its digest unrecorded until clear()", async () => {
    const table = await newTable();
    const put = (key: string, value: string) => ({ op: 'put' as const, key, value: Buffer.from(value) });
    try {
      const a = postgresAdapter({ connectionString: url, table });
      await a.open({ nodeId: 'n' });
      await a.commit([put('k1', 'a'), put('k2', 'b')], Buffer.from('m1'));
      await a.commit([put('k1', 'c'), { op: 'delete', key: 'k2' }], Buffer.from('m2'));
      await a.writeArea!(1, [put('k3', 'd'), { op: 'delete', key: 'k1' }]);
      await a.formSnapshot!(1, Buffer.from('m3'));
      const hs = await rows(`SELECT convert_from(key, 'UTF8') AS k, encode(h, 'hex') AS h FROM "${table}"`);
      expect(hs).toEqual([{ k: 'k3', h: createHash('md5').update('2:k3d').digest('hex') }]);
      expect((await a.verify()).status).toBe('ok');
      await a.close();
      // What version 2 left: no h column.
      await rows(`ALTER TABLE "${table}" DROP COLUMN h`);
      await rows(`UPDATE "${table}_schema" SET version = 2`);
      const b = postgresAdapter({ connectionString: url, table });
      await b.open({ nodeId: 'n' });
      expect(await rows(`SELECT version FROM "${table}_schema"`)).toEqual([{ version: 3 }]);
      expect((await b.verify()).status).toBe('unrecorded');
      await b.clear();
      await b.commit([put('k4', 'e')], Buffer.from('m4'));
      expect((await b.verify()).status).toBe('ok');
      await b.close();
    } finally {
      await drop(table)();
    }
  });

  it('refuses a store of a newer schema version and a table that is not a store', async () => {
    const table = await newTable();
    try {
      const a = postgresAdapter({ connectionString: url, table });
      await a.open();
      await a.close();
      await rows(`UPDATE "${table}_schema" SET version = 4`);
      const b = postgresAdapter({ connectionString: url, table });
      await expect(b.open()).rejects.toThrow(
        /schema version 4, newer than this restartpoint build reads \(3\)/,
      );
      await b.close();

      const foreign = await newTable();
      await rows(`CREATE TABLE "${foreign}" (id int)`);
      try {
        const c = postgresAdapter({ connectionString: url, table: foreign });
        const err = (await c.open().catch((e: unknown) => e)) as ConfigError;
        expect(err).toBeInstanceOf(ConfigError);
        expect(err.option).toBe('storage.table');
        await c.close();
        expect(await rows(`SELECT to_regclass('"${foreign}_schema"') AS s`)).toEqual([{ s: null }]);
      } finally {
        await drop(foreign)();
      }
    } finally {
      await drop(table)();
    }
  });

  it('runs on a passed-in pool and leaves it open; uses the pg module given as lib', async () => {
    const table = await newTable();
    const pool = new pg.Pool({ connectionString: url });
    try {
      const a = postgresAdapter({ pool, table });
      await a.commit([put('k', 'v')], enc('m'));
      await a.close();
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      const b = postgresAdapter({ connectionString: url, table, lib: { Pool: pg.Pool } });
      expect(await dump(b)).toEqual({ data: { k: 'v' }, meta: 'm' });
      await b.close();
    } finally {
      await pool.end();
      await drop(table)();
    }
  });

  it('apply() writes a group in order, later ops on a key winning', () =>
    withStore(async (a) => {
      await a.put('pre', enc('x'));
      await a.apply!([put('a', '1'), put('b', '1'), del('a'), put('c', '1'), del('pre'), put('b', '2')]);
      expect(await dump(a)).toEqual({ data: { b: '2', c: '1' }, meta: undefined });
    }));
});

// The snapshot-mode contract runs in the shared suite; these are the postgres-only parts: its
// stricter area checks and what the table holds after forming.
describe('postgres adapter snapshot mode: area checks and row reclaiming', () => {
  it('refuses areas at or below the formed snapshot, and forming over an unformed area', () =>
    withStore(async (a) => {
      await a.writeArea!(2, [put('a', '2')]);
      await a.formSnapshot!(2, enc('cp-2'));
      await expect(a.writeArea!(2, [put('a', 'x')])).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(a.writeArea!(1, [])).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(a.formSnapshot!(2, enc('again'))).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(a.writeArea!(0, [put('a', 'x')])).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(a.writeArea!(1.5, [put('a', 'x')])).rejects.toBeInstanceOf(InvalidArgumentError);
      await a.writeArea!(3, [put('b', '3')]);
      await expect(a.formSnapshot!(4, enc('cp-4'))).rejects.toThrow(
        /area 3 below it holds writes and was never formed/,
      );
      expect(await dump(a)).toEqual({ data: { a: '2' }, meta: 'cp-2' });
    }));

  it('forming reclaims superseded versions: one visible row per key, no visible tombstone', () =>
    withStore(async (a, table) => {
      await a.commit([put('a', '0'), put('b', '0'), put('c', '0')], enc('cp-0'));
      await a.writeArea!(1, [put('a', '1'), del('b'), del('never')]);
      await a.writeArea!(2, [put('a', '2'), put('c', '2')]);
      await a.formSnapshot!(1, enc('cp-1'));
      await a.formSnapshot!(2, enc('cp-2'));
      const all = await rows(
        `SELECT convert_from(key, 'UTF8') AS key, area::int, value IS NULL AS tomb FROM "${table}" ORDER BY 1`,
      );
      expect(all).toEqual([
        { key: 'a', area: 2, tomb: false },
        { key: 'c', area: 2, tomb: false },
      ]);
    }));
});

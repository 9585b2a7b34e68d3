import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { postgresAdapter } from '../../adapters/postgres/index.js';
import { ConfigError } from '../../src/errors.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';
import { testCrashDuringCommit } from './crash.js';
import { testAdapter } from './suite.js';

// A real PostgreSQL, never a stand-in. Each case gets a fresh table, dropped afterwards.
const url = process.env.RESTARTPOINT_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';

let reachable: Promise<void> | undefined;

/** Fails (never skips) with how to start PostgreSQL when it is not there. */
function needPostgres(): Promise<void> {
  reachable ??= sql('SELECT 1').catch((err: unknown) => {
    throw new Error(
      `PostgreSQL is not reachable at ${url} (${(err as Error).message}). The postgres adapter tests need it: ` +
        `start it (Debian: pg_ctlcluster 15 main start, or apt-get install postgresql first; the database "test" ` +
        `must exist: createdb -U postgres test), or point RESTARTPOINT_TEST_POSTGRES at one (postgres://user@host:port/db).`,
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

const drop = (table: string) => () => sql(`DROP TABLE IF EXISTS "${table}", "${table}_meta", "${table}_schema"`);

testAdapter('postgres', async () => {
  const table = await newTable();
  return {
    adapter: postgresAdapter({ connectionString: url, table }),
    reopen: async () => postgresAdapter({ connectionString: url, table }),
    cleanup: drop(table),
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

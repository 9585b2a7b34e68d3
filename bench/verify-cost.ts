/**
 * The cost of `verify()` (issue 12) on a 100 000-key store of 1 KiB values, per adapter: the
 * full rescan and the quick check, each the median of 3. Run after a build:
 *
 *   node dist/bench/verify-cost.js [keys]
 *
 * Needs the local Redis (RESTARTPOINT_BENCH_REDIS, default redis://127.0.0.1:6379) and
 * PostgreSQL (RESTARTPOINT_BENCH_POSTGRES, default postgres://postgres@127.0.0.1:5432/test).
 * Each store is created under a random name and removed afterwards.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileAdapter } from '../adapters/file/index.js';
import { memoryAdapter } from '../adapters/memory/index.js';
import { postgresAdapter } from '../adapters/postgres/index.js';
import { redisAdapter } from '../adapters/redis/index.js';
import type { StorageAdapter, WriteOp } from '../src/storage/adapter.js';

const KEYS = Number(process.argv[2] ?? 100_000);
const BATCH = 10_000;
const value = randomBytes(1024);

async function measure(name: string, a: StorageAdapter, cleanup: () => Promise<void>): Promise<void> {
  try {
    await a.open({ nodeId: 'bench' });
    let commitMs = 0;
    for (let i = 0; i < KEYS; i += BATCH) {
      const ops: WriteOp[] = [];
      for (let j = i; j < Math.min(KEYS, i + BATCH); j++) ops.push({ op: 'put', key: `key-${j}`, value });
      const t0 = performance.now();
      await a.commit(ops, Buffer.from(`cp-${i}`));
      commitMs += performance.now() - t0;
    }
    const full: number[] = [];
    const quick: number[] = [];
    for (let r = 0; r < 3; r++) {
      let t0 = performance.now();
      const v = await a.verify();
      full.push(performance.now() - t0);
      if (!v.ok) throw new Error(`${name}: verify not ok: ${v.detail}`);
      t0 = performance.now();
      await a.verify({ quick: true });
      quick.push(performance.now() - t0);
    }
    const med = (xs: number[]): string => xs.sort((x, y) => x - y)[1]!.toFixed(1);
    console.log(
      `${name.padEnd(9)} ${KEYS} keys: commit ${(commitMs / (KEYS / BATCH)).toFixed(0)} ms per ${BATCH}-key commit; ` +
        `verify full ${med(full)} ms, quick ${med(quick)} ms`,
    );
  } finally {
    await a.close();
    await cleanup();
  }
}

const dir = await mkdtemp(join(tmpdir(), 'rp-verify-'));
await measure('memory', memoryAdapter(), async () => undefined);
await measure('file', fileAdapter({ dir }), () => rm(dir, { recursive: true, force: true }));
const prefix = `rp-verify-${randomBytes(6).toString('hex')}`;
const redisUrl = process.env.RESTARTPOINT_BENCH_REDIS ?? 'redis://127.0.0.1:6379';
await measure('redis', redisAdapter({ url: redisUrl, prefix }), async () => {
  const r = redisAdapter({ url: redisUrl, prefix });
  await r.open();
  await r.clear();
  await r.close();
  const { Redis } = await import('ioredis');
  const c = new Redis(redisUrl);
  await c.unlink(`{${prefix}}:format`, `{${prefix}}:ident`, `{${prefix}}:digest`);
  c.disconnect();
});
const table = `rp_verify_${randomBytes(6).toString('hex')}`;
const pgUrl = process.env.RESTARTPOINT_BENCH_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';
await measure('postgres', postgresAdapter({ connectionString: pgUrl, table }), async () => {
  const pg = (await import('pg')).default;
  const c = new pg.Client({ connectionString: pgUrl });
  await c.connect();
  await c.query(`DROP TABLE IF EXISTS "${table}", "${table}_meta", "${table}_schema"`);
  await c.end();
});

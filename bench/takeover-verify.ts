/**
 * Takeover time with the store check (issue 12) on a 100 000-key store of 1 KiB values, per
 * adapter and `verifyStore` mode: a primary (memory store) writes the keys (100 checkpoints of
 * 1 000), a standby on the adapter under test applies them, the primary closes, and the
 * standby's takeover is timed (`rp.takeover`: `rollbackMs` holds the verify step). Run after a
 * build:
 *
 *   node dist/bench/takeover-verify.js [keys] [kinds...]
 *
 * Needs NATS (RESTARTPOINT_BENCH_NATS, default nats://127.0.0.1:4222), the local Redis
 * (RESTARTPOINT_BENCH_REDIS) and PostgreSQL (RESTARTPOINT_BENCH_POSTGRES).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileAdapter } from '../adapters/file/index.js';
import { memoryAdapter } from '../adapters/memory/index.js';
import { postgresAdapter } from '../adapters/postgres/index.js';
import { redisAdapter } from '../adapters/redis/index.js';
import { Restartpoint } from '../src/index.js';
import { deleteAppAt } from '../src/transport/inspect.js';
import type { StorageAdapter } from '../src/storage/adapter.js';

const KEYS = Number(process.argv[2] ?? 100_000);
const KINDS = process.argv.slice(3).length > 0 ? process.argv.slice(3) : ['redis', 'postgres', 'file'];
const NATS = process.env.RESTARTPOINT_BENCH_NATS ?? 'nats://127.0.0.1:4222';
const REDIS = process.env.RESTARTPOINT_BENCH_REDIS ?? 'redis://127.0.0.1:6379';
const PG = process.env.RESTARTPOINT_BENCH_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';
const value = randomBytes(1024);

async function make(kind: string): Promise<{ adapter: StorageAdapter; cleanup(): Promise<void> }> {
  const id = randomBytes(4).toString('hex');
  if (kind === 'file') {
    const dir = await mkdtemp(join(tmpdir(), 'rp-tv-'));
    return { adapter: fileAdapter({ dir }), cleanup: () => rm(dir, { recursive: true, force: true }) };
  }
  if (kind === 'redis') {
    const a = redisAdapter({ url: REDIS, prefix: `rp-tv-${id}` });
    return { adapter: a, cleanup: async () => undefined };
  }
  const table = `rp_tv_${id}`;
  return {
    adapter: postgresAdapter({ connectionString: PG, table }),
    cleanup: async () => {
      const pg = await import('pg');
      const c = new pg.default.Client({ connectionString: PG });
      await c.connect();
      await c.query(`DROP TABLE IF EXISTS "${table}", "${table}_meta", "${table}_schema"`);
      await c.end();
    },
  };
}

async function one(kind: string, verifyStore: 'off' | 'quick' | 'full'): Promise<void> {
  const app = `bench-tv-${randomBytes(4).toString('hex')}`;
  const s = await make(kind);
  const primary = await Restartpoint.start({
    app,
    nodeId: 'p',
    nats: { servers: NATS },
    storage: memoryAdapter(),
    initialState: () => ({ n: 0 }),
  });
  let standing!: () => void;
  const ready = new Promise<void>((r) => (standing = r));
  let applied = 0;
  const standby = Restartpoint.start({
    app,
    nodeId: 's',
    nats: { servers: NATS },
    storage: s.adapter,
    verifyStore,
    storeTimeoutMs: 120_000,
    initialState: () => ({ n: 0 }),
    log: (e) => {
      if (e.msg === 'standby') standing();
      if (e.msg === 'checkpoint applied') applied = Number(e.checkpoint);
    },
  });
  try {
    await ready;
    let last = 0;
    for (let i = 0; i < KEYS; i += 1000) {
      const puts: Promise<void>[] = [];
      for (let j = i; j < Math.min(KEYS, i + 1000); j++) puts.push(primary.store.put(`key-${j}`, value));
      await Promise.all(puts);
      last = (await primary.checkpoint({ n: i })).checkpoint;
    }
    while (applied < last) await new Promise((r) => setTimeout(r, 100));
    const t0 = performance.now();
    await primary.close();
    const rp = await standby;
    const ms = performance.now() - t0;
    const t = rp.takeover;
    console.log(
      JSON.stringify({
        kind,
        verifyStore,
        keys: KEYS,
        startMs: Math.round(ms),
        rollbackAndVerifyMs: Math.round(t.rollbackMs),
        catchUpMs: Math.round(t.catchUpMs),
        restoreMs: Math.round(t.restoreMs),
        fenceMs: Math.round(t.fenceMs),
      }),
    );
    await rp.close();
  } finally {
    await primary.close();
    await standby.then((r) => r.close()).catch(() => undefined);
    await s.cleanup();
    await deleteAppAt(NATS, app).catch(() => undefined);
  }
}

for (const kind of KINDS) for (const mode of ['off', 'quick', 'full'] as const) await one(kind, mode);

/**
 * Issue 13 across modes: bases go through the same codec as every frame, so a join from a base
 * works in signed mode (with encryption), with FEC shards, and on every store (memory, file,
 * Redis, PostgreSQL) in both modes (delay-write, snapshot). Each case: a primary makes 120
 * checkpoints, the standby (builder, on the case's store) makes a base on `restartpoint compact`,
 * a brand-new node on the case's store joins from it and then takes over with the exact state.
 * On the signed and FEC streams, `status` reads the base and the retained checkpoints with the
 * cluster key (the same codec as `inspect`).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { fileAdapter } from '../../adapters/file/index.js';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { postgresAdapter } from '../../adapters/postgres/index.js';
import { redisAdapter } from '../../adapters/redis/index.js';
import type { LogEvent, StartOptions } from '../../src/index.js';
import type { StorageAdapter } from '../../src/storage/adapter.js';
import { runCompact } from '../../src/cli/commands/compact.js';
import { readStatus } from '../../src/cli/commands/status-read.js';
import { EnvelopeCodec, parseClusterKey } from '../../src/protocol/envelope.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { NATS_URL } from '../helpers/nats.js';
import { startStandby } from '../helpers/standby.js';

const PG = process.env.RESTARTPOINT_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.RESTARTPOINT_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const KEY = randomBytes(32).toString('hex');

interface S {
  n: number;
}

const dirs: string[] = [];
const file = (): StorageAdapter => {
  const d = mkdtempSync(join(tmpdir(), 'rp-hmodes-'));
  dirs.push(d);
  return fileAdapter({ dir: d });
};
const tables: string[] = [];
const prefixes: string[] = [];
const postgres = (): StorageAdapter => {
  const table = `hmodes_${randomBytes(4).toString('hex')}`;
  tables.push(table);
  return postgresAdapter({ connectionString: PG, table });
};
const redis = (): StorageAdapter => {
  const prefix = `hmodes-${randomBytes(4).toString('hex')}`;
  prefixes.push(prefix);
  return redisAdapter({ url: REDIS_URL, prefix });
};
afterAll(async () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  if (prefixes.length > 0) {
    const r = new Redis(REDIS_URL);
    for (const p of prefixes) {
      const keys = await r.keys(`{${p}}:*`);
      if (keys.length > 0) await r.del(...keys);
    }
    r.disconnect();
  }
  if (tables.length === 0) return;
  const client = new pg.Client({ connectionString: PG });
  await client.connect();
  for (const t of tables) await client.query(`DROP TABLE IF EXISTS ${t}, ${t}_meta, ${t}_schema`);
  await client.end();
});

const CASES: {
  name: string;
  store: () => StorageAdapter;
  extra: Partial<StartOptions<S>>;
  /** Read `status` and expect the base and the retained checkpoints (with this cluster key). */
  status?: { key?: string };
}[] = [
  {
    name: 'signed and encrypted, file store, delay-write',
    store: file,
    extra: { clusterKey: KEY, encrypt: true },
    status: { key: KEY },
  },
  {
    name: 'FEC 2+1, file store, delay-write',
    store: file,
    extra: { fec: { data: 2, parity: 1 } },
    status: {},
  },
  { name: 'file store, delay-write', store: file, extra: {} },
  { name: 'file store, snapshot', store: file, extra: { mode: 'snapshot' } },
  { name: 'memory store, delay-write', store: memoryAdapter, extra: {} },
  { name: 'memory store, snapshot', store: memoryAdapter, extra: { mode: 'snapshot' } },
  { name: 'Redis, delay-write', store: redis, extra: {} },
  { name: 'Redis, snapshot', store: redis, extra: { mode: 'snapshot' } },
  { name: 'PostgreSQL, delay-write', store: postgres, extra: {} },
  { name: 'PostgreSQL, snapshot', store: postgres, extra: { mode: 'snapshot' } },
];

describe('join from a base in every mode', () => {
  const live = liveNodes();

  for (const c of CASES) {
    it(
      c.name,
      async () => {
        const app = live.app('hmodes');
        const opts = (nodeId: string, extra: Partial<StartOptions<S>>): StartOptions<S> =>
          nodeOptions<S>(app, nodeId, {
            initialState: () => ({ n: 0 }),
            leaseTtlMs: 800,
            base: { everyCheckpoints: 1_000_000 },
            retain: { checkpoints: 20 },
            ...c.extra,
            ...extra,
          });
        const a = await live.start(opts('a', { storage: memoryAdapter(), base: { build: false } }));
        const node = (id: string, extra: Partial<StartOptions<S>>) => {
          const events: LogEvent[] = [];
          const waiters: { pred: (e: LogEvent) => boolean; resolve: (e: LogEvent) => void }[] = [];
          const ac = new AbortController();
          const storage = c.store();
          const s = startStandby<S>({
            ...opts(id, { storage, ...extra }),
            signal: ac.signal,
            log: (e) => {
              events.push(e);
              for (let i = waiters.length - 1; i >= 0; i--)
                if (waiters[i]!.pred(e)) waiters.splice(i, 1)[0]!.resolve(e);
            },
          });
          return {
            primary: s.primary,
            waitFor: (pred: (e: LogEvent) => boolean): Promise<LogEvent> => {
              const hit = events.find(pred);
              return hit ? Promise.resolve(hit) : new Promise((resolve) => waiters.push({ pred, resolve }));
            },
            stop: async () => {
              ac.abort();
              await s.primary.catch(() => undefined);
              await storage.close();
            },
          };
        };
        const b = node('b', {});
        await b.waitFor((e) => e.msg === 'standby');
        for (let n = 1; n <= 120; n++) {
          void a.store.put(`k${n % 30}`, `v${n}`);
          await a.checkpoint({ n });
        }
        await b.waitFor((e) => e.msg === 'checkpoint applied' && e.checkpoint === 120);
        const compacted = await runCompact({ nats: NATS_URL, app, timeoutMs: 30_000 });
        expect(compacted).toMatchObject({ ok: true, checkpoint: 120 });
        expect(compacted.purgedBelow![0]).toBeGreaterThan(1);
        if (c.status) {
          const envelope = c.status.key
            ? new EnvelopeCodec({ app, keys: parseClusterKey(c.status.key) })
            : undefined;
          const st = await readStatus({ nats: NATS_URL, app, envelope });
          // The window: 20 checkpoints below the base at 120 (101..120), none purged above it.
          expect(st.history).toEqual([
            expect.objectContaining({
              reachable: true,
              baseCheckpoint: 120,
              oldestRetainedCheckpoint: 101,
              retainedCheckpoints: 20,
            }),
          ]);
          expect(st.history![0]!.firstSeq).toBe(compacted.purgedBelow![0]);
        }

        const j = node('j', { base: { build: false } });
        const start = await j.waitFor((e) => e.msg === 'start path');
        expect(start).toMatchObject({ from: 'base', base: 120 });
        await a.store.put('last', 'x');
        await a.checkpoint({ n: 121 });
        await b.stop();
        await a.close();
        const rp = live.keep(await j.primary);
        expect(rp.resumedFrom?.checkpoint).toBe(121);
        expect(rp.state).toEqual({ n: 121 });
        expect(Buffer.from((await rp.store.get('last'))!).toString()).toBe('x');
        expect(Buffer.from((await rp.store.get('k0'))!).toString()).toBe('v120');
        expect(Buffer.from((await rp.store.get('k29'))!).toString()).toBe('v119');
      },
      60_000,
    );
  }
});

/**
 * store.*: replicated writes per second through `rp.store.put` (1 KiB values, a checkpoint
 * every 1 000 writes, 100 puts in flight) next to the same store's raw write path in the same
 * run (100 in flight for memory, Redis and Postgres; the file adapter's own put, one at a time,
 * since concurrent puts to one file store are serialized anyway), for every adapter; the standby's apply rate; and, for adapters with
 * snapshot mode, the time to form a snapshot of and to roll back 10 000 unsealed writes.
 *
 * Ratios: `store.<adapter>.replicated_over_raw` = replicated writes/s ÷ raw writes/s, and
 * `store.memory.replicated_over_publish` = replicated writes/s (memory store) ÷ the raw async
 * JetStream publish of the same bytes to the same server (`rawPublish`), and
 * `store.memory.replicated_over_publish_synced` = the same replicated writes/s ÷ that raw publish
 * with the replicated writer's sync points: it awaits every ack after each 1 000 values, where the
 * writer awaits its checkpoint. The first baseline never waits; the second pays the same pipeline
 * drains the restart points do, so its ratio is the framework's own overhead.
 * `store.memory.floor_over_publish` = the floor of any replicated write path (`floorPath`) ÷ the
 * unsynced raw publish: what `replicated_over_publish` can reach on this host at best; and
 * `store.memory.replicated_over_floor` = replicated writes/s ÷ that floor: the framework's own
 * cost against the least work, steadier than either ratio to the raw publish.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { fileAdapter } from '../adapters/file/index.js';
import { memoryAdapter } from '../adapters/memory/index.js';
import { postgresAdapter } from '../adapters/postgres/index.js';
import { redisAdapter } from '../adapters/redis/index.js';
import { Restartpoint } from '../src/index.js';
import { appNames } from '../src/protocol/subjects.js';
import { closeLink, ensureStream, openLink } from '../src/transport/connection.js';
import type { StorageAdapter, WriteOp } from '../src/storage/adapter.js';
import { medianOf, mediansInterleaved, type BenchContext, type BenchRow, type Suite } from './harness.js';

const WRITES = 20_000;
const IN_FLIGHT = 100;
const CHECKPOINT_EVERY = 1_000;
const VALUE = randomBytes(1024);

/** A store kind under test: how to make a fresh one, and its raw write path. */
export interface StoreKind {
  readonly name: string;
  make(ctx: BenchContext): Promise<{ adapter: StorageAdapter; cleanup(): Promise<void> }>;
  /** Writes `n` 1 KiB values through the store's own client, `IN_FLIGHT` at a time; returns ms. */
  raw(ctx: BenchContext, n: number): Promise<number>;
}

const tempDir = (): Promise<string> => mkdtemp(join(tmpdir(), 'rp-bench-'));

/** Memory and file, whose raw path is the adapter's own put. */
export const localKinds: StoreKind[] = [
  {
    name: 'memory',
    make: async () => ({ adapter: memoryAdapter(), cleanup: async () => undefined }),
    raw: async (_ctx, n) => {
      const a = memoryAdapter();
      await a.open();
      return timeInFlight(n, (i) => a.put(`k${i % 5000}`, VALUE));
    },
  },
  {
    name: 'file',
    make: async () => {
      const dir = await tempDir();
      return { adapter: fileAdapter({ dir }), cleanup: () => rm(dir, { recursive: true, force: true }) };
    },
    raw: async (_ctx, n) => {
      const dir = await tempDir();
      const a = fileAdapter({ dir });
      await a.open();
      try {
        return await timeSerial(n, (i) => a.put(`k${i % 5000}`, VALUE));
      } finally {
        await a.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  },
];

/** Extra kinds registered by other bench files (redis, postgres). */
export const extraKinds: StoreKind[] = [];

async function timeInFlight(n: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i += IN_FLIGHT) {
    const batch: Promise<unknown>[] = [];
    for (let j = i; j < Math.min(n, i + IN_FLIGHT); j++) batch.push(op(j));
    await Promise.all(batch);
  }
  return performance.now() - t0;
}

async function timeSerial(n: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await op(i);
  return performance.now() - t0;
}

async function dropApp(servers: string, app: string): Promise<void> {
  const nc = await connect({ servers });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.delete(`RP_${app}`).catch(() => undefined);
  await jsm.streams.delete(`KV_rp-${app}-lease`).catch(() => undefined);
  await nc.close();
}

/** Bytes of one write frame: the SDK's default `batchBytes`, capped below the server's max payload. */
const FRAME_BYTES = 256 * 1024;

/**
 * The transport's own limit for the same bytes: `n` 1 KiB values, cut into messages of the size
 * the replicator's write frames have (`batchBytes`, 256 KiB by default), published to the app's
 * stream on the same server with the same stream settings and dedupe ids, up to 256 in flight
 * (the publisher's default), every ack awaited. With `syncEvery`, a message also ends at each
 * multiple of `syncEvery` values, and every ack is awaited there before the next value is sent:
 * the same pipeline drains as a writer awaiting a checkpoint every `syncEvery` writes, whose last
 * frame before each checkpoint is short the same way. Returns ms.
 */
async function rawPublish(ctx: BenchContext, n: number, syncEvery?: number): Promise<number> {
  const app = `bench-${randomBytes(4).toString('hex')}`;
  const names = appNames(app);
  const link = await openLink({ servers: ctx.nats }, 'bench-raw-publish');
  try {
    await ensureStream(link, names);
    const perMsg = Math.floor(Math.min(FRAME_BYTES, link.maxPayload - 4096) / VALUE.length);
    const t0 = performance.now();
    const inFlight = new Set<Promise<unknown>>();
    let m = 0;
    for (let sent = 0; sent < n;) {
      const toSync = syncEvery === undefined ? Infinity : syncEvery - (sent % syncEvery);
      const count = Math.min(perMsg, n - sent, toSync);
      const body = Buffer.allocUnsafe(count * VALUE.length);
      for (let i = 0; i < count; i++) VALUE.copy(body, i * VALUE.length);
      const p = link.js.publish(names.subject, body, { msgID: `${app}.1.${++m}.0` });
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      sent += count;
      if (count === toSync) await Promise.all(inFlight);
      else if (inFlight.size >= 256) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    return performance.now() - t0;
  } finally {
    await closeLink(link);
    await dropApp(ctx.nats, app);
  }
}

/**
 * The floor of any replicated write path on this host: the least work a primary must do per write
 * with the replicated side's workload, and nothing else. Each write is a promise, its record (op
 * byte, key, value) is copied into a 256 KiB message being filled, its value copied into a `Map`
 * the way the memory adapter copies (an exact allocation per value); full messages are published
 * as they fill, up to 256 in flight; every `syncEvery` writes the open message goes out and every
 * ack is awaited (a checkpoint's wait, without its image or seal). No SDK, no framing or CRC, no frame sequence, no
 * lease. `store.memory.floor_over_publish` bounds what `replicated_over_publish` can reach here.
 */
async function floorPath(ctx: BenchContext, n: number, syncEvery: number): Promise<number> {
  const app = `bench-${randomBytes(4).toString('hex')}`;
  const names = appNames(app);
  const link = await openLink({ servers: ctx.nats }, 'bench-floor');
  try {
    await ensureStream(link, names);
    const cap = Math.min(FRAME_BYTES, link.maxPayload - 4096);
    const map = new Map<string, Uint8Array>();
    const inFlight = new Set<Promise<unknown>>();
    let m = 0;
    let body = Buffer.allocUnsafe(cap + 4096);
    let off = 0;
    const flush = (): void => {
      const p = link.js.publish(names.subject, body.subarray(0, off), { msgID: `${app}.1.${++m}.0` });
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      body = Buffer.allocUnsafe(cap + 4096);
      off = 0;
    };
    const write = (key: string): Promise<void> =>
      new Promise<void>((resolve) => {
        body[off] = 1;
        body.writeUInt32BE(key.length, off + 1);
        off += 5 + body.write(key, off + 5, 'latin1');
        body.writeUInt32BE(VALUE.length, off);
        VALUE.copy(body, off + 4);
        off += 4 + VALUE.length;
        map.set(key, new Uint8Array(VALUE));
        if (off >= cap) flush();
        resolve();
      });
    const t0 = performance.now();
    for (let i = 0; i < n; i += IN_FLIGHT) {
      const batch: Promise<void>[] = [];
      for (let j = i; j < Math.min(n, i + IN_FLIGHT); j++) batch.push(write(`k${j % 5000}`));
      await Promise.all(batch);
      if ((i + IN_FLIGHT) % syncEvery === 0) {
        if (off > 0) flush();
        await Promise.all(inFlight);
      } else if (inFlight.size >= 256) {
        await Promise.race(inFlight);
      }
    }
    if (off > 0) flush();
    await Promise.all(inFlight);
    return performance.now() - t0;
  } finally {
    await closeLink(link);
    await dropApp(ctx.nats, app);
  }
}

/** Replicated writes: returns ms for `n` puts with a checkpoint every 1 000. */
async function replicated(ctx: BenchContext, kind: StoreKind, n: number): Promise<number> {
  const app = `bench-${randomBytes(4).toString('hex')}`;
  const { adapter, cleanup } = await kind.make(ctx);
  const rp = await Restartpoint.start({
    app,
    nodeId: 'bench',
    nats: { servers: ctx.nats },
    storage: adapter,
  });
  try {
    const t0 = performance.now();
    for (let i = 0; i < n; i += IN_FLIGHT) {
      const batch: Promise<void>[] = [];
      for (let j = i; j < Math.min(n, i + IN_FLIGHT); j++) batch.push(rp.store.put(`k${j % 5000}`, VALUE));
      await Promise.all(batch);
      if ((i + IN_FLIGHT) % CHECKPOINT_EVERY === 0) await rp.checkpoint({ i });
    }
    await rp.checkpoint({ done: true });
    return performance.now() - t0;
  } finally {
    await rp.close();
    await cleanup();
    await dropApp(ctx.nats, app);
  }
}

/** Standby apply rate: a primary writes `n` puts, then a fresh standby replays them; returns writes/s. */
async function applyRate(ctx: BenchContext, kind: StoreKind, n: number): Promise<number> {
  const app = `bench-${randomBytes(4).toString('hex')}`;
  const a = await kind.make(ctx);
  const b = await kind.make(ctx);
  const rp = await Restartpoint.start({ app, nodeId: 'p', nats: { servers: ctx.nats }, storage: a.adapter });
  try {
    for (let i = 0; i < n; i += IN_FLIGHT) {
      const batch: Promise<void>[] = [];
      for (let j = i; j < Math.min(n, i + IN_FLIGHT); j++) batch.push(rp.store.put(`k${j}`, VALUE));
      await Promise.all(batch);
      if ((i + IN_FLIGHT) % CHECKPOINT_EVERY === 0) await rp.checkpoint({ i });
    }
    await rp.checkpoint({ done: true });
    const t0 = performance.now();
    const standby = Restartpoint.start({ app, nodeId: 's', nats: { servers: ctx.nats }, storage: b.adapter });
    // close() releases the lease: the standby takes over once it has applied the whole stream.
    await rp.close();
    const s = await standby;
    const ms = performance.now() - t0;
    await s.close();
    return (n / ms) * 1000;
  } finally {
    await rp.close();
    await a.cleanup();
    await b.cleanup();
    await dropApp(ctx.nats, app);
  }
}

/** Snapshot mode: ms to form a snapshot of, and to roll back, 10 000 unsealed writes. */
async function snapshotTimes(
  ctx: BenchContext,
  kind: StoreKind,
): Promise<{ form: number; rollback: number } | undefined> {
  const { adapter, cleanup } = await kind.make(ctx);
  try {
    await adapter.open();
    if (
      !adapter.capabilities.snapshot ||
      !adapter.writeArea ||
      !adapter.formSnapshot ||
      !adapter.releaseAreas
    ) {
      return undefined;
    }
    const ops: WriteOp[] = Array.from({ length: 10_000 }, (_, i) => ({
      op: 'put',
      key: `k${i}`,
      value: VALUE,
    }));
    for (let i = 0; i < ops.length; i += 1000) await adapter.writeArea(1, ops.slice(i, i + 1000));
    let t0 = performance.now();
    await adapter.formSnapshot(1, Buffer.from('{}'));
    const form = performance.now() - t0;
    for (let i = 0; i < ops.length; i += 1000) await adapter.writeArea(2, ops.slice(i, i + 1000));
    t0 = performance.now();
    await adapter.releaseAreas();
    const rollback = performance.now() - t0;
    return { form, rollback };
  } finally {
    await adapter.close();
    await cleanup();
  }
}

/**
 * What keeping the content digest (issue 12) costs a standby's commit: ms per commit of 1 000
 * puts of 1 KiB (half of them overwrites) into a store whose digest is recorded, and into one
 * whose digest is unrecorded (a direct put first: the commit then keeps none), interleaved,
 * medians of 20 each. `undefined` for adapters that keep no digest (memory, file).
 */
async function digestCost(
  ctx: BenchContext,
  kind: StoreKind,
): Promise<{ recorded: number; unrecorded: number } | undefined> {
  if (kind.name !== 'redis' && kind.name !== 'postgres') return undefined;
  const rec = await kind.make(ctx);
  const unrec = await kind.make(ctx);
  try {
    await rec.adapter.open({ nodeId: 'bench' });
    await unrec.adapter.open({ nodeId: 'bench' });
    await unrec.adapter.put('unrecorded', VALUE);
    const times = { recorded: [] as number[], unrecorded: [] as number[] };
    for (let r = 0; r < 20; r++) {
      const ops: WriteOp[] = Array.from({ length: 1000 }, (_, i) => ({
        op: 'put',
        key: `k${(r * 500 + i) % 5000}`,
        value: VALUE,
      }));
      for (const [which, a] of [
        ['recorded', rec.adapter],
        ['unrecorded', unrec.adapter],
      ] as const) {
        const t0 = performance.now();
        await a.commit(ops, Buffer.from(`cp-${r}`));
        times[which].push(performance.now() - t0);
      }
    }
    const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
    return { recorded: median(times.recorded), unrecorded: median(times.unrecorded) };
  } finally {
    await rec.adapter.close();
    await unrec.adapter.close();
    await rec.cleanup();
    await unrec.cleanup();
  }
}

/** The store suite. */
export const storeSuite: Suite = {
  prefix: 'store',
  description: 'replicated rp.store.put vs the raw store client, standby apply rate, snapshot form/rollback',
  async run(ctx) {
    const rows: BenchRow[] = [];
    const ratios: Record<string, number> = {};
    for (const kind of [...localKinds, ...extraKinds].filter((k) => ctx.wants(`store.${k.name}`))) {
      ctx.progress(`  store.${kind.name}: raw vs replicated, ${WRITES} writes x ${ctx.repeat}, interleaved`);
      const memory = kind.name === 'memory';
      // Taken in turn, round by round: the baselines and the replicated path see the same load.
      const ms = await mediansInterleaved(ctx.repeat, {
        raw: () => kind.raw(ctx, WRITES),
        replicated: () => replicated(ctx, kind, WRITES),
        ...(memory
          ? {
              publish: () => rawPublish(ctx, WRITES),
              synced: () => rawPublish(ctx, WRITES, CHECKPOINT_EVERY),
              floor: () => floorPath(ctx, WRITES, CHECKPOINT_EVERY),
            }
          : {}),
      } as Record<'raw' | 'replicated' | 'publish' | 'synced' | 'floor', () => Promise<number>>);
      const raw = (WRITES / ms.raw) * 1000;
      const rep = (WRITES / ms.replicated) * 1000;
      rows.push({ name: `store.${kind.name}.raw`, value: raw, unit: 'writes/s' });
      rows.push({ name: `store.${kind.name}.replicated`, value: rep, unit: 'writes/s' });
      ratios[`store.${kind.name}.replicated_over_raw`] = rep / raw;
      if (memory) {
        /** Writes/s of a memory-only measurement, added as a row. */
        const rate = (name: string, runMs: number, note: string): number => {
          const value = (WRITES / runMs) * 1000;
          rows.push({ name: `store.memory.${name}`, value, unit: 'writes/s', note });
          return value;
        };
        const pub = rate(
          'publish',
          ms.publish,
          'raw JetStream publish of the same bytes, 256 KiB messages, 256 in flight',
        );
        ratios['store.memory.replicated_over_publish'] = rep / pub;
        const synced = rate(
          'publish_synced',
          ms.synced,
          `the same, every ack awaited after each ${CHECKPOINT_EVERY} values (the writer's checkpoints)`,
        );
        ratios['store.memory.replicated_over_publish_synced'] = rep / synced;
        const floor = rate(
          'floor',
          ms.floor,
          'the least work per write: a promise, a copy into the message and one into a Map, the same syncs',
        );
        ratios['store.memory.floor_over_publish'] = floor / pub;
        ratios['store.memory.replicated_over_floor'] = rep / floor;
      }
      const apply = await medianOf(ctx.repeat, () => applyRate(ctx, kind, 10_000));
      rows.push({
        name: `store.${kind.name}.standby_apply`,
        value: apply,
        unit: 'writes/s',
        note: 'replay from the stream',
      });
      const dc = await digestCost(ctx, kind);
      if (dc) {
        rows.push({ name: `store.${kind.name}.commit_1k_digest`, value: dc.recorded, unit: 'ms' });
        rows.push({
          name: `store.${kind.name}.commit_1k_unrecorded`,
          value: dc.unrecorded,
          unit: 'ms',
          note: 'same commits, no digest kept',
        });
        ratios[`store.${kind.name}.commit_digest_over_unrecorded`] = dc.unrecorded / dc.recorded;
      }
      const snap = await snapshotTimes(ctx, kind);
      if (snap) {
        rows.push({ name: `store.${kind.name}.snapshot_form_10k`, value: snap.form, unit: 'ms' });
        rows.push({ name: `store.${kind.name}.rollback_10k`, value: snap.rollback, unit: 'ms' });
      }
    }
    return { rows, ratios };
  },
};

/** Redis: raw = ioredis pipelined SET in batches of 100. */
const redisKind: StoreKind = {
  name: 'redis',
  make: async (ctx) => {
    const prefix = `rp-bench-${randomBytes(4).toString('hex')}`;
    const adapter = redisAdapter({ url: ctx.redisUrl, prefix });
    return {
      adapter,
      cleanup: async () => {
        const a = redisAdapter({ url: ctx.redisUrl, prefix });
        await a.open();
        await a.clear();
        await a.close();
      },
    };
  },
  raw: async (ctx, n) => {
    const { Redis } = await import('ioredis');
    const c = new Redis(ctx.redisUrl);
    const prefix = `rp-bench-raw-${randomBytes(4).toString('hex')}`;
    try {
      const t0 = performance.now();
      for (let i = 0; i < n; i += IN_FLIGHT) {
        const p = c.pipeline();
        for (let j = i; j < Math.min(n, i + IN_FLIGHT); j++) p.set(`${prefix}:k${j % 5000}`, VALUE);
        await p.exec();
      }
      return performance.now() - t0;
    } finally {
      const keys = await c.keys(`${prefix}:*`);
      for (let i = 0; i < keys.length; i += 1000) await c.del(...keys.slice(i, i + 1000));
      c.disconnect();
    }
  },
};

/** PostgreSQL: raw = pg multi-row INSERT … ON CONFLICT in batches of 100. */
const postgresKind: StoreKind = {
  name: 'postgres',
  make: async (ctx) => {
    const table = `rp_bench_${randomBytes(4).toString('hex')}`;
    return {
      adapter: postgresAdapter({ connectionString: ctx.postgresUrl, table }),
      cleanup: () => dropTables(ctx.postgresUrl, table),
    };
  },
  raw: async (ctx, n) => {
    const pg = await import('pg');
    const client = new pg.default.Client({ connectionString: ctx.postgresUrl });
    await client.connect();
    const table = `rp_bench_raw_${randomBytes(4).toString('hex')}`;
    try {
      await client.query(`CREATE TABLE ${table} (key text PRIMARY KEY, value bytea NOT NULL)`);
      const t0 = performance.now();
      for (let i = 0; i < n; i += IN_FLIGHT) {
        const keys: string[] = [];
        const values: Buffer[] = [];
        for (let j = i; j < Math.min(n, i + IN_FLIGHT); j++) {
          keys.push(`k${j % 5000}`);
          values.push(VALUE);
        }
        await client.query(
          `INSERT INTO ${table} (key, value) SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`,
          [keys, values],
        );
      }
      return performance.now() - t0;
    } finally {
      await client.query(`DROP TABLE IF EXISTS ${table}`);
      await client.end();
    }
  },
};

/** Drops a bench table and whatever side tables the adapter made with its name as prefix. */
async function dropTables(url: string, table: string): Promise<void> {
  const pg = await import('pg');
  const client = new pg.default.Client({ connectionString: url });
  await client.connect();
  try {
    const r = await client.query<{ tablename: string }>(
      `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1`,
      [`${table}%`],
    );
    for (const { tablename } of r.rows) await client.query(`DROP TABLE IF EXISTS "${tablename}" CASCADE`);
  } finally {
    await client.end();
  }
}

extraKinds.push(redisKind, postgresKind);

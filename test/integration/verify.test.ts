/**
 * `restartpoint verify` run as the built bin against real stores: a file store and a Redis store
 * committed through their adapters verify ok; a few keys deleted underneath (HDEL on the data
 * hash) or the log truncated is exit 1 naming the mismatch; a store wiped, or another node's,
 * is exit 1; a bad config is exit 2.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileAdapter } from '../../adapters/file/index.js';
import { postgresAdapter } from '../../adapters/postgres/index.js';
import { redisAdapter } from '../../adapters/redis/index.js';
import pg from 'pg';
import type { StorageAdapter } from '../../src/storage/adapter.js';
import type { AppVerifyReport } from '../../src/cli/commands/verify.js';
import { runCli } from '../helpers/cli.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { startStandby } from '../helpers/standby.js';

const BIN = fileURLToPath(new URL('../../bin/restartpoint.js', import.meta.url));
const REDIS_URL = process.env.RESTARTPOINT_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const PG_URL = process.env.RESTARTPOINT_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';
const run = (...args: string[]) =>
  spawnSync(process.execPath, [BIN, 'verify', ...args], { encoding: 'utf8', timeout: 60_000 });
const json = (r: ReturnType<typeof run>) => JSON.parse(r.stdout) as Record<string, unknown>;

let root: string;
let redis: Redis;
const prefixes: string[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'rp-verify-'));
  redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
  } catch (err) {
    throw new Error(`Redis is required at ${REDIS_URL} (npm test starts it): ${(err as Error).message}`);
  }
});
afterAll(async () => {
  for (const p of prefixes) {
    const keys = await redis.keys(`{${p}}:*`);
    if (keys.length > 0) await redis.del(...keys);
  }
  redis?.disconnect();
  await rm(root, { recursive: true, force: true });
});

/** Three commits of 20 keys each (values of 300 bytes, so that the log is several KiB). */
async function fill(adapter: StorageAdapter, nodeId: string): Promise<void> {
  await adapter.open({ nodeId });
  for (let c = 1; c <= 3; c++) {
    const ops = Array.from({ length: 20 }, (_, i) => ({
      op: 'put' as const,
      key: `k${c}-${i}`,
      value: Buffer.alloc(300, c * 20 + i),
    }));
    await adapter.commit(ops, Buffer.from(`meta ${c}`));
  }
  await adapter.close();
}

async function config(name: string, storage: string, nodeId = 'b'): Promise<string> {
  const file = join(root, `${name}.yaml`);
  await writeFile(
    file,
    [
      `app: verify-${name}`,
      `nodeId: ${nodeId}`,
      "nats: { servers: 'nats://127.0.0.1:4222' }",
      `storage: ${storage}`,
      '',
    ].join('\n'),
  );
  return file;
}

describe('restartpoint verify', () => {
  it('redis: ok after commits; HDEL of a few fields underneath is exit 1 naming the mismatch', async () => {
    const prefix = `rp-verify-${process.pid}-${Date.now()}`;
    prefixes.push(prefix);
    await fill(redisAdapter({ url: REDIS_URL, prefix }), 'b');
    const cfg = await config('redis', `{ kind: redis, prefix: '${prefix}', url: '${REDIS_URL}' }`);

    const ok = run('--config', cfg, '--json');
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    expect(json(ok)).toMatchObject({
      ok: true,
      status: 'ok',
      keys: 60,
      expectedKeys: 60,
      committed: true,
      quick: false,
    });
    expect(json(ok).digest).toBe(json(ok).expectedDigest);
    expect(json(ok).identity).toMatchObject({ nodeId: 'b' });
    const human = run('--config', cfg);
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(/status\s+ok/);
    expect(human.stdout).toMatch(/keys\s+60 found, 60 expected/);
    expect(human.stdout).toMatch(/took\s+\d+ ms/);

    await redis.hdel(`{${prefix}}:data`, 'k1-0', 'k2-5', 'k3-19');
    for (const quick of [[], ['--quick']]) {
      const bad = run('--config', cfg, '--json', ...quick);
      expect(bad.status).toBe(1);
      expect(json(bad)).toMatchObject({ ok: false, status: 'mismatch', keys: 57, expectedKeys: 60 });
      expect(json(bad).fix).toMatch(/restart the node/);
    }
    const human2 = run('--config', cfg);
    expect(human2.status).toBe(1);
    expect(human2.stdout).toMatch(/status\s+mismatch\s+\(NOT OK\)/);
    expect(human2.stdout).toMatch(/keys\s+57 found, 60 expected/);
  });

  it("redis: a primary's direct writes leave it unrecorded: exit 0, identity only; verify writes nothing", async () => {
    const prefix = `rp-verify-direct-${process.pid}-${Date.now()}`;
    prefixes.push(prefix);
    await fill(redisAdapter({ url: REDIS_URL, prefix }), 'b');
    const a = redisAdapter({ url: REDIS_URL, prefix });
    await a.open({ nodeId: 'b' });
    await a.put('direct', Buffer.from('x'));
    await a.close();
    const snapshot = async () => {
      const keys = (await redis.keys(`{${prefix}}:*`)).sort();
      return Promise.all(keys.map(async (k) => [k, (await redis.dumpBuffer(k))?.toString('hex')]));
    };
    const before = await snapshot();
    const cfg = await config('redis-d', `{ kind: redis, prefix: '${prefix}', url: '${REDIS_URL}' }`);
    const r = run('--config', cfg, '--json');
    expect(r.status).toBe(0);
    expect(json(r)).toMatchObject({ ok: true, status: 'unrecorded', keys: 61, expectedKeys: null });
    expect(json(r).fix).toMatch(/only the identity was checked/);
    expect(await snapshot()).toEqual(before);
  });

  it("redis: a store wiped underneath, or another node's, is exit 1 (empty / lost)", async () => {
    const prefix = `rp-verify-wipe-${process.pid}-${Date.now()}`;
    prefixes.push(prefix);
    await fill(redisAdapter({ url: REDIS_URL, prefix }), 'b');
    const other = await config('redis-c', `{ kind: redis, prefix: '${prefix}', url: '${REDIS_URL}' }`, 'c');
    const lost = run('--config', other, '--json');
    expect(lost.status).toBe(1);
    expect(json(lost)).toMatchObject({ ok: false, status: 'lost' });
    expect(json(lost).detail).toMatch(/ERR_STORE_LOST/);
    expect(json(lost).fix).toMatch(/restart the node .*rebuilds it from a base and the relays/);

    await redis.del(...(await redis.keys(`{${prefix}}:*`)));
    const cfg = await config('redis-w', `{ kind: redis, prefix: '${prefix}', url: '${REDIS_URL}' }`);
    const wiped = run('--config', cfg, '--json');
    expect(wiped.status).toBe(1);
    expect(json(wiped)).toMatchObject({ ok: false, status: 'empty', keys: 0, committed: false });
  });

  it('file: refused while the node may be running; ok with --offline; a truncated log is exit 1 and left as it is', async () => {
    const dir = join(root, 'fs');
    await fill(fileAdapter({ dir }), 'b');
    const cfg = await config('file', `{ kind: file, dir: '${dir}' }`);

    const live = run('--config', cfg);
    expect(live.status).toBe(2);
    expect(live.stderr).toMatch(/only be verified while its node is stopped/);
    expect(live.stderr).toMatch(/hint: .*--offline/);

    const ok = run('--config', cfg, '--offline', '--json');
    expect(ok.status).toBe(0);
    expect(json(ok)).toMatchObject({ ok: true, status: 'ok', keys: 60, expectedKeys: 60, committed: true });
    const quick = run('--config', cfg, '--offline', '--quick', '--json');
    expect(quick.status).toBe(0);
    expect(json(quick)).toMatchObject({ ok: true, quick: true });

    const logs = (await readdir(dir)).filter((n) => /^log-\d{10}$/.test(n)).sort();
    const path = join(dir, logs.at(-1)!);
    const { size } = await stat(path);
    expect(size).toBeGreaterThan(10_000);
    await truncate(path, Math.floor(size / 2));
    const bad = run('--config', cfg, '--offline', '--json');
    expect(bad.status).toBe(1);
    expect(json(bad)).toMatchObject({ ok: false, status: 'mismatch' });
    expect(json(bad).detail).toMatch(/complete records end at \d+/);
    expect((await stat(path)).size).toBe(Math.floor(size / 2)); // verify cut nothing
  });

  it('postgres: refused without --offline; ok with it; rows deleted underneath are exit 1 naming the mismatch', async () => {
    const table = `rp_verify_${process.pid}`;
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      await fill(postgresAdapter({ connectionString: PG_URL, table }), 'b');
      const cfg = await config('pg', `{ kind: postgres, connectionString: '${PG_URL}', table: ${table} }`);
      const live = run('--config', cfg);
      expect(live.status).toBe(2);
      expect(live.stderr).toMatch(/writer lock/);
      const ok = run('--config', cfg, '--offline', '--json');
      expect(ok.status).toBe(0);
      expect(json(ok)).toMatchObject({ ok: true, status: 'ok', keys: 60, expectedKeys: 60 });
      await client.query(`DELETE FROM ${table} WHERE key = ANY($1)`, [
        [Buffer.from('k1-1'), Buffer.from('k3-3')],
      ]);
      const bad = run('--config', cfg, '--offline', '--json');
      expect(bad.status).toBe(1);
      expect(json(bad)).toMatchObject({ ok: false, status: 'mismatch', keys: 58, expectedKeys: 60 });
    } finally {
      await client.query(`DROP TABLE IF EXISTS ${table}, ${table}_meta, ${table}_schema`);
      await client.end();
    }
  });

  it('a bad config, a missing file, or a memory store is exit 2', async () => {
    const bad = await config('bad', '{ kind: redis }');
    for (const args of [['--config', bad], ['--config', join(root, 'nope.yaml')], []]) {
      const r = run(...args);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/hint:/);
      expect(r.stdout).toBe('');
    }
    const mem = run('--config', await config('mem', '{ kind: memory }'));
    expect(mem.status).toBe(2);
    expect(mem.stderr).toMatch(/memory.*no store to verify/);
  });
});

describe('restartpoint verify --app (live nodes answer over NATS)', () => {
  const live = liveNodes();

  it('every live node verifies its own store; keys deleted underneath a standby make its answer a mismatch and exit 1', async () => {
    const app = live.app('vapp');
    const prefix = `rp-vapp-${process.pid}-${Date.now()}`;
    prefixes.push(prefix);
    const a = await live.start(nodeOptions<{ n: number }>(app, 'a', { initialState: () => ({ n: 0 }) }));
    const b = startStandby(
      nodeOptions<{ n: number }>(app, 'b', {
        storage: redisAdapter({ url: REDIS_URL, prefix }),
        initialState: () => ({ n: 0 }),
      }),
    );
    await b.standing;
    for (let i = 1; i <= 10; i++) {
      await a.store.put(`k${i}`, `v${i}`);
      await a.checkpoint({ n: i });
    }
    for (let t = 0; t < 200 && (await redis.hlen(`{${prefix}}:data`)) < 10; t++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    const ok = await runCli('verify', '--app', app, '--json', '--timeout', '20000');
    expect(ok.stderr).toBe('');
    const r = JSON.parse(ok.stdout) as AppVerifyReport;
    expect(r.nodes.map((n) => [n.nodeId, n.state, n.kind, n.status])).toEqual([
      ['a', 'primary', 'memory', 'unrecorded'],
      ['b', 'standby', 'redis', 'ok'],
    ]);
    expect(r.nodes[1]!.keys).toBe(10);
    // The full check ran on the node: a digest of every key and value, equal to the recorded one.
    expect(r.nodes[1]!.digest).toMatch(/^[0-9a-f]{32}$/);
    expect(r.nodes[1]!.digest).toBe(r.nodes[1]!.expectedDigest);
    expect(r.missing).toEqual([]);
    expect(ok.status).toBe(0);

    await redis.hdel(`{${prefix}}:data`, 'k1', 'k2');
    const bad = await runCli('verify', '--app', app, '--quick', '--timeout', '20000');
    expect(bad.status).toBe(1);
    expect(bad.stdout).toMatch(/b {2}standby {2}redis {2}mismatch \(NOT OK\) {2}keys 8\/10/);
    expect(bad.stdout).toMatch(/the store holds 8 keys, 10 were committed/);
    b.primary.then(
      (rp) => rp.close(),
      () => undefined,
    );
  });

  it('--app and --config together, or neither, is exit 2; an app with no live node is exit 1', async () => {
    expect((await runCli('verify')).status).toBe(2);
    expect((await runCli('verify', '--app', 'x', '--config', 'y.yaml')).status).toBe(2);
    const none = await runCli('verify', '--app', live.app('vnone'), '--json', '--timeout', '300');
    expect(none.status).toBe(1);
    expect(JSON.parse(none.stdout)).toMatchObject({ ok: false, nodes: [], missing: [] });
  });
});

/**
 * Issue 12, the core side, against real Redis: a node whose own store lost data is detected,
 * never trusted.
 * - A standby whose store lost a few keys underneath it (HDEL on its data hash) refuses to take
 *   over (`StorageError` naming the mismatch), releases the lease, and a third node takes over
 *   with every acknowledged checkpoint.
 * - A primary whose own store is flushed underneath it (the identity token gone) steps down on
 *   its next write: `demoted` with the reason, and a standby takes over at once.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FencedError } from '../../src/errors.js';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { redisAdapter } from '../../adapters/redis/index.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { startStandby } from '../helpers/standby.js';

const REDIS_URL = process.env.RESTARTPOINT_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

interface S {
  n: number;
}

describe('a store that lost data is detected, never trusted (real Redis)', () => {
  const live = liveNodes();
  let redis: Redis;
  const prefixes: string[] = [];
  beforeAll(async () => {
    redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect().catch((err: unknown) => {
      throw new Error(`Redis is required at ${REDIS_URL} (npm test starts it): ${(err as Error).message}`);
    });
  });
  afterAll(async () => {
    for (const p of prefixes) {
      const keys = await redis.keys(`{${p}}:*`);
      if (keys.length > 0) await redis.del(...keys);
    }
    await redis.quit();
  });
  const prefix = (name: string): string => {
    const p = `sl-${name}-${process.pid}-${Date.now()}`;
    prefixes.push(p);
    return p;
  };

  it('a standby whose store lost keys refuses the takeover, releases the lease, rebuilds its store from the relays and takes over on its next attempt with every acknowledged checkpoint', async () => {
    const app = live.app('storeloss');
    const opts = (
      nodeId: string,
      storage: ReturnType<typeof memoryAdapter> | ReturnType<typeof redisAdapter>,
    ) => nodeOptions<S>(app, nodeId, { storage, initialState: () => ({ n: 0 }), leaseTtlMs: 500 });
    const a = await live.start(opts('a', memoryAdapter()));
    const bPrefix = prefix('b');
    const events: { msg: string; error?: unknown }[] = [];
    const b = startStandby({
      ...opts('b', redisAdapter({ url: REDIS_URL, prefix: bPrefix })),
      log: (e) => events.push({ msg: String(e.msg), error: e.error }),
    });
    await b.standing;
    let last = 0;
    for (let i = 1; i <= 20; i++) {
      await a.store.put(`k${i}`, `v${i}`);
      last = (await a.checkpoint({ n: i })).checkpoint;
    }
    // b has committed what a acknowledged: wait until its store holds all 20 keys.
    for (let t = 0; t < 200 && (await redis.hlen(`{${bPrefix}}:data`)) < 20; t++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(await redis.hlen(`{${bPrefix}}:data`)).toBe(20);
    // Underneath the adapter: five keys vanish from b's store.
    await redis.hdel(`{${bPrefix}}:data`, 'k1', 'k2', 'k3', 'k4', 'k5');
    await a.close();
    // b's quick verify refuses the takeover; it rebuilds its store and takes over with it.
    const took = live.keep(await b.primary);
    const rebuilt = events.find((e) => e.msg === 'store rebuild');
    expect(String(rebuilt?.error)).toMatch(/does not hold what it committed/);
    expect(took.resumedFrom?.checkpoint).toBe(last);
    expect(took.state.n).toBe(20);
    expect(await redis.hlen(`{${bPrefix}}:data`)).toBe(20);
    for (let i = 1; i <= 20; i++)
      expect(Buffer.from((await took.store.get(`k${i}`))!).toString()).toBe(`v${i}`);
  });

  it('a primary whose own store is flushed underneath it steps down on its next write, and a standby takes over at once', async () => {
    const app = live.app('primaryloss');
    const aPrefix = prefix('a');
    const a = await live.start(
      nodeOptions<S>(app, 'a', {
        storage: redisAdapter({ url: REDIS_URL, prefix: aPrefix }),
        initialState: () => ({ n: 0 }),
        leaseTtlMs: 2_000,
      }),
    );
    const demoted = new Promise<FencedError>((resolve) => a.once('demoted', resolve));
    const b = startStandby(
      nodeOptions<S>(app, 'b', { storage: memoryAdapter(), initialState: () => ({ n: 0 }) }),
    );
    await b.standing;
    await a.store.put('x', '1');
    const acked = await a.checkpoint({ n: 1 });
    // Everything of a's store, its identity token included, is gone (a redis-server restarted
    // empty looks the same to the adapter).
    const keys = await redis.keys(`{${aPrefix}}:*`);
    await redis.del(...keys);
    const write = await a.store.put('y', '2').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((write as { code?: string }).code).toBe('ERR_STORE_LOST');
    const err = await demoted;
    expect(err.message).toMatch(/stepped down: its own redis store failed \(ERR_STORE_LOST/);
    await expect(a.checkpoint({ n: 2 })).rejects.toBeInstanceOf(FencedError);
    // The lease was released on the way down: b does not wait a TTL (2 s) to take over.
    const t0 = performance.now();
    const took = live.keep(await b.primary);
    expect(performance.now() - t0).toBeLessThan(1_500);
    expect(took.resumedFrom?.checkpoint).toBe(acked.checkpoint);
    expect(Buffer.from((await took.store.get('x'))!).toString()).toBe('1');
  });
});

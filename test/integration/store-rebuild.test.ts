/**
 * Rebuild in place (issue 12), against a private redis-server (FLUSHALL must not touch the
 * shared one): a standby whose store is wiped underneath it rebuilds it from the relays by
 * itself, whether the wipe is found at takeover (the identity token gone) or by its next commit
 * while it applies, and then takes over with every acknowledged checkpoint.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { redisAdapter } from '../../adapters/redis/index.js';
import { RedisServerProcess } from '../../src/drill/redis-server.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { startStandby } from '../helpers/standby.js';

interface S {
  n: number;
}

describe('a standby rebuilds a wiped store in place (private redis-server)', () => {
  const live = liveNodes();
  let server: RedisServerProcess;
  let redis: Redis;
  beforeAll(async () => {
    server = await RedisServerProcess.start();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
  });
  afterAll(async () => {
    redis?.disconnect();
    await server?.kill();
  });

  async function setup(name: string) {
    const app = live.app(name);
    const opts = (nodeId: string, storage: ReturnType<typeof memoryAdapter>) =>
      nodeOptions<S>(app, nodeId, { storage, initialState: () => ({ n: 0 }), leaseTtlMs: 500 });
    const a = await live.start(opts('a', memoryAdapter()));
    const prefix = `rb-${name}`;
    const events: { msg: string; error?: unknown }[] = [];
    const b = startStandby({
      ...opts('b', redisAdapter({ url: server.url, prefix })),
      log: (e) => events.push({ msg: String(e.msg), error: e.error }),
    });
    await b.standing;
    const waitKeys = async (n: number): Promise<void> => {
      for (let t = 0; t < 400 && (await redis.hlen(`{${prefix}}:data`)) < n; t++) {
        await new Promise((r) => setTimeout(r, 25));
      }
      expect(await redis.hlen(`{${prefix}}:data`)).toBe(n);
    };
    return { a, b, events, prefix, waitKeys };
  }

  async function checkTook(
    took: Awaited<ReturnType<typeof setup>>['b']['primary'] extends Promise<infer R> ? R : never,
    last: number,
    n: number,
  ): Promise<void> {
    expect(took.resumedFrom?.checkpoint).toBe(last);
    expect(took.state.n).toBe(n);
    for (let i = 1; i <= n; i++)
      expect(Buffer.from((await took.store.get(`k${i}`))!).toString()).toBe(`v${i}`);
  }

  it('FLUSHALL on the standby store, then the primary goes: the standby refuses (token gone), rebuilds, and takes over with a correct store', async () => {
    const { a, b, events, waitKeys } = await setup('flush-takeover');
    let last = 0;
    for (let i = 1; i <= 20; i++) {
      await a.store.put(`k${i}`, `v${i}`);
      last = (await a.checkpoint({ n: i })).checkpoint;
    }
    await waitKeys(20);
    await redis.flushall();
    await a.close();
    const took = live.keep(await b.primary);
    expect(String(events.find((e) => e.msg === 'store rebuild')?.error)).toMatch(/identity token is gone/);
    await checkTook(took, last, 20);
    // The rebuilt store verifies: its new token, every key and the digest as committed.
    const check = redisAdapter({ url: server.url, prefix: 'rb-flush-takeover' });
    const v = await check.verify({ quick: false });
    await check.close();
    expect(v.status).toBe('ok');
    expect(v.keys).toBe(20);
  });

  it('FLUSHALL while the standby applies: its next commit finds the token gone, it rebuilds and stays a standby, then takes over with every checkpoint', async () => {
    const { a, b, events, waitKeys } = await setup('flush-applying');
    let last = 0;
    for (let i = 1; i <= 10; i++) {
      await a.store.put(`k${i}`, `v${i}`);
      last = (await a.checkpoint({ n: i })).checkpoint;
    }
    await waitKeys(10);
    await redis.flushall();
    for (let i = 11; i <= 20; i++) {
      await a.store.put(`k${i}`, `v${i}`);
      last = (await a.checkpoint({ n: i })).checkpoint;
    }
    // The rebuilt standby holds everything again, as a standby.
    await waitKeys(20);
    const rebuilt = events.find((e) => e.msg === 'store rebuild');
    expect((rebuilt?.error as string | undefined) ?? '').toMatch(/ERR_STORE_LOST|identity token is gone/);
    expect(events.filter((e) => e.msg === 'standby')).toHaveLength(2);
    await a.close();
    await checkTook(live.keep(await b.primary), last, 20);
  });
});

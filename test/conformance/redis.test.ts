import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { redisAdapter } from '../../adapters/redis/index.js';
import { ClosedError, ConfigError, StorageError } from '../../src/errors.js';
import type { WriteOp } from '../../src/storage/adapter.js';
import { testCrashDuringCommit } from './crash.js';
import { startPrivateRedis, startProxy } from './faults.js';
import { testAdapter } from './suite.js';

// A real Redis: RESTARTPOINT_TEST_REDIS, else the local one. Each store gets a fresh prefix and
// every Redis key under it is deleted afterwards.
const url = process.env.RESTARTPOINT_TEST_REDIS ?? 'redis://127.0.0.1:6379';
const admin = await reachRedis(url);
afterAll(() => admin.quit());

const newPrefix = (): string => `rp-test-${randomBytes(8).toString('hex')}`;

// The suite runs on a private redis-server (no persistence) behind a TCP proxy, so that its
// fault cases can flush, restart and cut off a real server without touching anyone else's keys.
const priv = await startPrivateRedis();
const proxy = await startProxy(priv.port);
const viaProxy = `redis://127.0.0.1:${proxy.port}`;
afterAll(async () => {
  await proxy.close();
  await priv.stop();
});

/** Runs one command on the private server with a short-lived client of the test's own. */
async function onPrivate<T>(fn: (r: Redis) => Promise<T>): Promise<T> {
  const r = await reachRedis(priv.url);
  try {
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

testAdapter('redis', async () => {
  const prefix = newPrefix();
  const options = { url: viaProxy, prefix, commandTimeout: 4000, connectTimeout: 2000 };
  return {
    adapter: redisAdapter(options),
    reopen: async () => redisAdapter(options),
    cleanup: () => onPrivate((r) => r.flushall()).then(() => undefined),
    faults: {
      wipe: () => onPrivate((r) => r.flushall()).then(() => undefined),
      deleteSome: (keys) => onPrivate((r) => r.hdel(`{${prefix}}:data`, ...keys)).then(() => undefined),
      restart: async () => {
        await priv.restart();
        return 'empty';
      },
      killConnections: () =>
        onPrivate((r) => r.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')).then(() => undefined),
      cutOff: async () => {
        proxy.blackhole();
        return async () => proxy.restore();
      },
    },
  };
});

/**
 * Waits, after a child was SIGKILLed, until Redis has dropped every connection opened since
 * `before()`: until then a command the child had already written to its socket can still run
 * (a whole commit script, after the test read the meta), which is no fault of the adapter.
 */
function settleChildConnections(): { before(): Promise<void>; after(): Promise<void> } {
  let since = 0;
  const ids = async (): Promise<number[]> => {
    const list = (await admin.call('CLIENT', 'LIST', 'TYPE', 'normal')) as string;
    return [...list.matchAll(/(?:^|\n)id=(\d+) /g)].map((m) => Number(m[1]));
  };
  return {
    async before() {
      since = Math.max(0, ...(await ids()));
    },
    async after() {
      const mine = Number(await admin.call('CLIENT', 'ID'));
      for (const end = Date.now() + 10_000; ;) {
        const newer = (await ids()).filter((id) => id > since && id !== mine);
        if (newer.length === 0) return;
        // Someone else's connections (a shared server): go on after 10 s, as before this wait.
        if (Date.now() > end) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

testCrashDuringCommit('redis', async () => {
  const prefix = newPrefix();
  return {
    adapter: 'redis',
    options: { url, prefix },
    settle: settleChildConnections(),
    open: async () => redisAdapter({ url, prefix }),
    // A killed MULTI leaves nothing: the prefix holds only the store's own keys.
    inspect: async () => (await keysUnder(prefix)).map((key) => key.slice(prefix.length + 3)).join('+'),
    cleanup: () => removePrefix(prefix),
  };
});

describe('redis adapter specifics', () => {
  it('rejects bad options with a ConfigError naming the option', () => {
    const bad: [unknown, string][] = [
      [{}, 'storage.prefix'],
      [{ prefix: '' }, 'storage.prefix'],
      [{ prefix: 'a{b}' }, 'storage.prefix'],
      [{ prefix: 'p', url: 'http://localhost' }, 'storage.url'],
      [{ prefix: 'p', url: 42 }, 'storage.url'],
      [{ prefix: 'p', url, client: admin }, 'storage.url'],
      [{ prefix: 'p', client: {} }, 'storage.client'],
      [{ prefix: 'p', lib: 'ioredis' }, 'storage.lib'],
    ];
    for (const [opts, option] of bad) {
      let thrown: unknown;
      try {
        redisAdapter(opts as Parameters<typeof redisAdapter>[0]);
      } catch (err) {
        thrown = err;
      }
      expect(
        thrown,
        JSON.stringify(opts, (k, v: unknown) => (k === 'client' ? typeof v : v)),
      ).toBeInstanceOf(ConfigError);
      expect((thrown as ConfigError).option).toBe(option);
    }
  });

  it('keeps every Redis key under {prefix}: and leaves a passed-in client open', async () => {
    const prefix = newPrefix();
    const a = redisAdapter({ prefix, client: admin });
    try {
      await a.open();
      await a.commit([{ op: 'put', key: 'k', value: new Uint8Array([1]) }], new Uint8Array([2]));
      await a.writeArea(1, [
        { op: 'put', key: 'x', value: new Uint8Array(0) },
        { op: 'delete', key: 'y' },
      ]);
      expect(await keysUnder(prefix)).toEqual(
        ['a:1', 'areas', 'data', 'digest', 'format', 'h', 'ident', 'meta', 't:1'].map(
          (s) => `{${prefix}}:${s}`,
        ),
      );
      await a.close();
      await expect(a.get('k')).rejects.toBeInstanceOf(ClosedError);
      expect(await admin.ping()).toBe('PONG');
    } finally {
      await removePrefix(prefix);
    }
  });

  it("keeps each key's entry hash beside it, so a commit reads no old value; a store of an earlier build without them opens unrecorded", async () => {
    const prefix = `rp-conf-h-${process.pid}-${Date.now()}`;
    const put = (key: string, value: string): WriteOp => ({ op: 'put', key, value: Buffer.from(value) });
    try {
      const a = redisAdapter({ url, prefix });
      await a.open({ nodeId: 'n' });
      await a.commit([put('k1', 'a'), put('k2', 'b')], Buffer.from('m1'));
      await a.commit([put('k1', 'c'), { op: 'delete', key: 'k2' }], Buffer.from('m2'));
      expect(await admin.hkeys(`{${prefix}}:h`)).toEqual(['k1']);
      expect((await a.verify()).status).toBe('ok');
      await a.close();
      // An earlier build kept the digest but no entry hashes: the digest cannot be kept on.
      await admin.del(`{${prefix}}:h`);
      const b = redisAdapter({ url, prefix });
      await b.open({ nodeId: 'n' });
      expect((await b.verify()).status).toBe('unrecorded');
      await b.clear();
      await b.commit([put('k3', 'd')], Buffer.from('m3'));
      expect((await b.verify()).status).toBe('ok');
      await b.close();
    } finally {
      await removePrefix(prefix);
    }
  });

  it('uses the Redis class given as lib, and a prefix of another layout is refused', async () => {
    const prefix = newPrefix();
    try {
      await admin.set(`{${prefix}}:format`, 'something else 9');
      const a = redisAdapter({ prefix, url, lib: { Redis } });
      await expect(a.open()).rejects.toThrow(/holds "something else 9"/);
      await a.close();
    } finally {
      await removePrefix(prefix);
    }
  });

  it('an unreachable server rejects open() with a retryable StorageError naming it', async () => {
    const a = redisAdapter({ prefix: 'unreachable', url: 'redis://user:secret@127.0.0.1:1' });
    const err = (await a.open().catch((e: unknown) => e)) as StorageError;
    expect(err).toBeInstanceOf(StorageError);
    expect(err.retryable).toBe(true);
    expect(err.message).toMatch(/127\.0\.0\.1:1.*ECONNREFUSED/);
    expect(err.message).not.toContain('secret');
    await a.close();
  });
});

describe('redis adapter snapshot mode: what the shared suite cannot see', () => {
  it('forming and releasing leave no area keys behind; clear leaves only the marker, token and digest', async () => {
    const prefix = newPrefix();
    const a = redisAdapter({ url, prefix });
    const put = (key: string, value: string): WriteOp => ({ op: 'put', key, value: Buffer.from(value) });
    const under = (...names: string[]): string[] => names.map((s) => `{${prefix}}:${s}`);
    try {
      await a.writeArea(1, [put('a', '1'), { op: 'delete', key: 'b' }]);
      await a.writeArea(2, [put('a', '2')]);
      await a.writeArea(3, [put('c', '3')]);
      await a.formSnapshot(2, Buffer.from('cp-2'));
      // Area 1 was below the formed one: garbage, dropped with it. Area 3 waits.
      expect(await keysUnder(prefix)).toEqual(
        under('a:3', 'areas', 'data', 'digest', 'format', 'h', 'ident', 'meta'),
      );
      await a.releaseAreas();
      expect(await keysUnder(prefix)).toEqual(under('data', 'digest', 'format', 'h', 'ident', 'meta'));
      await a.writeArea(4, [{ op: 'delete', key: 'a' }]);
      await a.clear();
      expect(await keysUnder(prefix)).toEqual(under('digest', 'format', 'ident'));
    } finally {
      await a.close();
      await removePrefix(prefix);
    }
  });
});

// -----------------------------------------------------------------------------------------------

/** Connects the test's own client, or fails the whole file saying how to start Redis. */
async function reachRedis(at: string): Promise<Redis> {
  const client = new Redis(at, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  let reason = '';
  client.on('error', (err: Error) => {
    reason = err.message;
  });
  try {
    await client.connect();
    await client.ping();
    return client;
  } catch (err) {
    client.disconnect();
    throw new Error(
      `The redis conformance tests need a Redis server at ${at} (${reason || (err as Error).message}). ` +
        `Start one with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no ` +
        `(Debian: apt-get install redis-server), or point RESTARTPOINT_TEST_REDIS at another (redis://host:port).`,
      { cause: err },
    );
  }
}

/** Every Redis key of the store `prefix`, sorted. */
async function keysUnder(prefix: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `{${prefix}}:*`, 'COUNT', 1000);
    found.push(...keys);
    cursor = next;
  } while (cursor !== '0');
  return found.sort();
}

async function removePrefix(prefix: string): Promise<void> {
  const keys = await keysUnder(prefix);
  for (let i = 0; i < keys.length; i += 500) await admin.unlink(...keys.slice(i, i + 500));
}

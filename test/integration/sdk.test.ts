import { describe, expect, it } from 'vitest';
import { jetstream } from '@nats-io/jetstream';
import { memoryAdapter } from '../../adapters/memory/index.js';
import {
  ConfigError,
  NatsUnavailableError,
  Restartpoint,
  SerializationError,
  type StartOptions,
} from '../../src/index.js';
import type { StorageAdapter } from '../../src/storage/adapter.js';
import { appNames } from '../../src/protocol/subjects.js';
import { NATS_URL, freshApp } from '../helpers/nats.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';

const live = liveNodes();
const { apps } = live;

const opts = nodeOptions;

const start = <S>(o: StartOptions<S>): Promise<Restartpoint<S>> => live.start(o);

describe('Restartpoint SDK on a real nats-server', () => {
  it('a fresh app starts as primary with initialState, numbers checkpoints 1, 2, 3 and serves its store', async () => {
    const app = freshApp();
    apps.push(app);
    const rp = await start(
      opts<Record<string, unknown>>(app, 'a', { initialState: () => ({ hello: 'world' }) }),
    );
    expect(rp.state).toEqual({ hello: 'world' });
    expect(rp.resumedFrom).toBeUndefined();
    expect(rp.epoch).toBeGreaterThanOrEqual(1);
    await rp.store.put('s', 'text');
    await rp.store.put('b', new Uint8Array([0, 255]));
    expect(Buffer.from((await rp.store.get('s'))!).toString()).toBe('text');
    await rp.store.delete('s');
    expect(await rp.store.get('s')).toBeUndefined();
    const acks = [
      await rp.checkpoint({ i: 1 }),
      await rp.checkpoint({ i: 2 }),
      await rp.checkpoint({ i: 3 }),
    ];
    expect(acks.map((a) => a.checkpoint)).toEqual([1, 2, 3]);
    expect(acks.every((a) => a.epoch === rp.epoch)).toBe(true);
  });

  it('rejects an unserializable state with the path, keeps running, and uses no checkpoint number', async () => {
    const app = freshApp();
    apps.push(app);
    const rp = await start(opts<Record<string, unknown>>(app, 'a'));
    await rp.checkpoint({ ok: 1 });
    const bad = { nested: { list: [1, { onTick: () => 1 }] } };
    const err = await rp.checkpoint(bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SerializationError);
    expect((err as SerializationError).path).toMatch(/nested\.list\[1\]\.onTick/);
    expect((err as SerializationError).code).toBe('ERR_SERIALIZE');
    expect((await rp.checkpoint({ ok: 2 })).checkpoint).toBe(2);
  });

  it('close() hands over at once: the standby resumes the last checkpoint with its writes, rejecting junk on the stream', async () => {
    const app = freshApp();
    apps.push(app);
    const a = await start(opts(app, 'a', { initialState: () => ({ n: 0, m: new Map<string, bigint>() }) }));
    const standbyStore = memoryAdapter();
    const rejected: string[] = [];
    const bPromise = Restartpoint.start(
      opts<{ n: number; m: Map<string, bigint> }>(app, 'b', {
        storage: standbyStore,
        log: (e) => {
          if (e.msg === 'frame rejected') rejected.push(String(e.reason));
        },
      }),
    );
    for (let i = 1; i <= 20; i++) {
      await a.store.put(`k${i % 7}`, `v${i}`);
      if (i % 5 === 0) await a.checkpoint({ n: i, m: new Map([[`k${i}`, BigInt(i) ** 20n]]) });
    }
    await a.store.put('after-last-checkpoint', 'rolled back');
    // Junk on the app's subject: the standby must count it and carry on.
    const js = jetstream(live.nc);
    await js.publish(appNames(app).subject, Buffer.alloc(64, 'x'));
    await a.close();
    const b = await bPromise;
    live.keep(b);
    expect(b.resumedFrom).toEqual({ epoch: a.epoch, checkpoint: 4 });
    expect(b.epoch).toBe(a.epoch + 1);
    // a released the lease on close(): there was no holder to take it from.
    expect(b.takeover.previous).toBeUndefined();
    for (const k of ['detectMs', 'catchUpMs', 'fenceMs', 'restoreMs'] as const) {
      expect(b.takeover[k]).toBeGreaterThanOrEqual(0);
      expect(b.takeover[k]).toBeLessThan(30_000);
    }
    expect(b.state).toEqual({ n: 20, m: new Map([['k20', 20n ** 20n]]) });
    expect(await b.store.get('after-last-checkpoint')).toBeUndefined();
    const keys = await standbyStore.keys();
    expect(keys).toEqual(['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6']);
    expect(Buffer.from((await b.store.get('k6'))!).toString()).toBe('v20');
    expect(rejected).toContain('magic');
    expect((await b.checkpoint(b.state)).checkpoint).toBe(5);
  });

  it('clean restarts never reuse an epoch and each run resumes from the last acknowledged checkpoint', async () => {
    const app = freshApp();
    apps.push(app);
    let last: { epoch: number; checkpoint: number } | undefined;
    for (let run = 1; run <= 4; run++) {
      const rp = await Restartpoint.start(
        opts<{ run: number }>(app, `n${run}`, { initialState: () => ({ run: 0 }) }),
      );
      expect(rp.resumedFrom).toEqual(last);
      expect(rp.state).toEqual({ run: run - 1 });
      if (last) expect(rp.epoch).toBeGreaterThan(last.epoch);
      await rp.store.put(`run${run}`, 'x');
      last = await rp.checkpoint({ run });
      await rp.close();
    }
  });

  it('a deposed primary rejects checkpoints and writes with FencedError and emits demoted', async () => {
    const app = freshApp();
    apps.push(app);
    const a = await start(opts(app, 'a'));
    const demoted = new Promise<Error>((resolve) => a.on('demoted', resolve));
    // Steal the lease the way a standby would after a pause: CAS over the current revision.
    const { Kvm } = await import('@nats-io/kv');
    const kv = await new Kvm(live.nc).open(appNames(app).leaseBucket);
    const cur = await kv.get('leader');
    await kv.update('leader', JSON.stringify({ holder: 'thief', epoch: a.epoch + 1 }), cur!.revision);
    const err = await demoted;
    expect(err.message).toMatch(/no longer primary/);
    await expect(a.checkpoint({})).rejects.toMatchObject({ code: 'ERR_FENCED' });
    await expect(a.store.put('k', 'v')).rejects.toMatchObject({ code: 'ERR_FENCED' });
    expect(a.isPrimary).toBe(false);
  });
});

/** A store with every required method but no snapshot capability. */
function withoutSnapshot(): StorageAdapter {
  const { writeArea: _w, formSnapshot: _f, releaseAreas: _r, ...rest } = memoryAdapter();
  return { ...rest, capabilities: { durable: false } };
}

describe('start() option validation', () => {
  const base = { app: 'ok', nats: { servers: NATS_URL }, storage: memoryAdapter() };
  it.each([
    [{ ...base, app: 'has space' }, 'app'],
    [{ ...base, app: '' }, 'app'],
    [{ ...base, nats: { servers: [] } }, 'nats.servers'],
    [{ ...base, nats: undefined }, 'nats'],
    [{ ...base, storage: {} }, 'storage'],
    [{ ...base, mode: 'snapshot', storage: withoutSnapshot() }, 'mode'],
    [{ ...base, mode: 'fast' }, 'mode'],
    [{ ...base, leaseTtlMs: 5 }, 'leaseTtlMs'],
    [{ ...base, leaseTtlMs: 1.5 }, 'leaseTtlMs'],
    [{ ...base, initialState: 42 }, 'initialState'],
    [{ ...base, nodeId: '' }, 'nodeId'],
    [{ ...base, leaseTTL: 1000 }, 'leaseTTL'],
  ])('rejects %j naming %s', async (o, option) => {
    const err = await Restartpoint.start(o as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).option).toBe(option);
    expect((err as Error).message).toContain(`'${option}'`);
  });

  it("refuses 'snapshot' on an adapter without the capability and says what to use", async () => {
    await expect(
      Restartpoint.start({ ...base, mode: 'snapshot', storage: withoutSnapshot() } as never),
    ).rejects.toThrow(/snapshot capability.*use mode 'delay-write'/);
  });

  it('under a bad RESTARTPOINT_SIDECAR_URL, start() names the variable; sidecar: false ignores it', async () => {
    const app = live.app();
    const before = process.env.RESTARTPOINT_SIDECAR_URL;
    process.env.RESTARTPOINT_SIDECAR_URL = 'not a url';
    try {
      await expect(Restartpoint.start(opts(app, 'a'))).rejects.toMatchObject({
        name: 'ConfigError',
        message: expect.stringMatching(/RESTARTPOINT_SIDECAR_URL.*http:\/\/127\.0\.0\.1/),
      });
      const rp = await start(opts(app, 'a', { sidecar: false }));
      expect(rp.isPrimary).toBe(true);
    } finally {
      if (before === undefined) delete process.env.RESTARTPOINT_SIDECAR_URL;
      else process.env.RESTARTPOINT_SIDECAR_URL = before;
    }
  });

  it('fails with a clear error when NATS is not there', async () => {
    const err = await Restartpoint.start({
      ...base,
      nats: { servers: 'nats://127.0.0.1:1', reconnect: false } as never,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NatsUnavailableError);
    expect((err as Error).message).toMatch(
      /cannot connect to NATS at nats:\/\/127\.0\.0\.1:1.*nats-server -js/,
    );
  });
});

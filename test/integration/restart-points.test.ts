import { describe, expect, it } from 'vitest';
import { ConfigError, Restartpoint, type StartOptions } from '../../src/index.js';
import { appNames } from '../../src/protocol/subjects.js';
import { freshApp } from '../helpers/nats.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';

const live = liveNodes();
const { apps } = live;

const opts = nodeOptions;

const start = <S>(o: StartOptions<S>): Promise<Restartpoint<S>> => live.start(o);

interface Ledger {
  accounts: Map<string, { id: string; balance: number; history: number[] }>;
  totals: { moved: number };
}

const ledger = (): Ledger => {
  const accounts = new Map<string, { id: string; balance: number; history: number[] }>();
  for (let i = 0; i < 500; i++) accounts.set(`acct:${i}`, { id: `acct:${i}`, balance: 100, history: [] });
  return { accounts, totals: { moved: 0 } };
};

describe('restart points on a real nats-server', () => {
  it('a tracked state ships small deltas and a standby resumes it exactly', async () => {
    const app = freshApp();
    apps.push(app);
    const a = await start(opts<Ledger>(app, 'a', { initialState: ledger, keyframeEvery: 1000 }));
    const state = a.track(a.state);
    await a.checkpoint(state);
    expect(a.lastCheckpoint).toMatchObject({ keyframe: true, imagePath: 'keyframe' });
    const b = Restartpoint.start(opts<Ledger>(app, 'b', { initialState: ledger }));
    for (let i = 0; i < 20; i++) {
      const from = state.accounts.get(`acct:${(i * 7) % 500}`)!;
      const to = state.accounts.get(`acct:${(i * 13) % 500}`)!;
      from.balance -= i;
      to.balance += i;
      to.history.push(i);
      state.totals.moved += i;
      if (i === 10) state.accounts.delete('acct:499');
      await a.checkpoint(state);
      expect(a.lastCheckpoint!.imagePath).toBe('tracked');
      expect(a.lastCheckpoint!.imageRawBytes).toBeLessThan(400);
    }
    await a.close();
    const resumed = await b;
    live.keep(resumed);
    expect(resumed.resumedFrom?.checkpoint).toBe(21);
    expect(resumed.state).toEqual(a.state);
  });

  it('checkpointEveryMs takes restart points with getState; afterCheckpoint waits for the next one', async () => {
    const app = freshApp();
    apps.push(app);
    const counter = { n: 0 };
    const rp = await start(
      opts<{ n: number }>(app, 'a', {
        initialState: () => counter,
        checkpointEveryMs: 20,
        getState: () => counter,
      }),
    );
    counter.n = 41;
    const seenBefore = rp.lastCheckpoint?.checkpoint ?? 0;
    // A reply that reveals n = 41 may leave only once a checkpoint holding it is durable.
    const reply = await rp.afterCheckpoint(() => ({
      n: counter.n,
      durable: rp.lastCheckpoint?.checkpoint ?? 0,
    }));
    expect(reply.n).toBe(41);
    expect(reply.durable).toBeGreaterThan(seenBefore);
    counter.n = 42;
    await rp.afterCheckpoint(() => undefined);
    await rp.close();
    const next = await start(opts<{ n: number }>(app, 'b', { initialState: () => ({ n: 0 }) }));
    expect(next.state.n).toBe(42);
  });

  it('afterCheckpoint callbacks of a demoted node never run', async () => {
    const app = freshApp();
    apps.push(app);
    const a = await start(opts<{ v: number }>(app, 'a'));
    let ran = false;
    const pending = a.afterCheckpoint(() => {
      ran = true;
    });
    const demoted = new Promise<void>((resolve) => a.on('demoted', () => resolve()));
    const { Kvm } = await import('@nats-io/kv');
    const kv = await new Kvm(live.nc).open(appNames(app).leaseBucket);
    const cur = await kv.get('leader');
    await kv.update('leader', JSON.stringify({ holder: 'thief', epoch: a.epoch + 1 }), cur!.revision);
    await demoted;
    await expect(pending).rejects.toMatchObject({ code: 'ERR_FENCED' });
    await expect(a.checkpoint({ v: 1 })).rejects.toMatchObject({ code: 'ERR_FENCED' });
    expect(ran).toBe(false);
  });

  it('resuming an image of another stateVersion needs migrate; without it start() fails and says so', async () => {
    const app = freshApp();
    apps.push(app);
    const v1 = await start(
      opts<{ name: string }>(app, 'v1', { initialState: () => ({ name: 'Ada Lovelace' }) }),
    );
    await v1.checkpoint({ name: 'Ada Lovelace' });
    await v1.close();
    const refused = await Restartpoint.start(opts(app, 'v2-plain', { stateVersion: 2 })).catch(
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as ConfigError).option).toBe('stateVersion');
    expect((refused as Error).message).toMatch(/stateVersion 1.*migrate/);
    const v2 = await start(
      opts<{ first: string; last: string }>(app, 'v2', {
        stateVersion: 2,
        migrate: (image, from) => {
          expect(from).toBe(1);
          const [first = '', last = ''] = (image as { name: string }).name.split(' ');
          return { first, last };
        },
      }),
    );
    expect(v2.state).toEqual({ first: 'Ada', last: 'Lovelace' });
    await v2.checkpoint(v2.state);
    expect(v2.lastCheckpoint?.keyframe).toBe(true);
    await v2.close();
    // The history now ends in a version 2 image: a version 1 node cannot resume it (issue 17,
    // docs/upgrades.md). It stays a standby that never claims the vacant lease, and says why.
    const stop = new AbortController();
    const logs: { msg: string; reason?: unknown }[] = [];
    let declined!: () => void;
    const sawDecline = new Promise<void>((r) => (declined = r));
    const back = Restartpoint.start({
      ...opts(app, 'v1-again'),
      signal: stop.signal,
      log: (e) => {
        logs.push(e);
        if (e.msg === 'lease vacant, but this node cannot resume: it does not claim') declined();
      },
    }).catch((e: unknown) => e);
    await sawDecline;
    stop.abort();
    expect((await back) as Error).toMatchObject({ code: 'ERR_CLOSED' });
    expect(logs.find((e) => e.msg === 'cannot resume')?.reason).toMatch(
      /holds an image of stateVersion 2, newer than this build's stateVersion 1/,
    );
    expect(logs.some((e) => e.msg === 'lease claimed')).toBe(false);
  });
});

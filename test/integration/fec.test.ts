import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { ReplicationError, Restartpoint, type StartOptions } from '../../src/index.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { startStandby } from '../helpers/standby.js';

let nc: NatsConnection;
let six: TestRelay[] = [];
const apps: string[] = [];

beforeAll(async () => {
  nc = await requireNats();
  six = await Promise.all([0, 1, 2, 3, 4, 5].map(() => TestRelay.single()));
});
afterAll(async () => {
  await Promise.all(six.map((r) => r.destroy()));
  for (const app of apps) await deleteApp(nc, app);
  await nc?.close();
});

type State = { n: number; blob: string };

function options(app: string, nodeId: string, extra: Partial<StartOptions<State>>): StartOptions<State> {
  return {
    app,
    nodeId,
    nats: { servers: NATS_URL },
    storage: memoryAdapter(),
    leaseTtlMs: 600,
    checkpointTimeoutMs: 1500,
    initialState: () => ({ n: 0, blob: '' }),
    relays: six.map((r) => ({ servers: r.urls })),
    ...extra,
  };
}

async function work(rp: Restartpoint<State>, state: State, count: number): Promise<number> {
  let last = 0;
  for (let i = 0; i < count; i++) {
    state.n++;
    // Large enough that shards of a part differ in content across the stripe.
    state.blob = `${state.n}:`.repeat(3000);
    await rp.store.put(`k${state.n % 5}`, `v${state.n}`);
    last = (await rp.checkpoint(state)).checkpoint;
  }
  return last;
}

async function restartAll(): Promise<void> {
  for (const r of six) if (!r.servers[0]!.running) await r.servers[0]!.start();
}

describe('FEC 4+2 over six relays (real nats-servers, SIGKILLed)', () => {
  it('tolerating one lost relay: a relay dies mid-run, checkpoints keep resolving, the takeover is exact', async () => {
    const app = freshApp('fec1');
    apps.push(app);
    const fec = { data: 4, parity: 2, tolerate: 1 };
    const a = await Restartpoint.start(options(app, 'a', { fec }));
    const b = startStandby(options(app, 'b', { fec }));
    await b.standing;
    const state = a.state;
    await work(a, state, 5);
    await six[0]!.servers[0]!.kill();
    const last = await work(a, state, 10).finally(restartAll);
    await a.close();
    const took = await b.primary;
    try {
      expect(took.resumedFrom?.checkpoint).toBe(last);
      expect(took.state).toEqual(state);
      // A fresh standby replays the whole FEC history (the dead relay's gap included) and takes
      // over exactly. (A deposed primary's late shards, sent by the paused process itself, are
      // zombie-fec.test.ts's.)
      const c = startStandby(options(app, 'c', { fec }));
      await c.standing;
      await took.checkpoint(took.state);
      await took.close();
      const third = await c.primary;
      try {
        expect(third.state).toEqual(state);
        expect(third.resumedFrom?.checkpoint).toBeGreaterThan(last);
      } finally {
        await third.close();
      }
    } finally {
      await took.close();
    }
  }, 90_000);

  it('tolerating two: acknowledged frames survive two dead relays; the new primary fences once they are back', async () => {
    const app = freshApp('fec2');
    apps.push(app);
    const fec = { data: 4, parity: 2, tolerate: 2 };
    const a = await Restartpoint.start(options(app, 'a', { fec }));
    const warnings: string[] = [];
    const b = startStandby(
      options(app, 'b', { fec, log: (e) => e.level === 'warn' && warnings.push(String(e.msg)) }),
    );
    await b.standing;
    const state = a.state;
    const last = await work(a, state, 10);
    try {
      await six[1]!.servers[0]!.kill();
      await six[4]!.servers[0]!.kill();
      // All six shards must be acked to survive two losses: with two relays gone, none can be.
      const err = await work(a, { ...state }, 1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ReplicationError);
      await a.close();
      // b catches up from the four relays left (shards 0, 2, 3, 5), then waits: the failed
      // checkpoint it keeps (complete on four relays, never acknowledged) must be made durable
      // again, then its fence, and neither can be while two relays are down.
      const waiting = (): boolean => warnings.some((w) => / not durable yet, retrying$/.test(w));
      for (let i = 0; i < 200 && !waiting(); i++) await new Promise((r) => setTimeout(r, 50));
      expect(warnings.filter((w) => / not durable yet, retrying$/.test(w))[0]).toMatch(
        /^(kept checkpoint|fence) not durable yet, retrying$/,
      );
    } finally {
      await restartAll();
    }
    const took = await b.primary;
    try {
      expect(took.resumedFrom?.checkpoint).toBeGreaterThanOrEqual(last);
      expect(took.state.n).toBeGreaterThanOrEqual(state.n);
      expect(took.state.blob.startsWith(`${took.state.n}:`)).toBe(true);
    } finally {
      await took.close();
    }
  }, 90_000);

  it('dropped, delayed and corrupted shards: every frame is rebuilt from any four, corrupt ones counted', async () => {
    const app = freshApp('fec-faults');
    apps.push(app);
    // A corrupted shard the relay stored still counts as an ack, so it uses up one loss of the
    // margin: tolerating one lost relay makes every acked frame hold four good shards.
    const fec = { data: 4, parity: 2, tolerate: 1 };
    // Shard 0 never arrives, shard 1 arrives corrupted, shard 2 late: 2, 3, 4, 5 rebuild it.
    const faults: StartOptions<State>['faults'] = ({ msgId, bytes }) => {
      const index = Number(msgId.slice(msgId.lastIndexOf('.s') + 2));
      if (index === 0) return { drop: true };
      if (index === 1) {
        const bad = Buffer.from(bytes);
        bad[bad.length - 10]! ^= 0xff;
        return { bytes: bad };
      }
      if (index === 2) return { delayMs: 20 };
      return undefined;
    };
    const rejected: string[] = [];
    const a = await Restartpoint.start(options(app, 'a', { fec, faults }));
    const b = startStandby(
      options(app, 'b', {
        fec,
        log: (e) => {
          if (e.msg === 'frame rejected') rejected.push(String(e.reason));
        },
      }),
    );
    await b.standing;
    const state = a.state;
    const last = await work(a, state, 8);
    await a.close();
    const took = await b.primary;
    try {
      expect(took.resumedFrom?.checkpoint).toBe(last);
      expect(took.state).toEqual(state);
      expect(rejected.filter((r) => r === 'checksum').length).toBeGreaterThan(0);
    } finally {
      await took.close();
    }
  }, 90_000);
});

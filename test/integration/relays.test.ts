import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { ReplicationError, Restartpoint, type StartOptions } from '../../src/index.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { startStandby } from '../helpers/standby.js';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/restartpoint.js', import.meta.url));

let nc: NatsConnection;
const relays: TestRelay[] = [];
const apps: string[] = [];

beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await Promise.all(relays.map((r) => r.destroy()));
  for (const app of apps) await deleteApp(nc, app);
  await nc?.close();
});

type State = { n: number; log: number[] };

function options(app: string, nodeId: string, extra: Partial<StartOptions<State>>): StartOptions<State> {
  return {
    app,
    nodeId,
    nats: { servers: NATS_URL },
    storage: memoryAdapter(),
    leaseTtlMs: 600,
    checkpointTimeoutMs: 1500,
    initialState: () => ({ n: 0, log: [] }),
    ...extra,
  };
}

async function streamMessages(url: string, stream: string): Promise<number> {
  const c = await connect({ servers: url });
  try {
    return (await (await jetstreamManager(c)).streams.info(stream)).state.messages;
  } finally {
    await c.close();
  }
}

/** Writes and checkpoints `count` times; returns the last acknowledged checkpoint. */
async function work(rp: Restartpoint<State>, state: State, count: number): Promise<number> {
  let last = 0;
  for (let i = 0; i < count; i++) {
    state.n++;
    state.log.push(state.n);
    await rp.store.put(`k${state.n % 7}`, `v${state.n}`);
    last = (await rp.checkpoint(state)).checkpoint;
  }
  return last;
}

describe('relays (extra nats-servers started by the test, SIGKILLed)', () => {
  it('three relays with a quorum policy ride out a killed relay, and it catches up when it returns', async () => {
    const three = [await TestRelay.single(), await TestRelay.single(), await TestRelay.single()];
    relays.push(...three);
    const app = freshApp('relays');
    apps.push(app);
    const specs = three.map((r) => ({ servers: r.urls }));
    const a = await Restartpoint.start(options(app, 'a', { relays: specs, ack: 'quorum' }));
    const b = startStandby(options(app, 'b', { relays: specs, ack: 'quorum' }));
    await b.standing;
    const state = a.state;
    await work(a, state, 5);
    await three[1]!.servers[0]!.kill();
    await work(a, state, 10); // the two others meet the quorum: checkpoints keep resolving
    await three[1]!.servers[0]!.start();
    const last = await work(a, state, 5);
    // The returning relay gets what it missed from the primary's backlog.
    const want = await streamMessages(three[0]!.urls[0]!, `RP_${app}`);
    for (let i = 0; i < 100 && (await streamMessages(three[1]!.urls[0]!, `RP_${app}`)) < want; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await streamMessages(three[1]!.urls[0]!, `RP_${app}`)).toBeGreaterThanOrEqual(want);
    // The operator's view: every relay reachable, none behind.
    const status = spawnSync(
      process.execPath,
      [BIN, 'status', '--app', app, '--json', ...three.flatMap((r) => ['--relay', r.urls[0]!])],
      { encoding: 'utf8' },
    );
    const relaysSeen = (
      JSON.parse(status.stdout) as { relays: { reachable: boolean; lagMessages: number }[] }
    ).relays;
    expect(relaysSeen.map((x) => [x.reachable, x.lagMessages])).toEqual([
      [true, 0],
      [true, 0],
      [true, 0],
    ]);
    await a.close();
    const took = await b.primary;
    try {
      expect(took.resumedFrom?.checkpoint).toBe(last);
      expect(took.state).toEqual(state);
      expect(Buffer.from((await took.store.get(`k${state.n % 7}`))!).toString()).toBe(`v${state.n}`);
    } finally {
      await took.close();
    }
  }, 90_000);

  it("with ack 'all', a dead relay makes checkpoint() reject as retryable, and the next one succeeds once it is back", async () => {
    const two = [await TestRelay.single(), await TestRelay.single()];
    relays.push(...two);
    const app = freshApp('relays-all');
    apps.push(app);
    const a = await Restartpoint.start(options(app, 'a', { relays: two.map((r) => ({ servers: r.urls })) }));
    try {
      const state = a.state;
      await work(a, state, 3);
      await two[1]!.servers[0]!.kill();
      const err = await work(a, state, 1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ReplicationError);
      expect((err as ReplicationError).retryable).toBe(true);
      await two[1]!.servers[0]!.start();
      let ok: number | undefined;
      for (let i = 0; i < 20 && ok === undefined; i++) ok = await work(a, state, 1).catch(() => undefined);
      expect(ok).toBeGreaterThan(4);
    } finally {
      await a.close();
    }
  }, 90_000);

  it('a JetStream cluster relay (R3) loses a server while the primary works: nothing acknowledged is lost', async () => {
    const cluster = await TestRelay.cluster(`c${Date.now() % 100000}`);
    relays.push(cluster);
    const app = freshApp('r3');
    apps.push(app);
    const spec = [{ servers: cluster.urls, replicas: 3 as const }];
    const a = await Restartpoint.start(options(app, 'a', { relays: spec, checkpointTimeoutMs: 5000 }));
    const b = startStandby(options(app, 'b', { relays: spec, checkpointTimeoutMs: 5000 }));
    await b.standing;
    const state = a.state;
    await work(a, state, 5);
    await cluster.servers[0]!.kill();
    // The primary keeps going: a checkpoint caught in the stream leader's election may fail as
    // retryable; the next ones succeed on the two servers left.
    let last = 0;
    let failures = 0;
    while (state.n < 25 && failures < 20) {
      try {
        last = await work(a, state, 1);
      } catch (err) {
        expect(err).toBeInstanceOf(ReplicationError);
        failures++;
      }
    }
    expect(state.n).toBeGreaterThanOrEqual(25);
    // Whatever the last attempt did, end on an acknowledged checkpoint of the final state.
    for (let i = 0; i < 20; i++) {
      const ack = await a.checkpoint(state).catch(() => undefined);
      if (ack) {
        last = ack.checkpoint;
        break;
      }
    }
    await a.close();
    const took = await b.primary;
    try {
      expect(took.resumedFrom?.checkpoint).toBeGreaterThanOrEqual(last);
      expect(took.state.log.slice(0, state.log.length)).toEqual(state.log.slice(0, took.state.log.length));
      expect(took.state.n).toBe(state.n);
    } finally {
      await took.close();
    }
  }, 120_000);

  it('a standby told to apply once a minute applies nothing meanwhile, yet a takeover catches up at once', async () => {
    const app = freshApp('paced');
    apps.push(app);
    const a = await Restartpoint.start(options(app, 'a', {}));
    const applied: number[] = [];
    let standing!: () => void;
    const standingP = new Promise<void>((r) => (standing = r));
    const b = Restartpoint.start(
      options(app, 'b', {
        apply: { everyMs: 60_000 },
        log: (e) => {
          if (e.msg === 'standby') standing();
          if (e.msg === 'checkpoint applied') applied.push(Number(e.checkpoint));
        },
      }),
    );
    await standingP;
    const state = a.state;
    const last = await work(a, state, 8);
    expect(applied).toEqual([]); // held back: the relay keeps the frames
    await a.close();
    const took = await b;
    try {
      expect(took.resumedFrom?.checkpoint).toBe(last);
      expect(took.state).toEqual(state);
      expect(applied.at(-1)).toBe(last);
    } finally {
      await took.close();
    }
  }, 60_000);
});

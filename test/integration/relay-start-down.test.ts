/**
 * Issue 11, defect 10a: a node starts while a relay is down, when the policy can do without it
 * (real nats-servers, SIGKILLed). The relay joins when it comes up: the primary's backlog reaches
 * it and the standby reads it (proved by a takeover that can only read a quorum through it).
 * Fewer relays than the policy needs fail start() with a ReplicationError naming them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { ReplicationError, Restartpoint, type LogEvent, type StartOptions } from '../../src/index.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { startStandby } from '../helpers/standby.js';

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

type State = { n: number };

function options(app: string, nodeId: string, extra: Partial<StartOptions<State>>): StartOptions<State> {
  return {
    app,
    nodeId,
    nats: { servers: NATS_URL },
    storage: memoryAdapter(),
    leaseTtlMs: 600,
    checkpointTimeoutMs: 1500,
    initialState: () => ({ n: 0 }),
    ...extra,
  };
}

async function lastSeq(url: string, stream: string): Promise<number> {
  const c = await connect({ servers: url });
  try {
    return (await (await jetstreamManager(c)).streams.info(stream)).state.last_seq;
  } finally {
    await c.close();
  }
}

/** Resolves on the first log event named `msg`; the returned `log` goes in the node's options. */
function waitLog(
  msg: string,
  match: (e: LogEvent) => boolean = () => true,
): { log: (e: LogEvent) => void; seen: Promise<LogEvent> } {
  let hit!: (e: LogEvent) => void;
  const seen = new Promise<LogEvent>((r) => (hit = r));
  return { log: (e) => (e.msg === msg && match(e) ? hit(e) : undefined), seen };
}

/** `p`, or a failure naming `what` after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)),
  ]);
}

async function work(rp: Restartpoint<State>, state: State, count: number): Promise<number> {
  let last = 0;
  for (let i = 0; i < count; i++) {
    state.n++;
    await rp.store.put(`k${state.n}`, `v${state.n}`);
    last = (await rp.checkpoint(state)).checkpoint;
  }
  return last;
}

describe('starting with a relay down (extra nats-servers, SIGKILLed)', () => {
  it('quorum of 3: nodes start without relay C, C joins when it returns, and a standby then reads it', async () => {
    const three = [await TestRelay.single(), await TestRelay.single(), await TestRelay.single()];
    relays.push(...three);
    const app = freshApp('rdown');
    apps.push(app);
    const specs = three.map((r) => ({ servers: r.urls }));
    await three[2]!.servers[0]!.kill(); // relay C is down before anything starts
    const aJoined = waitLog('relay joined');
    const t0 = performance.now();
    const a = await Restartpoint.start(options(app, 'a', { relays: specs, ack: 'quorum', log: aJoined.log }));
    // Nothing waited on C beyond its first connection attempt (refused at once).
    expect(performance.now() - t0).toBeLessThan(15_000);
    const bJoined = waitLog('relay joined');
    // Once C joined, the standby reads it from its first message: C's copies of checkpoints it
    // committed already arrive as late copies from relay 2.
    const bReadC = waitLog('late copy', (e) => e.relay === 2);
    const b = startStandby(
      options(app, 'b', {
        relays: specs,
        ack: 'quorum',
        log: (e) => {
          bJoined.log(e);
          bReadC.log(e);
        },
      }),
    );
    await b.standing;
    const state = a.state;
    await work(a, state, 5);
    await three[2]!.servers[0]!.start();
    expect((await aJoined.seen).relay).toBe(2);
    expect((await bJoined.seen).relay).toBe(2);
    const last = await work(a, state, 5);
    // The primary's backlog for C (everything since it started) reached C.
    const want = await lastSeq(three[0]!.urls[0]!, `RP_${app}`);
    for (let i = 0; i < 100 && (await lastSeq(three[2]!.urls[0]!, `RP_${app}`)) < want; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await lastSeq(three[2]!.urls[0]!, `RP_${app}`)).toBe(want);
    await within(bReadC.seen, 20_000, 'late copy from relay C on the standby (it does not read C)');
    // Relay B dies: the standby's read quorum (2 of 3) is now A + C, so it must read C to take over.
    await three[1]!.servers[0]!.kill();
    await a.close();
    const took = await b.primary;
    try {
      expect(took.resumedFrom?.checkpoint).toBe(last);
      expect(took.state).toEqual(state);
    } finally {
      await took.close();
    }
  }, 120_000);

  it('fewer relays than the policy needs: start() fails with a ReplicationError naming them', async () => {
    const three = [await TestRelay.single(), await TestRelay.single(), await TestRelay.single()];
    relays.push(...three);
    const app = freshApp('rdown2');
    apps.push(app);
    const specs = three.map((r) => ({ servers: r.urls }));
    await three[1]!.servers[0]!.kill();
    await three[2]!.servers[0]!.kill();
    const err = await Restartpoint.start(options(app, 'a', { relays: specs, ack: 'quorum' })).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ReplicationError);
    expect((err as Error).message).toMatch(
      /^1 of 3 relay\(s\) reachable at start, the ack policy "quorum" needs 2/,
    );
    expect((err as Error).message).toContain(`relay 1 (${three[1]!.urls[0]})`);
    expect((err as Error).message).toContain(`relay 2 (${three[2]!.urls[0]})`);
    expect((err as Error).message).not.toContain(`relay 0 (`);
    // ack 'all' needs every relay: one down is already too many.
    await three[2]!.servers[0]!.start();
    const all = await Restartpoint.start(options(app, 'a', { relays: specs, ack: 'all' })).catch(
      (e: unknown) => e,
    );
    expect(all).toBeInstanceOf(ReplicationError);
    expect((all as Error).message).toMatch(
      /^2 of 3 relay\(s\) reachable at start, the ack policy "all" needs 3/,
    );
  }, 120_000);
});

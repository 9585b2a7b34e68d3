/**
 * Issue 11, defect 10b: backfill (anti-entropy). Three relays, ack 'quorum', signed. Relay C is
 * SIGKILLed; frames are acknowledged by A and B; the primary goes away with its backlog for C, a
 * standby takes over, C restarts: the new primary copies what C missed from A and B, each message
 * sealed for C. Then A dies and B loses its stream (purged): a node that reads only B and C must
 * still resume from the last acknowledged checkpoint, which needs C's backfilled frames.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { randomBytes } from 'node:crypto';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { Restartpoint, type LogEvent, type StartOptions } from '../../src/index.js';
import { FrameCodec } from '../../src/protocol/codec.js';
import { EnvelopeCodec, parseClusterKey } from '../../src/protocol/envelope.js';
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
const KEY = randomBytes(32).toString('hex');
const FEC = { data: 2, parity: 4 };

function options(app: string, nodeId: string, extra: Partial<StartOptions<State>>): StartOptions<State> {
  return {
    app,
    nodeId,
    nats: { servers: NATS_URL },
    storage: memoryAdapter(),
    leaseTtlMs: 600,
    checkpointTimeoutMs: 1500,
    clusterKey: KEY,
    ack: 'quorum',
    initialState: () => ({ n: 0 }),
    ...extra,
  };
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

/** The part keys (`epoch/seq.part`) a relay's stream holds that open as read from relay `relay`. */
async function partsOn(url: string, app: string, relay: number, fec: boolean): Promise<Set<string>> {
  const codec = new FrameCodec({
    app,
    relays: 3,
    maxPayload: 1 << 20,
    fec: fec ? FEC : undefined,
    envelope: new EnvelopeCodec({ app, keys: parseClusterKey(KEY) }),
  });
  const c = await connect({ servers: url });
  const out = new Set<string>();
  try {
    const jsm = await jetstreamManager(c);
    const stream = `RP_${app}`;
    const info = await jsm.streams.info(stream);
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq }).catch(() => undefined);
      if (!m) continue;
      try {
        const k = codec.open(m.data, relay).key;
        out.add(`${k.epoch}/${k.seq}.${k.part}`);
      } catch {
        // not sealed for this relay: it would count for nothing there
      }
    }
  } finally {
    await c.close();
  }
  return out;
}

function waitLog(match: (e: LogEvent) => boolean): { log: (e: LogEvent) => void; seen: Promise<LogEvent> } {
  let hit!: (e: LogEvent) => void;
  const seen = new Promise<LogEvent>((r) => (hit = r));
  return { log: (e) => (match(e) ? hit(e) : undefined), seen };
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)),
  ]);
}

describe('backfill of a returning relay (extra nats-servers, SIGKILLed)', () => {
  it.each([
    ['copies', false],
    ['FEC 2+4 (C gets its own shards, re-encoded)', true],
  ])(
    '%s: C, down across a takeover, gets the frames A and B acknowledged; a node reading only B and C resumes exactly',
    async (_, fec) => {
      const extra: Partial<StartOptions<State>> = fec ? { fec: { ...FEC, tolerate: 1 } } : {};
      const three = [await TestRelay.single(), await TestRelay.single(), await TestRelay.single()];
      relays.push(...three);
      const [A, B, C] = three as [TestRelay, TestRelay, TestRelay];
      const app = freshApp('backfill');
      apps.push(app);
      const specs = three.map((r) => ({ servers: r.urls }));
      const a = await Restartpoint.start(options(app, 'a', { relays: specs, ...extra }));
      const backfilled = waitLog((e) => e.msg === 'relay backfilled' && e.relay === 2);
      const b = startStandby(options(app, 'b', { relays: specs, log: backfilled.log, ...extra }));
      await b.standing;
      const state = a.state;
      await work(a, state, 3);
      await C.servers[0]!.kill();
      await work(a, state, 5); // acknowledged by relays A and B only
      await a.close(); // its backlog for C goes with it
      const bp = await b.primary;
      try {
        await work(bp, state, 2);
        const onA = await partsOn(A.urls[0]!, app, 0, fec);
        const before = await partsOn(C.urls[0]!, app, 2, fec).catch(() => new Set<string>());
        expect(before.size).toBe(0); // C is down
        await C.servers[0]!.start();
        const done = await within(backfilled.seen, 30_000, "'relay backfilled' for relay C");
        expect(done.copied).toBeGreaterThan(0);
        expect(done.unrecoverable).toBe(0);
        // Every part relay A holds is on C now, sealed for C (it opens as read from relay 2).
        const onC = await partsOn(C.urls[0]!, app, 2, fec);
        const lacking = [...onA].filter((k) => !onC.has(k));
        expect(lacking).toEqual([]);
        // A dies; B loses its stream: only C holds epoch 1's last checkpoints now.
        await A.servers[0]!.kill();
        const c = await connect({ servers: B.urls[0]! });
        await (await jetstreamManager(c)).streams.purge(`RP_${app}`);
        await c.close();
        const last = await work(bp, state, 2);
        await bp.close();
        // A new node, A down at its start: it reads B (purged) and C.
        const d = await Restartpoint.start(options(app, 'd', { relays: specs, ...extra }));
        try {
          expect(d.resumedFrom?.checkpoint).toBe(last);
          expect(d.state).toEqual(state);
          expect(Buffer.from((await d.store.get('k4'))!).toString()).toBe('v4');
        } finally {
          await d.close();
        }
      } finally {
        await bp.close().catch(() => undefined);
      }
    },
    180_000,
  );
});

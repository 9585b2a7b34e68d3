/**
 * Signed mode on a real nats-server: replication and takeover with a cluster key; forged,
 * unsigned and damaged messages on the app's subject rejected, counted and never applied; key
 * rotation; encrypted bodies.
 */
import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ConfigError, Restartpoint, type StartOptions } from '../../src/index.js';
import { EnvelopeCodec, parseClusterKey } from '../../src/protocol/envelope.js';
import { FrameKind, encodeFrame } from '../../src/protocol/frame.js';
import { encodeFence, encodeWrites } from '../../src/protocol/records.js';
import { appNames } from '../../src/protocol/subjects.js';
import { NATS_URL, freshApp } from '../helpers/nats.js';
import { liveNodes } from '../helpers/live.js';
import { startStandby } from '../helpers/standby.js';

type S = { n: number; tag: string };

const live = liveNodes();
const { apps } = live;
const KEY = randomBytes(32);
const OLD = randomBytes(32);
const NEW = randomBytes(32);
const MALLORY = randomBytes(32);

function opts(app: string, nodeId: string, extra: Partial<StartOptions<S>> = {}): StartOptions<S> {
  return {
    app,
    nodeId,
    nats: { servers: NATS_URL },
    storage: memoryAdapter(),
    leaseTtlMs: 600,
    initialState: () => ({ n: 0, tag: '' }),
    ...extra,
  };
}

const start = (o: StartOptions<S>): Promise<Restartpoint<S>> => live.start(o);

/** Every message on the app's stream, in order. */
async function streamMessages(app: string): Promise<Uint8Array[]> {
  const jsm = await jetstreamManager(live.nc);
  const info = await jsm.streams.info(appNames(app).stream);
  const out: Uint8Array[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(appNames(app).stream, { seq }).catch(() => null);
    if (m) out.push(m.data);
  }
  return out;
}

/**
 * What an attacker who can publish on the subject but holds no key would send: frames that, if
 * applied, would fence the primary off (a fence of a far newer epoch) and write keys it never
 * wrote — unsigned, and signed with a key of their own.
 */
function hostileMessages(app: string, epoch: number): Buffer[] {
  const frames = [
    {
      kind: FrameKind.Fence,
      epoch: epoch + 50,
      seq: 1,
      checkpoint: 0,
      body: encodeFence({ nodeId: 'mallory' }),
    },
    {
      kind: FrameKind.Writes,
      epoch,
      seq: 3,
      checkpoint: 1,
      body: encodeWrites([{ op: 'put', key: 'evil', value: Buffer.from('pwned') }]),
    },
  ];
  const parts = frames.map((f) => encodeFrame(app, f, 1 << 20)[0]!);
  const mallory = new EnvelopeCodec({ app, keys: parseClusterKey(MALLORY) });
  const badId = new EnvelopeCodec({
    app,
    keys: parseClusterKey({ keys: [{ id: 9, key: MALLORY }], current: 9 }),
  });
  return [...parts, ...parts.map((p) => mallory.seal(p)), ...parts.map((p) => badId.seal(p))];
}

describe('signed mode (clusterKey) on a real nats-server', () => {
  it('replicates and takes over signed; forged, unsigned, bit-flipped and replayed messages are rejected, counted, never applied', async () => {
    const app = freshApp('auth');
    apps.push(app);
    const a = await start(opts(app, 'a', { clusterKey: KEY }));
    const store = memoryAdapter();
    const rejected: Record<string, number> = {};
    const b = startStandby(
      opts(app, 'b', {
        clusterKey: KEY.toString('hex'),
        storage: store,
        log: (e) => {
          if (e.msg === 'frame rejected') rejected[String(e.reason)] = (rejected[String(e.reason)] ?? 0) + 1;
        },
      }),
    );
    await b.standing;
    for (let i = 1; i <= 12; i++) {
      await a.store.put(`k${i % 5}`, `v${i}`);
      if (i % 4 === 0) await a.checkpoint({ n: i, tag: `cp${i / 4}` });
    }
    const js = jetstream(live.nc);
    const subject = appNames(app).subject;
    const genuine = await streamMessages(app);
    const hostile = hostileMessages(app, a.epoch);
    for (const m of hostile) await js.publish(subject, m);
    // Damage in transit: genuine signed messages with a byte flipped, cut short, or the magic broken.
    const damaged = genuine.slice(0, 3).flatMap((g) => {
      const flipped = Buffer.from(g);
      flipped[flipped.length >> 1]! ^= 0x40;
      const broken = Buffer.from(g);
      broken[1] = 0x00;
      return [flipped, Buffer.from(g).subarray(0, g.length - 7), broken];
    });
    for (const m of damaged) await js.publish(subject, m);
    // Replay: every genuine signed message again, without dedupe ids. Valid MACs, so the
    // envelope lets them through; (epoch, seq) ordering must drop them all.
    for (const g of genuine) await js.publish(subject, g);
    await a.store.put('after', 'rolled back');
    await a.close();
    const bp = await b.primary;
    live.keep(bp);
    expect(bp.resumedFrom).toEqual({ epoch: a.epoch, checkpoint: 3 });
    expect(bp.epoch).toBe(a.epoch + 1);
    expect(bp.state).toEqual({ n: 12, tag: 'cp3' });
    expect(await store.keys()).toEqual(['k0', 'k1', 'k2', 'k3', 'k4']);
    for (const [k, v] of [
      ['k0', 'v10'],
      ['k1', 'v11'],
      ['k2', 'v12'],
      ['k3', 'v8'],
      ['k4', 'v9'],
    ] as const)
      expect(Buffer.from((await store.get(k))!).toString()).toBe(v);
    expect(await store.get('evil')).toBeUndefined();
    expect(rejected.unsigned).toBe(2);
    expect(rejected.forged).toBe(4);
    const corrupt = (rejected.checksum ?? 0) + (rejected.truncated ?? 0) + (rejected.magic ?? 0);
    expect(corrupt).toBe(damaged.length);
    expect(rejected.duplicate ?? 0).toBeGreaterThanOrEqual(genuine.length);
    // The new primary signs too: its checkpoints keep working.
    expect((await bp.checkpoint({ n: 13, tag: 'cp4' })).checkpoint).toBe(4);
  });

  it('a standby without the key rejects a signed primary’s messages as foreign bytes, and one with another key as forged', async () => {
    const app = freshApp('auth');
    apps.push(app);
    const a = await start(opts(app, 'a', { clusterKey: KEY }));
    await a.store.put('k', 'v');
    await a.checkpoint({ n: 1, tag: 'x' });
    const standbys: Promise<Restartpoint<S>>[] = [];
    for (const [key, reason] of [
      [undefined, 'magic'],
      [MALLORY, 'forged'],
    ] as const) {
      const seen = new Set<string>();
      const b = startStandby(
        opts(app, `b-${reason}`, {
          clusterKey: key,
          log: (e) => {
            if (e.msg === 'frame rejected') seen.add(String(e.reason));
          },
        }),
      );
      await b.standing;
      standbys.push(b.primary);
      await new Promise((r) => setTimeout(r, 300));
      expect([...seen]).toEqual([reason]);
    }
    // Clean-up: each standby takes over in turn once the one before it closes.
    await a.close();
    const pending = standbys.map((p, i) => p.then((rp) => ({ rp, i })));
    const done = new Set<number>();
    while (done.size < pending.length) {
      const next = await Promise.race(pending.filter((_, i) => !done.has(i)));
      done.add(next.i);
      await next.rp.close();
    }
  });

  it('rotation: a standby holding {old, new} follows a primary signing with old, then one signing with new', async () => {
    const app = freshApp('rot');
    apps.push(app);
    const oldOnly = { keys: [{ id: 1, key: OLD }], current: 1 };
    const both = {
      keys: [
        { id: 1, key: OLD },
        { id: 2, key: NEW.toString('base64') },
      ],
      current: 2,
    };
    const a = await start(opts(app, 'a', { clusterKey: oldOnly }));
    const b = startStandby(opts(app, 'b', { clusterKey: both }));
    await b.standing;
    await a.store.put('from-a', '1');
    await a.checkpoint({ n: 1, tag: 'old' });
    await a.close();
    const bp = await b.primary;
    live.keep(bp);
    expect(bp.state).toEqual({ n: 1, tag: 'old' });
    const rejected: string[] = [];
    const c = startStandby(
      opts(app, 'c', {
        clusterKey: both,
        log: (e) => {
          if (e.msg === 'frame rejected') rejected.push(String(e.reason));
        },
      }),
    );
    await c.standing;
    await bp.store.put('from-b', '2');
    await bp.checkpoint({ n: 2, tag: 'new' });
    await bp.close();
    const cp = await c.primary;
    live.keep(cp);
    // c read a's messages (signed with old) and b's (signed with new), and rejected none.
    expect(cp.state).toEqual({ n: 2, tag: 'new' });
    expect(Buffer.from((await cp.store.get('from-a'))!).toString()).toBe('1');
    expect(Buffer.from((await cp.store.get('from-b'))!).toString()).toBe('2');
    expect(rejected).toEqual([]);
    // The stream holds messages under both key ids.
    const ids = new Set((await streamMessages(app)).map((m) => m[3]));
    expect(ids).toEqual(new Set([1, 2]));
  });

  it('encrypt: the stream never holds a known plaintext, and takeover still restores it', async () => {
    const app = freshApp('enc');
    apps.push(app);
    const marker = `plaintext-marker-${randomBytes(6).toString('hex')}`;
    const a = await start(opts(app, 'a', { clusterKey: KEY, encrypt: true }));
    const b = startStandby(opts(app, 'b', { clusterKey: KEY, encrypt: true }));
    await b.standing;
    await a.store.put('secret', marker);
    await a.checkpoint({ n: 1, tag: marker });
    const msgs = await streamMessages(app);
    expect(msgs.length).toBeGreaterThan(0);
    for (const m of msgs) {
      expect(Buffer.from(m).includes(Buffer.from(marker))).toBe(false);
      expect(m[4]! & 1).toBe(1); // encrypted (bit 1: relay-bound, issue 11)
    }
    await a.close();
    const bp = await b.primary;
    live.keep(bp);
    expect(bp.state).toEqual({ n: 1, tag: marker });
    expect(Buffer.from((await bp.store.get('secret'))!).toString()).toBe(marker);

    // A state larger than the server's max payload: parts are cut small enough for the envelope.
    const big = randomBytes(3 << 20).toString('base64');
    expect((await bp.checkpoint({ n: 2, tag: big })).checkpoint).toBe(2);
    const c = startStandby(opts(app, 'c', { clusterKey: KEY }));
    await c.standing;
    await bp.close();
    const cp = await c.primary;
    live.keep(cp);
    expect(cp.state.tag === big).toBe(true);

    // Control: signed without encryption, the same marker is visible on the stream.
    const app2 = freshApp('enc');
    apps.push(app2);
    const p = await start(opts(app2, 'p', { clusterKey: KEY }));
    await p.store.put('secret', marker);
    await p.checkpoint({ n: 1, tag: marker });
    expect((await streamMessages(app2)).some((m) => Buffer.from(m).includes(Buffer.from(marker)))).toBe(true);
  });

  it('a weak key or encrypt without a key is a ConfigError naming the option', async () => {
    const app = freshApp('auth');
    await expect(Restartpoint.start(opts(app, 'a', { clusterKey: 'too-short' }))).rejects.toSatisfy(
      (e: unknown) => e instanceof ConfigError && e.option === 'clusterKey' && /32/.test(e.message),
    );
    await expect(Restartpoint.start(opts(app, 'a', { encrypt: true }))).rejects.toSatisfy(
      (e: unknown) => e instanceof ConfigError && e.option === 'encrypt',
    );
  });
});

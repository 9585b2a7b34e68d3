import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay, freePort } from '../../src/drill/nats-servers.js';
import { Restartpoint } from '../../src/index.js';
import { FrameKind, encodeFrame } from '../../src/protocol/frame.js';
import { encodeSeal } from '../../src/protocol/records.js';
import { appNames } from '../../src/protocol/subjects.js';
import { formatStatus, statusNodes, type StatusReport } from '../../src/cli/commands/status.js';
import {
  PRESENCE_EXPIRE_MS,
  deletePresence,
  writePresence,
  writeSwitchover,
  type PresenceRecord,
} from '../../src/transport/presence.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { startStandby } from '../helpers/standby.js';
import { runCli } from '../helpers/cli.js';

/** Runs the CLI without blocking this process (a node may be running in it). */
const run = runCli;

async function statusJson(...args: string[]): Promise<StatusReport> {
  const r = await run('status', ...args, '--json');
  if (r.status !== 0) throw new Error(`status exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusReport;
}

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

/** Creates the app's stream on `on` with `garbage` junk messages then, if given, one seal. */
async function makeStream(
  on: NatsConnection,
  app: string,
  garbage: number,
  seal?: { epoch: number; checkpoint: number },
): Promise<void> {
  const names = appNames(app);
  await (await jetstreamManager(on)).streams.add({ name: names.stream, subjects: names.streamSubjects });
  const js = jetstream(on);
  for (let i = 0; i < garbage; i++) await js.publish(names.subject, Buffer.from(`junk ${i}`));
  if (seal) {
    const [part] = encodeFrame(
      app,
      {
        kind: FrameKind.Seal,
        epoch: seal.epoch,
        seq: 99,
        checkpoint: seal.checkpoint,
        body: encodeSeal({ writeFrames: 0, writeOps: 0, imageFrames: 1 }),
      },
      1 << 20,
    );
    await js.publish(names.subject, part!);
  }
}

/** Creates the lease bucket on the shared server with a lease held by `holder`. */
async function makeLease(app: string, holder: string, epoch: number): Promise<KV> {
  const names = appNames(app);
  const kv = await new Kvm(nc).create(names.leaseBucket, { history: 1 });
  await kv.put(names.leaseKey, Buffer.from(JSON.stringify({ holder, epoch })));
  return kv;
}

const rec = (over: Partial<PresenceRecord> & Pick<PresenceRecord, 'nodeId'>): PresenceRecord => ({
  state: 'standby',
  epoch: 3,
  checkpoint: 0,
  host: 'host-1',
  pid: 4242,
  updatedAt: Date.now(),
  relays: [],
  ...over,
});

describe('restartpoint status: nodes, switchover, relays', () => {
  it('reports each node from its presence record: role, lag behind the leader, age, stale, relay lag; relays from presence', async () => {
    const relay = await TestRelay.single();
    relays.push(relay);
    const dead = `nats://127.0.0.1:${await freePort()}`;
    const app = freshApp('status-nodes');
    apps.push(app);
    await makeStream(nc, app, 4, { epoch: 3, checkpoint: 48 });
    const rc = await connect({ servers: relay.urls });
    try {
      await makeStream(rc, app, 3);
    } finally {
      await rc.close();
    }
    const kv = await makeLease(app, 'a', 3);
    const now = Date.now();
    // a and b are live: their records are rewritten before each read, as a running node would
    // (a loaded machine must not make them stale between two CLI runs).
    const recA = () => rec({ nodeId: 'a', state: 'primary', checkpoint: 50, updatedAt: Date.now() - 200 });
    const recB = () =>
      rec({
        nodeId: 'b',
        checkpoint: 47,
        updatedAt: Date.now() - 300,
        relays: [
          { servers: NATS_URL, connected: true, frames: 4, bytes: 900, seconds: 0.25, checkpoints: 3 },
          {
            servers: relay.urls[0]!,
            connected: false,
            frames: undefined,
            bytes: undefined,
            seconds: undefined,
            checkpoints: undefined,
          },
        ],
      });
    const fresh = async () => {
      await writePresence(kv, recA());
      await writePresence(kv, recB());
    };
    await fresh();
    // And they keep beating while the CLI runs, as running nodes do: on a loaded machine one CLI
    // run can take longer than the stale threshold.
    let beating = Promise.resolve();
    const beat = setInterval(() => {
      beating = fresh().catch(() => undefined);
    }, 1_000);
    beat.unref();
    await writePresence(
      kv,
      rec({
        nodeId: 'c',
        checkpoint: 40,
        updatedAt: now - 60_000,
        host: 'host-2',
        relays: [{ servers: dead, connected: true, frames: 0, bytes: 0, seconds: 0, checkpoints: 0 }],
      }),
    );

    const s = await statusJson('--app', app);
    expect(s).toMatchObject({
      app,
      leader: 'a',
      epoch: 3,
      lastSealed: 48,
      lastSealedEpoch: 3,
      streamMessages: 5,
      streamServers: 'nats://127.0.0.1:4222',
      switchover: null,
      relaysFrom: 'presence',
    });
    expect(
      s.nodes.map((n) => [n.nodeId, n.role, n.leader, n.epoch, n.checkpoint, n.lagCheckpoints, n.stale]),
    ).toEqual([
      ['a', 'primary', true, 3, 50, 0, false],
      ['b', 'standby', false, 3, 47, 3, false],
      ['c', 'standby', false, 3, 40, 10, true],
    ]);
    const [a, b, c] = s.nodes;
    expect(a!.ageMs).toBeGreaterThanOrEqual(200);
    expect(a!.ageMs).toBeLessThan(30_000);
    expect(c!.ageMs).toBeGreaterThanOrEqual(60_000);
    expect(c).toMatchObject({ host: 'host-2', pid: 4242 });
    expect(b!.relays).toEqual([
      { servers: NATS_URL, connected: true, frames: 4, bytes: 900, seconds: 0.25, checkpoints: 3 },
      {
        servers: relay.urls[0],
        connected: false,
        frames: null,
        bytes: null,
        seconds: null,
        checkpoints: null,
      },
    ]);
    // Relays named in presence (live nodes first), each one's copy of the stream.
    expect(s.relays).toEqual([
      { servers: NATS_URL, reachable: true, messages: 5, lastSeq: 5, lagMessages: 0 },
      { servers: relay.urls[0], reachable: true, messages: 3, lastSeq: 3, lagMessages: 2 },
      { servers: dead, reachable: false, messages: 0, lastSeq: 0, lagMessages: 5 },
    ]);

    // A switchover request shows up; the human output lays it all out in tables.
    const req = { epoch: 3, from: 'a', requestedAt: now, id: 'sw-1' };
    await writeSwitchover(kv, req);
    await fresh();
    expect((await statusJson('--app', app)).switchover).toEqual(req);
    await fresh();
    const human = await run('status', '--app', app);
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(/^leader\s+a$/m);
    expect(human.stdout).toMatch(/^switchover\s+requested .*a \(epoch 3\) to hand over$/m);
    expect(human.stdout).toMatch(/^\s+node\s+role\s+epoch\s+checkpoint\s+lag\s+age\s+host\s+pid$/m);
    expect(human.stdout).toMatch(/^\s+a \*\s+primary\s+3\s+50\s+0\s+\S+s\s+host-1\s+4242$/m);
    expect(human.stdout).toMatch(/^\s+c\s+standby \(stale\)\s+3\s+40\s+10\s+1m0\ds\s+host-2\s+4242$/m);
    expect(human.stdout).toMatch(/^\s+b\s+\S+\s+no\s+-\s+-\s+-\s+-$/m);
    expect(human.stdout).toMatch(new RegExp(`^\\s+${relay.urls[0]}\\s+yes\\s+3\\s+3\\s+2 behind$`, 'm'));
    expect(human.stdout).toMatch(new RegExp(`^\\s+${dead}\\s+no\\s+-\\s+-\\s+unreachable$`, 'm'));

    // --relay wins over presence: the stream figures come from the first one.
    await fresh();
    const flagged = await statusJson('--app', app, '--relay', relay.urls[0]!);
    expect(flagged).toMatchObject({ relaysFrom: 'flag', streamMessages: 3, streamServers: relay.urls[0] });
    expect(flagged.relays).toEqual([
      { servers: relay.urls[0], reachable: true, messages: 3, lastSeq: 3, lagMessages: 0 },
    ]);

    // Without the leader's record, lag is measured against the newest seal in the stream.
    clearInterval(beat);
    await beating;
    await deletePresence(kv, 'a');
    await writePresence(kv, recB());
    const noLeader = await statusJson('--app', app);
    expect(noLeader.nodes.map((n) => [n.nodeId, n.lagCheckpoints])).toEqual([
      ['b', 1],
      ['c', 8],
    ]);
  }, 60_000);

  it('finds the stream on a relay named in presence when --nats does not hold it', async () => {
    const relay = await TestRelay.single();
    relays.push(relay);
    const app = freshApp('status-relay');
    apps.push(app);
    const rc = await connect({ servers: relay.urls });
    try {
      await makeStream(rc, app, 2, { epoch: 1, checkpoint: 5 });
    } finally {
      await rc.close();
    }
    const kv = await makeLease(app, 'a', 1);
    // No presence yet: the stream is nowhere the command looks, a usage error that names --relay.
    const missing = await run('status', '--app', app, '--json');
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/stream RP_.* not found/);
    expect(missing.stderr).toMatch(/hint: .*--relay/);

    await writePresence(
      kv,
      rec({
        nodeId: 'b',
        checkpoint: 5,
        relays: [
          { servers: relay.urls.join(','), connected: true, frames: 0, bytes: 0, seconds: 0, checkpoints: 0 },
        ],
      }),
    );
    const s = await statusJson('--app', app);
    expect(s).toMatchObject({
      leader: 'a',
      lastSealed: 5,
      streamMessages: 3,
      streamServers: relay.urls.join(','),
      relaysFrom: 'presence',
      relays: [{ servers: relay.urls.join(','), reachable: true, messages: 3, lagMessages: 0 }],
    });
    expect(s.nodes.map((n) => [n.nodeId, n.lagCheckpoints])).toEqual([['b', 0]]);
  }, 60_000);

  it('an app with no presence records has nodes [] and no relays; an unreachable --nats exits 1', async () => {
    const app = freshApp('status-empty');
    apps.push(app);
    await makeStream(nc, app, 1);
    await makeLease(app, 'x', 2);
    const s = await statusJson('--app', app);
    expect(s.nodes).toEqual([]);
    expect(s.switchover).toBeNull();
    expect(s).not.toHaveProperty('relays');
    const human = await run('status', '--app', app);
    expect(human.stdout).toMatch(/no presence records/);

    const url = `nats://127.0.0.1:${await freePort()}`;
    const r = await run('status', '--app', app, '--nats', url);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`error: cannot connect to NATS at ${url}`);
    expect(r.stdout).toBe('');
  }, 30_000);

  it('real nodes show up: primary and standby with relay lag, the standby as primary after a takeover, gone on close', async () => {
    const app = freshApp('status-live');
    apps.push(app);
    const opts = (nodeId: string) => ({
      app,
      nodeId,
      nats: { servers: NATS_URL },
      storage: memoryAdapter(),
      initialState: () => ({ n: 0 }),
    });
    const a = await Restartpoint.start(opts('solo'));
    const b = startStandby(opts('b'));
    let aOpen = true;
    let took: Restartpoint<{ n: number }> | undefined;
    try {
      await b.standing;
      await a.store.put('k', 'v');
      const { checkpoint } = await a.checkpoint({ n: 1 });
      // Presence is rewritten every second: poll (each poll is a CLI run) until it shows what we did.
      const s = await until('solo primary and b caught up', (r) => {
        const [me, sb] = [r.nodes.find((n) => n.nodeId === 'solo'), r.nodes.find((n) => n.nodeId === 'b')];
        return (
          me?.role === 'primary' &&
          me.checkpoint >= checkpoint &&
          sb?.role === 'standby' &&
          sb.checkpoint >= checkpoint &&
          sb.relays.length > 0
        );
      });
      expect(s.leader).toBe('solo');
      expect(s.nodes.map((n) => [n.nodeId, n.role])).toEqual([
        ['b', 'standby'],
        ['solo', 'primary'],
      ]);
      expect(s.nodes.find((n) => n.nodeId === 'solo')).toMatchObject({
        role: 'primary',
        leader: true,
        epoch: a.epoch,
        lagCheckpoints: 0,
        stale: false,
        pid: process.pid,
        relays: [],
      });
      const sb = s.nodes.find((n) => n.nodeId === 'b')!;
      expect(sb).toMatchObject({ role: 'standby', leader: false, lagCheckpoints: 0, stale: false });
      expect(sb.relays[0]).toMatchObject({ connected: true });
      expect(s.relaysFrom).toBe('presence');
      expect(s.relays?.[0]).toMatchObject({ reachable: true, messages: s.streamMessages, lagMessages: 0 });

      // A clean close hands the lease over: status follows the takeover and drops the closed node.
      await a.close();
      aOpen = false;
      took = await b.primary;
      const after = await until(
        'b primary, solo gone',
        (r) => r.leader === 'b' && r.nodes.length === 1 && r.nodes[0]!.role === 'primary',
      );
      expect(after.nodes[0]).toMatchObject({ nodeId: 'b', leader: true, epoch: took.epoch, stale: false });
      await took.close();
      took = undefined;
      await until('no node left', (r) => r.nodes.length === 0);
    } finally {
      if (aOpen) await a.close();
      await took?.close();
    }

    async function until(what: string, ok: (r: StatusReport) => boolean): Promise<StatusReport> {
      const deadline = Date.now() + 15_000;
      for (;;) {
        const r = await statusJson('--app', app);
        if (ok(r)) return r;
        if (Date.now() > deadline) {
          throw new Error(
            `status never showed ${what} within 15 s (does the SDK write presence records?); last: ${JSON.stringify(r)}`,
          );
        }
      }
    }
  }, 60_000);

  it('a dead node shows as `<role> (stale)` until PRESENCE_EXPIRE_MS, then is left out and counted', async () => {
    const app = freshApp('status-expire');
    apps.push(app);
    await makeStream(nc, app, 1, { epoch: 4, checkpoint: 9 });
    const kv = await makeLease(app, 'b', 4);
    const now = Date.now();
    // a: a primary killed long ago (the issue: it stayed as `primary (stale)` forever);
    // c: a standby dead for a minute, still shown; b: the live primary.
    await writePresence(
      kv,
      rec({ nodeId: 'a', state: 'primary', updatedAt: now - PRESENCE_EXPIRE_MS - 5_000 }),
    );
    await writePresence(kv, rec({ nodeId: 'b', state: 'primary', epoch: 4, checkpoint: 9 }));
    await writePresence(kv, rec({ nodeId: 'c', state: 'primary', updatedAt: now - 60_000 }));
    const s = await statusJson('--app', app);
    expect(s.nodes.map((n) => [n.nodeId, n.role, n.stale])).toEqual([
      ['b', 'primary', false],
      ['c', 'primary', true],
    ]);
    expect(s.expiredNodes).toBe(1);
    const human = await run('status', '--app', app);
    expect(human.stdout).toMatch(/^\s+c\s+primary \(stale\)\s+3\s+0\s+9\s+1m0\ds\s+host-1\s+4242$/m);
    expect(human.stdout).not.toMatch(/^\s+a\s/m);
    expect(human.stdout).toMatch(
      /^\s+\(1 presence record older than 2 minutes left out: nodes gone without a clean close\)$/m,
    );
    // The record itself is still in the bucket; only status leaves it out.
    await writePresence(kv, rec({ nodeId: 'a', state: 'primary', updatedAt: Date.now() - 1_000 }));
    expect((await statusJson('--app', app)).nodes.map((n) => n.nodeId)).toEqual(['a', 'b', 'c']);
  }, 30_000);
});

describe('status report pieces (pure)', () => {
  const now = 1_000_000;
  it('statusNodes: untrusted relay samples checked field by field, lag clamped, leader absent falls back to the seal', () => {
    const recs: PresenceRecord[] = [
      rec({ nodeId: 'a', state: 'primary', checkpoint: 10, updatedAt: now - 100 }),
      rec({
        nodeId: 'b',
        checkpoint: 12, // ahead of the leader's (older) record: lag 0, not -2
        updatedAt: now + 50, // a clock ahead: age 0
        pid: 'x' as unknown as number,
        relays: [null, { servers: 5 }, { servers: 'r1', connected: 'yes', frames: '7', bytes: 3 }] as never,
      }),
    ];
    const [a, b] = statusNodes(recs, 'a', 99, now);
    expect(a).toMatchObject({ leader: true, lagCheckpoints: 0, ageMs: 100, stale: false });
    expect(b).toMatchObject({ leader: false, lagCheckpoints: 0, ageMs: 0, pid: null });
    expect(b!.relays).toEqual([
      { servers: 'r1', connected: false, frames: null, bytes: 3, seconds: null, checkpoints: null },
    ]);
    // Leader without a record: the newest seal is the reference; without either, unknown.
    expect(statusNodes(recs.slice(1), 'a', 15, now)[0]!.lagCheckpoints).toBe(3);
    expect(statusNodes(recs.slice(1), null, null, now)[0]!.lagCheckpoints).toBeNull();
    expect(statusNodes([rec({ nodeId: 'z', updatedAt: now - 5_001 })], null, null, now)[0]!.stale).toBe(true);
  });

  it('formatStatus: a stale leader is called out, an unknown figure prints as -', () => {
    const report: StatusReport = {
      app: 'x',
      leader: 'a',
      epoch: 2,
      lastSealed: null,
      lastSealedEpoch: null,
      streamMessages: 0,
      streamBytes: 0,
      streamLastSeq: 0,
      streamServers: NATS_URL,
      nodes: statusNodes([rec({ nodeId: 'a', state: 'primary', updatedAt: now - 70_000 })], 'a', null, now),
      switchover: null,
      settingProblems: [],
    };
    const out = formatStatus(report);
    expect(out).toMatch(/^leader\s+a \(presence stale for 1m10s: it may be dead/m);
    expect(out).toMatch(/^last sealed checkpoint\s+-$/m);
    expect(out).toMatch(/^\s+a \*\s+primary \(stale\)\s+3\s+0\s+0\s+1m10s\s+host-1\s+4242$/m);
    expect(out).toMatch(/^switchover\s+none pending$/m);
    expect(out).not.toMatch(/^relays/m);
  });

  it('an empty --nats is a usage error', async () => {
    const r = await run('status', '--app', 'x', '--nats', ' ');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--nats ' ' names no server/);
    expect(r.stderr).toMatch(/hint: /);
  });
});

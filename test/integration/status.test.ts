import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay, freePort } from '../../src/drill/nats-servers.js';
import { Restartpoint } from '../../src/index.js';
import { FrameKind, encodeFrame } from '../../src/protocol/frame.js';
import { encodeSeal } from '../../src/protocol/records.js';
import { appNames } from '../../src/protocol/subjects.js';
import type { StatusReport } from '../../src/cli/commands/status.js';
import {
  deletePresence,
  writePresence,
  writeSwitchover,
  type PresenceRecord,
} from '../../src/transport/presence.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

const BIN = fileURLToPath(new URL('../../bin/restartpoint.js', import.meta.url));

/** Runs the CLI without blocking this process (a node may be running in it). */
function run(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

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
    await writePresence(kv, rec({ nodeId: 'a', state: 'primary', checkpoint: 50, updatedAt: now - 200 }));
    await writePresence(
      kv,
      rec({
        nodeId: 'b',
        checkpoint: 47,
        updatedAt: now - 300,
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
      }),
    );
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
    expect((await statusJson('--app', app)).switchover).toEqual(req);
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
    const flagged = await statusJson('--app', app, '--relay', relay.urls[0]!);
    expect(flagged).toMatchObject({ relaysFrom: 'flag', streamMessages: 3, streamServers: relay.urls[0] });
    expect(flagged.relays).toEqual([
      { servers: relay.urls[0], reachable: true, messages: 3, lastSeq: 3, lagMessages: 0 },
    ]);

    // Without the leader's record, lag is measured against the newest seal in the stream.
    await deletePresence(kv, 'a');
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

  it('a node started with Restartpoint.start shows up as primary, with its checkpoint, and leaves on close', async () => {
    const app = freshApp('status-live');
    apps.push(app);
    const rp = await Restartpoint.start({
      app,
      nodeId: 'solo',
      nats: { servers: NATS_URL },
      storage: memoryAdapter(),
      initialState: () => ({ n: 0 }),
    });
    let closed = false;
    try {
      await rp.store.put('k', 'v');
      const { checkpoint } = await rp.checkpoint({ n: 1 });
      // Presence is rewritten every second: poll with a deadline until it says what we did.
      const deadline = Date.now() + 15_000;
      let s: StatusReport | undefined;
      for (;;) {
        s = await statusJson('--app', app);
        const me = s.nodes.find((n) => n.nodeId === 'solo');
        if (me && me.role === 'primary' && me.checkpoint >= checkpoint) break;
        if (Date.now() > deadline) {
          throw new Error(
            `status never showed node 'solo' as primary at checkpoint ${checkpoint} within 15 s ` +
              `(does the SDK write presence records yet?); last nodes: ${JSON.stringify(s.nodes)}`,
          );
        }
      }
      expect(s.leader).toBe('solo');
      expect(s.nodes).toHaveLength(1);
      expect(s.nodes[0]).toMatchObject({
        nodeId: 'solo',
        role: 'primary',
        leader: true,
        epoch: rp.epoch,
        lagCheckpoints: 0,
        stale: false,
        pid: process.pid,
      });
      await rp.close();
      closed = true;
      // A clean close deletes the record.
      const gone = Date.now() + 10_000;
      while ((await statusJson('--app', app)).nodes.some((n) => n.nodeId === 'solo')) {
        if (Date.now() > gone) throw new Error("node 'solo' still listed 10 s after close()");
      }
    } finally {
      if (!closed) await rp.close();
    }
  }, 60_000);
});

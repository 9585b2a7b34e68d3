/**
 * A rolling upgrade of restartpoint itself (issue 17, docs/upgrades.md), with real sample-app
 * processes on the shared nats-server, killed by SIGKILL. The "next release" is this build run
 * with the test-only hook `RESTARTPOINT_TEST_WIRE_VERSION=3` (it writes wire version 3, today's
 * layout, and reads 2 and 3).
 *
 * 1. a (current release, wire 2) is primary; b restarts on the next release (wire 3) as a standby
 *    and c stays on the current one.
 * 2. a is killed: b takes over, reading a's version-2 frames (a newer node reads the previous
 *    version), resumes at a's last acknowledged checkpoint or later, store and image agree.
 * 3. b now writes version-3 frames: c refuses them (`version`), commits nothing of them, says
 *    which version it saw and which it reads, and presence shows `canResume: false`.
 * 4. b is killed: c does not claim the lease (it logs that it cannot resume); a, back on the next
 *    release, takes over at b's last acknowledged checkpoint or later.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { AppProcess, type AppEvent } from '../../src/drill/app-process.js';
import { appNames } from '../../src/protocol/subjects.js';
import { readStatus } from '../../src/cli/commands/status-read.js';
import { LeaseStore } from '../../src/transport/lease-store.js';
import { runCli } from '../helpers/cli.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
let dir: string;
const app = freshApp('upwire');
const procs: AppProcess[] = [];
const TTL = 1000;

beforeAll(async () => {
  nc = await requireNats();
  dir = await mkdtemp(join(tmpdir(), 'rp-upwire-'));
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await deleteApp(nc, app);
  await nc.close();
  await rm(dir, { recursive: true, force: true });
});

function node(id: string, wire: 2 | 3, run: number): AppProcess {
  const p = new AppProcess(id);
  p.start(
    [
      '--app',
      app,
      '--store',
      'file',
      '--dir',
      join(dir, `${id}${run}`),
      '--nats',
      NATS_URL,
      '--ttl',
      String(TTL),
      '--step-ms',
      '20',
    ],
    { RESTARTPOINT_TEST_WIRE_VERSION: wire === 3 ? '3' : undefined },
  );
  procs.push(p);
  return p;
}

/** Tracks a node's last acknowledged checkpoint. */
function lastAcked(p: AppProcess): { n: number } {
  const box = { n: 0 };
  p.on((e) => {
    if (e.ev === 'acked') box.n = Math.max(box.n, Number(e.checkpoint));
  });
  return box;
}

const isLog = (msg: string) => (e: AppEvent) => e.ev === 'log' && e.msg === msg;

/** Every event of `p` matching `pred`, from now on. */
function collect(p: AppProcess, pred: (e: AppEvent) => boolean): AppEvent[] {
  const out: AppEvent[] = [];
  p.on((e) => {
    if (pred(e)) out.push(e);
  });
  return out;
}

describe('rolling upgrade of restartpoint (wire version 2 → 3 through the test hook)', () => {
  it('a newer node reads the previous version; an older one refuses newer frames, commits nothing of them and never claims', async () => {
    const a = node('a', 2, 1);
    await a.waitFor((e) => e.ev === 'primary', 'a primary');
    const aAcked = lastAcked(a);
    const b = node('b', 3, 1);
    await b.waitFor((e) => e.ev === 'standby', 'b standby', 30_000, true);
    await a.waitFor((e) => e.ev === 'acked' && Number(e.checkpoint) >= 8, 'a acks 8 checkpoints');
    await b.waitFor((e) => e.ev === 'applied' && Number(e.checkpoint) >= 5, 'b applies');

    // Step 2: the node on the newer release takes over from version-2 frames.
    const bPrimary = b.waitFor((e) => e.ev === 'primary', 'b primary', 30_000);
    await a.kill();
    const killedAt = aAcked.n;
    const took = await bPrimary;
    expect(Number(took.resumed)).toBeGreaterThanOrEqual(killedAt);
    expect(took.storeDigest).toBe(took.mirrorDigest);
    const bAcked = lastAcked(b);

    // Step 3: c, on the older release, joins: it reads a's version-2 history and refuses b's
    // version-3 frames, naming both versions; nothing of them is committed.
    const c = new AppProcess('c');
    const cRejects = collect(
      c,
      (e) => e.ev === 'log' && e.msg === 'frame rejected' && e.reason === 'version',
    );
    const cCannot = collect(c, isLog('cannot resume'));
    const cNoClaim = collect(c, isLog('lease vacant, but this node cannot resume: it does not claim'));
    c.start(
      ['--app', app, '--store', 'file', '--dir', join(dir, 'c1'), '--nats', NATS_URL, '--ttl', String(TTL)],
      {
        RESTARTPOINT_TEST_WIRE_VERSION: undefined,
      },
    );
    procs.push(c);
    await c.waitFor(isLog('cannot resume'), 'c cannot resume', 30_000).catch(() => undefined);
    expect(cCannot.length).toBeGreaterThan(0);
    expect(String(cCannot[0]!.reason)).toMatch(/wire version 3 .*reads wire versions up to 2/);
    expect(cRejects.length).toBeGreaterThan(0);
    expect(String(cRejects[0]!.error)).toMatch(/wire version 3 is not supported \(this build reads 2\)/);
    await b.waitFor(
      (e) => e.ev === 'acked' && Number(e.checkpoint) >= Number(took.resumed) + 5,
      'b acks 5 more',
    );

    // Presence: c cannot resume and says why; b writes wire 3.
    let st = await readStatus({ nats: NATS_URL, app });
    for (let i = 0; i < 100 && st.nodes.find((n) => n.nodeId === 'c')?.canResume !== false; i++) {
      await new Promise((r) => setTimeout(r, 100)); // presence is rewritten every second
      st = await readStatus({ nats: NATS_URL, app });
    }
    const cNode = st.nodes.find((n) => n.nodeId === 'c')!;
    const bNode = st.nodes.find((n) => n.nodeId === 'b')!;
    expect(cNode).toMatchObject({ canResume: false, protocolVersion: 2, stateVersion: 1, role: 'standby' });
    expect(cNode.cannotResume).toMatch(/wire version 3/);
    expect(bNode).toMatchObject({ canResume: true, protocolVersion: 3, role: 'primary' });
    // Nothing of b's frames was committed by c: it stands at or before the cut b resumed from.
    expect(cNode.checkpoint).toBeLessThanOrEqual(Number(took.resumed));
    const human = await runCli('status', '--app', app, '--nats', NATS_URL);
    expect(human.stdout).toMatch(/c cannot resume and will not take over: .*wire version 3/);
    expect(human.stdout).toMatch(/version skew: .*wire version (2 and 3|3 and 2)/);

    // Step 4: b dies; c (older) must not claim; a, on the newer release, takes over.
    await b.kill();
    const bLast = bAcked.n;
    await c
      .waitFor(isLog('lease vacant, but this node cannot resume: it does not claim'), 'c declines', 30_000)
      .catch(() => undefined);
    expect(cNoClaim.length).toBeGreaterThan(0);
    const kv = await new Kvm(nc).open(appNames(app).leaseBucket);
    const lease = new LeaseStore(kv, appNames(app).leaseKey);
    // Two TTLs after c saw the lease vacant, it still has not claimed it (a non-event: bounded wait).
    await new Promise((r) => setTimeout(r, 2 * TTL));
    expect((await lease.read()).value?.holder).not.toBe('c');

    const a2 = node('a', 3, 2);
    const a2Primary = await a2.waitFor((e) => e.ev === 'primary', 'a (next release) primary', 60_000);
    expect(Number(a2Primary.resumed)).toBeGreaterThanOrEqual(bLast);
    expect(a2Primary.storeDigest).toBe(a2Primary.mirrorDigest);
    expect(c.history.some((e) => e.ev === 'primary')).toBe(false);
  }, 180_000);
});

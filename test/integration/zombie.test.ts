import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { AppProcess } from '../../src/drill/drill.js';
import { FrameKind, encodeFrame } from '../../src/protocol/frame.js';
import { encodeSeal, encodeWrites } from '../../src/protocol/records.js';
import { appNames, messageId } from '../../src/protocol/subjects.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
let dir: string;
const app = freshApp('zombie');
const procs: AppProcess[] = [];

beforeAll(async () => {
  nc = await requireNats();
  dir = await mkdtemp(join(tmpdir(), 'rp-zombie-'));
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await deleteApp(nc, app);
  await nc.close();
  await rm(dir, { recursive: true, force: true });
});

function node(id: string): AppProcess {
  const p = new AppProcess(id);
  p.start(['--app', app, '--store', 'file', '--dir', join(dir, id), '--nats', NATS_URL, '--ttl', '800']);
  procs.push(p);
  return p;
}

describe('zombie primary (SIGSTOP, takeover, SIGCONT)', () => {
  it('is demoted, and frames of its epoch after the fence are dropped by every standby', async () => {
    const a = node('a');
    const aPrimary = await a.waitFor((e) => e.ev === 'primary', 'a primary');
    const b = node('b');
    await b.waitFor((e) => e.ev === 'standby', 'b standby');
    let aAcked = 0;
    a.on((e) => {
      if (e.ev === 'acked') aAcked = Math.max(aAcked, Number(e.checkpoint));
    });
    await a.waitFor((e) => e.ev === 'acked' && Number(e.checkpoint) >= 5, 'a acks 5 checkpoints');

    a.child!.kill('SIGSTOP');
    const ackedWhenStopped = aAcked;
    const bPrimary = await b.waitFor((e) => e.ev === 'primary', 'b takes over', 20_000);
    expect(Number(bPrimary.resumed)).toBeGreaterThanOrEqual(ackedWhenStopped);
    expect(Number(bPrimary.epoch)).toBeGreaterThan(Number(aPrimary.epoch));
    expect(bPrimary.storeDigest).toBe(bPrimary.mirrorDigest);

    // What a zombie could still publish: a whole sealed checkpoint of its old epoch, numbered as
    // the next one the new primary will use. It sits after the fence, so it must never apply.
    const names = appNames(app);
    const js = jetstream(nc);
    const zombieCp = Number(bPrimary.resumed) + 1;
    const zombieEpoch = Number(aPrimary.epoch);
    const frames = [
      {
        kind: FrameKind.Writes,
        seq: 900_001,
        body: encodeWrites([{ op: 'put', key: 'zombie', value: Buffer.from('x') }]),
      },
      {
        kind: FrameKind.Seal,
        seq: 900_002,
        body: encodeSeal({ writeFrames: 1, writeOps: 1, imageFrames: 1 }),
      },
    ] as const;
    for (const f of frames) {
      const [bytes] = encodeFrame(app, { ...f, epoch: zombieEpoch, checkpoint: zombieCp }, 1 << 20);
      await js.publish(names.subject, bytes!, { msgID: messageId(app, zombieEpoch, f.seq, 0) });
    }

    const demoted = a.waitFor((e) => e.ev === 'demoted', 'a demoted', 20_000);
    a.child!.kill('SIGCONT');
    const d = await demoted;
    expect(String(d.error)).toMatch(/no longer primary/);

    // b keeps checkpointing; c joins, replays the whole stream (with the zombie's frames in it).
    await b.waitFor((e) => e.ev === 'acked' && Number(e.checkpoint) >= zombieCp + 3, 'b acks 3 more');
    const c = node('c');
    const stale: unknown[] = [];
    c.on((e) => {
      if (e.ev === 'log' && e.reason === 'stale') stale.push(e);
    });
    await c.waitFor((e) => e.ev === 'standby', 'c standby');
    b.send({ cmd: 'arm', point: 'after-checkpoint', afterSteps: 0 });
    const at = await b.waitFor((e) => e.ev === 'at-killpoint', 'b kill point');
    expect(at.point).toBe('after-checkpoint');
    await b.kill();
    const cPrimary = await c.waitFor((e) => e.ev === 'primary', 'c takes over', 20_000);
    expect(cPrimary.storeDigest).toBe(cPrimary.mirrorDigest);
    expect(Number(cPrimary.resumed)).toBeGreaterThan(zombieCp);
    expect(stale.length).toBeGreaterThanOrEqual(frames.length);
  }, 120_000);
});

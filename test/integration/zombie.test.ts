/**
 * A zombie primary, with nothing injected by the test: every late frame comes from the paused
 * process itself (issue 11, defect 8).
 *
 * Node a (a sample-app process) is the primary; its relay connection runs through a proxy that
 * the test can make hold back what a sends. The test holds a's traffic until a's next
 * checkpoint is out to the relay but stuck in the proxy (its seal among it), then SIGSTOPs a:
 * a is frozen with a checkpoint in flight, like a host that stalls mid-publish. A standby takes
 * over and fences. The proxy then lets a's frames through, so they land on the relay after the
 * fence, and the relay's acks reach a's socket. Then SIGCONT: a wakes up to acks for a
 * checkpoint it sent before its lease ran out.
 *
 * Asserted:
 * - a acknowledges no checkpoint after SIGCONT (no `acked` line; every ack it did report
 *   resolved before the SIGSTOP), its in-flight checkpoint rejects with ERR_FENCED, and it is
 *   demoted;
 * - a's late frames are dropped as `stale` by the standby that was live when they landed and
 *   by a fresh standby that replays the whole stream, at least one rejection per late part;
 * - after a second takeover (the new primary killed at a step boundary), the store equals the
 *   image's mirror and holds no write of a's epoch after the cutoff.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { AppProcess } from '../../src/drill/drill.js';
import { ledgerArgs } from '../../src/drill/app-process.js';
import { FrameKind } from '../../src/protocol/frame.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { HoldProxy } from '../helpers/hold-proxy.js';
import { first, staleCount, stopped, takeover } from '../helpers/stopped-process.js';

let nc: NatsConnection;
let dir: string;
let proxy: HoldProxy;
const app = freshApp('zombie');
const procs: AppProcess[] = [];

beforeAll(async () => {
  nc = await requireNats();
  dir = await mkdtemp(join(tmpdir(), 'rp-zombie-'));
  proxy = await HoldProxy.start(NATS_URL);
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await proxy?.close();
  await deleteApp(nc, app);
  await nc.close();
  await rm(dir, { recursive: true, force: true });
});

/** A node of the app; `relay` is the URL of its (only) relay; the lease is always direct. */
function node(id: string, relay = NATS_URL): AppProcess {
  const p = new AppProcess(id);
  p.start([
    ...ledgerArgs({ app, store: 'file', dir: join(dir, id), nats: NATS_URL, leaseTtlMs: 800 }),
    '--relays',
    relay,
    '--ack',
    'all',
  ]);
  procs.push(p);
  return p;
}

describe('zombie primary (SIGSTOP mid-checkpoint, takeover, SIGCONT)', () => {
  it('acknowledges nothing after SIGCONT, is demoted, and its late frames are dropped as stale everywhere', async () => {
    const a = node('a', proxy.url);
    const aPrimary = await a.waitFor((e) => e.ev === 'primary', 'a primary');
    const aEpoch = Number(aPrimary.epoch);
    const b = node('b');
    const c = node('c');
    await b.waitFor((e) => e.ev === 'standby', 'b standby', 30_000, true);
    await c.waitFor((e) => e.ev === 'standby', 'c standby', 30_000, true);

    type Phase = 'running' | 'stopped' | 'continued';
    let phase = 'running' as Phase;
    const aAcks: { checkpoint: number; t: number; phase: Phase }[] = [];
    a.on((e) => {
      if (e.ev === 'acked') aAcks.push({ checkpoint: Number(e.checkpoint), t: Number(e.t), phase });
    });
    await a.waitFor((e) => e.ev === 'acked' && Number(e.checkpoint) >= 5, 'a acks 5 checkpoints');

    // Hold what a sends until a whole checkpoint of a's is stuck in the proxy, seal included.
    proxy.hold();
    await proxy.until(
      () => proxy.heldParts(app).some((p) => p.kind === FrameKind.Seal),
      "a's next seal held back",
    );
    const stopAt = Date.now();
    a.child!.kill('SIGSTOP');
    phase = 'stopped';
    await stopped(a.child!.pid!);

    // A standby takes over and fences at a's last checkpoint that reached the relay.
    const [winner, other] = await takeover(b, c, aEpoch);
    const cutoff = Number(winner.ev.resumed);
    const lastAcked = Math.max(...aAcks.map((x) => x.checkpoint));
    expect(cutoff).toBeGreaterThanOrEqual(lastAcked);

    // a's frames still in the proxy: all of its epoch, all for checkpoints after the cutoff.
    const late = proxy.heldParts(app);
    // At least the seal (the hold may have begun after the checkpoint's first frames went out).
    expect(late.some((p) => p.kind === FrameKind.Seal)).toBe(true);
    for (const p of late) {
      expect(p.epoch).toBe(aEpoch);
      expect(p.checkpoint).toBeGreaterThan(cutoff);
    }

    // Now they reach the relay, after the fence; the relay's acks go back into a's socket,
    // which a cannot read while it is stopped.
    const liveStale = other.waitFor(
      (e) => e.ev === 'log' && staleCount(e) >= late.length,
      'live standby drops them',
    );
    proxy.release();
    await proxy.until(
      () => proxy.acksAfterRelease(`RP_${app}`) >= late.length,
      'relay acks for the late frames',
    );
    await liveStale;

    // Wake a up. It must refuse its in-flight checkpoint and find itself demoted.
    const demoted = a.waitFor((e) => e.ev === 'demoted', 'a demoted', 20_000);
    const fenced = a.waitFor((e) => e.ev === 'fenced', 'a refuses its in-flight checkpoint', 20_000);
    phase = 'continued';
    a.child!.kill('SIGCONT');
    expect(String((await demoted).error)).toMatch(/no longer primary/);
    const f = await fenced;
    expect(f.code).toBe('ERR_FENCED');
    expect(f.demoted).toBe(true);
    a.send({ cmd: 'probe' });
    expect((await a.waitFor((e) => e.ev === 'probe', 'a probe')).code).toBe('ERR_FENCED');
    expect(aAcks.filter((x) => x.phase === 'continued')).toEqual([]);
    for (const x of aAcks) expect(x.t).toBeLessThanOrEqual(stopAt);

    // A fresh standby replays the whole stream, a's late frames included, and drops them too.
    const d = node('d');
    await d.waitFor((e) => e.ev === 'log' && staleCount(e) >= late.length, 'fresh standby drops them');

    // Second takeover: the new primary is killed at a step boundary; whoever resumes holds the
    // image's store, with nothing of a's after the cutoff.
    await winner.p.waitFor(
      (e) => e.ev === 'acked' && Number(e.checkpoint) >= cutoff + 3,
      'new primary acks 3',
    );
    winner.p.send({ cmd: 'arm', point: 'after-checkpoint', afterSteps: 0 });
    const at = await winner.p.waitFor((e) => e.ev === 'at-killpoint', 'kill point');
    expect(at.point).toBe('after-checkpoint');
    const lastByWinner = Math.max(
      ...winner.p.history.filter((e) => e.ev === 'acked').map((e) => Number(e.checkpoint)),
      cutoff,
    );
    await winner.p.kill();
    const next = await first([
      other.waitFor((e) => e.ev === 'primary', 'standby takes over', 20_000).then((e) => ({ p: other, e })),
      d.waitFor((e) => e.ev === 'primary', 'd takes over', 20_000).then((e) => ({ p: d, e })),
    ]);
    expect(next.e.storeDigest).toBe(next.e.mirrorDigest);
    expect(Number(next.e.resumed)).toBeGreaterThanOrEqual(lastByWinner);
    next.p.send({ cmd: 'verify' });
    const v = await next.p.waitFor((e) => e.ev === 'verified', 'verified');
    expect(v.storeDigest).toBe(v.mirrorDigest);
    expect(v.foreign).toBe(0);
  }, 120_000);
});

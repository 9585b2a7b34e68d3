/**
 * A zombie primary with FEC, nothing injected by the test: every late shard comes from the paused
 * process itself. zombie.test.ts does this over one relay; here node a publishes Reed-Solomon 2+1
 * shards to three relays, each through a proxy that can hold back what a sends.
 *
 * The test holds all three proxies until the three shards of one of a's seals are stuck in them,
 * then SIGSTOPs a: a is frozen with a checkpoint in flight. A standby that reads the relays
 * directly takes over and fences. The proxies then let a's shards through, so they land on every
 * relay after the fence. Asserted: the live standby and a fresh standby that replays the whole
 * stream drop them as `stale` (the shard assembler's fence floor), and neither holds a
 * checkpoint of a's after the cut; a, woken, acknowledges nothing more and is demoted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { AppProcess } from '../../src/drill/drill.js';
import { ledgerArgs } from '../../src/drill/app-process.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { decodeShard, type Shard } from '../../src/fec/shard.js';
import { FrameKind } from '../../src/protocol/frame.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { HoldProxy } from '../helpers/hold-proxy.js';
import { first, staleCount, stopped, takeover } from '../helpers/stopped-process.js';

let nc: NatsConnection;
let dir: string;
let relays: TestRelay[] = [];
let proxies: HoldProxy[] = [];
const app = freshApp('zfec');
const procs: AppProcess[] = [];

beforeAll(async () => {
  nc = await requireNats();
  dir = await mkdtemp(join(tmpdir(), 'rp-zombie-fec-'));
  relays = await Promise.all([0, 1, 2].map(() => TestRelay.single()));
  proxies = await Promise.all(relays.map((r) => HoldProxy.start(r.urls[0]!)));
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await Promise.all(proxies.map((p) => p.close()));
  await Promise.all(relays.map((r) => r.destroy()));
  await deleteApp(nc, app);
  await nc?.close();
  await rm(dir, { recursive: true, force: true });
});

/** A node of the app; `via` are its relay URLs (proxies for a); the lease is always direct. */
function node(id: string, via: string[] = relays.map((r) => r.urls[0]!)): AppProcess {
  const p = new AppProcess(id);
  p.start([
    ...ledgerArgs({ app, store: 'file', dir: join(dir, id), nats: NATS_URL, leaseTtlMs: 800 }),
    '--relays',
    via.join(','),
    '--fec',
    '2+1:1',
  ]);
  procs.push(p);
  return p;
}

/** The shards of `app` a proxy holds back, decoded, with the frame kind where it shows. */
function heldShards(proxy: HoldProxy): { shard: Shard; kind: number | undefined }[] {
  return proxy.heldMessages(app).map((m) => {
    const shard = decodeShard(m, app);
    // Data shard 0 begins with the part's first bytes: its header, whose byte 3 is the kind.
    return { shard, kind: shard.index === 0 ? shard.payload[3] : undefined };
  });
}

describe('zombie primary with FEC (2+1 over three relays, SIGSTOP mid-checkpoint)', () => {
  it("drops the paused primary's late shards as stale on the live and on a fresh standby", async () => {
    const a = node(
      'a',
      proxies.map((p) => p.url),
    );
    const aPrimary = await a.waitFor((e) => e.ev === 'primary', 'a primary');
    const aEpoch = Number(aPrimary.epoch);
    const b = node('b');
    const c = node('c');
    await b.waitFor((e) => e.ev === 'standby', 'b standby', 30_000, true);
    await c.waitFor((e) => e.ev === 'standby', 'c standby', 30_000, true);
    type Phase = 'running' | 'stopped' | 'continued';
    let phase = 'running' as Phase;
    const aAcks: { checkpoint: number; phase: Phase }[] = [];
    a.on((e) => {
      if (e.ev === 'acked') aAcks.push({ checkpoint: Number(e.checkpoint), phase });
    });
    await a.waitFor((e) => e.ev === 'acked' && Number(e.checkpoint) >= 5, 'a acks 5 checkpoints');

    // Hold a's traffic to every relay until all three shards of one seal are stuck.
    for (const p of proxies) p.hold();
    let seal: Shard | undefined;
    const sealHeld = (): boolean => {
      seal ??= heldShards(proxies[0]!).find((s) => s.kind === FrameKind.Seal)?.shard;
      return (
        seal !== undefined &&
        proxies.every((p) =>
          heldShards(p).some((s) => s.shard.epoch === seal!.epoch && s.shard.seq === seal!.seq),
        )
      );
    };
    await Promise.all(proxies.map((p) => p.until(sealHeld, "the three shards of a's next seal held back")));
    a.child!.kill('SIGSTOP');
    phase = 'stopped';
    await stopped(a.child!.pid!);

    const [winner, other] = await takeover(b, c, aEpoch);
    const cutoff = Number(winner.ev.resumed);
    expect(cutoff).toBeGreaterThanOrEqual(Math.max(...aAcks.map((x) => x.checkpoint)));

    // Everything held is a's, shard i on relay i; the seal is among it.
    const late = proxies.map((p) => heldShards(p));
    for (const [i, shards] of late.entries()) {
      expect(shards.length).toBeGreaterThan(0);
      for (const { shard } of shards) {
        expect(shard.epoch).toBe(aEpoch);
        expect(shard.index).toBe(i);
      }
    }
    const lateShards = late.flat().length;

    // Now they reach the relays, after the fence.
    const liveStale = other.waitFor((e) => e.ev === 'log' && staleCount(e) >= 1, 'live standby drops them');
    for (const p of proxies) p.release();
    await Promise.all(
      proxies.map((p, i) =>
        p.until(() => p.acksAfterRelease(`RP_${app}`) >= late[i]!.length, `relay ${i} acks the late shards`),
      ),
    );
    await liveStale;

    // Wake a up: it must refuse its in-flight checkpoint and find itself demoted.
    const demoted = a.waitFor((e) => e.ev === 'demoted', 'a demoted', 20_000);
    const fenced = a.waitFor((e) => e.ev === 'fenced', 'a refuses its in-flight checkpoint', 20_000);
    phase = 'continued';
    a.child!.kill('SIGCONT');
    await demoted;
    expect((await fenced).code).toBe('ERR_FENCED');
    expect(aAcks.filter((x) => x.phase === 'continued')).toEqual([]);

    // A fresh standby replays every relay, a's late shards included, and drops them too.
    const d = node('d');
    await d.waitFor((e) => e.ev === 'log' && staleCount(e) >= 1, 'fresh standby drops them');
    expect(lateShards).toBeGreaterThanOrEqual(3);

    // Whoever resumes next holds the image's store, nothing of a's after the cutoff.
    await winner.p.waitFor(
      (e) => e.ev === 'acked' && Number(e.checkpoint) >= cutoff + 2,
      'new primary acks 2',
    );
    await winner.p.kill();
    const next = await first([
      other.waitFor((e) => e.ev === 'primary', 'standby takes over', 20_000),
      d.waitFor((e) => e.ev === 'primary', 'd takes over', 20_000),
    ]);
    expect(next.storeDigest).toBe(next.mirrorDigest);
    expect(Number(next.resumed)).toBeGreaterThan(cutoff);
  }, 120_000);
});

/**
 * Issue 14, the drill abort "a takeover that never served": with a 10 MB state at a 300 ms lease
 * (and 100 MB at 3 s), a new primary was sometimes never acknowledged before the drill's deadline.
 * Cause: right after `start()` resolved, the sample app digested its whole restored state (the
 * drill's verification of the image) in one synchronous block: 250 ms for 10 MB on the loaded
 * machine, seconds for 100 MB. Its lease keeper could not renew meanwhile, the new primary
 * demoted itself, and the drill waited for an acknowledgement that could not come.
 *
 * Real processes (the sample app, as the drill runs it) on the real nats-server: a standby takes
 * over a 10 MB state after a SIGKILL of the primary, then digests it. Asserted: timers (the
 * lease keeper's renewals run on them) kept running while the state was digested
 * (`verifyBallastTicks`, turns of a 5 ms interval during the ballast digest: 0 when it is one
 * block), the new primary is not demoted, and its first checkpoint is acknowledged.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { AppProcess } from '../../src/drill/drill.js';
import { ledgerArgs } from '../../src/drill/app-process.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
let dir: string;
const app = freshApp('verify-stall');
const procs: AppProcess[] = [];

beforeAll(async () => {
  nc = await requireNats();
  dir = await mkdtemp(join(tmpdir(), 'rp-verify-stall-'));
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await deleteApp(nc, app);
  await nc.close();
  await rm(dir, { recursive: true, force: true });
});

function node(id: string): AppProcess {
  const p = new AppProcess(id);
  p.start([
    // A long lease: the fresh primary's first keyframe of the whole state is still encoded on
    // its event loop, which must not demote it here (this test is about the verify).
    ...ledgerArgs({ app, store: 'file', dir: join(dir, id), nats: NATS_URL, leaseTtlMs: 4000 }),
    '--state-mb',
    '10',
    '--step-ms',
    '2',
  ]);
  procs.push(p);
  return p;
}

describe('the sample app verifies a resumed state without starving its lease', () => {
  it('a new primary digests 10 MB in slices, stays primary and serves', async () => {
    const a = node('a');
    await a.waitFor((e) => e.ev === 'primary', 'a primary', 60_000);
    const b = node('b');
    await b.waitFor((e) => e.ev === 'standby', 'b standby', 60_000, true);
    // b holds a few checkpoints (its applied reports come every 200 ms).
    await b.waitFor((e) => e.ev === 'applied' && Number(e.checkpoint) >= 3, 'b applied 3', 60_000);
    const took = b.waitFor((e) => e.ev === 'primary', 'b primary', 60_000);
    const served = b.waitFor((e) => e.ev === 'acked' || e.ev === 'demoted', 'b served', 60_000);
    served.catch(() => undefined);
    await a.kill();
    const p = await took;
    expect(Number(p.resumed)).toBeGreaterThanOrEqual(3);
    expect(Number(p.ballastRecords)).toBe(10 * 1024);
    const verifyMs = Number(p.verifyMs);
    const ballastMs = Number(p.verifyBallastMs);
    const ticks = Number(p.verifyBallastTicks);
    // The lease keeper runs on timers: in one block, no timer runs until the whole ballast is
    // digested (0 turns, however long it takes); in slices, a 5 ms timer turns all along.
    expect(
      ticks,
      `the ballast digest took ${ballastMs} ms (verify ${verifyMs} ms, longest stall ${String(p.verifyStallMs)} ms) and let ${ticks} timer turn(s) run`,
    ).toBeGreaterThanOrEqual(Math.min(5, Math.floor(ballastMs / 20)));
    expect(ballastMs).toBeGreaterThan(0);
    const first = await served;
    expect(first.ev, String(first.error ?? '')).toBe('acked');
  }, 120_000);
});

/**
 * `drill --scenario upgrade` (issue 17): the rolling upgrade of the sample app to a build with a
 * new state shape, with real processes on the shared nats-server and a node SIGKILLed mid-upgrade
 * (src/drill/upgrade.ts says what runs and what is checked). Bounded: three takeovers at a
 * 1000 ms lease.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { runDrill, type UpgradeReport } from '../../src/drill/drill.js';
import { NATS_URL, requireNats } from '../helpers/nats.js';

beforeAll(async () => {
  await (await requireNats()).close();
});

describe('drill --scenario upgrade', () => {
  it('switches over to build 2 (migrated once), the old standby refuses, the mid-upgrade failover lands on build 2, nothing acknowledged is lost', async () => {
    const lines: string[] = [];
    const report = (await runDrill({
      scenario: 'upgrade',
      kills: 2,
      store: 'file',
      seed: 17,
      nats: NATS_URL,
      leaseTtlMs: 1000,
      progress: (l) => lines.push(l),
    })) as Awaited<ReturnType<typeof runDrill>> & { upgrade: UpgradeReport };
    expect(report.violations, lines.join('\n')).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.takeovers.map((t) => [t.killed, t.newPrimary])).toEqual([
      ['a', 'b'],
      ['b', 'c'],
      ['c', 'a'],
    ]);
    for (const t of report.takeovers) {
      expect(t.resumed).toBeGreaterThanOrEqual(t.lastAcked);
      expect(t.checkpointsLost).toBe(0);
      expect(t).toMatchObject({ storeMatches: true, imageMatches: true });
    }
    expect(report.upgrade.switchover).toMatchObject({
      migratedFrom: 1,
      sourceMatches: true,
      migratedMatches: true,
    });
    expect(report.upgrade.oldStandbyRefused).toBe(true);
    expect(report.upgrade.oldStandbyReason).toMatch(/stateVersion 2, newer than this build's stateVersion 1/);
    expect(report.upgrade.failoverLandedOn).toBe('c');
    expect(report.upgrade.skewShown).toBe(true);
  }, 180_000);
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { runDrill, type TakeoverReport } from '../../src/drill/drill.js';
import { NATS_URL, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await nc?.close();
});

/** The RTO/RPO figures every takeover carries, and how they relate. */
function expectFigures(t: TakeoverReport): void {
  expect(t.checkpointsLost).toBe(0);
  expect(t.detectMs).toBeGreaterThan(0);
  for (const k of ['catchUpMs', 'fenceMs', 'rollbackMs', 'restoreMs', 'resumeMs', 'writesDiscarded'] as const)
    expect(t[k]).toBeGreaterThanOrEqual(0);
  // Serving comes after start() resolved: the total is at least the takeover.
  expect(t.killToServingMs).toBeGreaterThanOrEqual(t.takeoverMs);
  expect(t.killToServingMs).toBe(t.takeoverMs + t.resumeMs);
}

describe('drill scenarios pause and partition (real nats-server, real processes)', () => {
  it('pause: a SIGSTOPped primary woken after the takeover is fenced and acknowledges nothing', async () => {
    const report = await runDrill({
      kills: 2,
      store: 'memory',
      seed: 13,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'pause',
      points: ['inside-checkpoint', 'between-writes'],
    });
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.takeovers.map((t) => t.newPrimary)).toEqual(['b', 'a']);
    for (const t of report.takeovers) {
      expectFigures(t);
      expect(t.zombie).toMatchObject({
        demoted: true,
        refused: true,
        probeRefused: true,
        acksAfterTakeover: 0,
        foreignWrites: 0,
      });
      // Asleep through the takeover, it can only learn of it afterwards.
      expect(t.zombie!.demotedAfterTakeoverMs).toBeGreaterThanOrEqual(0);
    }
    // between-writes: the half step the paused primary had written is rolled back.
    expect(report.takeovers[1]!.writesDiscarded).toBeGreaterThan(0);
    expect(report.medians.killToServingMs).toBeGreaterThan(0);
  }, 90_000);

  it('partition: a primary cut off from NATS demotes itself before the takeover and stays fenced after the heal', async () => {
    const report = await runDrill({
      kills: 1,
      store: 'file',
      seed: 17,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'partition',
      points: ['after-checkpoint'],
    });
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    const [t] = report.takeovers;
    expectFigures(t!);
    expect(t!.resumed).toBe(t!.lastAcked);
    expect(t!.zombie).toMatchObject({
      demoted: true,
      refused: true,
      probeRefused: true,
      acksAfterTakeover: 0,
      foreignWrites: 0,
    });
    // Guarantee 3: a primary that cannot renew stops acknowledging before its lease can be taken.
    expect(t!.zombie!.demotedAfterTakeoverMs).toBeLessThan(0);
  }, 60_000);
});

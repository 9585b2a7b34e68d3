/**
 * `drill --scenario store-loss` end to end (real nats-server, real sample-app processes, real
 * stores): faults of issue 12 injected into a node's own store each end correctly (a rebuild
 * from the relays, a step-down and another node taking over), with no acknowledged checkpoint
 * lost and the resumed store equal to the resumed image. One store kind per test, a few faults
 * each, to stay bounded; `restartpoint drill --scenario store-loss` runs every fault.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { runDrill, storeLossFaults, type DrillReport } from '../../src/drill/drill.js';
import { NATS_URL, requireNats } from '../helpers/nats.js';

const PG_URL = process.env.RESTARTPOINT_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';

let nc: NatsConnection;
beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await nc?.close();
});

/** Every fault ended as it must, with nothing lost and no divergence. */
function expectCorrect(report: DrillReport, faults: string[]): void {
  expect(report.violations).toEqual([]);
  expect(report.ok).toBe(true);
  expect(report.storeFaults!.map((f) => f.fault)).toEqual(faults);
  for (const f of report.storeFaults!) {
    expect(f.outcome).toBe(f.expected);
    expect(f.checkpointsLost).toBe(0);
    expect(f.storeMatches).toBe(true);
    expect(f.imageMatches).toBe(true);
    expect(f.resumed).toBeGreaterThanOrEqual(f.lastAcked!);
    // A rebuild is seen as one on the node whose store was hit; a step-down needs none.
    expect(f.rebuilds).toBe(f.expected === 'rebuilt' ? 1 : 0);
  }
}

describe('drill --scenario store-loss', () => {
  it('lists the faults of each store kind, and refuses a memory store (its store is the process)', () => {
    expect(storeLossFaults('redis')).toEqual([
      'standby-flushall',
      'standby-hdel',
      'standby-restart-empty',
      'primary-restart-empty',
      'primary-down',
      'standby-down-at-takeover',
    ]);
    expect(storeLossFaults('postgres')).toContain('standby-truncate');
    expect(storeLossFaults('file')).toContain('primary-log-truncated');
    expect(() => storeLossFaults('memory')).toThrow(/lives inside the node's process/);
  });

  it('redis (private redis-servers): FLUSHALL while applying and HDEL are rebuilt; the primary restarted empty steps down', async () => {
    const faults = ['standby-flushall', 'standby-hdel', 'primary-restart-empty'];
    const report = await runDrill({
      kills: 0,
      store: 'redis',
      seed: 1,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'store-loss',
      storeFaults: faults,
    });
    expectCorrect(report, faults);
  }, 60_000);

  it('redis, snapshot mode: the standby restarted empty is rebuilt', async () => {
    const faults = ['standby-restart-empty'];
    const report = await runDrill({
      kills: 0,
      store: 'redis',
      mode: 'snapshot',
      seed: 2,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'store-loss',
      storeFaults: faults,
    });
    expectCorrect(report, faults);
  }, 60_000);

  it('file: a truncated standby log is rebuilt; a truncated primary log steps it down', async () => {
    const faults = ['standby-log-truncated', 'primary-log-truncated'];
    const report = await runDrill({
      kills: 0,
      store: 'file',
      seed: 3,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'store-loss',
      storeFaults: faults,
    });
    expectCorrect(report, faults);
  }, 60_000);

  it('postgres: TRUNCATE of the standby table is rebuilt; the primary whose tables are dropped steps down', async () => {
    const faults = ['standby-truncate', 'primary-wiped'];
    const report = await runDrill({
      kills: 0,
      store: 'postgres',
      postgresUrl: PG_URL,
      seed: 4,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'store-loss',
      storeFaults: faults,
    });
    expectCorrect(report, faults);
  }, 60_000);
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { runDrill } from '../../src/drill/drill.js';
import { NATS_URL, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await nc?.close();
});

describe('drill (real nats-server, real processes, SIGKILL)', () => {
  it('kills the primary at each kill point and every takeover keeps guarantees 1-3', async () => {
    const report = await runDrill({
      kills: 3,
      store: 'file',
      seed: 7,
      nats: NATS_URL,
      leaseTtlMs: 800,
      points: ['between-writes', 'inside-checkpoint', 'after-checkpoint'],
    });
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.takeovers.map((t) => t.point)).toEqual([
      'between-writes',
      'inside-checkpoint',
      'after-checkpoint',
    ]);
    for (const t of report.takeovers) {
      expect(t.resumed).toBeGreaterThanOrEqual(t.lastAcked);
      expect(t.storeMatches && t.imageMatches).toBe(true);
    }
    // Alternating nodes prove the killed node rejoined and could take over again.
    expect(report.takeovers.map((t) => t.newPrimary)).toEqual(['b', 'a', 'b']);
    const epochs = report.takeovers.map((t) => t.epoch);
    expect(epochs).toEqual([...epochs].sort((x, y) => x - y));
  }, 120_000);

  it('relay-loss: three relays, quorum policy, a relay SIGKILLed before each primary kill', async () => {
    const report = await runDrill({
      kills: 2,
      store: 'file',
      seed: 11,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'relay-loss',
    });
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.scenario).toBe('relay-loss');
    expect(report.relaysKilled).toBe(2);
  }, 120_000);

  it('shard-loss: six relays, FEC 4+2, shards dropped on the way and a relay SIGKILLed before each kill', async () => {
    const report = await runDrill({
      kills: 2,
      store: 'memory',
      seed: 5,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'shard-loss',
    });
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.scenario).toBe('shard-loss');
    expect(report.relaysKilled).toBe(2);
  }, 120_000);

  const combos = (['memory', 'file', 'redis', 'postgres'] as const).flatMap((store) =>
    (['delay-write', 'snapshot'] as const).map((mode) => [store, mode] as const),
  );
  it.each(combos)(
    'store %s, mode %s: a kill inside checkpoint() keeps guarantees 1-3',
    async (store, mode) => {
      const report = await runDrill({
        kills: 1,
        store,
        mode,
        seed: 21,
        nats: NATS_URL,
        leaseTtlMs: 800,
        points: ['inside-checkpoint'],
      });
      expect(report.violations).toEqual([]);
      expect(report.ok).toBe(true);
      expect(report.takeovers[0]!.storeMatches && report.takeovers[0]!.imageMatches).toBe(true);
    },
    60_000,
  );
});

/**
 * The chaos drill's schedule (a pure function of the seed) and the lease check that every
 * drill applies to each takeover (a claim sooner than a TTL after the deposed primary's last
 * renewal is a violation).
 */
import { describe, expect, it } from 'vitest';
import { chaosSchedule, chaosTolerance, type ChaosRound } from '../../src/drill/chaos.js';
import {
  checkTakeoverLease,
  judgeTakeover,
  leaseTtlViolation,
  type LeaseChecks,
  type LeaseSample,
} from '../../src/drill/lease-watch.js';

/** The relays down during each round's takeover, and before its fault. */
function downDuring(rounds: ChaosRound[]): { beforeFault: number[]; atTakeover: number[] }[] {
  return rounds.map((r) => ({
    beforeFault: [...r.carried, ...r.relayFaults.map((f) => f.relay)],
    atTakeover: [...r.carried, ...r.relayFaults.filter((f) => f.across > 0).map((f) => f.relay)],
  }));
}

describe('chaosSchedule', () => {
  it('is a function of the seed: the same seed gives the same schedule, another seed another one', () => {
    const a = chaosSchedule(1, { kills: 30, relays: 3 });
    expect(chaosSchedule(1, { kills: 30, relays: 3 })).toEqual(a);
    expect(chaosSchedule(2, { kills: 30, relays: 3 })).not.toEqual(a);
    expect(a).toHaveLength(30);
  });

  it('seed 1, 4 kills, 3 relays: every primary fault, a relay down across two takeovers, a fresh node', () => {
    const s = chaosSchedule(1, { kills: 4, relays: 3 });
    expect(new Set(s.map((r) => r.primaryFault))).toEqual(new Set(['kill', 'pause', 'partition']));
    expect(s.some((r) => r.relayFaults.some((f) => f.across === 2))).toBe(true);
    expect(s.filter((r) => r.fresh).length).toBeGreaterThanOrEqual(1);
  });

  it('never takes down more relays than the quorum tolerates, and keeps its own rules', () => {
    for (const relays of [1, 2, 3, 4, 5, 7]) {
      const tolerate = chaosTolerance(relays);
      for (let seed = 0; seed < 200; seed++) {
        const s = chaosSchedule(seed, { kills: 12, relays });
        for (const d of downDuring(s)) {
          expect(new Set(d.beforeFault).size).toBe(d.beforeFault.length);
          expect(d.beforeFault.length).toBeLessThanOrEqual(tolerate);
        }
        for (const [i, r] of s.entries()) {
          const two = r.relayFaults.filter((f) => f.across === 2);
          // Held across two takeovers: only from a round that starts with every relay up, never the last.
          if (two.length > 0) {
            expect(r.carried).toEqual([]);
            expect(i).toBeLessThan(s.length - 1);
            expect(s[i + 1]!.carried).toEqual(two.map((f) => f.relay));
          } else if (i + 1 < s.length) expect(s[i + 1]!.carried).toEqual([]);
          // A fresh node is the only standby of its round: no relay down at its start, no second standby.
          if (r.fresh) {
            expect(r.round).toBeGreaterThanOrEqual(2);
            expect(r.carried).toEqual([]);
            expect(two).toEqual([]);
          }
        }
        expect(s.some((r) => r.fresh)).toBe(true);
        expect(new Set(s.slice(0, 3).map((r) => r.primaryFault)).size).toBe(3);
      }
    }
  });

  it('with one relay (tolerance 0) injects no relay fault; --nats-cluster kills the leader in the middle round', () => {
    expect(chaosTolerance(1)).toBe(0);
    expect(chaosTolerance(3)).toBe(1);
    expect(chaosTolerance(5)).toBe(2);
    const s = chaosSchedule(7, { kills: 5, relays: 1, natsCluster: 3 });
    expect(s.flatMap((r) => r.relayFaults)).toEqual([]);
    expect(s.filter((r) => r.natsLeaderKill).map((r) => r.round)).toEqual([3]);
  });
});

describe('lease check of a takeover', () => {
  const TTL = 1000;
  const renewals = (epoch: number, holder: string, from: number, n: number, rev0: number): LeaseSample[] =>
    Array.from({ length: n }, (_, i) => ({ t: from + i * 250, revision: rev0 + i, holder, epoch }));

  it('a claim sooner than the TTL after the last renewal of the killed epoch is a violation', () => {
    // a renews every 250 ms until t = 1750; b claims at t = 2350: 600 ms later.
    const samples = [...renewals(1, 'a', 1000, 4, 1), { t: 2350, revision: 5, holder: 'b', epoch: 2 }];
    const v = leaseTtlViolation(samples, { kill: 1, killedEpoch: 1, ttlMs: TTL });
    expect(v).toMatch(/kill 1: epoch 2 claimed the lease 600 ms after the last renewal of epoch 1/);
    expect(v).toMatch(/sooner than the lease TTL of 1000 ms/);
  });

  it('a claim a full TTL (or more) after the last renewal passes', () => {
    const samples = [...renewals(1, 'a', 1000, 4, 1), { t: 2750, revision: 5, holder: 'b', epoch: 2 }];
    expect(judgeTakeover(samples, { kill: 1, killedEpoch: 1, ttlMs: TTL })).toEqual({
      verdict: 'ok',
      gapMs: 1000,
    });
    const late = [...renewals(1, 'a', 1000, 4, 1), { t: 3100, revision: 5, holder: 'b', epoch: 2 }];
    expect(leaseTtlViolation(late, { kill: 1, killedEpoch: 1, ttlMs: TTL })).toBeUndefined();
  });

  it('compares with the LAST renewal of the killed epoch and the FIRST claim after it', () => {
    // Epoch 2 renewed until t = 5000; epoch 3 claims at 5400, renews after: early.
    const samples = [
      ...renewals(1, 'a', 0, 2, 1),
      { t: 2000, revision: 3, holder: 'b', epoch: 2 },
      ...renewals(2, 'b', 2250, 12, 4),
      { t: 5400, revision: 16, holder: 'c', epoch: 3 },
      ...renewals(3, 'c', 5650, 4, 17),
    ];
    const j = judgeTakeover(samples, { kill: 2, killedEpoch: 2, ttlMs: TTL });
    expect(j.verdict).toBe('early');
    expect(j.gapMs).toBe(400);
  });

  it('cannot judge across a revision the watch missed between the last renewal and the claim', () => {
    const samples = [...renewals(1, 'a', 1000, 4, 1), { t: 2350, revision: 9, holder: 'b', epoch: 2 }];
    expect(judgeTakeover(samples, { kill: 1, killedEpoch: 1, ttlMs: TTL }, [[5, 8]])).toEqual({
      verdict: 'unknown',
    });
    // A hole before the last renewal or after the claim does not matter.
    expect(judgeTakeover(samples, { kill: 1, killedEpoch: 1, ttlMs: TTL }, [[1, 3]]).verdict).toBe('early');
    expect(judgeTakeover(samples, { kill: 1, killedEpoch: 1, ttlMs: TTL }, [[9, 12]]).verdict).toBe('early');
  });

  it('cannot judge without both the renewal and the claim in the record, and counts that', () => {
    const checks: LeaseChecks = { judged: 0, early: 0, unjudged: 0, minGapMs: null, gapsMs: [] };
    expect(
      checkTakeoverLease(checks, renewals(1, 'a', 0, 3, 1), { kill: 1, killedEpoch: 1, ttlMs: TTL }),
    ).toBeUndefined();
    expect(
      checkTakeoverLease(checks, [{ t: 5000, revision: 9, holder: 'b', epoch: 2 }], {
        kill: 1,
        killedEpoch: 1,
        ttlMs: TTL,
      }),
    ).toBeUndefined();
    const early = [...renewals(1, 'a', 0, 3, 1), { t: 900, revision: 4, holder: 'b', epoch: 2 }];
    expect(checkTakeoverLease(checks, early, { kill: 1, killedEpoch: 1, ttlMs: TTL })).toMatch(/400 ms/);
    expect(checks).toEqual({ judged: 1, early: 1, unjudged: 2, minGapMs: 400, gapsMs: [null, null, 400] });
  });
});

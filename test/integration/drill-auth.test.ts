import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
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

describe('drill in signed mode (real nats-server, real processes, SIGKILL)', () => {
  it('--key with --inject-forged 5: every forged and corrupted message is rejected and the takeover keeps the guarantees', async () => {
    const report = await runDrill({
      kills: 1,
      store: 'file',
      seed: 11,
      nats: NATS_URL,
      leaseTtlMs: 800,
      key: randomBytes(32).toString('hex'),
      injectForged: 5,
    });
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.rejected.forged).toBeGreaterThanOrEqual(5);
    expect(report.rejected.corrupt).toBeGreaterThanOrEqual(5);
    expect(report.takeovers[0]!.storeMatches && report.takeovers[0]!.imageMatches).toBe(true);
  }, 90_000);

  it('shard-loss (six relays, FEC 4+2, shards dropped, a relay killed) in signed mode with --inject-forged 3', async () => {
    const report = await runDrill({
      kills: 1,
      store: 'memory',
      seed: 5,
      nats: NATS_URL,
      leaseTtlMs: 800,
      scenario: 'shard-loss',
      key: randomBytes(32).toString('base64'),
      injectForged: 3,
    });
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.rejected.forged).toBeGreaterThanOrEqual(3);
    expect(report.rejected.corrupt).toBeGreaterThanOrEqual(3);
  }, 120_000);

  it('without signed mode, injecting is refused rather than reported as passing', async () => {
    const report = await runDrill({
      kills: 1,
      store: 'memory',
      seed: 1,
      nats: NATS_URL,
      leaseTtlMs: 800,
      injectForged: 1,
    });
    expect(report.ok).toBe(false);
    expect(report.violations.join()).toMatch(/injectForged needs key/);
  }, 30_000);
});

/**
 * The base and retention figures of a base builder as Prometheus metrics (docs/history.md).
 */
import { describe, expect, it } from 'vitest';
import { RestartpointMetrics } from '../../src/observability/metrics.js';

describe('base metrics', () => {
  it('a durable base sets its checkpoint, size, build time, window start and per-relay purge point', async () => {
    const m = new RestartpointMetrics({ labels: { app: 'ledger', node: 'b' } });
    m.observer.base!({
      checkpoint: 2000,
      bytes: 512_000,
      keys: 5000,
      buildMs: 250,
      retainFrom: 1801,
      relays: [
        { servers: 'nats://r1:4222', purgedBelow: 5422 },
        { servers: 'nats://r2:4222', purgedBelow: null },
      ],
    });
    const text = await m.registry.metrics();
    expect(text).toMatch(/restartpoint_base_checkpoint\{app="ledger",node="b"\} 2000/);
    expect(text).toMatch(/restartpoint_base_bytes\{app="ledger",node="b"\} 512000/);
    expect(text).toMatch(/restartpoint_base_build_seconds\{app="ledger",node="b"\} 0.25/);
    expect(text).toMatch(/restartpoint_retained_from_checkpoint\{app="ledger",node="b"\} 1801/);
    expect(text).toMatch(
      /restartpoint_relay_purged_below_seq\{app="ledger",node="b",relay="nats:\/\/r1:4222"\} 5422/,
    );
    // A relay not purged yet has no series (it is purged when it is back).
    expect(text).not.toMatch(/relay="nats:\/\/r2:4222"/);
  });

  it('a standby that rebuilt from the base after falling behind the purge counts it', async () => {
    const m = new RestartpointMetrics({ labels: { app: 'ledger', node: 'z' } });
    m.observer.behindPurge!({ checkpoint: 155, base: 320, retainFrom: 311 });
    m.observer.behindPurge!({ checkpoint: 400, base: 600, retainFrom: 590 });
    const text = await m.registry.metrics();
    expect(text).toMatch(/restartpoint_standby_behind_purge_rebuilds_total\{app="ledger",node="z"\} 2/);
  });
});

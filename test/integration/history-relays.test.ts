/**
 * Issue 13, a relay down during a purge (real nats-servers, one SIGKILLed): with two relays and
 * `ack: { count: 1 }`, a base forced by `restartpoint compact` is durable on the relay that is up
 * and that relay is purged at once; the relay that was down is purged as soon as it is back
 * (same port, same store), without waiting for the next base.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import type { LogEvent, StartOptions } from '../../src/index.js';
import { appNames } from '../../src/protocol/subjects.js';
import { runCompact } from '../../src/cli/commands/compact.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { NATS_URL } from '../helpers/nats.js';
import { startStandby } from '../helpers/standby.js';

const relays: TestRelay[] = [];
afterAll(async () => {
  await Promise.all(relays.map((r) => r.destroy()));
});

interface S {
  n: number;
}

describe('retention with a relay down', () => {
  const live = liveNodes();

  it('a relay down during the purge is purged when it is back', async () => {
    const two = [await TestRelay.single(), await TestRelay.single()];
    relays.push(...two);
    const app = live.app('hrelay');
    const opts = (nodeId: string, extra: Partial<StartOptions<S>> = {}): StartOptions<S> =>
      nodeOptions<S>(app, nodeId, {
        initialState: () => ({ n: 0 }),
        relays: two.map((r) => ({ servers: r.urls })),
        ack: { count: 1 },
        leaseTtlMs: 2_000,
        base: { everyCheckpoints: 1_000_000 },
        retain: { checkpoints: 10 },
        ...extra,
      });
    const a = await live.start(opts('a', { storage: memoryAdapter(), base: { build: false } }));
    const events: LogEvent[] = [];
    const waiters: { pred: (e: LogEvent) => boolean; resolve: (e: LogEvent) => void }[] = [];
    const waitFor = (pred: (e: LogEvent) => boolean): Promise<LogEvent> => {
      const hit = events.find(pred);
      return hit ? Promise.resolve(hit) : new Promise((resolve) => waiters.push({ pred, resolve }));
    };
    const ac = new AbortController();
    const b = startStandby<S>({
      ...opts('b', { storage: memoryAdapter() }),
      signal: ac.signal,
      log: (e) => {
        events.push(e);
        for (let i = waiters.length - 1; i >= 0; i--)
          if (waiters[i]!.pred(e)) waiters.splice(i, 1)[0]!.resolve(e);
      },
    });
    await b.standing;
    for (let n = 1; n <= 200; n++) {
      void a.store.put(`k${n % 20}`, `v${n}`);
      await a.checkpoint({ n });
    }
    await waitFor((e) => e.msg === 'checkpoint applied' && e.checkpoint === 200);

    // Relay 1 dies; a base is forced: durable on relay 0 (the policy needs one), relay 0 purged.
    await two[1]!.servers[0]!.kill();
    const compacted = await runCompact({ nats: NATS_URL, app, timeoutMs: 30_000 });
    expect(compacted).toMatchObject({ ok: true, builder: 'b', checkpoint: 200 });
    expect(compacted.purgedBelow![0]).toBeGreaterThan(1);
    expect(compacted.purgedBelow![1]).toBeNull();

    // Relay 1 comes back: it is purged below its own cut (its stream seqs are its own).
    await two[1]!.servers[0]!.start();
    const purged = await waitFor((e) => e.msg === 'purged' && e.relay === two[1]!.urls.join(','));
    const nc = await connect({ servers: two[1]!.urls });
    try {
      const info = await (await jetstreamManager(nc)).streams.info(appNames(app).stream);
      expect(info.state.first_seq).toBe(purged.below);
      expect(info.state.first_seq).toBeGreaterThan(1);
      // The window: 10 checkpoints of 3 frames (writes, image, seal), more than 190 × 3 gone.
      expect(info.state.messages).toBeLessThan(200);
    } finally {
      await nc.close();
    }
    ac.abort();
    await b.primary.catch(() => undefined);
  }, 90_000);
});

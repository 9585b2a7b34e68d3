/**
 * Issue 13, who builds a base and when, on the shared nats-server with real nodes:
 * - the byte trigger: with `everyCheckpoints` out of reach, a base is built once the frames after
 *   the last base take `base.everyBytes` stream bytes;
 * - a standby with `base: { build: false }` is never chosen builder (its presence says so), even
 *   with the smallest node id: `restartpoint compact` is answered by the other standby.
 */
import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import type { StartOptions } from '../../src/index.js';
import { runCompact } from '../../src/cli/commands/compact.js';
import { statusNodes } from '../../src/cli/commands/status-read.js';
import { openLeaseBucket } from '../../src/transport/inspect.js';
import { readPresence } from '../../src/transport/presence.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { NATS_URL } from '../helpers/nats.js';
import { watchStandby, type WatchedStandby } from '../helpers/standby.js';

interface S {
  n: number;
}

/** An in-process standby whose log events can be awaited. */
const standby = (o: StartOptions<S>): WatchedStandby<S> => watchStandby<S>(o);

describe('base triggers and builders', () => {
  const live = liveNodes();

  it('a base is built once the frames after the last one take base.everyBytes', async () => {
    const app = live.app('hbytes');
    const opts = (nodeId: string, extra: Partial<StartOptions<S>> = {}): StartOptions<S> =>
      nodeOptions<S>(app, nodeId, {
        initialState: () => ({ n: 0 }),
        leaseTtlMs: 2_000,
        base: { everyCheckpoints: 1_000_000, everyBytes: 64 * 1024 },
        retain: { checkpoints: 5 },
        ...extra,
      });
    const a = await live.start(opts('a', { storage: memoryAdapter(), base: { build: false } }));
    const b = standby(opts('b', { storage: memoryAdapter() }));
    await b.standing;
    // 40 checkpoints of one 1 KiB value each: about 44 KiB of frames, under the trigger.
    const value = 'x'.repeat(1024);
    for (let n = 1; n <= 40; n++) {
      void a.store.put(`k${n}`, value);
      await a.checkpoint({ n });
    }
    await b.waitFor((e) => e.msg === 'checkpoint applied' && e.checkpoint === 40);
    // Past 64 KiB: a base follows without any compact request.
    for (let n = 41; n <= 100; n++) {
      void a.store.put(`k${n}`, value);
      await a.checkpoint({ n });
    }
    const built = await b.waitFor((e) => e.msg === 'base durable');
    expect(b.events.filter((e) => e.msg === 'base durable' && Number(e.checkpoint) <= 40)).toEqual([]);
    expect(built.checkpoint).toBeGreaterThan(40);
    expect((built.purgedBelow as number[])[0]).toBeGreaterThan(1);
    await b.stop();
  }, 30_000);

  it('a standby with base.build false is not chosen builder, whatever its node id', async () => {
    const app = live.app('hnobuild');
    const opts = (nodeId: string, extra: Partial<StartOptions<S>> = {}): StartOptions<S> =>
      nodeOptions<S>(app, nodeId, {
        initialState: () => ({ n: 0 }),
        leaseTtlMs: 2_000,
        base: { everyCheckpoints: 1_000_000 },
        ...extra,
      });
    const a = await live.start(opts('a', { storage: memoryAdapter(), base: { build: false } }));
    // b0 sorts first but may not build; b1 may.
    const b0 = standby(opts('b0', { base: { build: false } }));
    const b1 = standby(opts('b1'));
    await Promise.all([b0.standing, b1.standing]);
    for (let n = 1; n <= 10; n++) {
      void a.store.put(`k${n}`, `v${n}`);
      await a.checkpoint({ n });
    }
    await b1.waitFor((e) => e.msg === 'checkpoint applied' && e.checkpoint === 10);
    // Both presence records say standby (each node rewrites its record every second).
    const kv = (await openLeaseBucket(live.nc, app))!;
    for (;;) {
      const standbys = (await readPresence(kv)).filter((r) => r.state === 'standby');
      if (standbys.length === 2) {
        expect(standbys.map((r) => [r.nodeId, r.buildsBases])).toEqual([
          ['b0', false],
          ['b1', true],
        ]);
        // `status --json` shows it: nodes[].buildsBases.
        expect(statusNodes(standbys, null, null, Date.now()).map((n) => n.buildsBases)).toEqual([
          false,
          true,
        ]);
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const compacted = await runCompact({ nats: NATS_URL, app, timeoutMs: 10_000 });
    expect(compacted).toMatchObject({ ok: true, builder: 'b1', checkpoint: 10 });
    expect(b0.events.filter((e) => e.msg === 'base durable')).toEqual([]);
    await b0.stop();
    await b1.stop();
  }, 30_000);
});
